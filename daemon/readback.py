"""Reading events back from Kafka by position or time, for redelivery and replay (no consumer group)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.clients import close_consumer
from daemon.errors import NotFound


def _consumer(client_options: Mapping[str, Any]) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **client_options)


async def read_one(client_options: Mapping[str, Any], topic: str, partition: int, offset: int) -> Any:
    """The record at ``topic[partition]@offset``; raises NotFound."""
    consumer = _consumer(client_options)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        if partition not in (await _partitions(consumer, topic)):
            raise NotFound(f"no partition {topic}[{partition}]")
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                if record.offset == offset:
                    return record
                if record.offset > offset:
                    raise NotFound(f"no record at {topic}[{partition}]@{offset} (deleted or compacted)")
            high = consumer.highwater(tp)
            if high is not None and offset >= high:
                raise NotFound(f"no record at {topic}[{partition}]@{offset} (past the end, {high})")
        raise NotFound(f"no record at {topic}[{partition}]@{offset} (not read within 10 s)")
    finally:
        await close_consumer(consumer)


async def read_range(
    client_options: Mapping[str, Any],
    topics: list[str],
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
) -> AsyncIterator[Any]:
    """Every record of ``topics`` in a time range (record timestamps, ms) or an offset range (inclusive),
    up to the end of each partition as it was when the read began."""
    consumer = _consumer(client_options)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(await _partitions(consumer, t))
            if partition is None or p == partition
        ]
        if not tps:
            return
        consumer.assign(tps)
        starts: dict[TopicPartition, int] = {}
        if from_offset is not None:
            starts = dict.fromkeys(tps, from_offset)
        elif since_ms is not None:
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            starts = {tp: (meta.offset if meta is not None else -1) for tp, meta in found.items()}
        for tp in tps:
            start = starts.get(tp, 0)
            if start < 0:  # nothing at or after the time
                consumer.pause(tp)
            else:
                consumer.seek(tp, start)
        open_tps = {tp for tp in tps if starts.get(tp, 0) >= 0}
        ends: dict[TopicPartition, int] = {}
        idle_deadline = time.monotonic() + 10
        while open_tps and time.monotonic() < idle_deadline:
            batch = await consumer.getmany(*open_tps, timeout_ms=300)
            for tp in list(open_tps):
                high = consumer.highwater(tp)
                if high is not None:
                    ends.setdefault(tp, high)
            finished: set[TopicPartition] = set()
            for tp, records in batch.items():
                idle_deadline = time.monotonic() + 10
                for record in records:
                    past_end = tp in ends and record.offset >= ends[tp]
                    past_range = (to_offset is not None and record.offset > to_offset) or (
                        until_ms is not None and record.timestamp > until_ms
                    )
                    if past_end or past_range:
                        finished.add(tp)
                        break
                    if since_ms is not None and record.timestamp < since_ms:
                        continue
                    yield record
            for tp in list(open_tps):
                position = await consumer.position(tp)
                end = ends.get(tp)
                done = tp in finished or (end is not None and position >= end)
                if done:
                    open_tps.discard(tp)
                    consumer.pause(tp)
    finally:
        await close_consumer(consumer)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    found = consumer.partitions_for_topic(topic)
    if found is None:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
    return set(found or ())
