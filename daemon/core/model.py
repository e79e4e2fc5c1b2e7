"""The records the router writes (results, retries, dead letters, skipped batches, health) and their encoders, built
once; the outcome statuses and what started an attempt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

RESPONSE_BODY_LIMIT: Final = 4096


# Called once Kafka has acknowledged a record (and so whatever waits on it may move on).
Ack = Callable[[], None]


# Outcome statuses written to the results topic.
DELIVERED: Final = "delivered"


FAILED: Final = "failed"


BLOCKED: Final = "blocked"  # the network guard refused every address of the endpoint's host: final, never retried


INVALID_EVENT: Final = "invalid_event"


RENDER_FAILED: Final = "render_failed"  # this endpoint's body could not be built from the event


# The event does not match the schema its type's catalogue entry validates: never delivered, dead-lettered.
INVALID_PAYLOAD: Final = "invalid_payload"


DEAD_LETTERED: Final = "dead_lettered"


SKIPPED_PAUSED: Final = "skipped_paused"


ENDPOINT_PAUSED: Final = "endpoint_paused"


ENDPOINT_RESUMED: Final = "endpoint_resumed"


# An endpoint's circuit breaker opened (nothing attempted until it has cooled down and a probe got through) or closed.
ENDPOINT_CIRCUIT_OPENED: Final = "endpoint_circuit_opened"


ENDPOINT_CIRCUIT_CLOSED: Final = "endpoint_circuit_closed"


# What started an attempt. Only live events are retried automatically.
LIVE: Final = "live"


PING: Final = "ping"


REDELIVERY: Final = "redelivery"


REPLAY: Final = "replay"


class Outcome(msgspec.Struct, kw_only=True):
    """One results-topic record: one delivery attempt, or one event that could not be routed."""

    delivery_id: str | None
    endpoint_id: str | None
    event_type: str | None
    attempt: int
    status: str
    http_status: int | None = None
    duration_ms: float | None = None
    response_body: str | None = None
    error: str | None = None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    timestamp: str
    trigger: str = LIVE
    profile: str | None = None
    attempt_id: str | None = None  # this record's own id, unique
    sent_id: str | None = None  # the id the contract put on the wire for this attempt (agora: X-Agora-Delivery)
    redelivery_of_id: str | None = None  # the attempt_id of the attempt this one repeats
    retry_after_s: float | None = None  # what the endpoint asked for
    next_attempt_at: str | None = None  # when a retry is scheduled


encode_outcome = msgspec.json.Encoder().encode


decode_outcome = msgspec.json.Decoder(Outcome).decode


class IndexEntry(msgspec.Struct, kw_only=True):
    """One entry of the delivery index, as a lookup or a search gives it: where one results record of a delivery is
    (``partition``, ``offset`` of the results topic), with what a search filters on and a list shows. One per
    attempt: every attempt of a delivery has its own."""

    delivery_id: str
    endpoint_id: str
    event_type: str | None
    status: str
    attempt: int
    trigger: str
    at_ms: int  # when the attempt was recorded (unix ms)
    http_status: int | None = None
    duration_ms: float | None = None
    partition: int = -1
    offset: int = -1


# What the results writer holds of a results record's entry until Kafka says where the record landed: delivery_id,
# endpoint_id, event_type, status, attempt, trigger, at_ms, http_status, duration_ms.
Indexed = tuple[str, str, str | None, str, int, str, int, int | None, float | None]


# One entry as an index record holds it: the results partition and offset, then ``Indexed``'s fields in their order
# (the columns of the local copy, ``daemon.kafka.index``, in theirs).
IndexRow = tuple[int, int, str, str, str | None, str, int, str, int, int | None, float | None]


class IndexRecord(msgspec.Struct, kw_only=True):
    """One record of the delivery index topic: the entries of the results records one write of the results writer
    placed (consecutive offsets of one results partition, those of deliveries only), each an ``IndexRow`` (a JSON
    array). Smaller than the results records it points at: each entry holds a part of its record's fields."""

    entries: list[IndexRow]


encode_index = msgspec.json.Encoder().encode


_decode_record = msgspec.json.Decoder(IndexRecord).decode
_decode_entry = msgspec.json.Decoder(IndexEntry).decode  # one entry a record: what the index held before records


def decode_index(value: bytes) -> list[IndexRow]:
    """The entries of a record of the delivery index topic (an ``IndexRecord``, or the one ``IndexEntry`` a record
    held before); msgspec.DecodeError for anything else."""
    try:
        return _decode_record(value).entries
    except msgspec.DecodeError:
        e = _decode_entry(value)
        return [(e.partition, e.offset, e.delivery_id, e.endpoint_id, e.event_type, e.status, e.attempt, e.trigger,
                 e.at_ms, e.http_status, e.duration_ms)]  # fmt: skip


def index_entry(outcome: Outcome, at_ms: int) -> Indexed | None:
    """The index entry of a results record, its position still to learn; None for a record of no delivery (an event
    that could not be routed, an endpoint's pause or resume)."""
    if outcome.delivery_id is None or outcome.endpoint_id is None:
        return None
    return (outcome.delivery_id, outcome.endpoint_id, outcome.event_type, outcome.status, outcome.attempt,
            outcome.trigger, at_ms, outcome.http_status, outcome.duration_ms)  # fmt: skip


