"""Following a compacted state topic: read it to its end before anything depends on it, then keep reading.

The way Kafka Connect keeps its config topic and Schema Registry its ``_schemas``: every instance holds
the whole state in memory, built by applying the topic's records in order. ``Follower.start`` returns once
everything on the topic when it started has been applied, however long that takes (a large topic, a
cluster that stops answering half way: cancel it to give up); ``wait_applied`` lets a writer wait until
its own record has been applied here (read-your-writes). The endpoint health and the endpoints managed at
run time are both kept this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from daemon.kafka.clients import close_consumer, reader, refresh_metadata
from daemon.kafka.contact import Throttle, held_note

log = logging.getLogger(__name__)

Apply = Callable[[Any], None]  # one consumer record, in the topic's order


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
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        # The end is the high watermark a fetch reports (not end_offsets, which some brokers under-report).
        while True:
            fetched = await self._step(200)
            if not fetched and await self._at_end(tps):
                break
        self._task = asyncio.create_task(self._follow(), name=f"follow-{self._name}")
        return self.records

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
            batch = await self.consumer.getmany(timeout_ms=timeout_ms)
        except KafkaError as exc:
            held = self._errors_logged.ready()
            if held is not None:
                log.warning("reading %s failed (%s: %s); trying again%s", self._topic, type(exc).__name__, exc,
                            held_note(held))  # fmt: skip
            await asyncio.sleep(1.0)
            return 0
        count = 0
        for tp, records in batch.items():
            for record in records:
                try:
                    self._apply(record)
                except Exception:  # one bad record never stops the state: logged, skipped
                    log.exception("record %s[%d]@%d could not be applied", tp.topic, tp.partition, record.offset)
                count += 1
            if records:
                self._applied[tp.partition] = records[-1].offset + 1
        self.records += count
        if count:
            async with self._progress:
                self._progress.notify_all()
        return count

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
