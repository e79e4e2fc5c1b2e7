"""Settlement: the one owner of "an outcome is settled", and the dispatch that feeds it.

An event read from Kafka may be committed once everything it is owed is settled, and this module is
the only code that knows what that is:

- a record that cannot be routed is owed one thing: its ``invalid_event`` record;
- an event that fails the schema its type's catalogue entry validates is owed, per endpoint it matched, its
  ``invalid_payload`` record and its dead letter (validated once, whatever the number of endpoints);
- an event is owed one settlement per endpoint it matched (none: it is done at once);
- a delivery settles once every record its outcome leads to is acknowledged by Kafka: the results
  record alone (delivered, a skip, a final outcome of an attempt that is never retried); the results
  record and the retry record (a retry scheduled); the results record and the dead letter (the last
  attempt failed, the network guard blocked it, or the endpoint is paused); the retry record alone
  (deferred while its endpoint's queue is full, or held while it is paused);
- a record read back from a retry tier is owed the settlement of the delivery it carries.

Operator actions (pings, redeliveries, replays) settle in the same way but are owed to no event.
Health changes are written by ``Health`` itself and owed to nothing.

Deliveries wait in Kafka, never in memory: a retry is written to the delay tier that fits its delay;
``take`` reads it back (holding the tier partition until its head is due, moving it to a shorter tier,
or waiting the last seconds here) and hands it to its endpoint's lane.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import msgspec
from aiokafka.errors import KafkaError

from daemon.core.breaker import CLOSED, State
from daemon.core.clock import iso_ms, utc_now_iso
from daemon.core.config import EndpointConfig, KafkaConfig, RetryConfig, SubscriptionConfig
from daemon.core.errors import InvalidEvent, RouterError, SchemaUnavailable
from daemon.core.event import Event
from daemon.core.heap import give_back
from daemon.core.ids import delivery_id
from daemon.core.model import (
    BLOCKED,
    DEAD_LETTERED,
    INVALID_EVENT,
    INVALID_PAYLOAD,
    LIVE,
    RENDER_FAILED,
    SKIPPED_PAUSED,
    Ack,
    Attempt,
    DeadLetter,
    Outcome,
    RetryRecord,
    decode_retry,
    encode_dead_letter,
    encode_outcome,
    encode_retry,
    index_entry,
)
from daemon.core.offsets import PartitionOffsets
from daemon.core.ordering import Keys
from daemon.core.policy import back_from_tier, defer_wait, tier_for, with_retry_after
from daemon.core.profiles import skip_for
from daemon.core.registry import Sealed
from daemon.delivery.endpoint import Endpoint
from daemon.delivery.job import Job, outcome_for
from daemon.delivery.lane import Lane, LaneStats, TenantLoad
from daemon.delivery.sender import Sender
from daemon.engine.health import Health
from daemon.engine.operational import ACTOR_ROUTER, Operational
from daemon.engine.routing import DEFAULT_READER, Routing
from daemon.kafka.results import ResultsWriter
from daemon.observe.metrics import Metrics

log = logging.getLogger(__name__)

ReadBack = Callable[[str, int, int], Awaitable[Any]]  # (topic, partition, offset) -> the consumer record there
LoadSchemas = Callable[[set[int]], Awaitable[None]]  # the writer schemas of these ids into the routing's cache

# How long a delivery to a paused endpoint that holds its events waits before it looks again.
_HOLD_RECHECK_S = 60.0
# A partition held for a writer schema waits at least this long (a schema not fetched yet: prepare runs again first).
_SCHEMA_WAIT_MIN_MS = 100


class _AfterAll:
    """Calls ``ack`` once it has itself been called ``count`` times (one per record written).

    ``__slots__``: one per retried or dead-lettered delivery.
    """

    __slots__ = ("_ack", "_left")

    def __init__(self, ack: Ack, count: int) -> None:
        self._ack = ack
        self._left = count

    def __call__(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._ack()


def _after_both(ack: Ack | None) -> Ack | None:
    """The ack of a settlement that writes two records."""
    return None if ack is None else _AfterAll(ack, 2)


class Settlement:
    """Dispatches events to endpoint lanes and settles every outcome; owns the lanes and the retry timers."""

    def __init__(
        self,
        writer: ResultsWriter,
        retry: RetryConfig,
        metrics: Metrics,
        health: Health,
        sender: Sender,
        routing: Routing,
        read_back: ReadBack,
        load_schemas: LoadSchemas | None = None,
        operational: Operational | None = None,
    ) -> None:
        """``read_back(topic, partition, offset)``: the record there (``daemon.kafka.readback.read_one``), for the
        events too large for their retry records. ``load_schemas(ids)``: the writer schemas of records in the Schema
        Registry wire format, into ``routing.schemas`` (``daemon.schema_registry.SchemaLoader.load``; without it such
        records wait)."""
        self._writer = writer
        self._retry = retry
        self._tiers = list(retry.tiers_s)
        self._recheck_s = tier_for(_HOLD_RECHECK_S, self._tiers) or self._tiers[0]  # the longest a deferral waits
        self._metrics = metrics
        self._health = health
        self._sender = sender
        self._routing = routing
        self._read_back_record = read_back
        self._load_schemas = load_schemas
        # The operational events: announced there (dead letters), and their topic routed to its endpoints here.
        self.operational = operational
        self._operational_topic = operational.topic if operational is not None else None
        self._lanes: dict[str, Lane] = {}  # only endpoints that have had work
        self._tenants: dict[str, TenantLoad] = {}  # the tenants whose endpoints have had lanes
        self._ordered: dict[str, Keys[Job]] = {}  # ordered endpoints: their keys under way and what waits behind
        self._retired: set[asyncio.Task[None]] = set()
        self._once: set[asyncio.Task[Outcome]] = set()  # the attempts of attempt_once under way
        self._timers: set[asyncio.TimerHandle] = set()
        self.stats = LaneStats()  # totals over all lanes (the queued and in-flight gauges)

    @property
    def routing(self) -> Routing:
        return self._routing

    @property
    def tier_topics(self) -> list[str]:
        return [self._retry.tier_topic(t) for t in self._tiers]

    def tiers_consumer(self, kafka: KafkaConfig) -> KafkaConfig:
        """The settings of the consumer of the retry tiers: its own group, every tier, from their beginning (a tier's
        records, the router's own retries, are never skipped), polling no faster than a tenth of the shortest tier (at
        most 500 ms): a tight fetch wait on every tier partition costs the broker and this process CPU for nothing."""
        wait = int(min(500, max(kafka.fetch_max_wait_ms, self._tiers[0] * 100)))
        return msgspec.structs.replace(kafka, group_id=f"{kafka.group_id}.retry", topics=self.tier_topics,
                                       fetch_max_wait_ms=wait, auto_offset_reset="earliest")  # fmt: skip

    def use(self, routing: Routing) -> None:
        """Route by ``routing`` from now on. A lane whose endpoint changed or left finishes what it has queued
        under its old settings; the next delivery to a changed endpoint starts a new lane."""
        self._routing = routing
        for endpoint_id in list(self._lanes):
            self._keep_or_retire(endpoint_id)

    def put(self, config: EndpointConfig, subscription: SubscriptionConfig, sealed: Sealed | None = None) -> None:
        """Add or change an endpoint managed at run time; its lane, if it changed, finishes under its old settings.
        ``sealed``: the record ``config`` was opened from, kept instead of it (``Routing.put``)."""
        self._routing.put(config, subscription, sealed)
        self._keep_or_retire(config.id)

    def drop(self, endpoint_id: str) -> None:
        """Remove an endpoint managed at run time; what it has queued is still attempted. An id of the config file's
        (a record of the endpoints topic refused for it) leaves the file's endpoint and its lane alone."""
        if self._routing.drop(endpoint_id):
            self._retire(endpoint_id)

    async def retire_idle_every(self, idle_s: float) -> None:
        """Close the lanes that had no work for ``idle_s`` and let their ``Endpoint`` go: an idle endpoint costs
        no task and no prepared request (100,000 endpoints are 100,000 lanes only while each has work). Then give the C
        allocator's free pages back to the system (``heap.give_back``, in a thread): what a burst of work freed (a
        backlog, a slow receiver, a busy machine: requests, answers and results in flight) stays with the process
        otherwise, and RSS keeps the burst's height for good (a soak's stepped from 127 to 165 MB after a minute behind,
        and stayed)."""
        while True:
            await asyncio.sleep(idle_s / 2)
            now = time.monotonic()
            for endpoint_id, lane in list(self._lanes.items()):
                if lane.idle_for(now) >= idle_s:
                    self._retire(endpoint_id)
                    self._routing.endpoints.forget(endpoint_id)
            await asyncio.to_thread(give_back)

    def _keep_or_retire(self, endpoint_id: str) -> None:
        """Keep the lane of an endpoint that delivers as before (the routing takes its ``Endpoint``), or retire it."""
        lane = self._lanes.get(endpoint_id)
        if lane is not None and not self._routing.endpoints.adopt(lane.endpoint):
            self._retire(endpoint_id)

    def _retire(self, endpoint_id: str) -> None:
        lane = self._lanes.pop(endpoint_id, None)
        if lane is not None:
            task = asyncio.create_task(lane.close(), name=f"retire-{endpoint_id}")
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    # --- live events ---

    async def prepare(self, batches: Mapping[Any, list[Any]]) -> None:
        """Before ``dispatch``: the writer schemas of the fetched records in the Schema Registry wire format fetched
        into the cache their readers decode with (each id once; a registry that cannot answer leaves a ``Failing``
        entry, and ``dispatch`` holds the partition at that record)."""
        if self._load_schemas is None:
            return
        readers = self._routing.readers
        ids: set[int] = set()
        for tp, records in batches.items():
            reader = readers.get(tp.topic)
            if reader is None or not reader.framed:
                continue
            for record in records:
                schema_id = reader.schema_id(record.value)
                if schema_id is not None:
                    ids.add(schema_id)
        if ids:
            await self._load_schemas(ids)

    async def event_of(self, record: Any) -> Event:
        """The event of a record read back from its topic (a replay, a redelivery, a value not kept for a retry),
        its writer schema fetched first when it needs one. InvalidEvent, or SchemaUnavailable (a 503) while the
        registry cannot answer."""
        reader = self._routing.readers.get(record.topic, DEFAULT_READER)
        schema_id = reader.schema_id(record.value)
        if schema_id is not None and self._load_schemas is not None:
            await self._load_schemas({schema_id})
        return self._routing.readers.get(record.topic, DEFAULT_READER).event(record)

    def dispatch(self, record: Any, part: PartitionOffsets) -> int | None:
        """Route one consumed record: to each matched endpoint's lane, or to an invalid_event record. Returns None,
        or the time (unix ms) until which the record's partition waits because its writer schema could not be had
        yet (the record is read again then: never an ``invalid_event`` for the registry's fault).

        Nothing a record contains may stop the stream: whatever reading, matching or checking it raises
        makes it an ``invalid_event``, before any of its deliveries is handed out.
        """
        routing = self._routing
        topic, offset = record.topic, record.offset
        if topic == self._operational_topic:
            self._operational_event(record, part)
            return None
        try:
            event = routing.readers.get(topic, DEFAULT_READER).event(record)
            event_type = event.event_type
            match = routing.table.match(topic, event_type)
            if match.empty:
                part.add(offset, 0)
                self._metrics.events_unmatched.labels(topic).inc()
                return None
            known = routing.endpoints
            endpoints = [known[endpoint_id] for endpoint_id in match.select(event.decoded)]
            invalid = routing.catalogue.problem(event_type, event.decoded) if endpoints else None
            skips = {
                e.id: rule
                for e in endpoints
                if e.profile.skips and (rule := skip_for(e.profile, event.decoded(), event_type))
            }
        except InvalidEvent as exc:
            self._invalid(record, part, str(exc))
            return None
        except SchemaUnavailable as exc:
            self._metrics.events_waiting_for_schema.labels(topic).inc()
            return max(exc.retry_at_ms, int(time.time() * 1000) + _SCHEMA_WAIT_MIN_MS)
        except Exception as exc:  # a record nobody foresaw: recorded, never a stop of the stream
            log.exception("event %s[%d]@%d could not be routed", topic, record.partition, offset)
            self._invalid(record, part, f"could not be routed ({type(exc).__name__})")
            return None
        part.add(offset, len(endpoints), len(event.value))  # one settlement owed per endpoint
        if not endpoints:
            self._metrics.events_unmatched.labels(topic).inc()
            return None
        key = event.key
        ack = partial(part.done, offset)
        if invalid is not None:
            self._invalid_payload(event, endpoints, invalid, ack)
            return None
        for endpoint in endpoints:
            endpoint_id = endpoint.id
            job = Job(event=event, delivery_id=delivery_id(key, endpoint_id), ack=ack, endpoint_id=endpoint_id)
            if endpoint.ordered and record.key is not None:
                job.order_key, job.source = record.key, part
            rule = skips.get(endpoint_id) if skips else None
            if rule is not None:
                outcome = outcome_for(endpoint_id, job, rule.status, error=rule.reason, profile=endpoint.profile.name)
                self._record(outcome, ack)
            else:
                self._hand_over(endpoint, job)
        return None

    def _operational_event(self, record: Any, part: PartitionOffsets) -> None:
        """A record of the operational topic: to the endpoints ``[operational] endpoints`` names, never through the
        routing table (no subscription of anyone's matches it)."""
        routing = self._routing
        known = routing.endpoints
        try:
            event = DEFAULT_READER.event(record)
            endpoints = [known[i] for i in routing.config.operational.endpoints if i in known]
        except InvalidEvent as exc:
            self._invalid(record, part, str(exc))
            return
        part.add(record.offset, len(endpoints), len(event.value))
        ack = partial(part.done, record.offset)
        for endpoint in endpoints:
            job = Job(event=event, delivery_id=delivery_id(event.key, endpoint.id), ack=ack, endpoint_id=endpoint.id)
            self._hand_over(endpoint, job)

    def _invalid_payload(self, event: Event, endpoints: list[Endpoint], reason: str, ack: Ack) -> None:
        """An event its type's schema refuses: never delivered; each matched endpoint's delivery is recorded
        ``invalid_payload`` with the reason and dead-lettered, without an attempt or news of its health."""
        self._metrics.events_invalid_payload.labels(event.event_type).inc()
        error = f"does not match the schema of {event.event_type!r}: {reason}"
        for endpoint in endpoints:
            job = Job(event=event, delivery_id=delivery_id(event.key, endpoint.id), ack=ack, attempt=0,
                      endpoint_id=endpoint.id)  # fmt: skip  # attempt 0: none was made
            both = _after_both(ack)
            outcome = outcome_for(endpoint.id, job, INVALID_PAYLOAD, error=error, profile=endpoint.profile.name)
            self._record(outcome, both)
            self._dead_letter(job, endpoint.id, f"{INVALID_PAYLOAD}: {error}", [], both)

    def _invalid(self, record: Any, part: PartitionOffsets, reason: str) -> None:
        topic, offset = record.topic, record.offset
        self._metrics.events_invalid.labels(topic).inc()
        part.add(offset, 1)  # owed its invalid_event record
        outcome = Outcome(
            delivery_id=None,
            endpoint_id=None,
            event_type=None,
            attempt=0,
            status=INVALID_EVENT,
            error=reason,
            source_topic=topic,
            source_partition=record.partition,
            source_offset=offset,
            timestamp=utc_now_iso(),
        )
        self._writer.submit(None, encode_outcome(outcome), partial(part.done, offset))

    # --- after an attempt (the lanes call these) ---

    def settle(self, endpoint: Endpoint, job: Job, outcome: Outcome) -> None:
        """Record one attempt, and retry, dead-letter or finish the delivery."""
        live = job.trigger == LIVE
        if outcome.status == BLOCKED:
            # Refused by the network guard: final at once, whatever the policy (another try meets the same guard),
            # and no news of the endpoint's health. Its record keeps saying `blocked`; a live event's delivery is
            # dead-lettered with the reason.
            if not live:
                self._record(outcome, job.ack)
                return
            ack = _after_both(job.ack)
            self._record(outcome, ack)
            self._dead_letter(job, endpoint.id, outcome.error or BLOCKED, [*job.history, _attempt(outcome)], ack)
            if job.order_key is not None:
                self._key_failed(endpoint, job)
            return
        rendered = outcome.status != RENDER_FAILED
        verdict = endpoint.statuses.verdict(outcome.http_status) if rendered else "final"
        if live and rendered:  # a body that cannot be built says nothing about the endpoint
            gone = outcome.http_status if verdict == "gone" else None
            self._health.observe(endpoint.id, verdict == "delivered", gone, endpoint.pause_threshold)
        if verdict == "delivered" or not live:
            self._record(outcome, job.ack)
            if job.order_key is not None:
                self._next_of_key(endpoint, job)
            return
        history = [*job.history, _attempt(outcome)]
        delay = endpoint.policy.next_delay(job.attempt) if verdict == "retry" else None
        if delay is not None and job.order_key is not None:
            self._retry_in_order(endpoint, job, outcome, history, delay)
            return
        ack = _after_both(job.ack)
        if delay is not None:
            delay = with_retry_after(delay, outcome.retry_after_s, self._retry.retry_after_max_s)
            now_ms = int(time.time() * 1000)
            due_ms = now_ms + int(delay * 1000)
            outcome.next_attempt_at = iso_ms(due_ms)
            self._record(outcome, ack)
            self._metrics.retries_scheduled.inc()
            self._schedule(job, endpoint.id, job.attempt + 1, due_ms, int(delay * 1000), history, ack, now_ms=now_ms)
            return
        outcome.status = DEAD_LETTERED
        self._record(outcome, ack)
        if verdict == "retry":
            reason = "no attempts left"
        elif verdict == "gone":
            reason = "410 Gone" if outcome.http_status == 410 else f"HTTP {outcome.http_status}: pauses the endpoint"
        elif not rendered:
            reason = outcome.error or RENDER_FAILED
        else:
            reason = f"HTTP {outcome.http_status}: final"
        self._dead_letter(job, endpoint.id, reason, history, ack)
        if job.order_key is not None:
            self._key_failed(endpoint, job)

    # --- ordered delivery per key (an endpoint's ordering = "key": daemon.core.ordering) ---

    def _in_order(self, endpoint: Endpoint, job: Job, key: bytes) -> None:
        """A live delivery of an ordered endpoint handed over: to its lane if it is its key's head, else parked
        behind the head (in memory, its event's offset unfinished: a restart reads it again, in order)."""
        keys = self._ordered.get(endpoint.id)
        if keys is None:
            keys = self._ordered[endpoint.id] = Keys()
        if keys.admit(key, job) and not self._go_in_order(endpoint, job):
            self._next_of_key(endpoint, job)

    def _go_in_order(self, endpoint: Endpoint, job: Job) -> bool:
        """Start its key's head: True once it is in its lane (never deferred to the tiers, where the next of its key
        would overtake it); False when it was settled at once (a pause) or dropped (its partition revoked: its new
        owner reads it again)."""
        if job.source is not None and job.source.revoked:
            if job.ack is not None:
                job.ack()  # no longer in flight here; never committed here either
            return False
        if self._held_back(endpoint, job):
            return False
        self._lane(endpoint).put(job, force=True)
        return True

    def _next_of_key(self, endpoint: Endpoint, job: Job) -> None:
        """The head of its key is settled: start the next of the key (and the next, while each is settled at once)."""
        keys = self._ordered.get(endpoint.id)
        if keys is None or job.order_key is None:
            return
        while (following := keys.release(job.order_key)) is not None:
            if self._go_in_order(endpoint, following):
                return

    def _key_failed(self, endpoint: Endpoint, job: Job) -> None:
        """The head of its key ended undelivered (dead-lettered): what waits behind it is dead-lettered too, in order,
        or released (``when_key_fails``)."""
        keys = self._ordered.get(endpoint.id)
        if endpoint.config.when_key_fails == "release" or keys is None or job.order_key is None:
            self._next_of_key(endpoint, job)
            return
        error = f'behind {job.delivery_id}, dead-lettered: its key is delivered in order (ordering = "key")'
        for behind in keys.give_up(job.order_key):
            if behind.source is not None and behind.source.revoked:
                if behind.ack is not None:
                    behind.ack()
                continue
            ack = _after_both(behind.ack)
            outcome = outcome_for(endpoint.id, behind, DEAD_LETTERED, error=error, profile=endpoint.profile.name)
            outcome.attempt = 0  # none was made
            self._record(outcome, ack)
            self._dead_letter(behind, endpoint.id, "behind a dead-lettered delivery of its key", behind.history, ack)

    def _retry_in_order(
        self, endpoint: Endpoint, job: Job, outcome: Outcome, history: list[Attempt], delay: float
    ) -> None:
        """A retry of its key's head: it waits here, not on a tier (a tier's delivery is settled, its offset
        committed, and what follows it would overtake it after a restart); the key waits with it."""
        delay = with_retry_after(delay, outcome.retry_after_s, self._retry.retry_after_max_s)
        outcome.next_attempt_at = iso_ms(int(time.time() * 1000) + int(delay * 1000))
        self._record(outcome, None)
        self._metrics.retries_scheduled.inc()
        job.attempt += 1
        job.history = history
        timer: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(timer)
            if not self._go_in_order(endpoint, job):
                self._next_of_key(endpoint, job)

        timer = asyncio.get_running_loop().call_later(delay, due)
        self._timers.add(timer)

    def held_back(self, endpoint: Endpoint, job: Job) -> bool:
        """``_held_back`` for a lane's worker: the key of an ordered delivery settled so moves on to its next."""
        if not self._held_back(endpoint, job):
            return False
        if job.order_key is not None:
            self._next_of_key(endpoint, job)
        return True

    def _held_back(self, endpoint: Endpoint, job: Job) -> bool:
        """Settle a job whose endpoint is paused (skipped, or deferred when it holds); False if it is not paused.

        Called when a job is handed over and again when a worker takes it, so a pause stops what was queued. Only
        a live delivery is held: a replayed one is recorded ``skipped_paused`` (a replay never defers).
        """
        health = self._health
        if not health.is_paused(endpoint.id):
            return False
        state = health.states[endpoint.id]
        error, reason = f"endpoint paused ({state.reason})", "endpoint paused"
        if endpoint.config.while_paused == "hold" and job.trigger == LIVE:
            # Held while the hold lasts (retry.max_hold_s from the pause), looked at again every recheck and at the
            # hold's end at the latest; after that, settled as a skipping endpoint's delivery.
            now_ms = int(time.time() * 1000)
            ends_ms = (health.paused_since_ms(endpoint.id) or now_ms) + int(self._retry.max_hold_s * 1000)
            if now_ms < ends_ms:
                self._defer(job, endpoint.id, min(self._recheck_s, (ends_ms - now_ms) / 1000))
                return True
            error += f" for longer than retry.max_hold_s ({self._retry.max_hold_s:g} s): no longer held"
            reason = "endpoint paused for longer than retry.max_hold_s"
        self._metrics.deliveries_skipped.labels(SKIPPED_PAUSED).inc()
        outcome = outcome_for(endpoint.id, job, SKIPPED_PAUSED, error=error, profile=endpoint.profile.name)
        if job.trigger == LIVE:
            ack = _after_both(job.ack)
            self._record(outcome, ack)
            self._dead_letter(job, endpoint.id, reason, job.history, ack)
        else:
            self._record(outcome, job.ack)
        return True

    def circuit(self, endpoint: Endpoint, state: State) -> None:
        """The endpoint's circuit breaker opened or closed: its health announces it."""
        breaker = endpoint.config.circuit_breaker
        self._health.circuit(endpoint.id, state, breaker.failures if breaker is not None else 0)

    def circuit_of(self, endpoint_id: str) -> State:
        """The endpoint's circuit on this instance (closed without a breaker, or without a lane here)."""
        lane = self._lanes.get(endpoint_id)
        return lane.breaker.state if lane is not None and lane.breaker is not None else CLOSED

    # --- operator actions (owed to no event) ---

    async def attempt_once(self, endpoint: Endpoint, job: Job) -> Outcome:
        """One attempt outside the lanes (a ping or a redelivery), recorded; never retried. Once begun it runs to its
        end and is recorded even if the caller stops waiting (its client went away): only shutdown cancels it."""
        task = asyncio.create_task(self._attempt_once(endpoint, job), name=f"once-{job.delivery_id}")
        self._once.add(task)
        task.add_done_callback(self._once.discard)
        return await asyncio.shield(task)

    async def _attempt_once(self, endpoint: Endpoint, job: Job) -> Outcome:
        outcome = await self._sender.attempt(endpoint, job)
        self._record(outcome, None)
        return outcome

    async def queue_wait(self, endpoint: Endpoint, job: Job) -> bool:
        """Queue a job behind the endpoint's live traffic, waiting for room (a replay never defers). A lane closed
        meanwhile (the endpoint changed or went: ``use``, ``put``, ``drop``) takes no more: the job goes to the lane of
        the endpoint as the routing in use has it; False (not queued) when the routing has it no more, or as another's
        (an endpoint of the API and one of the config file are never each other)."""
        while True:
            lane = self._lane(endpoint)
            if await lane.put_wait(job):
                return True
            if self._lanes.get(endpoint.id) is lane:  # closing and still the endpoint's: every lane stops (a shutdown)
                return False
            current = self.current(endpoint)
            if current is None:
                return False
            endpoint = current

    def current(self, endpoint: Endpoint) -> Endpoint | None:
        """``endpoint`` as the routing in use has it now (changed meanwhile, or not); None when it went, or when its id
        is another's (an endpoint of the API and one of the config file are never each other)."""
        current = self._routing.endpoints.get(endpoint.id)
        return current if current is not None and current.managed == endpoint.managed else None

    def load(self, endpoint_id: str) -> tuple[int, int]:
        """(under way, queued) deliveries of an endpoint."""
        lane = self._lanes.get(endpoint_id)
        return (lane.busy, lane.queued) if lane is not None else (0, 0)

    # --- records ---

    def _record(self, outcome: Outcome, ack: Ack | None) -> None:
        """Write an attempt's results record (and, once it is acknowledged, its delivery index entry)."""
        key = outcome.endpoint_id.encode() if outcome.endpoint_id else None
        index = index_entry(outcome, int(time.time() * 1000)) if self._writer.indexing else None
        self._writer.submit(key, encode_outcome(outcome), ack, index=index)

    def _dead_letter(self, job: Job, endpoint_id: str, reason: str, history: list[Attempt], ack: Ack | None) -> None:
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
        if self.operational is not None:
            self.operational.emit("delivery.dead_lettered", endpoint_id, ACTOR_ROUTER, delivery_id=job.delivery_id,
                                  event_type=event.event_type, reason=reason,
                                  tenant=self._routing.tenant_of(endpoint_id))  # fmt: skip
        value = encode_dead_letter(letter)
        if event.missing or len(value) > self._retry.max_record_bytes:
            letter.event = msgspec.Raw(b"null")
            letter.event_omitted = (
                f"{'too large for a dead-letter record' if not event.missing else 'not kept'}: "
                f"read it at {event.topic}[{event.partition}]@{event.offset}"
            )
            value = encode_dead_letter(letter)
        self._writer.submit(endpoint_id.encode(), value, ack, topic=self._retry.dead_letter_topic)

    def _schedule(
        self,
        job: Job,
        endpoint_id: str,
        attempt: int,
        due_ms: int,
        delay_ms: int,
        history: list[Attempt],
        ack: Ack | None,
        deferred: bool = False,
        now_ms: int | None = None,
    ) -> None:
        """Write the delivery to the tier that fits the time left until ``due_ms`` (from ``now_ms``: the time the
        caller computed ``due_ms`` from, so that a millisecond passing in between never picks a shorter tier)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
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
            key=event.key,
            traceparent=event.traceparent,
            value_omitted=event.missing,
        )
        value = encode_retry(record)
        if len(value) > self._retry.max_record_bytes and not event.missing and event.topic is not None:
            # Too large for the topic: keep the coordinates; the event is read back from its topic when due.
            record.value, record.value_omitted = b"", True
            value = encode_retry(record)
        topic = self._retry.tier_topic(tier)
        self._writer.submit(endpoint_id.encode(), value, ack, topic=topic)

    def _defer(self, job: Job, endpoint_id: str, wait_s: float) -> None:
        """Park a delivery whose endpoint cannot take it now for ``wait_s``; no attempt is used up."""
        now_ms = int(time.time() * 1000)
        wait_ms = math.ceil(wait_s * 1000)  # never sooner than asked (a hold's end: never early)
        due_ms = now_ms + wait_ms
        self._metrics.deliveries_deferred.inc()
        job.deferrals += 1
        self._schedule(job, endpoint_id, job.attempt, due_ms, wait_ms, job.history, job.ack, True, now_ms)

    # --- lanes ---

    def _lane(self, endpoint: Endpoint) -> Lane:
        lane = self._lanes.get(endpoint.id)
        if lane is None:
            lane = self._lanes[endpoint.id] = Lane(endpoint, self._sender, self, self.stats, self._load_of(endpoint.id))
        return lane

    def _load_of(self, endpoint_id: str) -> TenantLoad | None:
        """The load of the endpoint's tenant (None: the config file's endpoints, or no ``api.tenant_field``), its
        bounds taken from the config in force."""
        config = self._routing.config
        tenant = self._routing.tenant_of(endpoint_id) if config.api.tenant_field is not None else None
        if tenant is None:
            return None
        api = config.api
        load = self._tenants.get(tenant)
        if load is None or load.per_second != api.max_per_second_per_tenant:
            held = load.held if load is not None else 0
            load = self._tenants[tenant] = TenantLoad(0, api.max_per_second_per_tenant)
            load.held = held
        load.most = api.max_in_flight_per_tenant or max(1, config.kafka.max_in_flight_events // 4)
        return load

    def _hand_over(self, endpoint: Endpoint, job: Job) -> None:
        """Give a job to its lane, unless its endpoint is paused or its queue is full."""
        if job.order_key is not None:
            self._in_order(endpoint, job, job.order_key)
            return
        if self._held_back(endpoint, job):
            return
        lane = self._lanes.get(endpoint.id) or self._lane(endpoint)
        tenant = lane.tenant
        if tenant is not None and tenant.held >= tenant.most:
            # The tenant holds its share of the instance: this one waits on the tiers, and the consumer reads on.
            self._defer(job, endpoint.id, defer_wait(job.deferrals, lane.drain_s(), self._tiers, self._recheck_s))
            return
        if lane.put(job):
            return
        stats = self.stats
        if stats.queued + stats.busy == lane.queued + lane.busy and not self._health.failures(endpoint.id):
            # The only endpoint with work: nobody to starve. Queue past the bound; the cap on events in flight
            # applies backpressure instead of sending its backlog round the tiers.
            lane.put(job, force=True)
            return
        # Back no sooner than the endpoint can have worked off its queue, and each further deferral of the
        # same delivery a tier later (up to about a minute): a full endpoint does not churn the tiers.
        self._defer(job, endpoint.id, defer_wait(job.deferrals, lane.drain_s(), self._tiers, self._recheck_s))

    async def cancel(self) -> int:
        """Stop every lane now (and the retired ones still finishing, and the operators' attempts). Returns how many
        deliveries were abandoned."""
        counts = await asyncio.gather(*(lane.cancel() for lane in self._lanes.values()))
        for task in (*self._retired, *self._once):
            task.cancel()
        await asyncio.gather(*self._retired, *self._once, return_exceptions=True)
        return sum(counts)

    # --- back from a tier ---

    def take(self, record: Any, part: PartitionOffsets) -> int | None:
        """One record read from a tier topic. Returns the time (unix ms) to hold its partition until, when its
        tier does not let it out yet; None once it is taken care of."""
        try:
            retry = decode_retry(record.value)
        except (msgspec.DecodeError, TypeError):
            log.error("unreadable retry record %s[%d]@%d: skipped", record.topic, record.partition, record.offset)
            part.add(record.offset, 0)
            return None
        step, value = back_from_tier(retry.tier_due_ms, retry.due_ms, int(time.time() * 1000), self._tiers)
        if step == "hold":
            return int(value)
        part.add(record.offset, 1, len(retry.value))  # owed the settlement of the delivery it carries
        job = Job(
            event=Event.from_retry(retry),
            delivery_id=retry.delivery_id,
            ack=partial(part.done, record.offset),
            attempt=retry.attempt,
            trigger=retry.trigger,
            history=retry.history,
            endpoint_id=retry.endpoint_id,
        )
        job.deferrals = retry.deferrals
        if step == "hop":
            self._metrics.retry_hops.inc()
            self._schedule(job, retry.endpoint_id, retry.attempt, retry.due_ms, retry.delay_ms, retry.history,
                           job.ack, retry.deferred)  # fmt: skip
        elif step == "wait":  # less than the shortest tier to go (the offset stays uncommitted until settled)
            self._wait(value, job, retry)
        else:
            self._due(job, retry)
        return None

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
        endpoint = self._routing.endpoints.get(retry.endpoint_id)
        if endpoint is None:
            # The endpoint left the config while the retry waited: keep the delivery where an operator finds it.
            self._dead_letter(job, retry.endpoint_id, "endpoint no longer configured", retry.history, job.ack)
            return
        if job.event.missing:
            task = asyncio.create_task(self._read_back(endpoint, job), name=f"read-back-{job.delivery_id}")
            self._retired.add(task)  # cancelled with the lanes at shutdown; the offset stays uncommitted
            task.add_done_callback(self._retired.discard)
            return
        self._hand_over(endpoint, job)

    async def _read_back(self, endpoint: Endpoint, job: Job) -> None:
        """The event of a retry record that was too large to carry it, read back from its topic, then its attempt."""
        event = job.event
        try:
            if event.topic is None or event.partition is None or event.offset is None:
                raise InvalidEvent("no coordinates to read it back from")
            record = await self._read_back_record(event.topic, event.partition, event.offset)
            full = await self.event_of(record)
        except SchemaUnavailable:  # the registry's fault: the delivery waits in the tiers, its event still in Kafka
            self._defer(job, endpoint.id, self._recheck_s)
            return
        except (RouterError, KafkaError, OSError) as exc:
            log.warning("event %s[%d]@%d could not be read back: %s", event.topic, event.partition, event.offset, exc)
            reason = f"the event could not be read back from Kafka ({type(exc).__name__})"
            self._dead_letter(job, endpoint.id, reason, job.history, job.ack)
            return
        job.event = full
        self._hand_over(endpoint, job)

    def expose(self, metrics: Metrics) -> None:
        """The gauges read off the settlement when scraped: the endpoints of the routing in use, deliveries under way
        and queued, routes checked, the routing cache's bytes."""
        metrics.endpoints.set_function(lambda: len(self._routing.endpoints))
        metrics.requests_in_flight.set_function(lambda: self.stats.busy)
        metrics.deliveries_queued.set_function(lambda: self.stats.queued)
        metrics.routes_checked.set_function(lambda: self._routing.table.tally.checked)
        metrics.deliveries_paced.set_function(lambda: self.stats.paced)
        metrics.circuits_open.set_function(lambda: self.stats.circuits_open)
        metrics.endpoint_slowdowns.set_function(lambda: self.stats.slowed)
        metrics.routing_cache_bytes.set_function(lambda: self._routing.table.cache_bytes)

    def cancel_timers(self) -> None:
        """Stop the retries waiting here: their tier records stay uncommitted and are read again after a restart."""
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
