"""Records in the Schema Registry wire format, written by Confluent's own serializers (AvroSerializer,
ProtobufSerializer, JSONSerializer with a SchemaRegistryClient) and produced by librdkafka, delivered by the real
daemon (a process) to a real receiver with the body docs/configuration.md documents. The registry is the tests' small
one (tests/registry.py: the REST calls the serializers and the router make; no real registry runs here), which the
tests stop and start, or make fail, to show what the router does then: the partition waits and nothing is lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from standardwebhooks import Webhook

from daemon.core.wire import frame
from tests import protos
from tests.helpers import SECRET, DaemonProcess, Receiver, eventually, produce_outside, read_topic
from tests.integration.conftest import Setup, receiver, spawn
from tests.registry import SchemaRegistry

LEAD_V1 = {"type": "record", "name": "LeadCreated", "namespace": "com.acme", "fields": [
    {"name": "event", "type": "string"},
    {"name": "lead_id", "type": "long"},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "owner", "type": ["null", "string"], "default": None},
]}  # fmt: skip
# Version 2 adds a field with a default: a backward-compatible change (records written with v1 still read).
LEAD_V2 = {**LEAD_V1, "fields": [*LEAD_V1["fields"], {"name": "source", "type": "string", "default": "web"}]}
JSON_SCHEMA = {"title": "com.acme.LeadScored", "type": "object",
               "properties": {"event": {"type": "string"}, "score": {"type": "number"}}}  # fmt: skip
RECORD_NAMES = {"subject.name.strategy": topic_record_subject_name_strategy}  # several types on one topic


@pytest.fixture
async def registry() -> AsyncIterator[SchemaRegistry]:
    r = await SchemaRegistry().start()
    yield r
    await r.stop()


def _lead(n: int) -> dict[str, Any]:
    import datetime as dt
    from decimal import Decimal

    at = dt.datetime(2024, 5, 1, 12, 0, n, 250_000, tzinfo=dt.UTC)
    return {"event": "lead.created", "lead_id": n, "at": at, "amount": Decimal(f"{n}.50"), "owner": f"rep-{n}"}


def _avro_body(n: int) -> dict[str, Any]:
    return {"event": "lead.created", "lead_id": n, "at": f"2024-05-01T12:00:{n:02d}.250Z", "amount": f"{n}.50",
            "owner": f"rep-{n}"}  # fmt: skip


async def serialize(registry: SchemaRegistry, topic: str, write: Callable[[Any, SerializationContext], list[bytes]]
                    ) -> list[bytes]:  # fmt: skip
    """Values as Confluent's serializers write them (their client is blocking: off the loop serving the registry)."""

    def run() -> list[bytes]:
        with SchemaRegistryClient({"url": registry.url}) as client:
            return write(client, SerializationContext(topic, MessageField.VALUE))

    return await asyncio.to_thread(run)


async def produce(setup: Setup, values: Sequence[bytes | None]) -> None:
    await asyncio.to_thread(produce_outside, setup.broker.bootstrap, setup.topic, list(values))


def configure(setup: Setup, r: Receiver, registry: SchemaRegistry, value_format: str = "schema-registry",
              **schema_registry: Any) -> None:  # fmt: skip
    doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}],
                       value_formats={setup.topic: value_format})  # fmt: skip
    doc["schema_registry"] = {"url": registry.url, "retry_backoff_max_s": 1, **schema_registry}
    setup.write(doc)


async def test_avro_protobuf_and_json_schema_records_are_delivered_with_their_bodies_as_documented(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess], registry: SchemaRegistry
) -> None:
    r = await receiver(receivers)
    configure(setup, r, registry, "auto", event_types={"acme.LeadCreated": "lead.qualified"})
    await spawn(daemons, setup)
    lead_class = protos.classes()["acme.LeadCreated"]

    def write(client: Any, ctx: SerializationContext) -> list[bytes]:
        avro = AvroSerializer(client, json.dumps(LEAD_V1), conf={**RECORD_NAMES})
        proto = ProtobufSerializer(lead_class, client, {**RECORD_NAMES, "use.deprecated.format": False})
        scored = JSONSerializer(json.dumps(JSON_SCHEMA), client, conf={**RECORD_NAMES})
        message = lead_class(event="ignored", lead_id=2**40, status=1, tags=["vip"])
        message.budget.currency, message.budget.units = "EUR", 1500
        message.at.FromSeconds(1_714_564_800)
        return [avro(_lead(1), ctx), proto(message, ctx), scored({"event": "lead.scored", "score": 0.75}, ctx)]

    values: list[bytes | None] = list(await serialize(registry, setup.topic, write))
    values.append(json.dumps({"event": "lead.plain", "n": 4}).encode())  # auto: plain JSON too
    await produce(setup, values)
    requests = await r.wait_for(4)
    # An endpoint's deliveries run side by side (max_concurrency 8): they arrive in any order.
    bodies = {body["event"]: body for body in (json.loads(req.body) for req in requests)}
    assert bodies["lead.created"] == _avro_body(1)
    assert bodies["ignored"] == {
        "event": "ignored", "lead_id": "1099511627776", "budget": {"currency": "EUR", "units": "1500"},
        "at": "2024-05-01T12:00:00Z", "status": "QUALIFIED", "score": 0.0, "raw": "", "tags": ["vip"],
    }  # fmt: skip
    assert bodies["lead.scored"] == {"event": "lead.scored", "score": 0.75}
    assert bodies["lead.plain"] == {"event": "lead.plain", "n": 4}
    for req in requests:  # signed over the JSON body, as any event
        Webhook(SECRET).verify(req.body, req.headers)
    results = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 4)
    by_offset = sorted(results, key=lambda rec: rec["source_offset"])
    assert [rec["event_type"] for rec in by_offset] == ["lead.created", "lead.qualified", "lead.scored", "lead.plain"]
    assert {rec["status"] for rec in results} == {"delivered"}
    assert registry.reads["/subjects/acme%2Fmoney.proto/versions/1"] + registry.reads[
        "/subjects/acme/money.proto/versions/1"] == 1  # the Protobuf schema's reference, resolved  # fmt: skip
    assert sum(n for path, n in registry.reads.items() if path.startswith("/schemas/ids/")) == 3  # once per id


