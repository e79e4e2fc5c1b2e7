"""Event identity, CloudEvents and trace context, through the real broker and receiver.

Events written by an outside producer (librdkafka through confluent-kafka) with record headers, as
Knative's Kafka source and other CloudEvents producers write them.
"""

from __future__ import annotations

import asyncio
import json

from aiokafka.admin import AIOKafkaAdminClient

from tests.helpers import SECRET, Receiver, produce, produce_outside, read_topic
from tests.integration.conftest import Setup, receiver, running

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_cloudevents_binary_and_structured_are_routed_by_type_and_carry_their_traceparent(
    setup: Setup, receivers: list[Receiver]
) -> None:
    leads, calls = await receiver(receivers), await receiver(receivers)
    endpoints = [{"id": name, "url": r.url, "secret": SECRET} for name, r in (("leads", leads), ("calls", calls))]
    subs = [{"endpoint": "leads", "events": ["com.acme.lead.*"]}, {"endpoint": "calls", "events": ["com.acme.call.*"]}]
    structured = {"specversion": "1.0", "type": "com.acme.lead.created", "source": "/crm", "id": "L-1",
                  "datacontenttype": "application/json", "data": {"lead": 7}}  # fmt: skip
    binary_headers: list[tuple[str, str | bytes | None]] = [
        ("ce_specversion", b"1.0"), ("ce_type", b"com.acme.call.ended"), ("ce_source", b"/pbx"), ("ce_id", b"C-9"),
        ("ce_time", b"2026-11-28T10:00:00Z"), ("content-type", b"application/json"), ("traceparent", TRACEPARENT),
    ]  # fmt: skip
    path = setup.write(setup.config(endpoints, subs))
    async with running(path):
        await asyncio.to_thread(
            produce_outside, setup.broker.bootstrap, setup.topic, [json.dumps(structured).encode()], "none",
            [("content-type", b"application/cloudevents+json"), ("traceparent", TRACEPARENT)],
        )  # fmt: skip
        await asyncio.to_thread(
            produce_outside, setup.broker.bootstrap, setup.topic, [b'{"call": 9, "secs": 61}'], "lz4", binary_headers
        )
        await leads.wait_for(1)
        await calls.wait_for(1)
    (lead,) = leads.requests
    (call,) = calls.requests
    assert json.loads(lead.body) == structured  # structured mode: the CloudEvent as it arrived
    assert call.body == b'{"call": 9, "secs": 61}'  # binary mode: the data
    assert lead.headers["traceparent"] == call.headers["traceparent"] == TRACEPARENT


async def test_webhook_ids_come_from_the_events_own_id_and_never_repeat_on_a_recreated_topic(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    ep = {"id": "x", "url": r.url, "secret": SECRET}
    event = json.dumps({"event": "lead.created", "n": 1}).encode()
    path = setup.write(setup.config([ep], [{"endpoint": "x", "events": ["*"]}], commit_interval_ms=100))
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, [event])
        await r.wait_for(1)
    await _recreate(setup)
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, [event])  # the same offset of a new topic of that name
        await r.wait_for(2)
        records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 2)
    assert [(rec["source_topic"], rec["source_offset"]) for rec in records] == [(setup.topic, 0)] * 2
    first, second = (req.headers["webhook-id"] for req in r.requests)
    assert first != second  # same topic, partition and offset: a different event, a different id


async def test_a_configured_id_field_gives_one_webhook_id_to_one_event_written_twice(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    ep = {"id": "x", "url": r.url, "secret": SECRET}
    doc = setup.config([ep], [{"endpoint": "x", "events": ["*"]}], event_id_fields={setup.topic: "meta.id"})
    twice = json.dumps({"event": "lead.created", "meta": {"id": "evt-1"}}).encode()
    other = json.dumps({"event": "lead.created", "meta": {"id": "evt-2"}}).encode()
    async with running(setup.write(doc)):
        await produce(setup.broker.bootstrap, setup.topic, [twice, twice, other])
        records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 3)
    ids = [req.headers["webhook-id"] for req in sorted(r.requests, key=lambda req: json.loads(req.body)["meta"]["id"])]
    assert ids[0] == ids[1] != ids[2]  # the producer's retry is the same event: receivers deduplicate it
    assert len({rec["attempt_id"] for rec in records}) == 3  # every results record its own attempt id


async def _recreate(setup: Setup) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=setup.broker.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([setup.topic])
    finally:
        await admin.close()
    await asyncio.sleep(0.5)
    await setup.broker.create_topics([setup.topic])
