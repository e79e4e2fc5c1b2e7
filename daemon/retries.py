"""Durable retries: what happens after an attempt, and how retries come back from their delay tiers.

After every attempt ``Retries.settle`` records the outcome and, for a live event, either schedules the
next attempt on a delay-tier topic or writes the delivery to the dead-letter topic with its history.
The job is acknowledged (its source offset may be committed) only once every record it led to is
acknowledged by Kafka. Tier records come back through ``take``: a tier partition is held (seek back,
pause) until its head record's tier is due; a record due later than its tier is moved to a shorter
tier; a due record goes to its endpoint's lane.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from daemon.config import RetryConfig
from daemon.deliver import Endpoint, Job, Lane, outcome_for
from daemon.health import Health
from daemon.metrics import Metrics
from daemon.model import (
    DEAD_LETTERED,
    LIVE,
    SKIPPED_PAUSED,
    Attempt,
    DeadLetter,
    Event,
    Outcome,
    RetryRecord,
    decode_retry,
    encode_dead_letter,
    encode_outcome,
    encode_retry,
    utc_now_iso,
)
from daemon.offsets import PartitionOffsets
from daemon.results import Ack, ResultsWriter
from daemon.retry import classify, defer_wait, tier_for, with_retry_after

log = logging.getLogger(__name__)

# How long a delivery to a paused endpoint that holds its events waits before it looks again.
_HOLD_RECHECK_S = 60.0


def iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class _AfterAll:
    """Calls ``ack`` once it has itself been called ``count`` times (one per record written)."""

    __slots__ = ("_ack", "_left")

    def __init__(self, ack: Ack, count: int) -> None:
        self._ack = ack
        self._left = count

    def __call__(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._ack()


class Retries:
    def __init__(
        self,
        writer: ResultsWriter,
        config: RetryConfig,
        metrics: Metrics,
        health: Health,
        lanes: Callable[[], dict[str, Lane]],
    ) -> None:
        self._writer = writer
        self._config = config
        self._tiers = list(config.tiers_s)
        self._recheck_s = tier_for(_HOLD_RECHECK_S, self._tiers) or self._tiers[0]  # the longest a deferral waits
        self._metrics = metrics
        self._health = health
        self._lanes = lanes
        self._timers: set[asyncio.TimerHandle] = set()
        # (topic, partition, offset, until_ms): hold a tier partition back; set by the app to its tier consumer.
        self.hold: Callable[[str, int, int, int], None] = lambda topic, partition, offset, until_ms: None

    @property
    def tier_topics(self) -> list[str]:
        return [self._config.tier_topic(t) for t in self._tiers]

    # --- after an attempt ---

    def report(self, endpoint: Endpoint, job: Job, outcome: Outcome) -> None:
        """Settle one attempt: record it, and retry, dead-letter or finish the delivery."""
        verdict = classify(outcome.http_status, endpoint.retry_4xx)
        live = job.trigger == LIVE
        if live:
            self._health.observe(endpoint.id, verdict == "delivered", verdict == "gone", endpoint.pause_threshold)
        if verdict == "delivered" or not live:
            self.record(outcome, job.ack)
            return
        history = [*job.history, _attempt(outcome)]
        delay = endpoint.policy.next_delay(job.attempt) if verdict == "retry" else None
        if delay is not None:
            delay = with_retry_after(delay, outcome.retry_after_s, self._config.retry_after_max_s)
            due_ms = int(time.time() * 1000 + delay * 1000)
            outcome.next_attempt_at = iso_ms(due_ms)
            ack = _AfterAll(job.ack, 2)
            self.record(outcome, ack)
            self._metrics.retries_scheduled.inc()
            self.schedule(job, endpoint.id, job.attempt + 1, due_ms, int(delay * 1000), history, ack)
            return
        reason = {"retry": "no attempts left", "gone": "410 Gone", "final": f"HTTP {outcome.http_status}: final"}
        outcome.status = DEAD_LETTERED
        ack = _AfterAll(job.ack, 2)
        self.record(outcome, ack)
        self.dead_letter(job, endpoint.id, reason[verdict], history, ack)

    def record(self, outcome: Outcome, ack: Ack) -> None:
        key = outcome.endpoint_id.encode() if outcome.endpoint_id else None
        self._writer.submit(key, encode_outcome(outcome), ack)

    def dead_letter(self, job: Job, endpoint_id: str, reason: str, history: list[Attempt], ack: Ack) -> None:
        event = job.event
        letter = DeadLetter(
            delivery_id=job.delivery_id,
            endpoint_id=endpoint_id,
            event_type=event.event_type,
            reason=reason,
            source_topic=event.topic,
            source_partition=event.partition,
            source_offset=event.offset,
            attempts=history,
            dead_lettered_at=utc_now_iso(),
            event=msgspec.Raw(event.value),
        )
        self._metrics.dead_lettered.inc()
        self._writer.submit(endpoint_id.encode(), encode_dead_letter(letter), ack, topic=self._config.dead_letter_topic)

    def schedule(
        self,
        job: Job,
        endpoint_id: str,
        attempt: int,
        due_ms: int,
        delay_ms: int,
        history: list[Attempt],
        ack: Ack,
        deferred: bool = False,
    ) -> None:
        """Write the delivery to the tier that fits the time left until ``due_ms``."""
        now_ms = int(time.time() * 1000)
        tier = tier_for((due_ms - now_ms) / 1000, self._tiers) or self._tiers[0]
        event = job.event
        record = RetryRecord(
            delivery_id=job.delivery_id,
            endpoint_id=endpoint_id,
            attempt=attempt,
            due_ms=due_ms,
            tier_due_ms=now_ms + int(tier * 1000),
            delay_ms=delay_ms,
            trigger=job.trigger,
            event_type=event.event_type,
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
            time_ms=event.time_ms,
            value=event.value,
            history=history,
            deferred=deferred,
            deferrals=job.deferrals,
        )
        topic = self._config.tier_topic(tier)
        self._writer.submit(endpoint_id.encode(), encode_retry(record), ack, topic=topic)

    def defer(self, job: Job, endpoint_id: str, wait_s: float) -> None:
        """Park a delivery whose endpoint cannot take it now for ``wait_s``; no attempt is used up."""
        due_ms = int(time.time() * 1000 + wait_s * 1000)
        self._metrics.deliveries_deferred.inc()
        job.deferrals += 1
        self.schedule(job, endpoint_id, job.attempt, due_ms, int(wait_s * 1000), job.history, job.ack, True)

    def hand_over(self, lane: Lane, job: Job) -> None:
        """Give a job to its lane, unless its endpoint is paused or its queue is full."""
        if self.held_back(lane.endpoint, job):
            return
        if lane.put(job):
            return
        stats = lane.stats
        if stats.queued + stats.busy == lane.queued + lane.busy and not self._health.failures(lane.endpoint.id):
            # The only endpoint with work: nobody to starve. Queue past the bound; the cap on events in flight
            # applies backpressure instead of sending its backlog round the tiers.
            lane.put(job, force=True)
            return
        # Back no sooner than the endpoint can have worked off its queue, and each further deferral of the
        # same delivery a tier later (up to about a minute): a full endpoint does not churn the tiers.
        self.defer(job, lane.endpoint.id, defer_wait(job.deferrals, lane.drain_s(), self._tiers, self._recheck_s))

    def held_back(self, endpoint: Endpoint, job: Job) -> bool:
        """Settle a job whose endpoint is paused (skipped, or deferred when it holds); False if it is not paused.

        Called when a job is handed over and again when a worker takes it, so a pause stops what was queued.
        """
        if not self._health.is_paused(endpoint.id):
            return False
        if endpoint.config.while_paused == "hold":
            self.defer(job, endpoint.id, self._recheck_s)
            return True
        state = self._health.states[endpoint.id]
        self._metrics.deliveries_skipped.labels(SKIPPED_PAUSED).inc()
        outcome = _skipped(endpoint, job, SKIPPED_PAUSED, f"endpoint paused ({state.reason})")
        if job.trigger == LIVE:
            ack = _AfterAll(job.ack, 2)
            self.record(outcome, ack)
            self.dead_letter(job, endpoint.id, "endpoint paused", job.history, ack)
        else:
            self.record(outcome, job.ack)
        return True

    # --- back from a tier ---

    def take(self, record: Any, part: PartitionOffsets) -> bool:
        """One record read from a tier topic. False: the partition is held until its head is due."""
        try:
            retry = decode_retry(record.value)
        except msgspec.DecodeError:
            log.error("unreadable retry record %s[%d]@%d: skipped", record.topic, record.partition, record.offset)
            part.add(record.offset, 0)
            return True
        now_ms = int(time.time() * 1000)
        if retry.tier_due_ms > now_ms:
            self.hold(record.topic, record.partition, record.offset, retry.tier_due_ms)
            return False
        part.add(record.offset, 1)
        ack = partial(part.done, record.offset)
        job = Job(
            event=Event.from_retry(retry),
            delivery_id=retry.delivery_id,
            ack=ack,
            attempt=retry.attempt,
            trigger=retry.trigger,
            history=retry.history,
            endpoint_id=retry.endpoint_id,
        )
        job.deferrals = retry.deferrals
        left_ms = retry.due_ms - now_ms
        if left_ms > 0:
            if tier_for(left_ms / 1000, self._tiers) is not None:
                self._metrics.retry_hops.inc()
                self.schedule(job, retry.endpoint_id, retry.attempt, retry.due_ms, retry.delay_ms, retry.history,
                              ack, retry.deferred)  # fmt: skip
                return True
            # Less than the shortest tier to go: wait here (the offset stays uncommitted until it is settled).
            self._wait(left_ms / 1000, job, retry)
            return True
        self._due(job, retry)
        return True

    def _wait(self, delay_s: float, job: Job, retry: RetryRecord) -> None:
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self._due(job, retry)

        timer = asyncio.get_running_loop().call_later(delay_s, fire)
        self._timers.add(timer)

    def _due(self, job: Job, retry: RetryRecord) -> None:
        if not retry.deferred:
            self._metrics.retry_lateness.observe(max(0.0, time.time() - retry.due_ms / 1000))
        lane = self._lanes().get(retry.endpoint_id)
        if lane is None:
            # The endpoint left the config while the retry waited: keep the delivery where an operator finds it.
            self.dead_letter(job, retry.endpoint_id, "endpoint no longer configured", retry.history, job.ack)
            return
        self.hand_over(lane, job)

    def cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


def _attempt(outcome: Outcome) -> Attempt:
    return Attempt(
        attempt=outcome.attempt,
        attempt_id=outcome.attempt_id,
        status=outcome.status,
        http_status=outcome.http_status,
        error=outcome.error,
        at=outcome.timestamp,
    )


def _skipped(endpoint: Endpoint, job: Job, status: str, error: str) -> Outcome:
    return outcome_for(endpoint.id, job, status, error=error, profile=endpoint.profile.name)
