"""Writer schemas from a Schema Registry compiled for decoding, the JSON each value becomes, and the cache by id. Pure.

A schema is compiled once from what the registry answers (its text and its references, resolved by the caller) and
decodes the values written with it into the event's JSON body, the same way every time:

- Avro (``fastavro``): records and maps are objects, arrays arrays; a union is its value (never a tagged pair); an
  enum its symbol; ``bytes`` and ``fixed`` base64 (standard alphabet, padded); ``decimal`` a string in plain notation
  with the schema's scale (``"12.30"``); ``uuid`` a string; ``timestamp-millis``/``-micros`` an RFC 3339 UTC time with
  ``Z`` and milliseconds (microseconds when there are any: ``2024-05-01T12:00:00.000Z``, ``...00.000123Z``); the
  ``local-timestamp-*`` types the same without ``Z``; ``date`` ``YYYY-MM-DD``; ``time-millis``/``-micros``
  ``HH:MM:SS.mmm`` (``.mmmmmm`` when there are microseconds); NaN and the infinities ``null`` (JSON has none).
- Protobuf (``protobuf``'s dynamic messages): the proto3 JSON mapping of ``json_format.MessageToDict``: 64-bit
  integers as strings, ``bytes`` base64, enums by name, well-known types in their JSON form (``Timestamp`` an RFC 3339
  string...). Field names as written in the .proto (``preserving_proto_field_name``) unless asked for the JSON names;
  fields at their default value included (``always_print_fields_with_no_presence``) unless asked not to.
- JSON Schema: the value is JSON already and is kept as written (not validated against its schema: the producer's
  serializer did that).

The schema's full name (an Avro named type's ``namespace.name``, the Protobuf message's ``package.Message``, a JSON
Schema's ``title``) can name the event type (``schema_registry.event_types``).

``fastavro`` and ``protobuf`` are the ``schema-registry`` extra's: imported when a schema of theirs is compiled.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import math
from collections import OrderedDict
from decimal import Decimal
from typing import Any, Literal

import msgspec
import orjson

from daemon.core.wire import message_indexes

Kind = Literal["AVRO", "PROTOBUF", "JSON"]
KINDS: tuple[str, ...] = ("AVRO", "PROTOBUF", "JSON")


class SchemaError(ValueError):
    """A schema that cannot be used (it does not parse, a reference is missing...): its events are invalid."""


class DecodeError(ValueError):
    """A value that does not decode with its writer's schema."""


class Named(msgspec.Struct, frozen=True):
    """A referenced schema: the name it is imported or referred to by, and its text."""

    name: str
    text: str


class SchemaText(msgspec.Struct, frozen=True, kw_only=True):
    """A schema as the registry answers it, each reference resolved (the ones it needs before it, depth first)."""

    kind: str = "AVRO"  # the registry leaves schemaType out for Avro
    text: str
    references: list[Named] = []


class ProtobufJson(msgspec.Struct, frozen=True, kw_only=True):
    """How Protobuf messages become JSON (``json_format.MessageToDict``'s options)."""

    json_names: bool = False  # lowerCamelCase JSON names instead of the .proto's field names
    include_defaults: bool = True  # fields at their default value are written (proto3 leaves them out)


class Schema:
    """A compiled writer's schema: ``decode(data)`` -> (the JSON body, the full name of what was decoded)."""

    kind: str = ""
    name: str | None = None

    def decode(self, data: memoryview) -> tuple[bytes, str | None]:  # pragma: no cover - every kind overrides it
        raise NotImplementedError


def compile_schema(source: SchemaText, protobuf: ProtobufJson | None = None) -> Schema:
    """The schema ready to decode with; SchemaError (naming what is wrong) when it cannot be."""
    if source.kind == "AVRO":
        return AvroSchema(source)
    if source.kind == "PROTOBUF":
        return ProtobufSchema(source, protobuf or ProtobufJson())
    if source.kind == "JSON":
        return JsonSchema(source)
    raise SchemaError(f"schema type {source.kind!r} is not one of {', '.join(KINDS)}")


# --- Avro ---


