"""Reading events back from Kafka by position or time, for redelivery and replay (no consumer group).

A position that does not exist (a topic or partition the cluster does not have) is ``NotFound``, asked for
before anything is read. The consumers (lent by ``daemon.kafka.readers``) never reset an offset outside the log
(``auto_offset_reset="none"``): with a reset to the earliest record, a replay from past the end would read the whole
partition.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from daemon.core.errors import NotFound
from daemon.kafka.clients import partitions_of
from daemon.kafka.readers import Readers


class Deleted(msgspec.Struct, frozen=True, kw_only=True):
    """Part of a range gone from one partition: its records before ``log_start`` were deleted (by retention, or
    DeleteRecords) before the read began. An offset range that began before ``log_start`` lost those offsets; a time
    range whose first record left is the partition's first may have begun among the deleted ones."""

    topic: str
    partition: int
    log_start: int


class TooMany(Exception):
    """A range that holds more records than the read may yield (``max_records``), found before any is yielded."""


async def read_one(readers: Readers, topic: str, partition: int, offset: int) -> Any:
    """The record at ``topic[partition]@offset``; raises NotFound."""
    async with readers.lent_one() as consumer:
        tp = TopicPartition(topic, partition)
        if partition not in (await partitions_of(consumer, topic)):
            raise NotFound(f"no partition {topic}[{partition}]")
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                batch = await consumer.getmany(tp, timeout_ms=500)
            except OffsetOutOfRangeError:  # Kafka's answer to a fetch outside the log (Tansu's is an empty one)
                raise NotFound(await _outside(consumer, tp, offset)) from None
            for record in batch.get(tp, []):
                if record.offset == offset:
                    return record
                if record.offset > offset:
                    raise NotFound(f"no record at {topic}[{partition}]@{offset} (deleted or compacted)")
            high = consumer.highwater(tp)
            if high is not None and offset >= high:
                raise NotFound(f"no record at {topic}[{partition}]@{offset} (past the end, {high})")
        raise NotFound(f"no record at {topic}[{partition}]@{offset} (not read within 10 s)")


async def _outside(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> str:
    """Why there is no record at ``offset``, which the broker says is outside the log: past its end, or before its
    start (deleted by retention)."""
    where = f"no record at {tp.topic}[{tp.partition}]@{offset}"
    try:
        high = (await consumer.end_offsets([tp]))[tp]
        low = (await consumer.beginning_offsets([tp]))[tp]
    except KafkaError:
        return f"{where} (outside the log)"
    if offset >= high:
        return f"{where} (past the end, {high})"
    if offset < low:
        return f"{where} (before the start, {low}: deleted by retention)"
    return f"{where} (outside the log, {low} to {high})"


async def read_range(
    readers: Readers,
    topics: list[str],
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
    max_offsets: int | None = None,
    deleted: list[Deleted] | None = None,
) -> AsyncGenerator[Any, None]:
    """Every record of ``topics`` in a time range (record timestamps, ms, >= 0) or an offset range (inclusive),
    up to the end of each partition as it was when the read began. Topics the cluster does not have are left
    out; NotFound when that leaves none, or when none of them has ``partition``. An offset range that holds more
    than ``max_offsets`` offsets (to ``to_offset``, or to the partition's end) is ``TooMany``, raised once the first
    fetch has told the partition's end and before any of its records is yielded. The partitions whose part of the
    range is gone (``Deleted``) are appended to ``deleted`` before the first record is yielded: the read yields what
    is left. Close the iterator when done with it early (``contextlib.aclosing``): its consumer is given back then."""
    async with readers.lent_one() as consumer:
        tps: list[TopicPartition] = []
        for t in topics:
            tps += [TopicPartition(t, p) for p in sorted(await partitions_of(consumer, t)) if partition in (None, p)]
        if not tps:
            raise NotFound(f"no partition {partition} of {', '.join(topics)}" if partition is not None else
                           f"no topic {', '.join(topics)}")  # fmt: skip
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)  # an offset range starts inside the log
        starts: dict[TopicPartition, int] = {}
        gone: list[TopicPartition] = []
        if from_offset is not None:
            starts = {tp: max(from_offset, begins[tp]) for tp in tps}
            gone = [tp for tp in tps if from_offset < begins[tp]]
        elif since_ms is not None:
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            starts = {tp: (meta.offset if meta is not None else -1) for tp, meta in found.items()}
            # The first record at or after the time is the first left, and it is later than the time: the range
            # may have begun among the records deleted before it.
            gone = [tp for tp, meta in found.items() if meta is not None and 0 < begins[tp] == meta.offset
                    and meta.timestamp > since_ms]  # fmt: skip
        if deleted is not None:
            deleted += [Deleted(topic=tp.topic, partition=tp.partition, log_start=begins[tp]) for tp in sorted(gone)]
        open_tps: set[TopicPartition] = set()
        for tp in tps:
            start = starts.get(tp, begins[tp])
            if start >= 0 and (to_offset is None or start <= to_offset):  # -1: nothing at or after the time
                consumer.seek(tp, start)
                open_tps.add(tp)
            else:
                consumer.pause(tp)
        ends: dict[TopicPartition, int] = {}  # each partition's end when the read began (its first high watermark)
        idle_deadline = time.monotonic() + 10
        while open_tps and time.monotonic() < idle_deadline:
            finished: set[TopicPartition] = set()
            try:
                batch = await consumer.getmany(*open_tps, timeout_ms=300)
            except OffsetOutOfRangeError as exc:  # started past the end: nothing there
                batch = {}
                finished.update(exc.args[0] if exc.args and isinstance(exc.args[0], dict) else open_tps)
            for tp in list(open_tps):
                high = consumer.highwater(tp)
                if high is not None and tp not in ends:
                    ends[tp] = high
                    last = high if to_offset is None else min(high, to_offset + 1)
                    if from_offset is not None and max_offsets is not None and last - starts[tp] > max_offsets:
                        raise TooMany(f"{tp.topic}[{tp.partition}] holds more than {max_offsets} offsets from there")
            for tp, records in batch.items():
                idle_deadline = time.monotonic() + 10
                for record in records:
                    past_range = (to_offset is not None and record.offset > to_offset) or (
                        until_ms is not None and record.timestamp > until_ms
                    )
                    if (tp in ends and record.offset >= ends[tp]) or past_range:
                        finished.add(tp)
                        break
                    if since_ms is not None and record.timestamp < since_ms:
                        continue
                    yield record
            for tp in list(open_tps):
                end = ends.get(tp)
                if tp in finished or (end is not None and await consumer.position(tp) >= end):
                    open_tps.discard(tp)
                    consumer.pause(tp)
