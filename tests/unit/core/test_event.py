"""The type reader of a topic in the Schema Registry wire format: the value decoded with its writer's schema from the
cache becomes the event's JSON; the type from the ce_type header, the topic's type header, the schema's name mapped,
or a field; the identity from the id header or field; unknown ids and undecodable values invalid, a schema not there
yet a wait."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_writer

from daemon.core.errors import InvalidEvent, SchemaUnavailable
from daemon.core.event import TypeReader
from daemon.core.schemas import Failing, SchemaCache, SchemaText, Unknown, compile_schema
from daemon.core.wire import frame
from tests.unit.standins import Record

LEAD = {"type": "record", "name": "LeadCreated", "namespace": "com.acme",
        "fields": [{"name": "event", "type": "string"}, {"name": "lead_id", "type": "long"}]}  # fmt: skip


def _cache() -> SchemaCache:
    cache = SchemaCache()
    cache.put(7, compile_schema(SchemaText(text=json.dumps(LEAD))))
    return cache


def _value(event: str = "lead.created", lead_id: int = 42, schema_id: int = 7) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(LEAD), {"event": event, "lead_id": lead_id})
    return frame(schema_id, buffer.getvalue())


def _reader(value_format: str = "schema-registry", cache: SchemaCache | None = None, **options: Any) -> TypeReader:
    field, id_field = options.pop("field", None), options.pop("id_field", None)
    return TypeReader(field, id_field, 1024 * 1024, value_format=value_format,
                      schemas=cache if cache is not None else _cache(), **options)  # fmt: skip


def _record(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> Record:
    return Record("leads", 0, 5, value, headers=headers)


def test_a_value_in_the_wire_format_becomes_the_json_of_its_event() -> None:
    event = _reader().event(_record(_value()))
    assert orjson.loads(event.value) == {"event": "lead.created", "lead_id": 42}
    assert event.event_type == "lead.created"
    assert event.decoded() == {"event": "lead.created", "lead_id": 42}
    assert event.key.startswith("kafka:leads")


def test_the_schemas_full_name_names_the_type_when_it_is_mapped() -> None:
    reader = _reader(event_types={"com.acme.LeadCreated": "lead.new"})
    assert reader.event(_record(_value(event="ignored"))).event_type == "lead.new"
    unmapped = _reader(event_types={"com.acme.Other": "other"})
    assert unmapped.event(_record(_value())).event_type == "lead.created"  # the field, as without a mapping


def test_the_type_header_comes_before_the_schema_name_and_the_id_header_names_the_event() -> None:
    reader = _reader(event_types={"com.acme.LeadCreated": "lead.new"}, type_header="event-type", id_header="event-id")
    event = reader.event(_record(_value(), (("event-type", b"lead.from-header"), ("event-id", b"abc"))))
    assert event.event_type == "lead.from-header"
    assert event.key == "id:leads\0abc"
    without = reader.event(_record(_value()))
    assert without.event_type == "lead.new"


def test_the_id_field_of_the_decoded_value_names_the_event() -> None:
    event = _reader(id_field="lead_id", event_types={"com.acme.LeadCreated": "lead.new"}).event(_record(_value()))
    assert event.key == "id:leads\x0042"


def test_a_type_header_on_a_json_topic_names_the_type_of_any_value() -> None:
    reader = TypeReader(type_header="kind")
    assert reader.event(_record(b'{"event": "no"}', (("kind", b"yes"),))).event_type == "yes"
    assert reader.event(_record(b"not json", (("kind", b"yes"),))).event_type == "yes"
    with pytest.raises(InvalidEvent, match="the kind header must not contain control characters"):
        reader.event(_record(b"{}", (("kind", b"a\nb"),)))


def test_a_json_value_on_a_schema_registry_topic_is_invalid_and_auto_takes_either() -> None:
    with pytest.raises(InvalidEvent, match="first byte is not 0"):
        _reader().event(_record(b'{"event": "lead.created"}'))
    auto = _reader("auto")
    assert auto.event(_record(b'{"event": "lead.plain"}')).event_type == "lead.plain"
    assert auto.event(_record(_value())).event_type == "lead.created"
    with pytest.raises(InvalidEvent, match="empty record"):
        auto.event(_record(None))


def test_a_framed_value_on_a_json_topic_is_not_json_as_before() -> None:
    with pytest.raises(InvalidEvent, match=r"not valid JSON|not valid UTF-8"):
        TypeReader().event(_record(_value()))


def test_an_id_the_registry_does_not_know_is_invalid_naming_the_id() -> None:
    cache = _cache()
    cache.put(9, Unknown("schema id 9 is not known to the registry"))
    with pytest.raises(InvalidEvent, match="schema id 9 is not known"):
        _reader(cache=cache).event(_record(_value(schema_id=9)))


def test_a_value_that_does_not_decode_is_invalid_naming_its_schema_id() -> None:
    with pytest.raises(InvalidEvent, match="schema id 7: does not decode with its Avro schema"):
        _reader().event(_record(frame(7, b"\x02")))


def test_a_value_too_short_for_the_wire_format_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="too short"):
        _reader().event(_record(b"\x00\x00\x01"))


def test_a_schema_not_fetched_yet_or_failing_is_a_wait_never_an_invalid_event() -> None:
    cache = _cache()
    now = int(time.time() * 1000)
    with pytest.raises(SchemaUnavailable, match="schema id 8 not fetched yet") as missing:
        _reader(cache=cache).event(_record(_value(schema_id=8)))
    assert missing.value.retry_at_ms >= now
    cache.put(8, Failing("the Schema Registry could not give schema id 8: HTTP 503", now + 4000))
    with pytest.raises(SchemaUnavailable, match="HTTP 503") as failing:
        _reader(cache=cache).event(_record(_value(schema_id=8)))
    assert failing.value.retry_at_ms == now + 4000
    assert failing.value.http_status == 503


def test_a_value_too_large_once_decoded_is_invalid() -> None:
    reader = TypeReader(value_format="schema-registry", schemas=_cache(), max_bytes=40)
    with pytest.raises(InvalidEvent, match="too large once decoded"):
        reader.event(_record(_value(event="x" * 30)))


def test_only_framed_topics_report_schema_ids() -> None:
    assert _reader().schema_id(_value(schema_id=300)) == 300
    assert _reader("auto").schema_id(b'{"a": 1}') is None
    assert TypeReader().schema_id(_value()) is None
    assert _reader().schema_id(b"\x00\x01") is None