class AvroSchema(Schema):
    __slots__ = ("_parsed",)
    kind = "AVRO"

    def __init__(self, source: SchemaText) -> None:
        from fastavro import parse_schema

        named: dict[str, Any] = {}
        try:
            for ref in source.references:
                parse_schema(orjson.loads(ref.text), named_schemas=named)
            self._parsed = parse_schema(orjson.loads(source.text), named_schemas=named)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"an Avro schema that is not JSON ({exc})") from None
        except Exception as exc:  # fastavro's own: SchemaParseException, UnknownType, ValueError...
            raise SchemaError(f"an Avro schema that does not parse ({type(exc).__name__}: {exc})") from None
        parsed = self._parsed
        self.name = parsed.get("name") if isinstance(parsed, dict) and parsed.get("type") in _NAMED else None

    def decode(self, data: memoryview) -> tuple[bytes, str | None]:
        from fastavro import schemaless_reader

        buffer = io.BytesIO(data)
        try:
            value = schemaless_reader(buffer, self._parsed, None)
        except Exception as exc:  # EOFError, IndexError (a union or enum index), UnicodeDecodeError...
            raise DecodeError(f"does not decode with its Avro schema ({type(exc).__name__}: {exc})") from None
        left = len(data) - buffer.tell()
        if left:
            raise DecodeError(f"does not decode with its Avro schema ({left} bytes left over)")
        return _json(value), self.name


_NAMED = ("record", "enum", "fixed", "error")


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_avro_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError as exc:
        raise DecodeError(f"a value JSON cannot hold ({exc})") from None


def _avro_default(value: Any) -> Any:
    """orjson's fallback for what fastavro returns beyond JSON's types (see the module's mapping)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else None
    if isinstance(value, dt.datetime):
        spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
        if value.tzinfo is None:
            return value.isoformat(timespec=spec)
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec=spec) + "Z"
    if isinstance(value, dt.time):
        return value.isoformat(timespec="milliseconds" if value.microsecond % 1000 == 0 else "microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - orjson writes null itself
        return None
    raise TypeError(f"type {type(value).__name__} is not mapped to JSON")


# --- Protobuf ---

# The well-known types a schema may import without a reference (the registry treats them as built in).
_WELL_KNOWN = ("any", "api", "descriptor", "duration", "empty", "field_mask", "source_context", "struct", "timestamp",
               "type", "wrappers")  # fmt: skip


class ProtobufSchema(Schema):
    __slots__ = ("_file", "_options", "_pool", "_types")
    kind = "PROTOBUF"

    def __init__(self, source: SchemaText, options: ProtobufJson) -> None:
        from google.protobuf import descriptor_pool

        self._options = options
        self._pool = pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()
        try:
            for ref in source.references:
                self._add(_file_proto(ref.name, ref.text), added)
            main = _file_proto(None, source.text)
            self._add(main, added)
            self._file = pool.FindFileByName(main.name)
        except SchemaError:
            raise
        except Exception as exc:  # a file the pool refuses: a missing import, a name defined twice...
            raise SchemaError(f"a Protobuf schema that does not load ({type(exc).__name__}: {exc})") from None
        if not self._file.message_types_by_name:
            raise SchemaError("a Protobuf schema without a message")
        self._types: dict[tuple[int, ...], tuple[Any, str]] = {}
        first = self._message([0])
        self.name = first[1]

    def _add(self, proto: Any, added: set[str]) -> None:
        import importlib

        for dependency in proto.dependency:
            stem = dependency.removeprefix("google/protobuf/").removesuffix(".proto")
            if dependency not in added and dependency == f"google/protobuf/{stem}.proto" and stem in _WELL_KNOWN:
                module = importlib.import_module(f"google.protobuf.{stem}_pb2")
                self._pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
                added.add(dependency)
        self._pool.Add(proto)
        added.add(proto.name)

    def _message(self, indexes: list[int]) -> tuple[Any, str]:
        """The message class at ``indexes`` (top-level message, then nested ones) and its full name."""
        key = tuple(indexes)
        found = self._types.get(key)
        if found is not None:
            return found
        from google.protobuf import message_factory

        messages = list(self._file.message_types_by_name.values())
        descriptor = None
        for index in indexes:
            if index >= len(messages):
                raise DecodeError(f"message indexes {indexes} name no message of the schema")
            descriptor = messages[index]
            messages = list(descriptor.nested_types)
        assert descriptor is not None  # noqa: S101 - indexes are never empty (wire.message_indexes)
        found = self._types[key] = (message_factory.GetMessageClass(descriptor), descriptor.full_name)
        return found

    def decode(self, data: memoryview) -> tuple[bytes, str | None]:
        from google.protobuf import json_format
        from google.protobuf.message import DecodeError as ProtobufDecodeError

        try:
            indexes, rest = message_indexes(data)
        except ValueError as exc:
            raise DecodeError(str(exc)) from None
        cls, name = self._message(indexes)
        message = cls()
        try:
            message.ParseFromString(bytes(rest))
        except ProtobufDecodeError as exc:
            raise DecodeError(f"does not decode as {name} ({exc})") from None
        options = self._options
        try:
            value = json_format.MessageToDict(
                message,
                always_print_fields_with_no_presence=options.include_defaults,
                preserving_proto_field_name=not options.json_names,
            )
        except Exception as exc:  # a value the JSON mapping refuses (a Timestamp out of range...)
            raise DecodeError(f"{name} has no JSON form ({type(exc).__name__}: {exc})") from None
        return orjson.dumps(value), name


def _file_proto(name: str | None, text: str) -> Any:
    """A FileDescriptorProto from the registry's serialized form (base64, what ``?format=serialized`` answers)."""
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError as ProtobufDecodeError

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SchemaError(
            "the registry answered a Protobuf schema as .proto text, not in its serialized form "
            "(GET /schemas/ids/{id}?format=serialized, which Confluent's Schema Registry serves)"
        ) from None
    proto = descriptor_pb2.FileDescriptorProto()
    try:
        proto.ParseFromString(raw)
    except ProtobufDecodeError as exc:
        raise SchemaError(f"a serialized Protobuf schema that does not parse ({exc})") from None
    proto.name = name or proto.name or "schema.proto"
    return proto


