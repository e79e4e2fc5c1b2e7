"""Delivery: one attempt of one (event, endpoint) pair as an outcome value, and each endpoint's lane.

``Endpoint`` holds everything about an endpoint that does not change per delivery (its profile, signer,
serialised request head, limits), computed once per config. ``Sender`` makes one attempt over the
shared HTTP client (``daemon.delivery.http``) and returns an ``Outcome``; it never raises for what an endpoint
does. A ``Lane`` is one endpoint's queue and exactly ``max_concurrency`` long-lived workers: a worker
takes a job only when it is free, so waiting for a slot never eats into the request timeout, and there
is no task per request. What happens after an attempt is the settlement's (``daemon.engine.settle``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import secrets
import socket
import time
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver
from aiohttp.helpers import strip_auth_from_url
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from daemon.core.config import DeliveryConfig, EndpointConfig, EndpointRetryConfig, resolve_secrets
from daemon.core.errors import RenderError
from daemon.core.model import (
    BLOCKED,
    DELIVERED,
    FAILED,
    LIVE,
    RENDER_FAILED,
    RESPONSE_BODY_LIMIT,
    Ack,
    Attempt,
    Event,
    Mask,
    Outcome,
    truncate_body,
    utc_now_iso,
)
from daemon.core.netguard import NetGuard
from daemon.core.policy import Policy, StatusRules, parse_retry_after
from daemon.core.profiles import PROFILES, Profile, Signer
from daemon.delivery.http import Blocked, Client, HeaderError, Route
from daemon.observe.logs import sampled as sampled_delivery
from daemon.observe.metrics import Metrics, status_class
from daemon.observe.tracing import Tracing

log = logging.getLogger(__name__)


def delivery_id(event_key: str, endpoint_id: str) -> str:
    """The id of one (event, endpoint) pair, sent as ``webhook-id``: the same across attempts, retries, restarts,
    redeliveries and replays of that event to that endpoint, and different for every other event (``event_key``
    is the event's identity, ``daemon.core.model.Event.key``)."""
    digest = hashlib.blake2b(f"{event_key}\0{endpoint_id}".encode(), digest_size=16)
    return "msg_" + digest.hexdigest()


_NONCE = secrets.token_hex(4)  # this process's; with the counter, no two results records share an attempt id
_ATTEMPTS = itertools.count(1)


def new_attempt_id(delivery: str, attempt: int) -> str:
    """A results record's own id: unique across attempts, retries, redeliveries, restarts and processes."""
    return f"{delivery}-{attempt}-{_NONCE}{next(_ATTEMPTS):x}"


def client_for(delivery: DeliveryConfig, resolver: AbstractResolver | None = None) -> Client:
    """The HTTP client deliveries go through: the network guard less ``allowed_networks``, or the egress proxy."""
    proxy = URL(delivery.proxy_url) if delivery.proxy_url else None
    return Client(NetGuard(delivery.allowed_networks), proxy=proxy, resolver=resolver)


def secret_values(config: EndpointConfig, secrets: list[str], url: URL) -> list[str]:
    """Everything about an endpoint that must never reach the results topic: its secrets, its URL's credentials
    (and the Basic header made of them), its custom headers' values (and the credentials after a scheme)."""
    values = list(secrets)
    auth = strip_auth_from_url(url)[1]
    if auth is not None:
        basic = auth.encode()  # the header daemon.delivery.http sends
        values += [v for v in (url.user, url.password, url.raw_user, url.raw_password) if v]
        values += [basic, basic.partition(" ")[2]]
    for value in config.headers.values():
        values.append(value)
        scheme, _, credentials = value.partition(" ")
        if credentials.strip() and scheme.isalpha():
            values.append(credentials.strip())
    return values


def policy_of(retry: EndpointRetryConfig | None, profile: Profile) -> Policy:
    """An endpoint's retry policy: its own, else its profile's."""
    if retry is None:
        return profile.retry
    if retry.policy == "exponential":
        attempts = 1 + (retry.retries or 3)
        return Policy("exponential", attempts=attempts, base_s=retry.base_s, max_s=retry.max_s, jitter=retry.jitter)
    return Policy(retry.policy, delays_s=tuple(retry.delays_s or ()), live_only=profile.retry.live_only)


def statuses_of(retry: EndpointRetryConfig | None, profile: Profile) -> StatusRules:
    """An endpoint's status rules: its profile's, with the endpoint's overrides."""
    if retry is None:
        return profile.statuses
    pause = frozenset(retry.pause_statuses) if retry.pause_statuses is not None else None
    return profile.statuses.overridden(frozenset(retry.retry_statuses), frozenset(retry.final_statuses), pause)


class Endpoint:
    """Everything about an endpoint that does not change per delivery, computed once per config.

    ``__slots__``: read on every attempt (the hot path).
    """

    __slots__ = (
        "_secrets",
        "_user_agent",
        "_wire_id",
        "base_headers",
        "body_key",
        "config",
        "id",
        "mask",
        "max_concurrency",
        "pause_threshold",
        "policy",
        "profile",
        "queue_size",
        "route",
        "secret",
        "signer",
        "statuses",
        "timeout_s",
        "url",
    )  # fmt: skip

    def __init__(self, config: EndpointConfig, delivery: DeliveryConfig, environ: Any) -> None:
        self.config = config
        self.id = config.id
        self._user_agent = delivery.user_agent
        profile = self.profile = PROFILES[config.profile]
        self.url = URL(config.url, encoded=False)
        secrets = resolve_secrets(config, environ)
        self._secrets = tuple(secrets)
        self.secret = secrets[0] if secrets else ""
        self.mask = Mask(secret_values(config, secrets, self.url))  # what never leaves in a results record
        self.signer: Signer = profile.signing.signer(secrets)
        self._wire_id = profile.signing.wire_id
        # Bodies that do not carry the secret are shared by every endpoint of the profile.
        self.body_key = (profile.name, self.secret if profile.injects_secret else None)
        self.timeout_s = config.timeout_s if config.timeout_s is not None else profile.timeout_s
        self.route: Route | None = None  # the serialised request head, built by the Sender on first use
        self.max_concurrency = config.max_concurrency
        self.queue_size = config.queue_size
        self.policy = policy_of(config.retry, profile)
        self.pause_threshold = (
            config.pause_after_failures if config.pause_after_failures is not None else profile.pause_after_failures
        )
        self.statuses = statuses_of(config.retry, profile)
        if profile.standard_headers:
            # Validation refuses the router's own headers; never let one through all the same.
            reserved = profile.reserved_headers
            custom = {k: v for k, v in config.headers.items() if k.lower() not in reserved}
            self.base_headers: dict[str, str] = {
                "Content-Type": "application/json",
                "User-Agent": delivery.user_agent,
                **custom,
            }
        else:
            self.base_headers = {}  # raw: Host, Content-Length and the signature headers only

    def delivers_as(self, config: EndpointConfig, delivery: DeliveryConfig, environ: Any) -> bool:
        """True when an endpoint built from these would deliver exactly like this one (its lane is kept)."""
        return (
            self.config == config
            and self._user_agent == delivery.user_agent
            and self._secrets == tuple(resolve_secrets(config, environ))
        )

    @staticmethod
    def check(config: EndpointConfig, environ: Any) -> None:
        """Raise ValueError for what would stop one being built from ``config`` (checked without building it)."""
        if config.profile not in PROFILES:
            raise ValueError(f"unknown profile {config.profile!r}")
        try:
            URL(config.url, encoded=False)
            resolve_secrets(config, environ)
        except KeyError as exc:
            raise ValueError(f"environment variable {exc.args[0]!r} is not set") from None

    def render(self, event: Event) -> bytes:
        """The body for this endpoint: as it arrived, or the profile's mapping of it (built once per event)."""
        template = self.profile.template
        if template is None:
            return event.value
        body = event.bodies.get(self.body_key)
        if body is None:
            try:
                rendered = template.render(
                    event.decoded(), event.event_type, event.time_ms, self.secret, event.type_field
                )
                body = orjson.dumps(rendered)
            except (TypeError, ValueError, RecursionError) as exc:  # e.g. nested deeper than JSON encoding goes
                raise RenderError(f"the {self.profile.name} body could not be built: {exc}") from None
            event.bodies[self.body_key] = body
        return body

    def request_headers(self, job: Job, body: bytes, ts: int) -> tuple[str | None, dict[str, str]]:
        """The id the contract gives this attempt on the wire (if any), and the headers that change per request:
        the profile's signature, ids and timestamp, and the event's ``traceparent``."""
        delivery = job.delivery_id
        wire_id = self._wire_id(self.id, delivery, job.attempt, ts)
        headers = self.signer.headers(delivery, wire_id, job.event.event_type, body, ts)
        traceparent = job.event.traceparent
        if traceparent is not None:
            headers["traceparent"] = traceparent
        return wire_id, headers


class Job:
    """One delivery to make: an event for one endpoint, and what to call once its outcome is settled.

    ``__slots__``: one per delivery (the hot path).
    """

    __slots__ = (
        "ack", "attempt", "deferrals", "delivery_id", "endpoint_id", "event", "history", "redelivery_of_id", "trigger",
    )  # fmt: skip

    def __init__(
        self,
        *,
        event: Event,
        delivery_id: str,
        ack: Ack | None,
        attempt: int = 1,
        trigger: str = LIVE,
        history: list[Attempt] | None = None,
        endpoint_id: str | None = None,
        redelivery_of_id: str | None = None,
    ) -> None:
        self.event = event
        self.delivery_id = delivery_id
        self.ack = ack  # called once every record this job leads to is acknowledged (None: owed to no event)
        self.attempt = attempt
        self.trigger = trigger
        self.history: list[Attempt] = history or []  # earlier attempts of this delivery
        self.endpoint_id = endpoint_id
        self.redelivery_of_id = redelivery_of_id
        self.deferrals = 0  # times parked on the tiers because the endpoint's queue was full


def outcome_for(endpoint_id: str | None, job: Job, status: str, **fields: Any) -> Outcome:
    event = job.event
    return Outcome(
        delivery_id=job.delivery_id,
        endpoint_id=endpoint_id,
        event_type=event.event_type,
        attempt=job.attempt,
        status=status,
        source_topic=event.topic,
        source_partition=event.partition,
        source_offset=event.offset,
        timestamp=utc_now_iso(),
        trigger=job.trigger,
        **fields,
    )


class Sender:
    """Makes attempts over one pooled HTTP client (``daemon.delivery.http``). Never raises for what an endpoint does."""

    def __init__(self, metrics: Metrics, client: Client | None = None, tracing: Tracing | None = None) -> None:
        """``tracing``: a span per attempt (None: tracing is off)."""
        self._client = client or Client()
        self._metrics = metrics
        self._tracing = tracing
        self._counted: dict[tuple[str, str], Any] = {}  # labelled children, looked up once each
        self._timed: dict[str, Any] = {}

    async def close(self) -> None:
        await self._client.close()
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.close)

    def _count(self, endpoint_id: str, status: str, http_status: int | None, error: str | None, elapsed: float) -> None:
        metrics = self._metrics
        key = (status, status_class(http_status, error))
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = metrics.deliveries.labels(*key)
        child.inc()
        timer = self._timed.get(status)
        if timer is None:
            timer = self._timed[status] = metrics.delivery_duration.labels(status)
        timer.observe(elapsed)
        if endpoint_id in metrics.marked_endpoints:
            metrics.endpoint_attempts.labels(endpoint_id, status).inc()
            metrics.endpoint_duration.labels(endpoint_id).observe(elapsed)

    async def attempt(self, endpoint: Endpoint, job: Job) -> Outcome:
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
            route = endpoint.route
            if route is None:
                route = endpoint.route = self._client.route(endpoint.url, endpoint.base_headers)
            reply = await self._client.post(route, signed, body, RESPONSE_BODY_LIMIT, endpoint.timeout_s)
            http_status = reply.status
            if http_status == 429 or http_status >= 500:
                retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            response = truncate_body(reply.body)
            if endpoint.mask:  # a receiver that echoes its request must not put the endpoint's secrets in results
                response = endpoint.mask(response, cut=len(reply.body) >= RESPONSE_BODY_LIMIT)
        except Blocked as exc:
            blocked = exc.refusal.reason
            error = f"blocked: {exc.refusal.text} (not in delivery.allowed_networks)"
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
        return outcome_for(
            endpoint.id,
            job,
            status,
            http_status=http_status,
            duration_ms=round(elapsed * 1000, 3),
            response_body=response,
            error=error,
            profile=endpoint.profile.name,
            attempt_id=new_attempt_id(job.delivery_id, job.attempt),
            sent_id=wire_id,
            redelivery_of_id=job.history[-1].attempt_id if job.history else job.redelivery_of_id,
            retry_after_s=retry_after,
        )


