"""Values that flow through the router: the event type probe and the outcome record. Encoders built once."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import quote

import msgspec
import orjson

from daemon.core.errors import InvalidEvent

RESPONSE_BODY_LIMIT: Final = 4096

# Called once Kafka has acknowledged a record (and so whatever waits on it may move on).
Ack = Callable[[], None]

# Outcome statuses written to the results topic.
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
BLOCKED: Final = "blocked"  # the network guard refused every address of the endpoint's host: final, never retried
INVALID_EVENT: Final = "invalid_event"
RENDER_FAILED: Final = "render_failed"  # this endpoint's body could not be built from the event

DEAD_LETTERED: Final = "dead_lettered"
SKIPPED_PAUSED: Final = "skipped_paused"
ENDPOINT_PAUSED: Final = "endpoint_paused"
ENDPOINT_RESUMED: Final = "endpoint_resumed"

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


class HealthState(msgspec.Struct, kw_only=True):
    """An endpoint's health, as kept on the compacted health topic (key: endpoint id)."""

    endpoint_id: str
    paused: bool
    reason: str | None = None
    since: str | None = None
    consecutive_failures: int = 0


encode_health = msgspec.json.Encoder().encode
decode_health = msgspec.json.Decoder(HealthState).decode


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def utc_now_iso() -> str:
    """Current UTC time as RFC 3339 with milliseconds, e.g. ``2026-11-23T11:30:00.123Z``."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int(now * 1000) % 1000:03d}Z"


def truncate_body(raw: bytes) -> str:
    """A response body as text, at most ``RESPONSE_BODY_LIMIT`` bytes once encoded as UTF-8."""
    return raw[:RESPONSE_BODY_LIMIT].decode("utf-8", errors="ignore")


MASKED: Final = "***"
# Shorter values are not secrets worth the name, and masking them would garble most bodies.
MIN_MASKED: Final = 6
_MIN_TAIL = 4  # the shortest start of a secret masked at the end of a cut body


class Mask:
    """Replaces an endpoint's secret values in a text bound for the results topic (a response body, an error).

    Each value (at least ``MIN_MASKED`` characters) is masked as written and as a receiver that echoes it most
    likely writes it: inside a JSON string (with or without ``\\u`` escapes) and percent-encoded. A body cut at
    the size limit may end with the first characters of a secret: those are masked too (``cut=True``).
    """

    __slots__ = ("_forms",)

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if len(value) >= MIN_MASKED:
                forms.update(
                    (value, json.dumps(value)[1:-1], orjson.dumps(value).decode()[1:-1], quote(value, safe=""))
                )
        # Longest first: a secret that holds another is masked whole.
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __call__(self, text: str, cut: bool = False) -> str:
        changed = True
        while changed:  # until no form is left, masks included (each round shortens the text: it ends)
            changed = False
            for form in self._forms:
                if form in text:
                    text, changed = text.replace(form, MASKED), True
        if cut:
            for form in self._forms:
                for k in range(min(len(form) - 1, len(text)), _MIN_TAIL - 1, -1):
                    if text.endswith(form[:k]):
                        text = text[:-k] + MASKED
                        break
        return text


class Event:
    """One event as read from Kafka, shared by all of its deliveries.

    The JSON is decoded at most once, and only when something needs its fields (a profile's body, a
    condition); each distinct rendered body is built once and shared by the endpoints that send it.
    ``key`` is the event's identity, from which every delivery id is derived (``daemon.delivery.deliver.delivery_id``):
    the event's own id when it has one (a configured field, or its CloudEvents source and id), else its
    Kafka coordinates and the record's timestamp (a re-created topic does not reproduce them).
    """

    # __slots__: one per record read (the hot path); not a msgspec Struct because it is never encoded.
    __slots__ = (
        "_decoded", "bodies", "event_type", "key", "missing", "offset", "partition", "time_ms", "topic", "traceparent",
        "value",
    )  # fmt: skip

    @classmethod
    def from_retry(cls, record: RetryRecord) -> Event:
        event = cls(record.value, record.event_type, record.topic, record.partition, record.offset, record.time_ms,
                    record.key, record.traceparent)  # fmt: skip
        event.missing = record.value_omitted
        return event

    @property
    def type_field(self) -> str | None:
        """The top-level field the type was read from: ``event``, else ``type``; None for another field."""
        decoded = self.decoded()
        for name in ("event", "type"):
            if decoded.get(name) == self.event_type:
                return name
        return None

    def __init__(
        self, value: bytes, event_type: str, topic: str | None, partition: int | None, offset: int | None,
        time_ms: int, key: str = "", traceparent: str | None = None,
    ) -> None:  # fmt: skip
        self.value = value
        self.event_type = event_type
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.time_ms = time_ms
        self.key = key
        self.traceparent = traceparent
        self.missing = False  # the value was too large to keep in a retry record: read it back from Kafka
        self._decoded: dict[str, Any] | None = None
        self.bodies: dict[Any, bytes] = {}

    def decoded(self) -> dict[str, Any]:
        if self._decoded is None:
            try:
                value = orjson.loads(self.value)
            except orjson.JSONDecodeError:
                value = None
            self._decoded = value if isinstance(value, dict) else {}
        return self._decoded


class _Probe(msgspec.Struct):
    event: Any = None
    type: Any = None
    id: Any = None  # a CloudEvent's (structured mode), with specversion and source
    source: Any = None
    specversion: Any = None


_probe_decoder = msgspec.json.Decoder(_Probe)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# W3C Trace Context: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags> (future versions may append).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[ -~]*)?")


def _ce_key(source: Any, ident: Any) -> str | None:
    """The identity of a CloudEvent: its source and id (unique together, by the specification)."""
    if isinstance(ident, (str, int)) and not isinstance(ident, bool) and str(ident):
        return f"ce:{source if isinstance(source, str) else ''}\0{ident}"
    return None


class TypeReader:
    """Reads an event's type (and identity) from a raw record without building a dict of the whole event.

    The default reads a top-level ``event`` field, then ``type``; a topic may name another field,
    dotted for a nested one (``meta.kind``), and a field holding the event's own id. CloudEvents are
    read in both modes of their Kafka binding: binary (``ce_type``, ``ce_id``, ``ce_source`` record
    headers, the data in the value) and structured (the value is the CloudEvent, routed by its ``type``).
    A ``traceparent`` record header is kept for the webhook request.
    """

    __slots__ = ("_decoder", "_id_path", "_path", "describe", "max_bytes")  # read for every record (the hot path)

    def __init__(self, field: str | None = None, id_field: str | None = None, max_bytes: int | None = None) -> None:
        self._path: tuple[str, ...] = tuple(field.split(".")) if field else ()
        self._id_path: tuple[str, ...] = tuple(id_field.split(".")) if id_field else ()
        self.describe = f"'{field}'" if field else "'event' or 'type'"
        self.max_bytes = max_bytes
        plain = not field and not id_field
        self._decoder: msgspec.json.Decoder[Any] = _probe_decoder if plain else msgspec.json.Decoder(Any)

    def read(self, value: bytes | None) -> str:
        """The event type; raises ``InvalidEvent`` with a reason fit for the results record."""
        return self._parse(value)[0]

    def event(self, record: Any) -> Event:
        """The event of a consumed record; raises ``InvalidEvent`` with a reason fit for the results record."""
        value: bytes | None = record.value
        if value is not None and self.max_bytes is not None and len(value) > self.max_bytes:
            raise InvalidEvent(f"too large: {len(value)} bytes (kafka.max_event_bytes is {self.max_bytes})")
        traceparent = key = ce_type = None
        headers = record.headers
        if headers:  # most records carry none: nothing to look at
            ce_id = ce_source = None
            for name, raw in headers:
                if name == "traceparent":
                    traceparent = _text(raw)
                    if traceparent is not None and not _TRACEPARENT.fullmatch(traceparent):
                        traceparent = None  # malformed: not passed on
                elif name == "ce_type":
                    ce_type = _text(raw)
                elif name == "ce_id":
                    ce_id = _text(raw)
                elif name == "ce_source":
                    ce_source = _text(raw)
            if ce_type is not None:
                key = _ce_key(ce_source, ce_id)
        if ce_type is not None:  # binary mode: the type is the header's; the value is the data, whatever it is
            event_type = _checked(ce_type, "the ce_type header")
        else:
            event_type, key = self._parse(value, record.topic)
        stamp = record.timestamp if record.timestamp and record.timestamp > 0 else int(time.time() * 1000)
        topic, partition, offset = record.topic, record.partition, record.offset
        if key is None:
            key = f"kafka:{topic}\0{partition}\0{offset}\0{stamp}"
        return Event(value or b"", event_type, topic, partition, offset, stamp, key, traceparent)

    def _parse(self, value: bytes | None, topic: str = "") -> tuple[str, str | None]:
        """The type, and the event's own identity when it has one."""
        if not value:
            raise InvalidEvent("empty record")
        try:
            value.decode()  # JSON is UTF-8: the decoder checks only the strings it keeps (a few ns per KB)
            decoded = self._decoder.decode(value)
        except msgspec.ValidationError:
            raise InvalidEvent("not a JSON object") from None
        except msgspec.DecodeError:
            raise InvalidEvent("not valid JSON") from None
        except UnicodeDecodeError:
            raise InvalidEvent("not valid UTF-8") from None
        except RecursionError:
            raise InvalidEvent("nested too deeply") from None
        key: str | None = None
        if isinstance(decoded, _Probe):
            found = decoded.event if decoded.event is not None else decoded.type
            if decoded.specversion is not None:
                key = _ce_key(decoded.source, decoded.id)
        else:
            if not isinstance(decoded, dict):
                raise InvalidEvent("not a JSON object")
            if self._path:
                found = _at(decoded, self._path)
            else:
                found = decoded.get("event") if decoded.get("event") is not None else decoded.get("type")
            if self._id_path:
                ident = _at(decoded, self._id_path)
                if isinstance(ident, (str, int)) and not isinstance(ident, bool) and str(ident):
                    key = f"id:{topic}\0{ident}"  # ids are unique per topic, not across topics
            if key is None and decoded.get("specversion") is not None:
                key = _ce_key(decoded.get("source"), decoded.get("id"))
        if found is None:
            raise InvalidEvent(f"no event type field ({self.describe})")
        return _checked(found, f"event type field ({self.describe})"), key


def _at(decoded: Any, path: tuple[str, ...]) -> Any:
    found = decoded
    for part in path:
        found = found.get(part) if isinstance(found, dict) else None
    return found


def _checked(found: Any, what: str) -> str:
    if not isinstance(found, str) or not found:
        raise InvalidEvent(f"{what} must be a non-empty string")
    if _CONTROL.search(found):  # it reaches header values (X-Agora-Event) and logs
        raise InvalidEvent(f"{what} must not contain control characters")
    return found


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None