# --- JSON Schema ---


class JsonSchema(Schema):
    __slots__ = ()
    kind = "JSON"

    def __init__(self, source: SchemaText) -> None:
        try:
            schema = orjson.loads(source.text)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"a JSON Schema that is not JSON ({exc})") from None
        title = schema.get("title") if isinstance(schema, dict) else None
        self.name = title if isinstance(title, str) and title else None

    def decode(self, data: memoryview) -> tuple[bytes, str | None]:
        raw = bytes(data)
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise DecodeError("not valid JSON (a JSON Schema value)") from None
        return raw, self.name


# --- the cache ---


class Unknown(msgspec.Struct, frozen=True):
    """A schema id whose events are invalid: the registry does not know it, or its schema cannot be used."""

    reason: str


class Failing(msgspec.Struct, frozen=True):
    """A schema id the registry could not answer for (a transient fault): asked again from ``retry_at_ms`` on."""

    reason: str
    retry_at_ms: int


Entry = Schema | Unknown | Failing


class SchemaCache:
    """What is known of each schema id, the most recently used kept up to ``size`` ids (the ids come from the records:
    outside input). Registry ids are immutable, so a schema or an unknown id is kept until it is pushed out."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._entries: OrderedDict[int, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, schema_id: int) -> Entry | None:
        entry = self._entries.get(schema_id)
        if entry is not None:
            self._entries.move_to_end(schema_id)
        return entry

    def put(self, schema_id: int, entry: Entry) -> None:
        self._entries[schema_id] = entry
        self._entries.move_to_end(schema_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def wanted(self, ids: set[int], now_ms: int) -> list[int]:
        """The ids to ask the registry for: not known, or failing and due again."""
        out = []
        for schema_id in sorted(ids):
            entry = self._entries.get(schema_id)
            if entry is None or (isinstance(entry, Failing) and entry.retry_at_ms <= now_ms):
                out.append(schema_id)
        return out
