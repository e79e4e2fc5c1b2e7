"""An event as read from Kafka, and the reader of its type and identity (plain JSON or a CloudEvent in
either mode of its Kafka binding, or a value in the Schema Registry wire format decoded to JSON) from a raw record."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from daemon.core.errors import InvalidEvent, SchemaUnavailable
from daemon.core.model import RetryRecord
from daemon.core.schemas import DecodeError, Failing, SchemaCache, Unknown
from daemon.core.wire import HEADER_BYTES, MAGIC, WireError, payload, schema_id


class Event:
    """One event as read from Kafka, shared by all of its deliveries.

    The JSON is decoded at most once, and only when something needs its fields (a profile's body, a
    condition); each distinct rendered body is built once and shared by the endpoints that send it.
    ``key`` is the event's identity, from which every delivery id is derived (``daemon.core.ids.delivery_id``):
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

    A topic whose values are in the Schema Registry wire format (``value_format`` ``schema-registry``, or ``auto`` for
    a value whose first byte is 0) has each value decoded with its writer's schema from ``schemas`` (filled by whoever
    fetches them, before the record is read: ``SchemaUnavailable`` when it is not there yet or the registry could not
    answer) into the JSON the event carries from then on. The type is then, first found: the ``ce_type`` header, the
    topic's type header, the schema's full name mapped by ``event_types``, the type field of the value. The identity:
    the CloudEvent headers, the topic's id header, the id field, a structured CloudEvent's source and id.
    """

    __slots__ = (
        "_decoder", "_event_types", "_framed", "_id_header", "_id_path", "_path", "_schemas", "_strict", "_type_header",
        "describe", "max_bytes",
    )  # read for every record (the hot path)  # fmt: skip

    def __init__(
        self,
        field: str | None = None,
        id_field: str | None = None,
        max_bytes: int | None = None,
        *,
        value_format: str = "json",
        schemas: SchemaCache | None = None,
        event_types: Mapping[str, str] | None = None,
        type_header: str | None = None,
        id_header: str | None = None,
    ) -> None:
        self._path: tuple[str, ...] = tuple(field.split(".")) if field else ()
        self._id_path: tuple[str, ...] = tuple(id_field.split(".")) if id_field else ()
        self.describe = f"'{field}'" if field else "'event' or 'type'"
        self.max_bytes = max_bytes
        plain = not field and not id_field
        self._decoder: msgspec.json.Decoder[Any] = _probe_decoder if plain else msgspec.json.Decoder(Any)
        self._framed = value_format != "json"
        self._strict = value_format == "schema-registry"
        self._schemas = schemas if schemas is not None else SchemaCache()
        self._event_types = dict(event_types or {})
        self._type_header = type_header
        self._id_header = id_header

    @property
    def framed(self) -> bool:
        """True when values may be in the Schema Registry wire format (their schemas fetched before they are read)."""
        return self._framed

    def schema_id(self, value: bytes | None) -> int | None:
        """The writer's schema id of a value in the wire format (None for any other value, or a plain JSON topic)."""
        if not self._framed or not value or value[0] != MAGIC or len(value) < HEADER_BYTES:
            return None
        return schema_id(value)

    def read(self, value: bytes | None) -> str:
        """The event type; raises ``InvalidEvent`` with a reason fit for the results record."""
        found = self._parse(value)[0]
        assert found is not None  # noqa: S101 - _parse raises rather than find none when a type is needed
        return found

    def event(self, record: Any) -> Event:
        """The event of a consumed record; raises ``InvalidEvent`` with a reason fit for the results record, and
        ``SchemaUnavailable`` when its writer's schema is not known yet (the record is to be read again later)."""
        value: bytes | None = record.value
        if value is not None and self.max_bytes is not None and len(value) > self.max_bytes:
            raise InvalidEvent(f"too large: {len(value)} bytes (kafka.max_event_bytes is {self.max_bytes})")
        schema_name: str | None = None
        if self._framed and value and (self._strict or value[0] == MAGIC):
            value, schema_name = self._decode(value)
        traceparent = key = ce_type = header_type = None
        headers = record.headers
        if headers:  # most records carry none: nothing to look at
            ce_id = ce_source = header_id = None
            type_header, id_header = self._type_header, self._id_header
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
                if name == type_header:
                    header_type = _text(raw)
                if name == id_header:
                    header_id = _text(raw)
            if ce_type is not None:
                key = _ce_key(ce_source, ce_id)
            elif header_id:
                key = f"id:{record.topic}\0{header_id}"
        if ce_type is not None:  # binary mode: the type is the header's; the value is the data, whatever it is
            event_type = _checked(ce_type, "the ce_type header")
        else:
            if header_type is not None:
                found: str | None = _checked(header_type, f"the {self._type_header} header")
            else:
                found = self._event_types.get(schema_name) if schema_name is not None else None
            if found is None:
                found, own = self._parse(value, record.topic)
            else:  # the value need not be JSON (as in CloudEvents' binary mode); its id field is read when it is
                own = None
                if key is None:
                    with contextlib.suppress(InvalidEvent):
                        own = self._parse(value, record.topic, need_type=False)[1]
            event_type = found  # type: ignore[assignment]  # _parse raises rather than find none
            key = key or own
        stamp = record.timestamp if record.timestamp and record.timestamp > 0 else int(time.time() * 1000)
        topic, partition, offset = record.topic, record.partition, record.offset
        if key is None:
            key = f"kafka:{topic}\0{partition}\0{offset}\0{stamp}"
        return Event(value or b"", event_type, topic, partition, offset, stamp, key, traceparent)

    def _decode(self, value: bytes) -> tuple[bytes, str | None]:
        """The JSON of a value in the wire format, and the full name of its schema's type."""
        try:
            sid = schema_id(value)
        except WireError as exc:
            raise InvalidEvent(str(exc)) from None
        entry = self._schemas.get(sid)
        if entry is None:
            raise SchemaUnavailable(f"schema id {sid} not fetched yet", int(time.time() * 1000))
        if isinstance(entry, Failing):
            raise SchemaUnavailable(entry.reason, entry.retry_at_ms)
        if isinstance(entry, Unknown):
            raise InvalidEvent(entry.reason)
        try:
            decoded, name = entry.decode(payload(value))
        except DecodeError as exc:
            raise InvalidEvent(f"schema id {sid}: {exc}") from None
        if self.max_bytes is not None and len(decoded) > self.max_bytes:
            raise InvalidEvent(f"too large once decoded: {len(decoded)} bytes of JSON (kafka.max_event_bytes is "
                               f"{self.max_bytes})")  # fmt: skip
        return decoded, name

    def _parse(self, value: bytes | None, topic: str = "", need_type: bool = True) -> tuple[str | None, str | None]:
        """The type (None only when not ``need_type``), and the event's own identity when it has one."""
        if not value:
            if not need_type:
                return None, None
            raise InvalidEvent("empty record")
        try:
            value.decode()  # JSON is UTF-8: the decoder checks only the strings it keeps (a few ns per KB)
            decoded = self._decoder.decode(value)
        except msgspec.ValidationError:
            if not need_type:
                return None, None
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
                if not need_type:
                    return None, None
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
        if not need_type:
            return None, key
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
