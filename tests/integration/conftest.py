"""Integration fixtures: one real broker per session, real receivers, the real daemon.

The broker is Tansu by default, a real Apache Kafka cluster the session starts with ``WEBHOOK_ROUTER_TEST_KAFKA=1``
(one combined node) or ``=3`` (three brokers, three controllers), or the outside cluster named by
``WEBHOOK_ROUTER_TEST_BOOTSTRAP``. Every one has ``EmbeddedBroker``'s face (``bootstrap``, ``create_topics``);
``BROKER_KIND`` ("tansu" or "kafka") is for the few tests that assert what each does where they differ.
``own_broker`` gives a test a broker of its own to suspend, stop and start, of the session's kind."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from daemon.app import App, Components
from daemon.core.validate import load_config
from daemon.kafka.clients import admin_client
from daemon.tools.embedded import EmbeddedBroker, free_port
from tests.helpers import (
    OUTSIDE_BOOTSTRAP,
    OUTSIDE_KAFKA,
    TEST_KAFKA_BROKERS,
    DaemonProcess,
    Receiver,
    client_options,
    eventually,
    unique,
)
from tests.kafka import KafkaCluster, missing_tools

# Tests that suspend, stop or start a broker use their own (Tansu, or Kafka); against an outside cluster they cannot.
needs_own_broker = pytest.mark.skipif(
    OUTSIDE_BOOTSTRAP is not None,
    reason="suspends, stops or starts a broker of its own, which is not done to an outside cluster",
)

# What the session's broker is: "tansu" or "kafka" (an outside cluster is taken to be Kafka).
BROKER_KIND = "tansu" if OUTSIDE_BOOTSTRAP is None and TEST_KAFKA_BROKERS is None else "kafka"


def pytest_sessionstart(session: pytest.Session) -> None:
    if TEST_KAFKA_BROKERS is not None and (reason := missing_tools()) is not None:
        pytest.exit(f"WEBHOOK_ROUTER_TEST_KAFKA={TEST_KAFKA_BROKERS} asks for a Kafka cluster: {reason}", returncode=4)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each coroutine test here ends when its time is up, at the loop's own deadline: pytest-timeout's SIGALRM raises
    inside whatever the loop runs then, and an exception raised in a callback is logged and swallowed by the loop (a
    test that hung held a CI run for 27 minutes past its 600 s). The deadline comes 10 % before pytest-timeout's (so
    its fixtures' teardown has time); when it passes, every task's stack is printed and the test is cancelled where it
    waits, failing with that place in its traceback."""
    here = Path(__file__).parent
    for item in items:
        if not isinstance(item, pytest.Function) or here not in item.path.parents:
            continue
        if inspect.iscoroutinefunction(item.obj) and not hasattr(item.obj, "hypothesis"):
            marker = item.get_closest_marker("timeout")
            given = (marker.args[0] if marker.args else marker.kwargs.get("timeout")) if marker else None
            limit = float(given if given is not None else item.config.getini("timeout") or 0)
            if limit > 0:
                item.obj = _bounded(item.obj, 0.9 * limit)


def _bounded(test: Callable[..., Awaitable[None]], limit_s: float) -> Callable[..., Awaitable[None]]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> None:
        shown = asyncio.get_running_loop().call_later(limit_s, _show_tasks, limit_s)
        bound = asyncio.timeout(limit_s)
        try:
            async with bound:
                await test(*args, **kwargs)
        except TimeoutError:
            if not bound.expired():
                raise
            pytest.fail(f"still running after {limit_s:.0f} s: cancelled where it waited (every task's stack above)")
        finally:
            shown.cancel()

    return bounded


def _show_tasks(limit_s: float) -> None:
    """Each task of the loop with where it waits: its coroutine and every coroutine it awaits, down to the last."""
    print(f"--- the test still runs after {limit_s:.0f} s; its loop's tasks, each where it waits:", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"- {task.get_name()}", file=sys.stderr)
        step: Any = task.get_coro()
        while step is not None:
            frame = getattr(step, "cr_frame", None) or getattr(step, "gi_frame", None)
            if frame is not None:
                print(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}", file=sys.stderr)
            step = getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None)


