"""What the tests of brokers lost under load share: a steady load of numbered events, a receiver that counts each
number it is sent, and the figures each test prints (lost, duplicates, time to recover).

These tests need a cluster of their own with three brokers (replication factor 3, ``min.insync.replicas`` 2), which
``KafkaBroker`` gives with ``WEBHOOK_ROUTER_TEST_KAFKA=3``; on Tansu or one Kafka node they are skipped
(``three_brokers``). ``WEBHOOK_ROUTER_CHAOS_RATE`` sets the load in events a second: 500 by default, what a busy
two-core machine running six Kafka JVMs beside the daemon keeps up with (2,000, the issue's, left it saturated at
10,000 events in flight, and a kill's recovery then measured the backlog). ``WEBHOOK_ROUTER_CHAOS_AWAY_S`` is how
long a broker stays away (60 s by default; shorter in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from daemon.tools.embedded import free_port
from tests.helpers import SECRET, TEST_KAFKA_BROKERS, DaemonProcess, client_options, eventually, unique
from tests.integration.conftest import KafkaBroker, Setup, needs_own_broker

three_brokers = [
    needs_own_broker,
    pytest.mark.skipif(
        TEST_KAFKA_BROKERS != 3,
        reason="needs three Kafka brokers of its own (WEBHOOK_ROUTER_TEST_KAFKA=3): Tansu and one node have no "
        "replicas to lose",
    ),
    pytest.mark.timeout(600),
]

RATE = float(os.environ.get("WEBHOOK_ROUTER_CHAOS_RATE", "500"))
AWAY_S = float(os.environ.get("WEBHOOK_ROUTER_CHAOS_AWAY_S", "60"))
PARTITIONS = 6


class Counting:
    """A receiver answering 200 to every webhook and counting each event number (``n`` of the body) it is sent;
    ``last_at`` is when it last received one."""

    def __init__(self) -> None:
        self.seen: Counter[int] = Counter()
        self.arrived: dict[int, float] = {}  # n -> monotonic time of its first delivery
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Counting:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        n = json.loads(await request.read())["n"]
        self.seen[n] += 1
        self.arrived.setdefault(n, time.monotonic())
        return web.Response(text="ok")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def duplicates(self) -> int:
        return sum(self.seen.values()) - len(self.seen)


@dataclass
class Load:
    """Numbered events produced at ``rate`` a second (acks=all, idempotent: the test's own retries write none twice)
    until stopped; ``acked`` are the numbers Kafka acknowledged, ``sent_at`` when each was handed to the producer,
    ``partition_of`` the partition each acknowledged one went to. With ``kinds`` above 1, event ``n`` is of type
    ``chaos.tick.{n % kinds}`` (one endpoint each: ``config_of``)."""

    bootstrap: str
    topic: str
    rate: float = RATE
    kinds: int = 1
    acked: set[int] = field(default_factory=set)
    sent_at: dict[int, float] = field(default_factory=dict)
    partition_of: dict[int, int] = field(default_factory=dict)
    began: float = 0.0  # monotonic
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> Load:
        self.began = time.monotonic()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        # A partition's batch has room for minutes of its events (about 50 bytes each): aiokafka's send waits, up to its
        # request timeout, for room in a partition's full batch, and with its leader hung (SIGSTOP) a 16 KiB batch
        # filled in 4 s here, after which the load held back every other partition's events too.
        producer = AIOKafkaProducer(**client_options(self.bootstrap), acks="all", enable_idempotence=True,
                                    linger_ms=5, max_batch_size=512 * 1024)  # fmt: skip
        await producer.start()
        pending: set[asyncio.Future[object]] = set()
        try:
            started, n = time.monotonic(), 0
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * self.rate)
                while n < due and len(pending) < 20_000:  # writes that wait (brokers away) hold the load back
                    kind = "chaos.tick" if self.kinds == 1 else f"chaos.tick.{n % self.kinds}"
                    value = json.dumps({"event": kind, "n": n}).encode()
                    try:
                        future = await producer.send(self.topic, value, key=str(n).encode())
                    except KafkaError:  # its buffer full while brokers are away: the same number again, later
                        await asyncio.sleep(0.1)
                        continue
                    self.sent_at[n] = time.monotonic()
                    future.add_done_callback(lambda f, n=n: self._done(n, f))
                    pending.add(future)
                    future.add_done_callback(pending.discard)
                    n += 1
                await asyncio.sleep(0.01)
            if pending:
                await asyncio.wait(pending, timeout=120)
        finally:
            await producer.stop()

    def _done(self, n: int, future: asyncio.Future[Any]) -> None:
        if future.exception() is None:
            self.acked.add(n)
            self.partition_of[n] = future.result().partition

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def cancel(self) -> None:
        """Stop at once (a test that failed: what waits is not waited for)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def first_after(self, moment: float) -> int | None:
        """The number of the first event handed to the producer after ``moment`` (monotonic)."""
        return next((n for n, at in self.sent_at.items() if at > moment), None)


def setup_of(broker: KafkaBroker, tmp_path: Path) -> Setup:
    return Setup(broker, unique("events"), unique("results"), unique("group"), tmp_path / "router.toml")


def spread_ids(partitions: int = PARTITIONS) -> list[str]:
    """Endpoint ids whose results records (keyed by the endpoint's id) go to results partitions 0, 1, ... in turn."""
    parts, found = list(range(partitions)), dict[int, str]()
    for n in range(10_000):
        found.setdefault(DefaultPartitioner()(f"sink-{n}".encode(), parts, parts), f"sink-{n}")
        if len(found) == partitions:
            return [found[p] for p in parts]
    raise AssertionError("no endpoint ids for every partition")


def config_of(s: Setup, receiver: Counting, endpoints: int = 1, **kafka: object) -> dict[str, object]:
    """One endpoint taking every event; or, with ``endpoints`` (``Load.kinds``), one per kind of event, the results of
    endpoint ``i`` in results partition ``i``."""
    settings = {"url": receiver.url, "secret": SECRET, "max_concurrency": 64, "queue_size": 100_000}
    if endpoints == 1:
        return s.config([{"id": "sink", **settings}], [{"endpoint": "sink", "events": ["*"]}], contact_timeout_s=5,
                        **kafka)  # fmt: skip
    ids = spread_ids(endpoints)
    eps = [{"id": i, **settings} for i in ids]
    subs = [{"endpoint": i, "events": [f"chaos.tick.{n}"]} for n, i in enumerate(ids)]
    return s.config(eps, subs, contact_timeout_s=5, **kafka)


@contextlib.asynccontextmanager
async def under_load(
    tmp_path: Path, endpoints: int = 1, **kafka: object
) -> AsyncIterator[tuple[KafkaBroker, Setup, Counting, Load]]:
    """A three-broker cluster of the test's own, its topics, a receiver and the daemon ready (started with
    ``spawn``), and the load running; at the end the load stops and every acknowledged event is awaited. With
    ``endpoints`` (at most ``PARTITIONS``), the events are of as many kinds, one endpoint each (``config_of``)."""
    quiet = logging.getLogger("aiokafka")  # the test's own clients meet the same losses: hundreds of lines a second
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(quiet.setLevel, level)
        broker = await stack.enter_async_context(KafkaBroker(tmp_path / "kafka", 3))
        s = setup_of(broker, tmp_path)
        await broker.create_topics([s.topic], partitions=PARTITIONS)
        await broker.create_topics([s.results], partitions=PARTITIONS)
        receiver = await Counting().start()
        stack.push_async_callback(receiver.stop)
        s.write(config_of(s, receiver, endpoints, **kafka))
        load = Load(broker.bootstrap, s.topic, kinds=endpoints).start()
        stack.push_async_callback(load.cancel)
        yield broker, s, receiver, load


async def delivered_after(receiver: Counting, load: Load, moment: float, within_s: float = 300) -> float:
    """Seconds from ``moment`` until an event produced after it was delivered (the time to recover)."""
    await eventually(lambda: load.first_after(moment) is not None, within_s)
    n = load.first_after(moment)
    assert n is not None
    await eventually(lambda: n in receiver.arrived, within_s)
    return receiver.arrived[n] - moment


async def delivered_from_every_partition(receiver: Counting, load: Load, moment: float, within_s: float = 300) -> float:
    """Seconds from ``moment`` until, from every partition, an event produced after it was delivered (the time to
    recover when some partitions stopped while the others went on, as in a rebalance)."""
    firsts: dict[int, int] = {}  # partition -> an event produced on it after moment

    def found() -> bool:
        for n, at in list(load.sent_at.items()):
            if at > moment and n in load.partition_of:
                firsts.setdefault(load.partition_of[n], n)
        return len(firsts) == PARTITIONS

    await eventually(found, within_s)
    await eventually(lambda: set(firsts.values()) <= receiver.arrived.keys(), within_s)
    return max(receiver.arrived[n] for n in firsts.values()) - moment


async def settle(receiver: Counting, load: Load, quiet_s: float = 30, within_s: float = 600) -> None:
    """Stop the load and wait until every event Kafka acknowledged was delivered, or nothing new arrived for
    ``quiet_s`` (a backlog still draining is waited for: only what never comes is lost)."""
    await load.stop()
    deadline = time.monotonic() + within_s
    seen, last_progress = -1, time.monotonic()
    while not load.acked <= receiver.seen.keys() and time.monotonic() < deadline:
        if len(receiver.seen) != seen:
            seen, last_progress = len(receiver.seen), time.monotonic()
        elif time.monotonic() - last_progress > quiet_s:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # anything still arriving twice


def report(name: str, receiver: Counting, load: Load, recover_s: float, duration_s: float, **more: object) -> int:
    """Print the figures of one test (pytest -s shows them; bench/RESULTS.md records them); returns the lost."""
    lost = len(load.acked - receiver.seen.keys())
    extra = "".join(f", {k} {v}" for k, v in more.items())
    print(f"\n[chaos] {name}: events {len(load.acked)} in {duration_s:.0f} s ({len(load.acked) / duration_s:.0f}/s), "
          f"lost {lost}, duplicates {receiver.duplicates}, time to recover {recover_s:.1f} s{extra}")  # fmt: skip
    return lost


@pytest.fixture
async def processes() -> AsyncIterator[list[DaemonProcess]]:
    """The daemons of a test (``daemon_of``), killed at teardown; unlike ``daemons``, no session broker is started."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        await d.kill()


async def daemon_of(pool: list[DaemonProcess], s: Setup, n: int = 0) -> DaemonProcess:
    """Instance ``n`` of the router of ``s``, started and ready: the first on ``s``'s config, another on a copy with an
    admin port of its own (``Setup.instance``), each logging to ``daemon-<n>.log``."""
    own = s if n == 0 else s.instance(n)
    d = DaemonProcess(own.path, own.admin_port, s.path.parent / f"daemon-{n}.log")
    pool.append(d)
    return await d.start()