async def test_records_of_both_versions_of_an_evolved_schema_are_delivered_across_the_change(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess], registry: SchemaRegistry
) -> None:
    r = await receiver(receivers)
    configure(setup, r, registry)
    await spawn(daemons, setup)

    def v1(client: Any, ctx: SerializationContext) -> list[bytes]:
        return [AvroSerializer(client, json.dumps(LEAD_V1))(_lead(n), ctx) for n in range(3)]

    def v2(client: Any, ctx: SerializationContext) -> list[bytes]:
        serializer = AvroSerializer(client, json.dumps(LEAD_V2))
        return [serializer({**_lead(n), "source": "api"}, ctx) for n in range(3, 6)]

    await produce(setup, list(await serialize(registry, setup.topic, v1)))
    await r.wait_for(3)
    await produce(setup, list(await serialize(registry, setup.topic, v2)))
    requests = await r.wait_for(6)
    # An endpoint's deliveries run side by side (max_concurrency 8): each version's three arrive in any order.
    bodies = [json.loads(req.body) for req in requests]
    first, then = (sorted(part, key=lambda body: body["lead_id"]) for part in (bodies[:3], bodies[3:]))
    assert first == [_avro_body(n) for n in range(3)]  # as written: v1 has no source
    assert then == [{**_avro_body(n), "source": "api"} for n in range(3, 6)]
    assert registry.subjects[f"{setup.topic}-value"] == [1, 2]


async def test_while_the_registry_is_unreachable_the_partition_waits_then_nothing_is_lost(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess], registry: SchemaRegistry
) -> None:
    r = await receiver(receivers)
    configure(setup, r, registry)

    def write(client: Any, ctx: SerializationContext) -> list[bytes]:
        serializer = AvroSerializer(client, json.dumps(LEAD_V1))
        return [serializer(_lead(n), ctx) for n in range(5)]

    values = list(await serialize(registry, setup.topic, write))
    await registry.stop()  # nothing listens on its port
    d = await spawn(daemons, setup)
    await produce(setup, values)

    async def waiting() -> bool:
        status, body = await d.get_json("/readyz")
        return status == 503 and "Schema Registry" in json.dumps(body)

    await eventually(waiting, 30)
    body = (await d.get_json("/readyz"))[1]
    assert registry.url in json.dumps(body) and "wait" in json.dumps(body)
    await asyncio.sleep(2)  # a few rounds of asking again
    assert r.requests == []
    assert await d.metric(f'webhook_router_events_invalid_total{{topic="{setup.topic}"}}') == 0
    assert await d.metric('webhook_router_schema_fetches_total{outcome="error"}') >= 2
    await registry.start()  # back, on the same port
    requests = await r.wait_for(5, within_s=30)
    assert sorted(json.loads(req.body)["lead_id"] for req in requests) == list(range(5))
    await eventually(d.ready, 10)
    results = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 5)
    assert [rec["status"] for rec in results] == ["delivered"] * 5


async def test_a_registry_answering_5xx_is_waited_out_the_same_way(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess], registry: SchemaRegistry
) -> None:
    r = await receiver(receivers)
    configure(setup, r, registry)
    values = list(await serialize(registry, setup.topic, lambda client, ctx: [
        AvroSerializer(client, json.dumps(LEAD_V1))(_lead(7), ctx)]))  # fmt: skip
    registry.failing = True
    d = await spawn(daemons, setup)
    await produce(setup, values)
    await eventually(lambda: registry.reads["/schemas/ids/1"] >= 2, 30)
    assert r.requests == []
    status, body = await d.get_json("/readyz")
    assert status == 503 and "HTTP 503" in json.dumps(body)
    registry.failing = False
    (request,) = await r.wait_for(1, within_s=30)
    assert json.loads(request.body) == _avro_body(7)


async def test_an_unknown_schema_id_and_an_undecodable_value_are_invalid_events_and_the_stream_moves_on(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess], registry: SchemaRegistry
) -> None:
    r = await receiver(receivers)
    configure(setup, r, registry)
    (good,) = await serialize(registry, setup.topic, lambda client, ctx: [
        AvroSerializer(client, json.dumps(LEAD_V1))(_lead(1), ctx)])  # fmt: skip
    d = await spawn(daemons, setup)
    unknown = frame(999, good[5:])
    undecodable = frame(1, b"\x02")  # a string cut short
    not_framed = json.dumps({"event": "lead.created"}).encode()
    await produce(setup, [unknown, undecodable, not_framed, good])
    (request,) = await r.wait_for(1)
    assert json.loads(request.body) == _avro_body(1)
    results = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 4)
    invalid = [rec for rec in results if rec["status"] == "invalid_event"]
    assert [rec["source_offset"] for rec in invalid] == [0, 1, 2]
    assert invalid[0]["error"].startswith("schema id 999 is not known to the registry")
    assert invalid[1]["error"].startswith("schema id 1: does not decode with its Avro schema")
    assert invalid[2]["error"] == "not in the Schema Registry wire format (its first byte is not 0)"
    assert d.alive() and await d.ready()