class Attempt(msgspec.Struct, kw_only=True):
    """One past attempt, carried by retry and dead-letter records."""

    attempt: int
    attempt_id: str | None
    status: str
    http_status: int | None
    error: str | None
    at: str


class RetryRecord(msgspec.Struct, kw_only=True):
    """A delivery waiting in a delay tier: everything needed to make its next attempt."""

    delivery_id: str
    endpoint_id: str
    attempt: int  # the attempt to make when due
    due_ms: int  # never sent before this
    tier_due_ms: int  # when the tier it waits in lets it out
    delay_ms: int  # the delay it was scheduled with
    trigger: str
    event_type: str
    topic: str | None
    partition: int | None
    offset: int | None
    time_ms: int
    value: bytes
    history: list[Attempt] = []
    deferred: bool = False  # its endpoint's queue was full; no attempt was used up
    deferrals: int = 0  # how often it was deferred so far
    key: str = ""  # the event's identity (Event.key)
    traceparent: str | None = None
    value_omitted: bool = False  # too large for a retry record: read back from topic/partition/offset when due


encode_retry = msgspec.msgpack.Encoder().encode


decode_retry = msgspec.msgpack.Decoder(RetryRecord).decode


class DeadLetter(msgspec.Struct, kw_only=True):
    """A delivery that ended without success, with its attempts' history and the event itself."""

    delivery_id: str
    endpoint_id: str
    event_type: str
    reason: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    attempts: list[Attempt]
    dead_lettered_at: str
    event: msgspec.Raw  # null when it would not fit the topic's records (``event_omitted`` says so)
    event_omitted: str | None = None


encode_dead_letter = msgspec.json.Encoder().encode


decode_dead_letter = msgspec.json.Decoder(DeadLetter).decode


class SkippedBatch(msgspec.Struct, kw_only=True):
    """A record batch that could not be decoded, skipped by an operator: kept on the dead-letter topic as it was."""

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int  # the batch's first offset
    next_offset: int  # the first offset after it
    error: str
    held_since: str
    skipped_at: str
    raw_bytes: int
    raw: str | None  # base64 of the batch as the broker keeps it
    raw_omitted: str | None = None


encode_skipped = msgspec.json.Encoder().encode


# Who paused an endpoint (``HealthState.paused_by``): the platform (the admin token, the operator's routes and
# commands, ``paused = true`` in the config file), its tenant (the tenant's own token), its contract (an answer the
# contract pauses on: 410 Gone), or its failures (``pause_after_failures`` in a row).
PAUSED_BY_PLATFORM: Final = "platform"
PAUSED_BY_TENANT: Final = "tenant"
PAUSED_BY_CONTRACT: Final = "contract"
PAUSED_BY_AUTOMATIC: Final = "automatic"
# What a tenant may lift: its own pauses, and those its failures caused. Never the platform's nor its contract's.
TENANT_MAY_LIFT: Final = frozenset({PAUSED_BY_TENANT, PAUSED_BY_AUTOMATIC})


class HealthState(msgspec.Struct, kw_only=True):
    """An endpoint's health, as kept on the compacted health topic (key: endpoint id)."""

    endpoint_id: str
    paused: bool
    reason: str | None = None  # "{kind}: {detail}"
    since: str | None = None
    consecutive_failures: int = 0
    paused_by: str | None = None  # one of PAUSED_BY_*, while paused (read it with ``paused_by``)


encode_health = msgspec.json.Encoder().encode


decode_health = msgspec.json.Decoder(HealthState).decode

# A pause's kind (its reason's prefix) -> who paused, for the states written before ``paused_by`` was.
_PAUSED_BY_KIND: Final = {"failures": PAUSED_BY_AUTOMATIC, "gone": PAUSED_BY_CONTRACT}


def paused_by(state: HealthState | None) -> str | None:
    """Who paused an endpoint (one of ``PAUSED_BY_*``), None when it is not paused. A state written before
    ``paused_by`` existed says it by its reason's kind; an unknown kind is the platform's (``operator: paused
    through the API`` may have been the platform's or its tenant's: the platform's, never lifted by mistake)."""
    if state is None or not state.paused:
        return None
    if state.paused_by is not None:
        return state.paused_by
    kind = (state.reason or "").partition(":")[0]
    return _PAUSED_BY_KIND.get(kind, PAUSED_BY_PLATFORM)


def tenant_may_lift(state: HealthState | None) -> bool:
    """True when the endpoint's tenant may resume it: it is not paused, or paused by the tenant or its failures."""
    by = paused_by(state)
    return by is None or by in TENANT_MAY_LIFT


def truncate_body(raw: bytes) -> str:
    """A response body as text, at most ``RESPONSE_BODY_LIMIT`` bytes once encoded as UTF-8."""
    return raw[:RESPONSE_BODY_LIMIT].decode("utf-8", errors="ignore")
