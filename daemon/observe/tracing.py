"""OpenTelemetry tracing, optional (the ``tracing`` extra) and off by default: a span per delivery attempt.

The span (``webhook deliver``, kind CLIENT) is a child of the ``traceparent`` the event carried when it had a
valid one, so the webhook shows in the trace that produced the event; otherwise it starts a trace of its own,
kept for ``tracing.sample_ratio`` of them. The webhook request carries the attempt span's ``traceparent``, so
the receiver's spans are its children. Attributes name the endpoint, the delivery, the attempt, the event's
coordinates and the answer, never a URL (it may hold credentials) or a secret. Spans leave through a batch
processor (OTLP over HTTP, or the console), flushed at shutdown.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from daemon import __version__
from daemon.core.config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)


class AttemptSpan:
    """One attempt's span and the ``traceparent`` the request carries for it."""

    __slots__ = ("span", "traceparent")

    def __init__(self, span: Span, traceparent: str | None) -> None:
        self.span = span
        self.traceparent = traceparent


class Tracing:
    """A tracer provider of the daemon's own (the global one is left alone), and spans for attempts."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        """``exporter``: where spans go instead of the configured one, exported as they end (for tests)."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif config.exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
        self._provider: TracerProvider = provider
        self._tracer = provider.get_tracer("webhook-router", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._kind = SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self._set_span = _set_span_in_context()

    def begin(self, endpoint_id: str, profile: str, host: str | None, job: Any) -> AttemptSpan:
        """Start the span of one attempt of ``job`` (a ``daemon.delivery.job.Job``) to ``endpoint_id``."""
        event = job.event
        parent = None
        if event.traceparent is not None:
            parent = self._propagator.extract({"traceparent": event.traceparent})
        attributes: dict[str, Any] = {
            "webhook.endpoint_id": endpoint_id,
            "webhook.profile": profile,
            "webhook.delivery_id": job.delivery_id,
            "webhook.attempt": job.attempt,
            "webhook.trigger": job.trigger,
            "webhook.event_type": event.event_type,
            "messaging.system": "kafka",
            "messaging.destination.name": event.topic,
            "messaging.destination.partition.id": str(event.partition),
            "messaging.kafka.offset": event.offset,
            "http.request.method": "POST",
        }
        if host:
            attributes["server.address"] = host
        span = self._tracer.start_span("webhook deliver", context=parent, kind=self._kind, attributes=attributes)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._set_span(span))
        return AttemptSpan(span, carrier.get("traceparent"))

    def end(self, attempt: AttemptSpan, status: str, http_status: int | None, error: str | None) -> None:
        span = attempt.span
        span.set_attribute("webhook.status", status)
        if http_status is not None:
            span.set_attribute("http.response.status_code", http_status)
        if status != "delivered":
            span.set_status(self._error.status_code, error or status)
        span.end()

    def close(self) -> None:
        """Export what is buffered and stop (blocking: at most a few seconds; call it from a thread)."""
        try:
            self._provider.shutdown()
        except Exception as exc:  # a collector that is gone must not fail the shutdown
            log.warning("tracing: flushing spans failed (%s: %s)", type(exc).__name__, exc)


def _set_span_in_context() -> Any:
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context


def start(config: TracingConfig) -> Tracing | None:
    """The daemon's tracing, or None when ``tracing.enabled`` is false."""
    if not config.enabled:
        return None
    tracing = Tracing(config)
    log.info("tracing on: %s exporter, sample ratio %g", config.exporter, config.sample_ratio)
    return tracing
