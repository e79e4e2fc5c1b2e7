"""Operator actions: list, pause, resume, ping, redeliver, replay. Requests are typed structs, decoded at the
admin boundary (``daemon.admin.server``) with their bounds, so that a wrong type or an out-of-range number is a
400 naming the field.

Every attempt an operator asks for is made once, never retried, and recorded on the results topic with
its ``trigger`` (``ping``, ``redelivery``, ``replay``). ``ping`` and ``record`` (the CLI command) also work
without a running daemon. What reads Kafka for a caller (a delivery looked for by its id, a replay's range) does so
through ``daemon.admin.scans``: bounded per tenant and per instance, scoped to the caller's endpoints, and stopped when
the caller goes away. A replay is capped: at most ``api.replay_max_events`` events, over at most
``api.replay_max_span_s``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from contextlib import aclosing
from datetime import datetime
from typing import Annotated, Any

import msgspec
import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from msgspec import UNSET, Meta, UnsetType

from daemon.admin.scans import BY_INDEX, Found, Scans
from daemon.core.clock import utc_now_iso
from daemon.core.config import ApiConfig, Config, EndpointId, Name, RetryConfig
from daemon.core.errors import BadRequest, Conflict, InvalidEvent, KafkaUnavailable, NotFound, Unprocessable
from daemon.core.event import Event
from daemon.core.ids import delivery_id
from daemon.core.model import (
    PING,
    REDELIVERY,
    REPLAY,
    Outcome,
    SkippedBatch,
    decode_outcome,
    encode_outcome,
    encode_skipped,
    paused_by,
)
from daemon.core.resolve import resolve
from daemon.delivery.endpoint import Endpoint
from daemon.delivery.job import Job
from daemon.delivery.sender import Sender, client_for
from daemon.engine.health import REASON_OPERATOR, Health, pause_text
from daemon.engine.settle import Settlement
from daemon.kafka.clients import RouterProducer
from daemon.kafka.consume import Source, Stuck
from daemon.kafka.history import SEARCH_BUDGET_S
from daemon.kafka.rawbatch import raw_batch
from daemon.kafka.readback import Deleted, TooMany, read_one, read_range
from daemon.kafka.results import ResultsWriter
from daemon.observe.metrics import Metrics

Partition = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Offset = Annotated[int, Meta(ge=0, le=2**63 - 1)]
UnixMs = Annotated[int, Meta(ge=0, le=253_402_300_799_999)]  # up to the year 9999
Time = Annotated[datetime, Meta(tz=True)]  # RFC 3339: with its offset (Z or +hh:mm)


class Redelivery(msgspec.Struct, kw_only=True):
    """Where a past delivery's event is, as its results record says (the record itself may be posted whole).

    ``attempt_id``, when given, is the attempt this one repeats (its record's ``redelivery_of_id``)."""

    endpoint_id: EndpointId
    source_topic: Name
    source_partition: Partition
    source_offset: Offset
    attempt_id: Annotated[str, Meta(max_length=200)] | None = None


class Replay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A time range (record timestamps; RFC 3339, or unix ms) or an offset range (inclusive) of one partition."""

    from_time: Time | UnixMs | None = None
    to_time: Time | UnixMs | None = None
    topic: Name | None = None
    partition: Partition | None = None
    from_offset: Offset | None = None
    to_offset: Offset | None = None


class SkipRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The offset the partition is held at (as ``/readyz`` shows it): a skip names what it skips."""

    offset: Offset


class EndpointInfo(msgspec.Struct, kw_only=True):
    id: str
    profile: str
    paused: bool
    reason: str | None
    paused_by: str | None  # platform, tenant, contract or automatic (daemon.core.model.PAUSED_BY_*)
    since: str | None
    consecutive_failures: int
    in_flight: int
    queued: int
    max_concurrency: int
    circuit: str = "closed"  # this instance's circuit breaker: closed, open or half_open (daemon.core.breaker)


class ReplayCounts(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a replay did: ``matched``, the events delivered again (queued behind the endpoint's live traffic);
    ``complete``, False when it stopped at ``api.replay_max_events`` with more of the range left; ``scanned``, the
    records it read, every tenant's: in the platform's answer only, never a tenant's."""

    scanned: int | UnsetType = UNSET
    matched: int
    complete: bool
    # matched, but refused by their type's schema (the catalogue's): not delivered; left out of answers when 0
    invalid_payload: int = 0
    # the partitions whose part of the range was deleted before the replay read it (retention): what was left was
    # replayed; left out of answers when none
    deleted: list[Deleted] = msgspec.field(default_factory=list)


class Operator:
    """What the admin API does, on the running daemon's settlement and health."""

    def __init__(
        self,
        settlement: Settlement,
        health: Health,
        client_options: Mapping[str, Any],
        sources: Sequence[Source] = (),
        writer: ResultsWriter | None = None,
        retry: RetryConfig | None = None,
    ) -> None:
        """Close it with ``stop()`` (the consumers kept between scans, the delivery index)."""
        self._settlement = settlement
        self._health = health
        self._client_options = client_options  # for the raw batch a skip reads
        api = settlement.routing.config.api
        self.scans = Scans(client_options, lambda: self._settlement.routing.config, keep=api.max_scans)
        self._sources = sources  # the consumers whose stuck partitions an operator may skip
        self._writer = writer
        self._retry = retry

    async def start(
        self, index_topic: str | None = None, on_demand: bool = False, metrics: Metrics | None = None
    ) -> None:
        """Start reading the delivery index ``index_topic`` (None: no index) in the background (``Scans.start``)."""
        await self.scans.start(index_topic, on_demand, metrics)

    async def stop(self) -> None:
        await self.scans.stop()

    def stuck(self) -> list[Stuck]:
        """The partitions held at a batch that cannot be decoded."""
        return [s for source in self._sources for s in source.stuck.values()]

    async def skip(self, topic: str, partition: int, request: SkipRequest) -> SkippedBatch:
        """Skip the batch a partition is held at: its raw bytes and coordinates go to the dead-letter topic first
        (acknowledged by Kafka), then the partition is read on from the batch's end."""
        tp = TopicPartition(topic, partition)
        source = next((s for s in self._sources if tp in s.stuck), None)
        if source is None or self._writer is None or self._retry is None:
            raise NotFound(f"{topic}[{partition}] is not held at a batch that cannot be decoded (here)")
        stuck = source.stuck[tp]
        if request.offset != stuck.offset:
            raise Conflict(f"offset: {topic}[{partition}] is held at {stuck.offset}, not {request.offset}")
        batch = await raw_batch(self._client_options, topic, partition, stuck.offset)
        encoded = base64.b64encode(batch.raw).decode()
        too_big = len(encoded) > self._retry.max_record_bytes - 2_000
        letter = SkippedBatch(
            reason="a record batch that cannot be decoded, skipped by an operator",
            source_topic=topic, source_partition=partition, source_offset=batch.base, next_offset=batch.next_offset,
            error=stuck.error, held_since=stuck.since, skipped_at=utc_now_iso(), raw_bytes=len(batch.raw),
            raw=None if too_big else encoded,
            raw_omitted="larger than retry.max_record_bytes: read it from the topic" if too_big else None,
        )  # fmt: skip
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def acknowledged() -> None:
            if not written.done():
                written.set_result(None)

        self._writer.submit(None, encode_skipped(letter), acknowledged, topic=self._retry.dead_letter_topic)
        await asyncio.wait_for(written, 60)
        source.skip(tp, stuck.offset, batch.next_offset)
        return msgspec.structs.replace(letter, raw=None)

    def _endpoint(self, endpoint_id: str) -> Endpoint:
        endpoint = self._settlement.routing.endpoints.get(endpoint_id)
        if endpoint is None:
            raise NotFound(f"no endpoint {endpoint_id!r}")
        return endpoint

    def _unless_paused(self, endpoint_id: str, what: str) -> None:
        """Conflict (409) naming who paused, when the endpoint is paused: a paused endpoint gets no deliveries, and
        a redelivery or a replay asked for is refused rather than recorded skipped by the thousand."""
        state = self._health.states.get(endpoint_id)
        if state is not None and state.paused:
            raise Conflict(f"endpoint {endpoint_id!r} is {pause_text(state)}: no {what} while it is paused")

    def endpoints(self) -> list[EndpointInfo]:
        out = []
        health = self._health
        for endpoint_id, config in self._settlement.routing.endpoints.configs.items():
            state = health.states.get(endpoint_id)
            paused = state is not None and state.paused
            busy, queued = self._settlement.load(endpoint_id)
            out.append(
                EndpointInfo(
                    id=endpoint_id,
                    profile=config.profile,
                    paused=paused,
                    reason=state.reason if paused and state is not None else None,
                    paused_by=paused_by(state),
                    since=state.since if state is not None else None,
                    consecutive_failures=health.failures(endpoint_id),
                    in_flight=busy,
                    queued=queued,
                    max_concurrency=config.max_concurrency,
                    circuit=self._settlement.circuit_of(endpoint_id),
                )
            )
        return out

    def pause(self, endpoint_id: str) -> bool:
        """Pause an endpoint; False if it was paused already."""
        self._endpoint(endpoint_id)
        return self._health.pause(endpoint_id, REASON_OPERATOR, "paused by an operator")

    def resume(self, endpoint_id: str) -> bool:
        """Resume an endpoint; False if it was not paused."""
        self._endpoint(endpoint_id)
        return self._health.resume(endpoint_id)

    async def ping(self, endpoint_id: str) -> Outcome:
        endpoint = self._endpoint(endpoint_id)
        return await self._settlement.attempt_once(endpoint, ping_job(endpoint))

    async def locate(
        self, delivery: str, tenant: str | None = None, endpoint_ids: Collection[str] | None = None
    ) -> Redelivery:
        """Where a past delivery's event is, as its newest results record says: found by the delivery index, else
        by the bounded scan of the results topic (read backwards, at most ``api.max_scan_records`` per partition and
        ``SEARCH_BUDGET_S`` in all); NotFound when neither finds it.

        ``endpoint_ids`` are the endpoints the caller may see (None: any, the platform's lookup): a delivery to any
        other is not looked for, and is answered exactly as one that never was."""
        found = await self.find(delivery, tenant, endpoint_ids)
        outcome = decode_outcome(found.records[-1]) if found.records else None
        if outcome is None or outcome.endpoint_id is None or outcome.source_topic is None:
            raise self.no_delivery(delivery, found.note)
        return Redelivery(endpoint_id=outcome.endpoint_id, source_topic=outcome.source_topic,
                          source_partition=outcome.source_partition or 0, source_offset=outcome.source_offset or 0,
                          attempt_id=outcome.attempt_id)  # fmt: skip

    async def find(
        self, delivery: str, tenant: str | None = None, endpoint_ids: Collection[str] | None = None, limit: int = 1
    ) -> Found:
        """The newest ``limit`` results records of a delivery the caller may see, oldest first (``Scans.delivery``);
        none for an id that is not a delivery id."""
        if not re.fullmatch(r"msg_[0-9a-f]{32}", delivery):
            return Found(records=[], by=BY_INDEX)
        return await self.scans.delivery(tenant, delivery, endpoint_ids, limit)

    def no_delivery(self, delivery: str, note: str | None = None) -> NotFound:
        """The answer for a delivery not found, the same whoever asks and whatever the reason: ``note`` says why the
        index did not answer (this instance's state, never the caller's)."""
        max_scan = self._settlement.routing.config.api.max_scan_records
        why = f" ({note})" if note else ""
        return NotFound(
            f"no delivery {delivery!r} in the delivery index{why} nor in the results topic's retention or its newest "
            f"{max_scan:,} records per partition (api.max_scan_records), read for at most {SEARCH_BUDGET_S:g} s"
        )

    async def redeliver(self, delivery: str, where: Redelivery) -> Outcome:
        """One attempt of a past delivery, its event read back from Kafka by its recorded position."""
        topic, partition, offset = where.source_topic, where.source_partition, where.source_offset
        endpoint = self._endpoint(where.endpoint_id)
        self._unless_paused(endpoint.id, "redelivery")
        record = await read_one(self.scans.readers, topic, partition, offset)
        event = await self._settlement.event_of(record)
        if delivery_id(event.key, endpoint.id) != delivery:
            raise NotFound(f"{delivery} is not the delivery of {topic}[{partition}]@{offset} to {where.endpoint_id}")
        invalid = self._settlement.routing.catalogue.problem(event.event_type, event.decoded)
        if invalid is not None:
            raise Unprocessable(f"{delivery}: its event does not match the schema of {event.event_type!r}, so it is "
                                f"never delivered: {invalid}")  # fmt: skip
        job = Job(
            event=event,
            delivery_id=delivery,
            ack=None,
            trigger=REDELIVERY,
            endpoint_id=endpoint.id,
            redelivery_of_id=where.attempt_id,
        )
        return await self._settlement.attempt_once(endpoint, job)

    async def replay(self, endpoint_id: str, spec: Replay, tenant: str | None = None) -> ReplayCounts:
        """Deliver again, once each, every event of a time or offset range that the endpoint is subscribed to, up to
        ``api.replay_max_events`` of them (a range over a cap is a BadRequest naming the field and the cap), in a slot
        of ``tenant`` (None: the platform, the only caller whose answer says how many records were read); those its
        type's schema refuses are counted, never delivered.

        Refused (409) while the endpoint is paused; one paused while the replay runs gets what is left recorded
        ``skipped_paused`` (the lane's check), never delivered."""
        endpoint = self._endpoint(endpoint_id)
        self._unless_paused(endpoint_id, "replay")
        routing = self._settlement.routing
        since_ms, until_ms = _ms(spec.from_time, "from_time"), _ms(spec.to_time, "to_time")
        _check_range(spec, since_ms, until_ms, routing.config.kafka.topics)
        api = routing.config.api
        _check_caps(spec, since_ms, until_ms, api, int(time.time() * 1000))
        most = api.replay_max_events
        topics = [spec.topic] if spec.topic else list(routing.config.kafka.topics)
        scanned = matched = invalid = 0
        complete = True
        deleted: list[Deleted] = []
        with self.scans.slot(tenant):
            records = read_range(
                self.scans.readers,
                topics,
                since_ms=since_ms,
                until_ms=until_ms,
                partition=spec.partition,
                from_offset=spec.from_offset,
                to_offset=spec.to_offset,
                max_offsets=most,
                deleted=deleted,
            )
            try:
                async with aclosing(records):
                    async for record in records:
                        scanned += 1
                        try:
                            event = await self._settlement.event_of(record)
                        except InvalidEvent:
                            continue
                        routing = self._settlement.routing
                        current = self._settlement.current(endpoint)
                        if current is None:
                            complete = False  # the endpoint went (or its id is another's) while the replay ran
                            break
                        endpoint = current  # as changed meanwhile: its lane, its settings
                        if endpoint_id not in routing.table.match(record.topic, event.event_type).select(event.decoded):
                            continue
                        if matched == most:
                            complete = False
                            break
                        matched += 1
                        if routing.catalogue.problem(event.event_type, event.decoded) is not None:
                            invalid += 1
                            continue
                        job = Job(
                            event=event,
                            delivery_id=delivery_id(event.key, endpoint_id),
                            ack=None,
                            trigger=REPLAY,
                            endpoint_id=endpoint_id,
                        )
                        if not await self._settlement.queue_wait(endpoint, job):  # never pushes live traffic aside
                            complete = False  # the endpoint went (or its id is another's) while the replay waited
                            break
            except TooMany:
                raise BadRequest(
                    f"to_offset: a replay delivers at most {most:,} events (api.replay_max_events), and the partition "
                    f"holds more from from_offset on: give a to_offset at most {most - 1:,} past from_offset"
                ) from None
        return ReplayCounts(
            scanned=scanned if tenant is None else UNSET,
            matched=matched,
            complete=complete,
            invalid_payload=invalid,
            deleted=deleted,
        )


def _ms(value: datetime | int | None, field: str) -> int | None:
    """Unix ms of a replay bound; BadRequest for a time before 1970 (Kafka's timestamps start there)."""
    if value is None or isinstance(value, int):
        return value
    ms = int(value.timestamp() * 1000)
    if ms < 0:
        raise BadRequest(f"{field}: must be 1970-01-01T00:00:00Z or later")
    return ms


def _check_range(spec: Replay, since_ms: int | None, until_ms: int | None, topics: list[str]) -> None:
    """BadRequest naming the field for a replay range that is not one time range or one partition's offset range."""
    if spec.from_time is None and spec.from_offset is None:
        raise BadRequest("from_time or from_offset: give one (RFC 3339 time, or offset with topic and partition)")
    if spec.from_time is not None and spec.from_offset is not None:
        raise BadRequest("from_time, from_offset: give one, not both")
    if spec.from_offset is not None and (spec.partition is None or spec.topic is None):
        raise BadRequest("topic, partition: an offset range needs both")
    if spec.to_offset is not None and spec.from_offset is None:
        raise BadRequest("to_offset: only with from_offset")
    if spec.to_time is not None and spec.from_time is None:
        raise BadRequest("to_time: only with from_time")
    if spec.to_offset is not None and spec.from_offset is not None and spec.to_offset < spec.from_offset:
        raise BadRequest("to_offset: must be >= from_offset")
    if until_ms is not None and since_ms is not None and until_ms < since_ms:
        raise BadRequest("to_time: must not be before from_time")
    if spec.topic is not None and spec.topic not in topics:
        raise BadRequest(f"topic: {spec.topic!r} is not one of the router's topics (kafka.topics)")


def _check_caps(spec: Replay, since_ms: int | None, until_ms: int | None, api: ApiConfig, now_ms: int) -> None:
    """BadRequest naming the field and the cap for a replay range over the platform's caps: more offsets than
    ``api.replay_max_events``, or a time range (to now, without ``to_time``) longer than ``api.replay_max_span_s``."""
    most = api.replay_max_events
    if spec.from_offset is not None and spec.to_offset is not None and spec.to_offset - spec.from_offset >= most:
        raise BadRequest(
            f"to_offset: a replay delivers at most {most:,} events (api.replay_max_events), and from_offset to "
            f"to_offset is {spec.to_offset - spec.from_offset + 1:,} offsets"
        )
    to_ms = until_ms if until_ms is not None else now_ms
    if since_ms is not None and to_ms - since_ms > api.replay_max_span_s * 1000:
        field, to = ("to_time", "to_time") if until_ms is not None else ("from_time", "now (no to_time)")
        raise BadRequest(
            f"{field}: a replay spans at most {api.replay_max_span_s:,g} s (api.replay_max_span_s), and from_time to "
            f"{to} is longer"
        )


def endpoint_of(config: Config, endpoint_id: str, environ: Mapping[str, str]) -> Endpoint:
    endpoints = resolve(config).endpoints
    for ep in endpoints:
        if ep.id == endpoint_id:
            return Endpoint(ep, config.delivery, environ)
    known = ", ".join(e.id for e in endpoints) or "none"
    raise NotFound(f"no endpoint {endpoint_id!r} (known: {known})")


def sample_event(endpoint: Endpoint) -> Event:
    """The profile's test event (``ping``, ``webhook_test``, ...), as if it had arrived on Kafka now."""
    sample = dict(endpoint.profile.test_event)
    event_type = str(sample.get("event") or sample.get("type"))
    return Event(orjson.dumps(sample), event_type, None, None, None, int(time.time() * 1000))


def ping_job(endpoint: Endpoint) -> Job:
    """One test delivery: the profile's test event under a fresh delivery id, never retried."""
    return Job(event=sample_event(endpoint), delivery_id="msg_" + uuid.uuid4().hex, ack=None, trigger=PING)


async def ping(config: Config, endpoint_id: str, environ: Mapping[str, str]) -> Outcome:
    """Without a running daemon: send the profile's test event once (``record`` then writes the outcome)."""
    endpoint = endpoint_of(config, endpoint_id, environ)
    sender = Sender(Metrics(), client_for(config.delivery))
    try:
        return await sender.attempt(endpoint, ping_job(endpoint))
    finally:
        await sender.close()


async def record(config: Config, outcome: Outcome, environ: Mapping[str, str], within_s: float = 15.0) -> None:
    """Write ``outcome`` to the results topic; KafkaUnavailable when the cluster has not acknowledged it within
    ``within_s`` (unreachable, or refusing the credentials)."""
    kafka = config.kafka
    producer = RouterProducer(kafka, environ)
    key = outcome.endpoint_id.encode() if outcome.endpoint_id else None
    try:
        await asyncio.wait_for(_send(producer, kafka.results_topic, encode_outcome(outcome), key), within_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        reason = f"no answer within {within_s:g} s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        where = kafka.bootstrap_servers
        raise KafkaUnavailable(f"not recorded on {kafka.results_topic}: Kafka at {where} ({reason})") from None
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(producer.stop(), 5)


async def _send(producer: RouterProducer, topic: str, value: bytes, key: bytes | None) -> None:
    await producer.start()
    await producer.send_and_wait(topic, value, key=key)
