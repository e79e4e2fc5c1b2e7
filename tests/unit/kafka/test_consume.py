"""daemon.kafka.consume.Source at its seam: the group consumer is an in-memory stand-in (no broker).

Its commits: a commit that fails (``commit`` fails as told), however it fails, is counted, said and made again at the
next interval: the commit loop never ends, and nothing is marked committed that was not. Its fetch loop: a stop asked
for while a fetch is under way (``getmany``) dispatches none of the records that fetch returns. The shutdown's drain
may already be over then (nothing was in flight), and its final commit made: whatever were dispatched after it would
be delivered, uncommitted, and delivered again by the next owner (seen: 54 events delivered twice by one instance of
a rolling restart)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition

from daemon.core.offsets import PartitionOffsets
from daemon.core.validate import parse_config
from daemon.kafka.consume import Source
from daemon.observe.metrics import Metrics
from tests.unit.core.test_config import doc


class Consumer:
    """Stand-in for AIOKafkaConsumer's ``commit``: raises each of ``failures`` in turn, then takes the commits."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.committed: list[dict[TopicPartition, Any]] = []

    async def commit(self, marks: dict[TopicPartition, Any]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.committed.append(marks)


async def test_a_commit_failing_outside_kafkas_errors_is_counted_said_and_made_again_the_commit_loop_going_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka on uvloop was seen (a group coordinator killed, three brokers) to raise RuntimeError from a commit whose
    connection closed under it: it ended the commit loop, and nothing was committed again until a restart."""
    metrics = Metrics()
    source = Source(parse_config(doc(), {}).kafka, {}, metrics, lambda record, part: None, 1.0)
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
    real, consumer = source._consumer, Consumer([closed])
    source._consumer = consumer
    tp = TopicPartition("leads", 0)
    part = source.offsets.assign(tp)
    part.add(0, 0)  # read and settled at once: committable
    loop = asyncio.create_task(source.commit_every(0.01))
    try:
        while not consumer.committed:
            await asyncio.sleep(0.01)
            assert not loop.done(), loop
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await real.stop()  # never started: closes nothing but says so
    assert [{t: mark[0] for t, mark in marks.items()} for marks in consumer.committed] == [{tp: 1}]
    assert metrics.commits.labels("error")._value.get() == 1 and source.problem() is None
    (failed,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert failed.getMessage().startswith("offset commit failed (RuntimeError: unable to perform operation")
    assert failed.exc_info is not None  # not a Kafka error: shown with its traceback


class StoppedWhileFetching:
    """Stand-in for AIOKafkaConsumer's fetch: answers the first with three records of ``tp``, the stop having been
    asked for while it waited."""

    def __init__(self, source: Source, tp: TopicPartition) -> None:
        self._source, self._tp = source, tp

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(0)
        self._source.stopping = True  # SIGTERM, handled while the fetch waited for records
        return {self._tp: [Record(0), Record(1), Record(2)]}

    def assignment(self) -> set[TopicPartition]:
        return {self._tp}

    def highwater(self, tp: TopicPartition) -> int:
        return 3


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


async def test_a_stop_asked_for_during_a_fetch_dispatches_none_of_its_records() -> None:
    dispatched: list[int] = []

    def dispatch(record: Record, part: PartitionOffsets) -> None:
        part.add(record.offset, 1)
        dispatched.append(record.offset)

    source = Source(parse_config(doc(), {}).kafka, {}, Metrics(), dispatch, 1.0)
    tp = TopicPartition("leads", 0)
    real = source._consumer
    source._consumer = StoppedWhileFetching(source, tp)
    source.offsets.assign(tp)
    try:
        await asyncio.wait_for(source.run(), 5)
    finally:
        await real.stop()  # never started: closes nothing but says so
    assert dispatched == []
    assert source.offsets.in_flight == 0
    assert source.uncommitted() == []  # nothing read: the next owner reads them from the last commit
