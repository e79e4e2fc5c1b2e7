"""Integration fixtures: one real Tansu broker per session (or the outside cluster named by
WEBHOOK_ROUTER_TEST_BOOTSTRAP), real receivers, the real daemon."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from aiokafka.admin import NewTopic

from daemon.app import App, Components
from daemon.core.validate import load_config
from daemon.kafka.clients import admin_client
from daemon.tools.embedded import EmbeddedBroker, free_port
from tests.helpers import OUTSIDE_BOOTSTRAP, OUTSIDE_KAFKA, DaemonProcess, Receiver, client_options, eventually, unique

# Tests that suspend, stop or start a broker use their own Tansu; against an outside cluster they cannot.
needs_own_broker = pytest.mark.skipif(
    OUTSIDE_BOOTSTRAP is not None,
    reason="suspends, stops or starts a broker of its own, which is not done to an outside cluster",
)


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


Broker = EmbeddedBroker | OutsideCluster


@pytest.fixture(scope="session")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Broker]:
    if OUTSIDE_BOOTSTRAP is not None:
        yield OutsideCluster(OUTSIDE_BOOTSTRAP)
        return
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    async with EmbeddedBroker(log_path=log) as b:
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
