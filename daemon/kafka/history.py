"""What happened to a webhook, read back from the results topic: an endpoint's recent attempts, a delivery's record.

The results topic is keyed by endpoint id, so one endpoint's records all sit in one partition (the one
Kafka's default partitioner gives its key): its recent attempts are read from that partition alone,
backwards from its end, a window at a time, newest first. A delivery known only by its id is looked for the
same way among the records of the endpoints the caller may see, in the partitions their keys land on only (every
partition, and any key, for the platform). Both stop after ``max_scan`` records per partition, at the start of the
topic's retention, or once the query has read for ``SEARCH_BUDGET_S`` (what was found by then is the answer).
Consumers are lent by ``daemon.kafka.readers``; a query cancelled mid-read gives its consumer back closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.partitioner import DefaultPartitioner

from daemon.core.errors import NotFound
from daemon.kafka.clients import partitions_of
from daemon.kafka.readers import Readers

_WINDOW = 2_000  # records read per step backwards
SEARCH_BUDGET_S = 20.0  # one query's reading, all partitions together: a caller waits no longer
_FETCH_WAIT_S = 10.0
_partitioner = DefaultPartitioner()


async def recent_attempts(readers: Readers, topic: str, endpoint_id: str, limit: int, max_scan: int) -> list[bytes]:
    """The newest ``limit`` results records of an endpoint (their values), newest first."""
    key = endpoint_id.encode()
    until = time.monotonic() + SEARCH_BUDGET_S
    async with readers.lent_one() as consumer:
        parts = sorted(await _partitions(consumer, topic))
        tp = TopicPartition(topic, _partition_of(key, parts))
        found: list[bytes] = []
        await _backwards(consumer, tp, max_scan, lambda r: r.key == key, found, limit, until)
        return found


async def find_delivery(
    readers: Readers,
    topic: str,
    delivery_id: str,
    max_scan: int,
    endpoint_ids: Collection[str] | None = None,
    limit: int = 1,
) -> list[bytes]:
    """The newest ``limit`` results records of a delivery (their values), newest first; none if not within reach.
    With ``endpoint_ids``, only records of those endpoints are looked at, in the partitions their keys land on (none
    given: nothing is read); without, every record of every partition."""
    needle = f'"delivery_id":"{delivery_id}"'.encode()
    keys = None if endpoint_ids is None else {e.encode() for e in endpoint_ids}
    if keys is not None and not keys:
        return []
    until = time.monotonic() + SEARCH_BUDGET_S

    def wanted(record: Any) -> bool:
        return (keys is None or record.key in keys) and needle in record.value

    async with readers.lent_one() as consumer:
        parts = sorted(await _partitions(consumer, topic))
        searched = parts if keys is None else sorted({_partition_of(key, parts) for key in keys})
        for partition in searched:
            found: list[bytes] = []
            await _backwards(consumer, TopicPartition(topic, partition), max_scan, wanted, found, limit, until)
            if found:
                return found  # a delivery's records are all in its endpoint's partition
    return []


def _partition_of(key: bytes, partitions: list[int]) -> int:
    """The partition the results writer's producer (aiokafka's default partitioner) puts ``key``'s records in."""
    return int(_partitioner(key, partitions, partitions))


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    found = await partitions_of(consumer, topic)
    if not found:
        raise NotFound(f"no topic {topic}")
    return found


async def _backwards(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    max_scan: int,
    wanted: Callable[[Any], bool],
    found: list[bytes],
    limit: int,
    until: float,
) -> None:
    """Append to ``found`` the values of ``wanted`` records of ``tp``, newest first, until ``limit`` are found
    (or ``max_scan`` records were read, or the monotonic clock passed ``until``)."""
    consumer.assign([tp])
    start = (await consumer.beginning_offsets([tp]))[tp]
    try:
        end = await _end(consumer, tp, start)
    except OffsetOutOfRangeError:  # retention moved the log's start meanwhile
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = await _end(consumer, tp, start)
    scanned = 0
    while end > start and scanned < max_scan and len(found) < limit and time.monotonic() < until:
        first = max(start, end - _WINDOW)
        try:
            window = await _read(consumer, tp, first, end)
        except OffsetOutOfRangeError:  # retention passed the window's start meanwhile: read on from the log's start
            start = (await consumer.beginning_offsets([tp]))[tp]
            continue
        scanned += len(window)
        for record in reversed(window):
            if record.value is not None and wanted(record):
                found.append(record.value)
                if len(found) >= limit:
                    return
        end = first


async def _end(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int) -> int:
    """The partition's end: the high watermark a fetch reports (some brokers' ListOffsets answer under-reports it)."""
    listed: int = (await consumer.end_offsets([tp]))[tp]
    consumer.seek(tp, start)
    deadline = time.monotonic() + _FETCH_WAIT_S
    while consumer.highwater(tp) is None and time.monotonic() < deadline:
        await consumer.getmany(tp, timeout_ms=200, max_records=1)
    high: int | None = consumer.highwater(tp)
    return max(listed, high if high is not None else 0)


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, first: int, end: int) -> list[Any]:
    """The records of ``tp`` from ``first`` up to (not including) ``end``."""
    consumer.seek(tp, first)
    records: list[Any] = []
    deadline = time.monotonic() + _FETCH_WAIT_S
    position = first
    while position < end and time.monotonic() < deadline:
        batch = await consumer.getmany(tp, timeout_ms=200)
        for record in batch.get(tp, []):
            if record.offset >= end:
                return records
            records.append(record)
        position = await consumer.position(tp)
        if not batch:
            await asyncio.sleep(0)
    return records
