"""``Sender``: one attempt of one (event, endpoint) pair over the shared HTTP client (``daemon.delivery.http``), as an
outcome value; it never raises for what an endpoint does. Its metrics, span and sampled log line; error texts without
URLs (they may carry tokens)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from daemon.core.config import DeliveryConfig
from daemon.core.errors import RenderError
from daemon.core.ids import new_attempt_id
from daemon.core.model import (
    BLOCKED,
    DELIVERED,
    FAILED,
    RENDER_FAILED,
    RESPONSE_BODY_LIMIT,
    Outcome,
    truncate_body,
)
from daemon.core.netguard import NetGuard
from daemon.core.policy import parse_retry_after
from daemon.delivery.endpoint import API, Endpoint
from daemon.delivery.http import Blocked, Client, HeaderError
from daemon.delivery.job import Job, attempt_outcome, outcome_for
from daemon.observe.logs import sampled as sampled_delivery
from daemon.observe.metrics import Metrics, status_class
from daemon.observe.tracing import Tracing

log = logging.getLogger(__name__)


def client_for(
    delivery: DeliveryConfig, resolver: AbstractResolver | None = None, allowed_networks: Sequence[str] | None = None
) -> Client:
    """The HTTP client deliveries go through: the network guard less ``allowed_networks`` (default:
    ``delivery.allowed_networks``, the config file's endpoints'; the API's endpoints get ``api.allowed_networks``),
    or the egress proxy."""
    proxy = URL(delivery.proxy_url) if delivery.proxy_url else None
    allowed = delivery.allowed_networks if allowed_networks is None else allowed_networks
    return Client(NetGuard(allowed), proxy=proxy, resolver=resolver)


class Sender:
    """Makes attempts over pooled HTTP clients (``daemon.delivery.http``). Never raises for what an endpoint does.

    The config file's endpoints (the platform's) go through ``client``; the endpoints of the API (tenants') through
    ``api_client``: a network guard of their own (``api.allowed_networks``, not ``delivery.allowed_networks``) and a
    connection pool of their own, so that no connection opened for an endpoint of the file, to an address only the
    file may reach, is ever reused for a tenant's request. Either missing: a client whose guard allows nothing.
    """

    def __init__(
        self,
        metrics: Metrics,
        client: Client | None = None,
        tracing: Tracing | None = None,
        api_client: Client | None = None,
    ) -> None:
        """``tracing``: a span per attempt (None: tracing is off)."""
        self._client = client or Client()
        self._api_client = api_client or Client()
        self._metrics = metrics
        self._tracing = tracing

    async def close(self) -> None:
        await self._client.close()
        await self._api_client.close()
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.close)

    def _count(self, endpoint_id: str, status: str, http_status: int | None, error: str | None, elapsed: float) -> None:
        metrics = self._metrics
        metrics.attempts.add(status, status_class(http_status, error), elapsed)
        if endpoint_id in metrics.marked_endpoints:
            metrics.endpoint_attempts.labels(endpoint_id, status).inc()
            metrics.endpoint_duration.labels(endpoint_id).observe(elapsed)

    async def attempt(self, endpoint: Endpoint, job: Job) -> Outcome:
        mask = endpoint.mask
        if mask and not mask.compiled:  # once per endpoint
            await endpoint.mask_ready()
        ts = int(time.time())
        try:
            body = endpoint.render(job.event)
        except RenderError as exc:  # the event's doing, not the endpoint's: nothing is sent, nothing retried
            return outcome_for(endpoint.id, job, RENDER_FAILED, error=str(exc), profile=endpoint.profile.name,
                               attempt_id=new_attempt_id(job.delivery_id, job.attempt))  # fmt: skip
        blocked: str | None = None
        http_status: int | None = None
        response: str | None = None
        error: str | None = None
        retry_after: float | None = None
        wire_id, signed = endpoint.request_headers(job, body, ts)
        tracing = self._tracing
        traced = None
        if tracing is not None:
            traced = tracing.begin(endpoint.id, endpoint.profile.name, endpoint.url.host, job)
            if traced.traceparent is not None:
                signed["traceparent"] = traced.traceparent  # the receiver's spans are the attempt's children
        start = time.perf_counter()
        try:
            client = self._api_client if endpoint.managed == API else self._client
            route = endpoint.route
            if route is None:
                route = endpoint.route = client.route(endpoint.url, endpoint.base_headers)
            reply = await client.post(route, signed, body, RESPONSE_BODY_LIMIT, endpoint.timeout_s)
            http_status = reply.status
            if http_status == 429 or http_status >= 500:
                retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            response = truncate_body(reply.body)
            if endpoint.mask:  # a receiver that echoes its request must not put the endpoint's secrets in results
                response = endpoint.mask(response, cut=len(reply.body) >= RESPONSE_BODY_LIMIT)
        except Blocked as exc:
            blocked = exc.refusal.reason
            allowed = "api.allowed_networks" if endpoint.managed == API else "delivery.allowed_networks"
            error = f"blocked: {exc.refusal.text} (not in {allowed})"
        except TimeoutError:
            error = f"timeout: no complete response within {endpoint.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            error = _describe(exc)
        except HttpProcessingError as exc:
            error = f"protocol error: {exc.message}"
        except HeaderError as exc:
            error = f"request not sent: {exc}"
        except OSError as exc:
            error = _os_error(exc)
        except BaseException:  # cancelled (a shutdown past its drain): the span ends all the same
            if tracing is not None and traced is not None:
                tracing.end(traced, "cancelled", None, "cancelled")
            raise
        elapsed = time.perf_counter() - start
        ok = http_status is not None and 200 <= http_status < 300
        status = DELIVERED if ok else FAILED
        if http_status is not None and not ok:
            error = f"HTTP {http_status}"
        elif blocked is not None:
            status = BLOCKED
            self._metrics.deliveries_blocked.labels(blocked).inc()
        elif error is not None and endpoint.mask:  # a protocol error may quote what the receiver sent back
            error = endpoint.mask(error)
        self._count(endpoint.id, status, http_status, error, elapsed)
        if tracing is not None and traced is not None:
            tracing.end(traced, status, http_status, error)
        sampled = sampled_delivery()
        if sampled or log.isEnabledFor(logging.DEBUG):
            log.log(
                logging.INFO if sampled else logging.DEBUG,
                "attempt %d of %s to %s: %s%s in %.1f ms",
                job.attempt, job.delivery_id, endpoint.id, status, f" ({error})" if error else "", elapsed * 1000,
                extra={"endpoint_id": endpoint.id, "delivery_id": job.delivery_id, "attempt": job.attempt,
                       "status": status, "http_status": http_status, "duration_ms": round(elapsed * 1000, 3),
                       "event_type": job.event.event_type, "trigger": job.trigger},
            )  # fmt: skip
        return attempt_outcome(
            endpoint.id,
            job,
            status,
            http_status,
            round(elapsed * 1000, 3),
            response,
            error,
            endpoint.profile.name,
            new_attempt_id(job.delivery_id, job.attempt),
            wire_id,
            retry_after,
        )


def _os_error(exc: OSError) -> str:
    # The message of a connect error names the address; the errno text does not.
    if isinstance(exc, socket.gaierror):
        return "connection error: name resolution failed"
    reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else type(exc).__name__
    return f"connection error: {reason}"


def _describe(exc: aiohttp.ClientError) -> str:
    """An error text without the URL: URLs may carry tokens, and results must not carry secrets."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS error: handshake or certificate verification failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_error(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection error: server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection error: response body broken off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"protocol error: {exc.message}"
    return f"connection error: {type(exc).__name__}"