class OutsideCluster:
    """The Kafka cluster named by WEBHOOK_ROUTER_TEST_BOOTSTRAP, with EmbeddedBroker's face for the tests."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def create_topics(self, names: list[str], partitions: int = 1) -> None:
        admin = admin_client(client_options(self.bootstrap))
        await admin.start()
        try:  # replication factor -1: the cluster's default (and an empty assignment, as aiokafka wants for it)
            await admin.create_topics([NewTopic(n, partitions, -1, replica_assignments={}) for n in names])
        finally:
            await admin.close()


class KafkaBroker:
    """A real Kafka cluster of ``tests.kafka`` (``brokers`` 1: one combined node; 3: three brokers and three
    controllers) with EmbeddedBroker's face: ``suspend``/``resume`` SIGSTOP and SIGCONT every broker (the controllers
    go on: the cluster is unreachable, not lost), ``stop`` stops every node, ``start`` starts the cluster (formatting
    it the first time, on its own storage after a stop). Its ports are chosen when it is made: ``bootstrap`` is known
    before it starts."""

    def __init__(self, work_dir: Path, brokers: int, **cluster: Any) -> None:
        self.cluster = KafkaCluster(work_dir, brokers=brokers, **cluster)
        self.bootstrap = self.cluster.bootstrap

    async def start(self) -> None:
        first = not self.cluster.nodes[self.cluster.broker_ids[0]].dir.exists()
        await self.cluster.start()
        if first:
            await self._await_group_coordinators()

    async def _await_group_coordinators(self, within_s: float = 60) -> None:
        """Ready for consumer groups too: the first FindCoordinator of a cluster's life creates its offsets topic,
        and until every partition of it has a leader a group's coordinator is not available (aiokafka logs that as
        an error, which no test of the router's logs should meet: a new cluster's moment, once)."""
        admin = admin_client({"bootstrap_servers": self.bootstrap})
        await admin.start()
        try:
            async with asyncio.timeout(within_s):
                while True:
                    try:
                        await admin.find_coordinator("tests-warm-up")
                        break
                    except KafkaError:
                        await asyncio.sleep(0.2)
            (offsets,) = (await self.cluster.metadata(["__consumer_offsets"]))["topics"]
            for p in offsets["partitions"]:
                await self.cluster.leader("__consumer_offsets", p["partition"], timeout=within_s)
        finally:
            await admin.close()

    async def create_topics(self, names: list[str], partitions: int = 1) -> None:
        """Create topics (existing ones are left alone) with the cluster's replication factor, and wait for their
        leaders."""
        await self.cluster.create_topics(names, partitions)

    def suspend(self) -> None:
        for node in self.cluster.running_brokers():
            self.cluster.pause(node.node_id)

    def resume(self) -> None:
        for node in self.cluster.nodes.values():
            if node.paused:
                self.cluster.resume(node.node_id)

    async def stop(self) -> None:
        await self.cluster.stop()

    async def __aenter__(self) -> KafkaBroker:
        try:
            await self.start()
        except BaseException:
            await self.cluster.stop(timeout=5)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


Broker = EmbeddedBroker | KafkaBroker | OutsideCluster
OwnBroker = EmbeddedBroker | KafkaBroker


def new_broker(work_dir: Path) -> OwnBroker:
    """A broker of the session's kind (not started): Tansu, or a Kafka cluster of WEBHOOK_ROUTER_TEST_KAFKA's
    size."""
    work_dir.mkdir(parents=True, exist_ok=True)
    if TEST_KAFKA_BROKERS is not None:
        return KafkaBroker(work_dir / "kafka", TEST_KAFKA_BROKERS)
    return EmbeddedBroker(log_path=work_dir / "tansu.log")


@contextlib.asynccontextmanager
async def own_broker(work_dir: Path, start: bool = True) -> AsyncIterator[OwnBroker]:
    """A broker of this test's own, of the session's kind, to suspend, stop and start (stopped at the end,
    suspended or not). With ``start=False`` it is not started: its ``bootstrap`` is already known."""
    b = new_broker(work_dir)
    try:
        if start:
            await b.start()
        yield b
    finally:
        await b.stop()


@contextlib.asynccontextmanager
async def kafka_of_its_own(work_dir: Path, needs: str, **cluster: Any) -> AsyncIterator[KafkaBroker]:
    """One combined Apache Kafka node of a test module's own, whatever the session's broker, for what only Kafka
    does (``needs`` says what: the skip's reason where Java or Maven is missing). ``cluster``: KafkaCluster's
    settings (``overrides``, ``security``)."""
    if (reason := missing_tools()) is not None:
        pytest.skip(f"{needs}, which Tansu does not: {reason}")
    async with KafkaBroker(work_dir, 1, **cluster) as b:
        yield b


@pytest.fixture(scope="session")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Broker]:
    if OUTSIDE_BOOTSTRAP is not None:
        yield OutsideCluster(OUTSIDE_BOOTSTRAP)
        return
    async with own_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@dataclass
class Setup:
    """One test's own topics and group, and a config builder pointing at them."""

    broker: Broker
    topic: str
    results: str
    group: str
    path: Path
    admin_port: int = 0
    prefix: str = ""

    def __post_init__(self) -> None:
        self.prefix = self.prefix or unique("wr")

    def config(
        self, endpoints: list[dict[str, Any]], subscriptions: list[dict[str, Any]], **kafka: Any
    ) -> dict[str, Any]:
        self.admin_port = free_port()
        return {
            "kafka": {
                "bootstrap_servers": self.broker.bootstrap,
                "group_id": self.group,
                "topics": [self.topic],
                "results_topic": self.results,
                "session_timeout_ms": 3000,  # the test broker takes about half of it to form a group
                "heartbeat_interval_ms": 300,
                "commit_interval_ms": 100,
                **OUTSIDE_KAFKA,
                **kafka,
            },
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            # The receivers listen on 127.0.0.1, which the network guard refuses unless allowed.
            "delivery": {"drain_timeout_s": 10, "allowed_networks": ["127.0.0.0/8"]},
            # This test's own retry, dead-letter and health topics; short tiers for delays shortened by config.
            "retry": {"topic_prefix": self.prefix, "tiers_s": [0.5, 1, 2, 4, 8, 30, 300]},
            "endpoints": endpoints,
            "subscriptions": subscriptions,
        }

    def write(self, doc: dict[str, Any], path: Path | None = None) -> Path:
        path = path or self.path
        path.write_text(tomli_w.dumps(doc))
        return path

    def instance(self, n: int) -> Setup:
        """Instance ``n`` of the same router (another member of its group): the config written so far, in a file of
        its own with an admin port of its own."""
        port = free_port()
        other = dataclasses.replace(self, path=self.path.with_name(f"router-{n}.toml"), admin_port=port)
        doc = tomllib.loads(self.path.read_text())
        other.write({**doc, "admin": {**doc["admin"], "listen": f"127.0.0.1:{port}"}})
        return other


@pytest.fixture
async def setup(broker: Broker, tmp_path: Path, request: pytest.FixtureRequest) -> Setup:
    """Fresh topics per test; ``@pytest.mark.parametrize("setup", [3], indirect=True)`` sets partitions."""
    partitions = getattr(request, "param", 1)
    s = Setup(broker, unique("events"), unique("results"), unique("group"), tmp_path / "router.toml")
    await broker.create_topics([s.topic], partitions=partitions)
    await broker.create_topics([s.results])
    return s


@pytest.fixture
async def daemons(setup: Setup, tmp_path: Path) -> AsyncIterator[list[DaemonProcess]]:
    """Start with ``await spawn(daemons, setup)``; every process is killed at teardown."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        await d.kill()


async def spawn(
    pool: list[DaemonProcess], setup: Setup, wait_ready: bool = True, env: dict[str, str] | None = None
) -> DaemonProcess:
    d = DaemonProcess(setup.path, setup.admin_port, setup.path.parent / f"daemon-{len(pool)}.log", env)
    pool.append(d)
    return await d.start(wait_ready)


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for r in started:
        await r.stop()


async def receiver(pool: list[Receiver], **kwargs: Any) -> Receiver:
    r = await Receiver(**kwargs).start()
    pool.append(r)
    return r


def parts(app: App) -> Components:
    """The running daemon's components (started: ``running`` waits for them)."""
    assert app.components is not None
    return app.components


@contextlib.asynccontextmanager
async def running(path: Path, **options: Any) -> AsyncIterator[App]:
    """The daemon in this process (signals left alone), joined to its group before the body runs; ``options`` go to
    ``App`` (``environ``, ``resolver``)."""
    app = App(load_config(path, options.get("environ")), config_path=path, **options)
    task = asyncio.create_task(app.serve(install_signals=False))
    try:
        await eventually(lambda: task.done() or app.ready(), 30)
        if task.done():
            task.result()
        yield app
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 30)
