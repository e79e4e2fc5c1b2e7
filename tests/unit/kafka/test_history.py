"""daemon.kafka.history's backward search at its seam with Kafka: the consumer is a small in-memory stand-in for one
partition (offsets 0..n-1, keyed by endpoint), so the windows, the limits and the time budget are exercised
without a broker."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from daemon.kafka import history

TP = TopicPartition("results", 0)


class Partition:
    """A stand-in for the AIOKafkaConsumer calls ``history`` makes, over one partition's records."""

    def __init__(self, n: int) -> None:
        self.records = [SimpleNamespace(offset=i, key=b"a" if i % 3 == 0 else b"b", value=f"{i}".encode())
                        for i in range(n)]  # fmt: skip
        self._position = 0
        self.read = 0
        self.start = 0  # the log's start
        self.retention: tuple[int, int] | None = None  # (once this many records are read, the log's new start)
        self.highwater_from_fetch = False  # True: no high watermark known until a fetch has answered

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {TP: self.start}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {TP: len(self.records)}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._position = offset

    def highwater(self, tp: TopicPartition) -> int | None:
        return len(self.records) if self.read or not self.highwater_from_fetch else None

    async def position(self, tp: TopicPartition) -> int:
        return self._position

    async def getmany(self, tp: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        if self.retention is not None and self.read >= self.retention[0]:
            self.start = self.retention[1]
        if self._position < self.start:
            raise OffsetOutOfRangeError({tp: self._position})
        batch = self.records[self._position : self._position + (max_records or 500)]
        self._position += len(batch)
        self.read += len(batch)
        return {tp: batch} if batch else {}


async def search(part: Partition, limit: int, max_scan: int, until: float) -> list[bytes]:
    found: list[bytes] = []
    await history._backwards(cast(Any, part), TP, max_scan, lambda r: r.key == b"a", found, limit, until)
    return found


async def test_the_newest_wanted_records_come_first_across_windows() -> None:
    part = Partition(10_000)
    assert await search(part, 3, 1_000_000, time.monotonic() + 60) == [b"9999", b"9996", b"9993"]
    assert part.read == 2_000  # one window from the end was enough
    found = await search(Partition(10_000), 5_000, 1_000_000, time.monotonic() + 60)
    assert len(found) == 3_334 and found[0] == b"9999" and found[-1] == b"0"  # every window, back to the start


async def test_a_search_stops_at_max_scan_and_at_its_time_budget() -> None:
    part = Partition(10_000)
    found = await search(part, 5_000, 4_000, time.monotonic() + 60)
    assert part.read == 4_000 and found[-1] == b"6000"  # two windows, then max_scan
    late = Partition(10_000)
    assert await search(late, 5_000, 1_000_000, time.monotonic() - 1) == [] and late.read == 0


async def test_a_search_that_retention_overtakes_reads_on_from_the_logs_new_start() -> None:
    part = Partition(10_000)
    part.retention = (2_000, 7_000)  # once the first window is read, offsets below 7,000 are deleted
    found = await search(part, 5_000, 1_000_000, time.monotonic() + 60)
    assert found[0] == b"9999" and found[-1] == b"7002" and len(found) == 1_000


async def test_a_search_whose_log_start_moved_before_it_began_reads_from_the_new_start() -> None:
    part = Partition(10_000)
    part.highwater_from_fetch = True
    part.retention = (0, 9_500)  # deleted below 9,500 between asking for the start and the first fetch
    found = await search(part, 5_000, 1_000_000, time.monotonic() + 60)
    assert found[0] == b"9999" and found[-1] == b"9501" and len(found) == 167
