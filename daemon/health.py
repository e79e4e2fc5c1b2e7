"""Endpoint health: consecutive failures, automatic pause, operator pause and resume, kept on a topic.

Every change is written to a compacted topic keyed by endpoint id. At start-up the whole topic is read
back, so a restart keeps its pauses; afterwards the topic is tailed, so every instance of the router
sees a pause made by any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from daemon.clients import close_consumer
from daemon.contact import Throttle, held_note
from daemon.metrics import Metrics
from daemon.model import (
    ENDPOINT_PAUSED,
    ENDPOINT_RESUMED,
    HealthState,
    Outcome,
    decode_health,
    encode_health,
    encode_outcome,
    utc_now_iso,
)
from daemon.results import ResultsWriter

log = logging.getLogger(__name__)

# Bounded reasons for the metrics label; the full text goes to the results topic and /endpoints.
REASON_FAILURES = "failures"
REASON_GONE = "gone"
REASON_OPERATOR = "operator"
REASON_CONFIG = "config"


class Health:
    """In-memory health of every endpoint, persisted through the writer to ``topic``."""

    def __init__(self, writer: ResultsWriter, topic: str, metrics: Metrics) -> None:
        self._writer = writer
        self._topic = topic
        self._metrics = metrics
        self.states: dict[str, HealthState] = {}
        self._failures: dict[str, int] = {}

    def is_paused(self, endpoint_id: str) -> bool:
        state = self.states.get(endpoint_id)
        return state is not None and state.paused

    def failures(self, endpoint_id: str) -> int:
        return self._failures.get(endpoint_id, 0)

    def observe(self, endpoint_id: str, ok: bool, gone: int | None, threshold: int | None) -> None:
        """Count one live attempt's result; pause on an answer its contract pauses on (``gone``: that HTTP
        status, usually 410) or after ``threshold`` consecutive failures."""
        if ok:
            if self._failures.get(endpoint_id):
                self._failures[endpoint_id] = 0
            return
        count = self._failures[endpoint_id] = self._failures.get(endpoint_id, 0) + 1
        if self.is_paused(endpoint_id):
            return
        if gone is not None:
            self.pause(endpoint_id, REASON_GONE, "the endpoint answered 410 Gone" if gone == 410 else f"HTTP {gone}")
        elif threshold is not None and count >= threshold:
            self.pause(endpoint_id, REASON_FAILURES, f"{count} consecutive failed deliveries")

    def pause(self, endpoint_id: str, kind: str, detail: str) -> bool:
        """Pause an endpoint. False if it was paused already."""
        if self.is_paused(endpoint_id):
            return False
        reason = f"{kind}: {detail}"
        failures = self._failures.get(endpoint_id, 0)
        self._set(
            HealthState(
                endpoint_id=endpoint_id, paused=True, reason=reason, since=utc_now_iso(), consecutive_failures=failures
            )
        )
        log.warning("endpoint %s paused (%s)", endpoint_id, reason)
        return True

    def resume(self, endpoint_id: str) -> bool:
        """Resume an endpoint. False if it was not paused."""
        if not self.is_paused(endpoint_id):
            return False
        self._failures[endpoint_id] = 0
        self._set(HealthState(endpoint_id=endpoint_id, paused=False, since=utc_now_iso()))
        log.info("endpoint %s resumed", endpoint_id)
        return True

    def _set(self, state: HealthState) -> None:
        """Keep a change, persist it on the health topic, and announce it on the results topic (owed to no event)."""
        self.states[state.endpoint_id] = state
        self._update_gauge()
        key = state.endpoint_id.encode()
        self._writer.submit(key, encode_health(state), None, topic=self._topic)
        outcome = Outcome(
            delivery_id=None,
            endpoint_id=state.endpoint_id,
            event_type=None,
            attempt=0,
            status=ENDPOINT_PAUSED if state.paused else ENDPOINT_RESUMED,
            error=state.reason,
            source_topic=None,
            source_partition=None,
            source_offset=None,
            timestamp=utc_now_iso(),
            trigger="health",
        )
        self._writer.submit(key, encode_outcome(outcome), None)

    def follow_config(self, endpoint_id: str, paused: bool, was_paused: bool) -> None:
        """``paused = true`` in the config pauses the endpoint; taking it out again resumes it."""
        if paused:
            self.pause(endpoint_id, REASON_CONFIG, "paused = true in the config")
        elif was_paused:
            self.resume(endpoint_id)

    def apply(self, state: HealthState) -> None:
        """A state read back from the topic (at start-up, or written by another instance)."""
        current = self.states.get(state.endpoint_id)
        if current is not None and current.paused == state.paused and current.reason == state.reason:
            return
        self.states[state.endpoint_id] = state
        if not state.paused:
            self._failures[state.endpoint_id] = 0
        self._update_gauge()

    def _update_gauge(self) -> None:
        counts: dict[str, int] = dict.fromkeys((REASON_FAILURES, REASON_GONE, REASON_OPERATOR, REASON_CONFIG), 0)
        for state in self.states.values():
            if state.paused and state.reason:
                kind = state.reason.split(":", 1)[0]
                counts[kind] = counts.get(kind, 0) + 1
        for kind, count in counts.items():
            self._metrics.endpoints_paused.labels(kind).set(count)


class HealthReader:
    """Reads the health topic from its start to its end, then follows it."""

    def __init__(self, topic: str, client_options: Mapping[str, Any], health: Health) -> None:
        self._topic = topic
        self._health = health
        self._consumer = AIOKafkaConsumer(
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=200, **client_options
        )
        self._task: asyncio.Task[None] | None = None
        self._errors_logged = Throttle()

    async def start(self) -> int:
        """Load every state on the topic, up to its end as a fetch reports it; returns how many were read.

        However long that takes (a large topic, a cluster that stops answering half way): an endpoint paused on the
        topic must not be delivered to because its pause was not read yet. Cancel it to give up.
        """
        consumer = self._consumer
        await consumer.start()
        partitions = consumer.partitions_for_topic(self._topic)
        while not partitions:  # the topic exists (checked or created just before): wait for its metadata
            if not await consumer._client.force_metadata_update():
                await asyncio.sleep(0.5)
            partitions = consumer.partitions_for_topic(self._topic)
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        read = 0
        # The end is the high watermark a fetch reports (not end_offsets, which some brokers under-report).
        while True:
            batch = await self._fetch(200)
            read += self._apply(batch)
            if not batch and await self._at_end(tps):
                break
        self._task = asyncio.create_task(self._follow(), name="health-reader")
        return read

    async def _at_end(self, tps: list[TopicPartition]) -> bool:
        for tp in tps:
            high = self._consumer.highwater(tp)
            if high is None or await self._consumer.position(tp) < high:
                return False
        return True

    async def _follow(self) -> None:
        while True:
            self._apply(await self._fetch(1000))

    async def _fetch(self, timeout_ms: int) -> Mapping[Any, list[Any]]:
        """One fetch; a failed one is logged (throttled) and waited out, never the end of the reader."""
        try:
            batch: Mapping[Any, list[Any]] = await self._consumer.getmany(timeout_ms=timeout_ms)
            return batch
        except KafkaError as exc:
            held = self._errors_logged.ready()
            if held is not None:
                log.warning("reading %s failed (%s: %s); trying again%s", self._topic, type(exc).__name__, exc,
                            held_note(held))  # fmt: skip
            await asyncio.sleep(1.0)
            return {}

    def _apply(self, batch: Mapping[Any, list[Any]]) -> int:
        count = 0
        for records in batch.values():
            for record in records:
                if record.value is None:  # a tombstone (an operator clearing a key): nothing to restore
                    continue
                try:
                    state = decode_health(record.value)
                except msgspec.DecodeError:
                    log.warning("unreadable record on %s at offset %d: skipped", self._topic, record.offset)
                    continue
                self._health.apply(state)
                count += 1
        return count

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await close_consumer(self._consumer)
