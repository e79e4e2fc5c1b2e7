"""daemon.kafka.follow.Follower's first read, at its seam with Kafka: a consumer stand-in (in memory) hands it one
fetch of many records, as a topic of many endpoints does. No broker is needed."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

import daemon.kafka.follow
from daemon.kafka.follow import Follower

TOPIC = "wr.endpoints"


class Consumer:
    """A stand-in for the reader: one partition holding ``n`` records, fetched at once. As aiokafka's consumer does,
    ``getmany`` decodes the records it hands over (the stand-in counts them in ``handed``), at most ``max_records``."""

    def __init__(self, n: int) -> None:
        self.records = [SimpleNamespace(offset=i, key=b"k", value=b"v") for i in range(n)]
        self.position_ = 0
        self.handed: list[int] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        if self.position_ == len(self.records):
            await asyncio.sleep(0)
            return {}
        records = self.records[self.position_ : None if max_records is None else self.position_ + max_records]
        self.position_ += len(records)
        self.handed.append(len(records))
        return {TopicPartition(TOPIC, 0): records}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records)

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        return self.position_


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_applying_a_large_fetch_lets_the_loop_answer_between_slices_of_it(
    monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    monkeypatch.setattr(daemon.kafka.follow, "_SLICE_S", 0.0)  # a slice ends at every look at the clock
    seen: list[str] = []
    monkeypatch.setattr(daemon.kafka.follow, "reader", lambda *a, **k: Consumer(200))
    follower = Follower(TOPIC, {}, lambda r: seen.append(f"record {r.offset}"), "t")

    async def answering() -> None:
        while True:
            seen.append("answered")
            await asyncio.sleep(0)

    other = asyncio.create_task(answering())
    try:
        assert await follower.start() == 200
    finally:
        other.cancel()
        await follower.stop()
    records = [i for i, said in enumerate(seen) if said != "answered"]
    assert [seen[i] for i in records] == [f"record {n}" for n in range(200)]  # every record, in order
    answered_within = [i for i in range(records[0], records[-1]) if seen[i] == "answered"]
    assert len(answered_within) >= 200 // daemon.kafka.follow._CHECK_EVERY - 1


async def test_a_fetch_of_many_records_is_decoded_a_bounded_number_at_a_time(
    monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    # aiokafka decodes a fetch's records in getmany, without yielding: a fetch of 30,000 endpoint records held the
    # loop (and /healthz) 50-75 ms, a larger one 200-450 ms, at a million endpoints. The reader takes a bounded number
    # per call, so the loop answers between them as between slices of applying.
    n = 5 * daemon.kafka.follow._FETCH_RECORDS + 7
    consumer = Consumer(n)
    monkeypatch.setattr(daemon.kafka.follow, "reader", lambda *a, **k: consumer)
    applied: list[int] = []
    follower = Follower(TOPIC, {}, lambda r: applied.append(r.offset), "t")
    try:
        assert await follower.start() == n
    finally:
        await follower.stop()
    assert applied == list(range(n))
    assert max(consumer.handed) == daemon.kafka.follow._FETCH_RECORDS and len(consumer.handed) == 6


async def test_what_the_first_read_built_is_frozen_out_of_the_collectors_full_passes(
    monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    monkeypatch.setattr(daemon.kafka.follow, "reader", lambda *a, **k: Consumer(100))
    held: list[Any] = []
    follower = Follower(TOPIC, {}, lambda r: held.append([r.offset]), "t")
    try:
        await follower.start()
    finally:
        await follower.stop()
    assert gc.get_freeze_count() > 0
    collected = {id(o) for o in gc.get_objects()}  # what a full pass traverses: the frozen are not in it
    assert all(gc.is_tracked(x) and id(x) not in collected for x in held)
