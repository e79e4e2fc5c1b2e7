"""Following a compacted state topic: read it to its end before anything depends on it, then keep reading.

The way Kafka Connect keeps its config topic and Schema Registry its ``_schemas``: every instance holds
the whole state in memory, built by applying the topic's records in order. ``Follower.start`` returns once
everything on the topic when it started has been applied, however long that takes (a large topic, a
cluster that stops answering half way: cancel it to give up); ``wait_applied`` lets a writer wait until
its own record has been applied here (read-your-writes). The endpoint health and the endpoints managed at
run time are both kept this way. ``lag`` says how far behind the topic's end the reader is (``Behind``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError

from daemon.core.heap import freeze_built, give_back
from daemon.kafka.clients import close_consumer, reader, refresh_metadata
from daemon.kafka.contact import Throttle, held_note

log = logging.getLogger(__name__)

Apply = Callable[[Any], None]  # one consumer record, in the topic's order
# Applying a fetch yields to the event loop once ``_SLICE_S`` has passed (looked at every ``_CHECK_EVERY`` records): a
# fetch of a few thousand endpoints takes a few hundred milliseconds to apply, which /healthz must not wait behind.
_SLICE_S = 0.005
_CHECK_EVERY = 32
# aiokafka decodes the records it hands over in ``getmany``, without yielding: a fetch of 30,000 endpoint records held
# the loop 50-75 ms (about 2.5 µs a record), larger ones up to 450 ms. Taken this many at a time (about 5 ms of
# decoding), the rest of a fetch stays buffered, undecoded, for the next call.
_FETCH_RECORDS = 2000
_MARKS_KEPT = 1000  # ends reported and not reached yet, per partition (past it the oldest go: a lag only overstated)


class Behind:
    """How far a reader is behind a topic: the records between what it has applied and the end last reported, and
    the seconds since it had last applied everything the topic held at a moment it knows of. Pure.

    ``observe`` each partition after each fetch: the end (high watermark) a fetch reported, when (monotonic), and the
    position applied up to. A reader caught up as of ``t`` had applied, by now, every record written before ``t``;
    one that does not hear from the topic (fetches failing, paused, the task gone) stays caught up as of the last
    end it reached, so its seconds grow even though it knows of no record it lacks.
    """

    def __init__(self) -> None:
        self._marks: dict[int, deque[tuple[int, float]]] = {}  # partition -> (an end reported, when), not reached
        self._caught_up: dict[int, float] = {}  # partition -> caught up as of (monotonic)
        self._records: dict[int, int] = {}  # partition -> the end last reported minus the position

    def observe(self, partition: int, end: int, seen: float, position: int) -> None:
        marks = self._marks.setdefault(partition, deque())
        if marks and marks[-1][0] == end:
            marks[-1] = (end, max(marks[-1][1], seen))  # the same end, reported again later
        elif not marks or end > marks[-1][0]:
            marks.append((end, seen))
            if len(marks) > _MARKS_KEPT:
                marks.popleft()
        while marks and marks[0][0] <= position:
            reached = marks.popleft()[1]
            self._caught_up[partition] = max(self._caught_up.get(partition, reached), reached)
        self._records[partition] = max(0, end - position)

    @property
    def records(self) -> int:
        return sum(self._records.values())

    def seconds(self, now: float) -> float | None:
        """Since the reader was last caught up with every partition it observed (None: it never was)."""
        if not self._caught_up or len(self._caught_up) < len(self._marks):
            return None
        return max(0.0, now - min(self._caught_up.values()))


class Follower:
    def __init__(self, topic: str, client_options: Mapping[str, Any], apply: Apply, name: str) -> None:
        self._topic = topic
        self._apply = apply
        self._name = name
        self.consumer = reader(client_options, auto_offset_reset="earliest", fetch_max_wait_ms=100)
        self._applied: dict[int, int] = {}  # partition -> next offset to apply
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._errors_logged = Throttle()
        self._tps: list[TopicPartition] = []
        self._behind = Behind()
        self.records = 0

    async def start(self) -> int:
        """Apply every record on the topic up to its end as a fetch reports it; returns how many were applied."""
        consumer = self.consumer
        await consumer.start()
        partitions = consumer.partitions_for_topic(self._topic)
        while not partitions:  # the topic exists (checked or created just before): wait for its metadata
            if not await refresh_metadata(consumer):
                await asyncio.sleep(0.5)
            partitions = consumer.partitions_for_topic(self._topic)
        tps = self._tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        # From the start, asked before the partitions are assigned: aiokafka retries this quietly while a partition's
        # leader is not ready (a topic just created: Kafka's brokers learn of it after its controller), where its
        # reset of an assigned partition without a position logs each try as an error.
        starts = await self._beginnings(tps)
        consumer.assign(tps)
        for tp, start in starts.items():
            consumer.seek(tp, start)
        # The end is the high watermark a fetch reports (not end_offsets, which some brokers under-report).
        while True:
            fetched = await self._step(200)
            freeze_built()  # a first read of a million endpoints: its full collections would stop the loop for seconds
            if not fetched and await self._at_end(tps):
                break
        give_back()  # what decoding and applying every record freed on the way, back to the system
        self._task = asyncio.create_task(self._follow(), name=f"follow-{self._name}")
        return self.records

    async def _beginnings(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Each partition's first offset, asked again (a failure logged, throttled) until the cluster answers."""
        while True:
            try:
                starts: dict[TopicPartition, int] = await self.consumer.beginning_offsets(tps)
                return starts
            except KafkaError as exc:
                if not (exc.retriable or isinstance(exc, KafkaTimeoutError)):  # a timeout: the cluster is away
                    raise
                held = self._errors_logged.ready()
                if held is not None:
                    log.warning("reading %s failed (%s: %s); trying again%s", self._topic, type(exc).__name__, exc,
                                held_note(held))  # fmt: skip
                await asyncio.sleep(1.0)

    async def _at_end(self, tps: list[TopicPartition]) -> bool:
        for tp in tps:
            high = self.consumer.highwater(tp)
            if high is None or await self.consumer.position(tp) < high:
                return False
        return True

    async def _follow(self) -> None:
        while True:
            await self._step(1000)

    async def _step(self, timeout_ms: int) -> int:
        """One fetch, applied; a failed one is logged (throttled) and waited out, never the end of the reader."""
        try:
            batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=_FETCH_RECORDS)
        except KafkaError as exc:
            held = self._errors_logged.ready()
            if held is not None:
                log.warning("reading %s failed (%s: %s); trying again%s", self._topic, type(exc).__name__, exc,
                            held_note(held))  # fmt: skip
            await asyncio.sleep(1.0)
            return 0
        count = 0
        answered = time.monotonic()
        for tp, records in batch.items():
            for record in records:
                try:
                    self._apply(record)
                except Exception:  # one bad record never stops the state: logged, skipped
                    log.exception("record %s[%d]@%d could not be applied", tp.topic, tp.partition, record.offset)
                count += 1
                if not count % _CHECK_EVERY and time.monotonic() - answered >= _SLICE_S:
                    self._applied[tp.partition] = record.offset + 1
                    await asyncio.sleep(0)  # the loop answers (/healthz, other tasks) between slices of a fetch
                    answered = time.monotonic()
            if records:
                self._applied[tp.partition] = records[-1].offset + 1
        self.records += count
        if count:
            async with self._progress:
                self._progress.notify_all()
        await self._measure()
        return count

    async def _measure(self) -> None:
        """Tell ``Behind`` where each partition's end was when a fetch last reported it, and how far is applied."""
        consumer, mono, wall = self.consumer, time.monotonic(), time.time()
        for tp in self._tps:
            end, polled = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
            if end is None or polled is None:
                continue
            try:
                position = await consumer.position(tp)
            except KafkaError:  # not known now: no measure, so the lag only grows
                continue
            self._behind.observe(tp.partition, end, mono - max(0.0, wall - polled / 1000), position)

    def lag(self) -> tuple[int, float | None]:
        """(records, seconds) behind the topic's end: see ``Behind``."""
        return self._behind.records, self._behind.seconds(time.monotonic())

    async def wait_applied(self, partition: int, offset: int, within_s: float = 10.0) -> None:
        """Wait until the record at ``offset`` of ``partition`` has been applied here. TimeoutError otherwise."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self._applied.get(partition, 0) > offset), within_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await close_consumer(self.consumer)