def internal_error(endpoint: Endpoint, job: Job) -> Outcome:
    return outcome_for(endpoint.id, job, FAILED, error="internal error (see the router's log)")


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


class LaneStats:
    """Totals over every lane of a daemon: deliveries waiting and under way (also the metrics' gauges).

    ``__slots__``: updated twice per delivery (the hot path).
    """

    __slots__ = ("busy", "queued")

    def __init__(self) -> None:
        self.queued = 0
        self.busy = 0


class Settles(Protocol):
    """What a lane hands its jobs' fates to (``daemon.engine.settle.Settlement``)."""

    def settle(self, endpoint: Endpoint, job: Job, outcome: Outcome) -> None:
        """After an attempt: record it, and retry, dead-letter or finish the delivery."""
        ...

    def held_back(self, endpoint: Endpoint, job: Job) -> bool:
        """Settle a job instead of attempting it when its endpoint was paused meanwhile; False if it is not."""
        ...


class Lane:
    """One endpoint's queue and its ``max_concurrency`` workers."""

    def __init__(self, endpoint: Endpoint, sender: Sender, settles: Settles, stats: LaneStats) -> None:
        self.endpoint = endpoint
        self.stats = stats
        self._settles = settles
        self._sender = sender
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self.busy = 0
        self.mean_s = 0.0  # moving average of an attempt's duration (the last ~20; 0: none finished yet)
        self._first_start = 0.0  # when the first attempt started (monotonic; 0: none yet)
        self.last_active = time.monotonic()  # when it last took or finished a job
        self._workers = [
            asyncio.create_task(self._work(), name=f"lane-{endpoint.id}-{i}") for i in range(endpoint.max_concurrency)
        ]

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def idle_for(self, now: float) -> float:
        """Seconds since it last had work; 0 while it has some."""
        return 0.0 if self.busy or self._queue.qsize() else now - self.last_active

    def drain_s(self) -> float:
        """About how long the endpoint needs for what it has queued and under way, at its recent pace.

        Before any attempt has finished, the pace is at least as slow as the first attempt has been running.
        """
        pace = self.mean_s or (time.monotonic() - self._first_start if self._first_start else 0.0)
        return (self._queue.qsize() + self.busy) * pace / self.endpoint.max_concurrency

    async def put_wait(self, job: Job) -> None:
        """Queue a job, waiting for room in the endpoint's queue."""
        while not self.put(job):
            self._room.clear()
            await self._room.wait()

    def put(self, job: Job, force: bool = False) -> bool:
        """Queue a job. False when the endpoint's queue is full (the caller defers the job), unless ``force``."""
        if not force and self._queue.qsize() >= self.endpoint.queue_size:
            return False
        self.stats.queued += 1
        self._queue.put_nowait(job)
        return True

    async def _work(self) -> None:
        queue, endpoint, sender, settles = self._queue, self.endpoint, self._sender, self._settles
        while True:
            job = await queue.get()
            if job is None:
                return
            self._room.set()
            stats = self.stats
            stats.queued -= 1
            if job.trigger == LIVE and settles.held_back(endpoint, job):
                continue
            self.busy += 1
            stats.busy += 1
            if not self._first_start:
                self._first_start = time.monotonic()
            try:
                outcome = await sender.attempt(endpoint, job)
            except Exception:  # a bug, not an endpoint's doing: record it rather than lose the job
                log.exception("delivery %s to %s failed unexpectedly", job.delivery_id, endpoint.id)
                outcome = internal_error(endpoint, job)
            finally:
                self.busy -= 1
                stats.busy -= 1
            if outcome.duration_ms is not None:
                took = outcome.duration_ms / 1000
                self.mean_s = self.mean_s + (took - self.mean_s) * 0.05 if self.mean_s else took
            settles.settle(endpoint, job, outcome)
            self.last_active = time.monotonic()

    async def close(self) -> None:
        """Finish every queued job under this lane's settings, then stop the workers."""
        for _ in self._workers:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def cancel(self) -> int:
        """Stop now. Returns how many deliveries were abandoned (queued or under way)."""
        abandoned = self.busy + sum(1 for job in self._drain() if job is not None)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        return abandoned

    def _drain(self) -> list[Job | None]:
        items: list[Job | None] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        self.stats.queued -= sum(1 for j in items if j is not None)
        return items
