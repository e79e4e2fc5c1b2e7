"""Retention for real, on a Kafka node of this module's own (its retention checked every 300 ms): an events topic
whose first five records, written an hour ago, Kafka has deleted by ``retention.ms``. A replay over them answers what
is left and says which part is gone; a group whose committed offset was among them starts where
``kafka.auto_offset_reset`` says, with one log line and ``offset_resets_total``, never a silent replay.

Kafka only: Tansu deletes nothing by retention, and never answers OFFSET_OUT_OF_RANGE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.helpers import (
    ADMIN_TOKEN,
    SECRET,
    DaemonProcess,
    Receiver,
    committed,
    env_with,
    eventually,
    produce,
    unique,
)
from tests.integration.conftest import KafkaBroker, Setup, kafka_of_its_own
from tests.integration.test_topics import create_with

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
async def kafka(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KafkaBroker]:
    overrides = {"log.retention.check.interval.ms": "300", "log.initial.task.delay.ms": "0"}
    work = tmp_path_factory.mktemp("kafka-retention")
    async with kafka_of_its_own(work, "needs Kafka's retention", overrides=overrides) as b:
        yield b


def event(n: int) -> bytes:
    return json.dumps({"event": "lead.created", "n": n}).encode()


async def aged_topic(bootstrap: str) -> tuple[str, int]:
    """A topic whose offsets 0-4 (written an hour ago) retention has deleted, and 5-9 (written now, at the time
    returned) are kept."""
    topic = unique("events")
    await create_with(bootstrap, {topic: {"retention.ms": str(10 * 60_000), "segment.ms": "100"}})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    now = int(time.time() * 1000)
    await producer.start()
    try:
        for n in range(5):
            await producer.send_and_wait(topic, event(n), timestamp_ms=now - HOUR_MS)
        await asyncio.sleep(0.2)  # older than segment.ms: the next record starts a new segment
        for n in range(5, 10):
            await producer.send_and_wait(topic, event(n), timestamp_ms=now)
    finally:
        await producer.stop()
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:

        async def deleted() -> bool:
            start: int = (await consumer.beginning_offsets([tp]))[tp]
            return start == 5

        await eventually(deleted, 30)
    finally:
        await consumer.stop()
    return topic, now


class Router:
    """A daemon of this module's node reading ``topic`` in ``group``, its receiver, its log."""

    def __init__(self, kafka: KafkaBroker, tmp_path: Path, topic: str, group: str) -> None:
        self.setup = Setup(kafka, topic, unique("results"), group, tmp_path / "router.toml")
        self.log = tmp_path / "daemon.log"
        self.receiver = Receiver()
        self.daemon: DaemonProcess | None = None
        self.written_at = 0  # the time of the records kept (unix ms)

    async def start(self, reset: str) -> DaemonProcess:
        await self.setup.broker.create_topics([self.setup.results])
        await self.receiver.start()
        doc = self.setup.config([{"id": "crm", "url": self.receiver.url, "secret": SECRET}],
                                [{"endpoint": "crm", "events": ["*"]}])  # fmt: skip
        doc["kafka"]["auto_offset_reset"] = reset
        doc["admin"]["token_env"] = "WR_ADMIN_TOKEN"
        env = env_with(WR_ADMIN_TOKEN=ADMIN_TOKEN)
        self.daemon = DaemonProcess(self.setup.write(doc), self.setup.admin_port, self.log, env)
        return await self.daemon.start()

    async def stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.kill()
        await self.receiver.stop()

    def numbers(self) -> list[int]:
        return sorted(json.loads(q.body)["n"] for q in self.receiver.requests)


@pytest.fixture
async def router(kafka: KafkaBroker, tmp_path: Path) -> AsyncIterator[Router]:
    topic, written_at = await aged_topic(kafka.bootstrap)
    r = Router(kafka, tmp_path, topic, unique("group"))
    r.written_at = written_at
    yield r
    await r.stop()


async def test_a_replay_over_records_retention_deleted_replays_what_is_left_and_says_which_part_is_gone(
    router: Router,
) -> None:
    d = await router.start("earliest")  # a new group: it reads what is left, 5-9, and says so
    await router.receiver.wait_for(5)
    assert "has no offset for it: reading from 5 (the log starts at 5, ends at 10)" in d.log()
    topic = router.setup.topic
    gone = [{"topic": topic, "partition": 0, "log_start": 5}]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{d.admin_port}", headers=headers) as http:
        offsets = {"topic": topic, "partition": 0, "from_offset": 0, "to_offset": 9}
        async with http.post("/endpoints/crm/replay", json=offsets) as resp:
            assert (resp.status, await resp.json()) == (200, {"scanned": 5, "matched": 5, "complete": True,
                                                              "deleted": gone})  # fmt: skip
        two_hours_ago = int(time.time() * 1000) - 2 * HOUR_MS
        async with http.post("/endpoints/crm/replay", json={"from_time": two_hours_ago}) as resp:
            assert (resp.status, await resp.json()) == (200, {"scanned": 5, "matched": 5, "complete": True,
                                                              "deleted": gone})  # fmt: skip
        kept = {"topic": topic, "partition": 0, "from_offset": 7, "to_offset": 9}  # inside the log: nothing gone
        async with http.post("/endpoints/crm/replay", json=kept) as resp:
            assert (resp.status, await resp.json()) == (200, {"scanned": 3, "matched": 3, "complete": True})
        # From the time of the first record kept: what was deleted before it was older. (From any time between,
        # the answer says the range may have begun among the deleted records: only their offsets are known.)
        async with http.post("/endpoints/crm/replay", json={"from_time": router.written_at}) as resp:
            assert (resp.status, await resp.json()) == (200, {"scanned": 5, "matched": 5, "complete": True})
    await router.receiver.wait_for(5 + 5 + 5 + 3 + 5)
    assert router.numbers() == sorted([*range(5, 10)] * 4 + [7, 8, 9])


@pytest.mark.parametrize(("reset", "delivered", "line"), [
    ("earliest", [5, 6, 7, 8, 9, 10], "3 events never read; reading from 5, as kafka.auto_offset_reset = 'earliest'"),
    ("latest", [10], "3 events never read; 5 more skipped; reading from 10, as kafka.auto_offset_reset = 'latest'"),
])  # fmt: skip
async def test_a_group_whose_committed_offset_retention_deleted_starts_where_auto_offset_reset_says_and_says_so(
    router: Router, reset: str, delivered: list[int], line: str
) -> None:
    setup = router.setup
    tp = TopicPartition(setup.topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=setup.broker.bootstrap, group_id=setup.group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: 2})  # the group was at offset 2 when it went away; retention took 0-4 since
    finally:
        await consumer.stop()

    d = await router.start(reset)
    await eventually(lambda: line in d.log(), 30)
    await produce(setup.broker.bootstrap, setup.topic, [event(10)])
    await router.receiver.wait_for(len(delivered))
    await eventually(lambda: _committed_is(setup, 11), 30)
    assert router.numbers() == delivered
    text = d.log()
    assert text.count("was deleted by retention") == 1
    assert f"{setup.topic}[0]: the group's offset 2 was deleted by retention (the log starts at 5)" in text
    assert await d.metric('webhook_router_offset_resets_total{consumer="events",reason="deleted"}') == 1
    assert await d.metric('webhook_router_offset_resets_total{consumer="events",reason="no_commit"}') == 0


async def _committed_is(setup: Setup, offset: int) -> bool:
    return (await committed(setup.broker.bootstrap, setup.group, setup.topic))[0] == offset
