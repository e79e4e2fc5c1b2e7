"""Tracing (the optional OpenTelemetry extra): a span per attempt, a child of the event's traceparent, whose own
context the webhook carries; spans leave over OTLP/HTTP. Real receivers on 127.0.0.1; no Kafka needed here."""

from __future__ import annotations

import asyncio

from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from daemon.core.config import DeliveryConfig, EndpointConfig, TracingConfig
from daemon.core.event import Event
from daemon.core.model import DELIVERED, FAILED
from daemon.delivery.endpoint import Endpoint
from daemon.delivery.http import Client
from daemon.delivery.job import Job
from daemon.delivery.sender import Sender, client_for
from daemon.observe.metrics import Metrics
from daemon.observe.tracing import Tracing
from tests.helpers import SECRET, Receiver, serve

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _loopback() -> Client:
    """The HTTP client, with the receivers' loopback let through the network guard."""
    return client_for(DeliveryConfig(allowed_networks=["127.0.0.0/8"]))


def _endpoint(url: str) -> Endpoint:
    return Endpoint(EndpointConfig(id="crm", url=url, secret=SECRET), DeliveryConfig(), {})


def _job(traceparent: str | None) -> Job:
    event = Event(b'{"event":"lead.created"}', "lead.created", "events", 2, 41, 0, "k", traceparent)
    return Job(event=event, delivery_id="msg_1", ack=lambda: None)


async def test_an_attempt_span_is_the_child_of_the_events_traceparent_and_the_webhook_carries_its_context() -> None:
    ok, failing = await Receiver().start(), await Receiver(status=503).start()
    spans = InMemorySpanExporter()
    sender = Sender(Metrics(), _loopback(), tracing=Tracing(TracingConfig(enabled=True), exporter=spans))
    try:
        delivered = await sender.attempt(_endpoint(ok.url), _job(f"00-{TRACE_ID}-{PARENT_ID}-01"))
        failed = await sender.attempt(_endpoint(failing.url), _job(None))
    finally:
        await sender.close()
        await ok.stop()
        await failing.stop()
    assert (delivered.status, failed.status) == (DELIVERED, FAILED)
    first, second = spans.get_finished_spans()
    assert first.name == "webhook deliver" and first.kind == SpanKind.CLIENT
    assert first.context is not None and second.context is not None
    assert f"{first.context.trace_id:032x}" == TRACE_ID
    assert first.parent is not None and f"{first.parent.span_id:016x}" == PARENT_ID
    sent = ok.requests[0].headers["traceparent"]
    assert sent == f"00-{TRACE_ID}-{first.context.span_id:016x}-01"  # the receiver's spans are the attempt's children
    attributes = dict(first.attributes or {})
    assert attributes["webhook.endpoint_id"] == "crm" and attributes["webhook.delivery_id"] == "msg_1"
    assert attributes["messaging.kafka.offset"] == 41 and attributes["http.response.status_code"] == 200
    assert not any("http://" in str(v) for v in attributes.values()), "no URL in a span"
    assert first.status.status_code != StatusCode.ERROR

    # Without a traceparent the attempt starts a trace of its own; a failure is an error span.
    assert second.parent is None and f"{second.context.trace_id:032x}" != TRACE_ID
    assert second.status.status_code == StatusCode.ERROR and second.status.description == "HTTP 503"
    assert failing.requests[0].headers["traceparent"].split("-")[1] == f"{second.context.trace_id:032x}"


async def test_spans_leave_over_otlp_http_to_the_configured_collector() -> None:
    received: list[tuple[str, str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, request.content_type, await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner, collector = await serve(app)
    receiver = await Receiver().start()
    config = TracingConfig(enabled=True, endpoint=f"{collector}/v1/traces")
    sender = Sender(Metrics(), _loopback(), tracing=Tracing(config))
    try:
        await sender.attempt(_endpoint(receiver.url), _job(f"00-{TRACE_ID}-{PARENT_ID}-01"))
    finally:
        await sender.close()  # flushes the batch processor: the export happens in its thread, answered by this loop
        await receiver.stop()
        await asyncio.sleep(0)
        await runner.cleanup()
    assert received, "no export reached the collector"
    path, content_type, body = received[0]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert bytes.fromhex(TRACE_ID) in body and b"webhook deliver" in body
