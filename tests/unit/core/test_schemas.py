"""Writer schemas compiled and the JSON their values become: Avro's types and logical types, Protobuf's proto3 JSON
mapping with its options, JSON Schema kept as written; schemas that cannot be used; the cache by id."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_writer

from daemon.core.schemas import (
    DecodeError,
    Failing,
    Named,
    ProtobufJson,
    SchemaCache,
    SchemaError,
    SchemaText,
    Unknown,
    compile_schema,
)
from daemon.core.wire import frame, payload
from tests import protos

LEAD = {
    "type": "record", "name": "LeadCreated", "namespace": "com.acme",
    "fields": [
        {"name": "event", "type": "string"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "raw", "type": "bytes"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 2}},
        {"name": "owner", "type": ["null", "string", {"type": "record", "name": "Team", "fields": [
            {"name": "name", "type": "string"}]}]},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
        {"name": "counts", "type": {"type": "map", "values": "int"}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "ratio", "type": "double"},
        {"name": "nothing", "type": "null"},
    ],
}  # fmt: skip

UTC = dt.UTC


def _avro(schema: Any, value: Any) -> memoryview:
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(schema), value)
    return memoryview(buffer.getvalue())


def _lead(**changes: Any) -> dict[str, Any]:
    value = {
        "event": "lead.created", "at": dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
        "at_us": dt.datetime(2024, 5, 1, 12, 0, 0, 123, tzinfo=UTC), "local": dt.datetime(2024, 5, 1, 12),
        "day": dt.date(2024, 5, 1), "clock": dt.time(12, 1, 2, 3000), "amount": Decimal("12.30"),
        "id": uuid.UUID(int=1), "raw": b"\x00\xff", "digest": b"ab", "owner": None, "color": "GREEN",
        "counts": {"a": 1}, "tags": ["x"], "ratio": 0.5, "nothing": None,
    }  # fmt: skip
    return value | changes


def test_avro_values_become_json_as_documented() -> None:
    schema = compile_schema(SchemaText(text=json.dumps(LEAD)))
    body, name = schema.decode(_avro(LEAD, _lead()))
    assert name == "com.acme.LeadCreated"
    assert orjson.loads(body) == {
        "event": "lead.created",
        "at": "2024-05-01T12:00:00.123Z",
        "at_us": "2024-05-01T12:00:00.000123Z",
        "local": "2024-05-01T12:00:00.000",
        "day": "2024-05-01",
        "clock": "12:01:02.003",
        "amount": "12.30",
        "id": "00000000-0000-0000-0000-000000000001",
        "raw": "AP8=",
        "digest": "YWI=",
        "owner": None,
        "color": "GREEN",
        "counts": {"a": 1},
        "tags": ["x"],
        "ratio": 0.5,
        "nothing": None,
    }


@pytest.mark.parametrize(("owner", "shown"), [("ann", "ann"), ({"name": "sales"}, {"name": "sales"}), (None, None)])
def test_an_avro_union_is_its_plain_value_never_a_tagged_pair(owner: Any, shown: Any) -> None:
    schema = compile_schema(SchemaText(text=json.dumps(LEAD)))
    assert orjson.loads(schema.decode(_avro(LEAD, _lead(owner=owner)))[0])["owner"] == shown


def test_the_same_value_gives_the_same_bytes_every_time() -> None:
    schema = compile_schema(SchemaText(text=json.dumps(LEAD)))
    data = _avro(LEAD, _lead())
    assert schema.decode(data) == schema.decode(data)


def test_avro_nan_and_infinity_become_null_and_a_zero_time_keeps_its_milliseconds() -> None:
    schema = compile_schema(SchemaText(text=json.dumps(LEAD)))
    body = orjson.loads(
        schema.decode(_avro(LEAD, _lead(ratio=float("nan"), at=dt.datetime(2024, 1, 1, tzinfo=UTC))))[0]
    )
    assert body["ratio"] is None
    assert body["at"] == "2024-01-01T00:00:00.000Z"


def test_an_avro_schema_with_a_reference_is_compiled_with_the_named_type_it_refers_to() -> None:
    team = {"type": "record", "name": "Team", "namespace": "com.acme", "fields": [{"name": "name", "type": "string"}]}
    lead = {"type": "record", "name": "Lead", "namespace": "com.acme", "fields": [{"name": "team", "type": "Team"}]}
    schema = compile_schema(SchemaText(text=json.dumps(lead), references=[Named("com.acme.Team", json.dumps(team))]))
    data = _avro({**lead, "fields": [{"name": "team", "type": team}]}, {"team": {"name": "sales"}})
    assert orjson.loads(schema.decode(data)[0]) == {"team": {"name": "sales"}}


def test_a_primitive_avro_schema_has_no_name_and_decodes_to_its_json_value() -> None:
    schema = compile_schema(SchemaText(text='"string"'))
    assert schema.name is None
    assert schema.decode(_avro("string", "hello")) == (b'"hello"', None)


@pytest.mark.parametrize(
    ("data", "says"), [(b"", "EOFError"), (b"\x02a", "EOFError|left over|decode"), (b"\x00\x00trailing", "left over")]
)
def test_a_value_that_does_not_decode_with_its_avro_schema_says_so(data: bytes, says: str) -> None:
    schema = compile_schema(SchemaText(text=json.dumps({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string"}, {"name": "b", "type": "string"}]})))  # fmt: skip
    with pytest.raises(DecodeError, match=says):
        schema.decode(memoryview(data))


@pytest.mark.parametrize(
    ("kind", "text", "says"),
    [("AVRO", "{not json", "not JSON"), ("AVRO", '{"type": "nope"}', "does not parse"),
     ("AVRO", '{"type": "record", "name": "R", "fields": [{"name": "t", "type": "Missing"}]}', "does not parse"),
     ("PROTOBUF", 'syntax = "proto3"; message M { string a = 1; }', ".proto text"),
     ("PROTOBUF", "AAAA", "does not parse|without a message"), ("JSON", "{", "not JSON"),
     ("XML", "<a/>", "not one of AVRO, PROTOBUF, JSON")],
)  # fmt: skip
def test_a_schema_that_cannot_be_used_is_refused_saying_why(kind: str, text: str, says: str) -> None:
    with pytest.raises(SchemaError, match=says):
        compile_schema(SchemaText(kind=kind, text=text))


def _lead_schema(options: ProtobufJson | None = None) -> Any:
    money, lead = protos.files()
    source = SchemaText(kind="PROTOBUF", text=protos.serialized(lead),
                        references=[Named("acme/money.proto", protos.serialized(money))])  # fmt: skip
    return compile_schema(source, options)


def _message(**fields: Any) -> Any:
    message = protos.classes()["acme.LeadCreated"](**fields)
    return message


def test_protobuf_values_follow_the_proto3_json_mapping_int64_as_strings() -> None:
    schema = _lead_schema()
    message = _message(event="lead.created", lead_id=2**40, status=1, score=1.5, raw=b"\x00\xff", tags=["a"])
    message.budget.currency, message.budget.units = "EUR", 5
    message.at.FromDatetime(dt.datetime(2024, 5, 1, 12, tzinfo=UTC))
    body, name = schema.decode(payload(frame(1, message.SerializeToString(), [1])))
    assert name == "acme.LeadCreated"
    assert orjson.loads(body) == {
        "event": "lead.created", "lead_id": "1099511627776", "budget": {"currency": "EUR", "units": "5"},
        "at": "2024-05-01T12:00:00Z", "status": "QUALIFIED", "score": 1.5, "raw": "AP8=", "tags": ["a"],
    }  # fmt: skip


def test_protobuf_fields_at_their_default_are_written_unless_asked_not_to() -> None:
    data = payload(frame(1, _message(event="x").SerializeToString(), [1]))
    full = orjson.loads(_lead_schema().decode(data)[0])
    assert full == {"event": "x", "lead_id": "0", "status": "NEW", "score": 0.0, "raw": "", "tags": []}
    bare = orjson.loads(_lead_schema(ProtobufJson(include_defaults=False)).decode(data)[0])
    assert bare == {"event": "x"}


def test_protobuf_json_names_are_lower_camel_case_when_asked_for() -> None:
    data = payload(frame(1, _message(lead_id=7).SerializeToString(), [1]))
    assert orjson.loads(_lead_schema(ProtobufJson(json_names=True, include_defaults=False)).decode(data)[0]) == {
        "leadId": "7"
    }


def test_the_message_indexes_pick_the_message_type_nested_ones_too() -> None:
    schema = _lead_schema()
    note = protos.classes()["acme.LeadCreated.Note"](text_body="hi")
    assert schema.decode(payload(frame(1, note.SerializeToString(), [1, 0]))) == (
        b'{"text_body":"hi"}',
        "acme.LeadCreated.Note",
    )
    other = protos.classes()["acme.Other"](x="y")
    assert schema.decode(payload(frame(1, other.SerializeToString(), [0]))) == (b'{"x":"y"}', "acme.Other")
    assert schema.name == "acme.Other"  # the file's first message, when a record says nothing else


def test_message_indexes_naming_no_message_or_bytes_that_do_not_parse_do_not_decode() -> None:
    schema = _lead_schema()
    with pytest.raises(DecodeError, match="name no message"):
        schema.decode(payload(frame(1, b"", [5])))
    with pytest.raises(DecodeError, match=r"does not decode as acme\.LeadCreated"):
        schema.decode(payload(frame(1, b"\x0a\x05ab", [1])))  # a string field cut short
    with pytest.raises(DecodeError, match="cut short"):
        schema.decode(memoryview(b"\x04\x02"))


def test_a_protobuf_schema_whose_reference_is_missing_cannot_be_used() -> None:
    _, lead = protos.files()
    with pytest.raises(SchemaError, match="does not load"):
        compile_schema(SchemaText(kind="PROTOBUF", text=protos.serialized(lead)))


def test_a_json_schema_value_is_kept_as_written_and_named_by_its_title() -> None:
    schema = compile_schema(SchemaText(kind="JSON", text='{"title": "LeadCreated", "type": "object"}'))
    assert schema.decode(memoryview(b'{"event": "x", "n": 1}')) == (b'{"event": "x", "n": 1}', "LeadCreated")
    with pytest.raises(DecodeError, match="not valid JSON"):
        schema.decode(memoryview(b"{nope"))
    assert compile_schema(SchemaText(kind="JSON", text="true")).name is None


def test_the_cache_keeps_the_most_recently_used_ids_up_to_its_size() -> None:
    cache = SchemaCache(2)
    cache.put(1, Unknown("a"))
    cache.put(2, Unknown("b"))
    assert cache.get(1) == Unknown("a")  # used: 2 is now the oldest
    cache.put(3, Unknown("c"))
    assert cache.get(2) is None
    assert len(cache) == 2


def test_the_cache_wants_ids_it_does_not_know_and_failing_ones_once_due() -> None:
    cache = SchemaCache()
    cache.put(1, Unknown("gone"))
    cache.put(2, Failing("down", retry_at_ms=1000))
    cache.put(3, Failing("down", retry_at_ms=5000))
    assert cache.wanted({1, 2, 3, 4}, now_ms=1000) == [2, 4]
