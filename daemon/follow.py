"""Following a compacted state topic: read it to its end before anything depends on it, then keep reading.

The way Kafka Connect keeps its config topic and Schema Registry its ``_schemas``: every instance holds
the whole state in memory, built by applying the topic's records in order. ``Follower.start`` returns once
everything on the topic when it started has been applied (however long that takes); ``wait_applied``
lets a writer wait until its own record has been applied here (read-your-writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

Apply = Callable[[Any], None]  # one consumer record, in the topic's order


class Follower:
    def __init__(self, topic: str, client_options: Mapping[str, Any], apply: Apply, name: str) -> None:
        self._topic = topic
        self._apply = apply
        self._name = name
        self._consumer = AIOKafkaConsumer(
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100, **client_options
        )
        self._applied: dict[int, int] = {}  # partition -> next offset to apply
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.records = 0

    async def start(self) -> int:
        """Apply every record on the topic up to its end as it is now; returns how many were applied."""
        consumer = self._consumer
        await consumer.start()
        partitions = consumer.partitions_for_topic(self._topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(self._topic) or set()
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            self._applied[tp.partition] = await consumer.position(tp)
        # The end as seen now: every record below it is applied before start returns. A fetch's high watermark
        # covers brokers whose end_offsets under-report.
        while True:
            await self._step(200)
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp] = max(ends.get(tp, 0), high)
            if all(self._applied.get(tp.partition, 0) >= ends.get(tp, 0) for tp in tps):
                break
        self._task = asyncio.create_task(self._follow(), name=f"follow-{self._name}")
        return self.records

    async def _follow(self) -> None:
        while True:
            try:
                await self._step(1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker error: reported, waited out, read again
                log.warning("reading %s failed (%s: %s); trying again", self._topic, type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def _step(self, timeout_ms: int) -> None:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        if not batch:
            return
        for tp, records in batch.items():
            for record in records:
                try:
                    self._apply(record)
                except Exception:  # one bad record never stops the state: logged, skipped
                    log.exception("record %s[%d]@%d could not be applied", tp.topic, tp.partition, record.offset)
                self.records += 1
            self._applied[tp.partition] = records[-1].offset + 1
        async with self._progress:
            self._progress.notify_all()

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
        await self._consumer.stop()
