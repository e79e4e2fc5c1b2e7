"""A ``Lane`` is one endpoint's queue and exactly ``max_concurrency`` long-lived workers: a worker takes a job only
when it is free, so waiting for a slot never eats into the request timeout, and there is no task per request. What
happens after an attempt is the settlement's (``daemon.engine.settle``), through the ``Settles`` protocol.

An endpoint with a ``rate_limit`` has a ``Pace`` (``daemon.core.rate``): a worker that has taken a job waits until the
bucket lets it start (the job still counts as queued meanwhile). A 429 or a ``Retry-After`` slows the pace down, and
successes bring it back; an endpoint without a rate limit gets a pace only then (from its recent throughput), and
loses it once recovered, so that the lanes of endpoints that never answer 429 take no clock reading for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from daemon.core.breaker import CLOSED, OPEN, Breaker, State
from daemon.core.model import (
    BLOCKED,
    LIVE,
    RENDER_FAILED,
    REPLAY,
    Outcome,
)
from daemon.core.rate import Pace, default_burst
from daemon.delivery.endpoint import Endpoint
from daemon.delivery.job import Job, internal_error
from daemon.delivery.sender import Sender

log = logging.getLogger(__name__)

# The jobs a pause stops once queued: live deliveries (and their retries) and replays. A ping or a redelivery is
# one attempt its caller waits for, checked when asked (``daemon.admin.operate``).
_HELD_BACK = frozenset({LIVE, REPLAY})
# Outcomes that say nothing of the endpoint's health: its circuit breaker does not count them.
_SAYS_NOTHING = frozenset({BLOCKED, RENDER_FAILED})


class LaneStats:
    """Totals over every lane of a daemon: deliveries waiting and under way and circuits not closed (the metrics'
    gauges), and how often a delivery waited for its endpoint's pace and a pace was slowed down (counters).

    ``__slots__``: updated twice per delivery (the hot path).
    """

    __slots__ = ("busy", "circuits_open", "paced", "queued", "slowed")

    def __init__(self) -> None:
        self.queued = 0
        self.busy = 0
        self.paced = 0
        self.slowed = 0
        self.circuits_open = 0


class TenantLoad:
    """One tenant's deliveries queued and under way over all its endpoints' lanes on this instance, and the most it
    may hold (``api.max_in_flight_per_tenant``): past it, the settlement defers its deliveries to the tiers instead of
    queueing them, so that one tenant's backlog never fills the instance's in-flight cap in front of the others'.

    ``__slots__``: updated twice per delivery of a tenant's endpoint.
    """

    __slots__ = ("held", "most", "pace", "per_second")

    def __init__(self, most: int, per_second: float | None = None) -> None:
        """``per_second``: the tenant's requests a second over all its endpoints (``api.max_per_second_per_tenant``),
        a bucket of one second's worth that every lane of the tenant takes from."""
        self.held = 0
        self.most = most
        self.per_second = per_second
        self.pace = Pace(per_second, default_burst(per_second)) if per_second is not None else None


class Settles(Protocol):
    """What a lane hands its jobs' fates to (``daemon.engine.settle.Settlement``)."""

    def settle(self, endpoint: Endpoint, job: Job, outcome: Outcome) -> None:
        """After an attempt: record it, and retry, dead-letter or finish the delivery."""
        ...

    def held_back(self, endpoint: Endpoint, job: Job) -> bool:
        """Settle a job instead of attempting it when its endpoint was paused meanwhile (a live or replayed one);
        False if it is not."""
        ...

    def circuit(self, endpoint: Endpoint, state: State) -> None:
        """The endpoint's circuit breaker opened or closed: record it."""
        ...


class Lane:
    """One endpoint's queue and its ``max_concurrency`` workers."""

    def __init__(
        self, endpoint: Endpoint, sender: Sender, settles: Settles, stats: LaneStats, tenant: TenantLoad | None = None
    ) -> None:
        """``tenant``: the load of the endpoint's tenant, which this lane's jobs count in (None: the platform's)."""
        self.endpoint = endpoint
        self.stats = stats
        self.tenant = tenant
        self._settles = settles
        self._sender = sender
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self.closing = False  # closed or cancelled: no more jobs (``put_wait`` says so to who waits for room)
        self.busy = 0
        self.mean_s = 0.0  # moving average of an attempt's duration (the last ~20; 0: none finished yet)
        self._first_start = 0.0  # when the first attempt started (monotonic; 0: none yet)
        self.last_active = time.monotonic()  # when it last took or finished a job
        limit = endpoint.config.rate_limit
        # The endpoint's pace (None: unlimited, until a 429); ``_adaptive``: not configured, dropped once recovered.
        self.pace: Pace | None = None
        self._pacing = 0  # jobs taken by a worker that waits for the pace or the circuit breaker
        self._changed = asyncio.Event()  # set when the breaker took an outcome (the waiting workers look again)
        breaker = endpoint.config.circuit_breaker
        self.breaker: Breaker | None = None
        if breaker is not None:
            self.breaker = Breaker(breaker.failures, breaker.cooldown_s, breaker.max_cooldown_s)
        self._adaptive = limit is None
        if limit is not None:
            self.pace = Pace(limit.per_second, limit.burst or default_burst(limit.per_second))
        self._workers = [
            asyncio.create_task(self._work(), name=f"lane-{endpoint.id}-{i}") for i in range(endpoint.max_concurrency)
        ]

    @property
    def queued(self) -> int:
        return self._queue.qsize() + self._pacing

    def idle_for(self, now: float) -> float:
        """Seconds since it last had work; 0 while it has some."""
        return 0.0 if self.busy or self.queued else now - self.last_active

    def drain_s(self) -> float:
        """About how long the endpoint needs for what it has queued and under way, at its recent pace.

        Before any attempt has finished, the pace is at least as slow as the first attempt has been running.
        """
        pace = self.mean_s or (time.monotonic() - self._first_start if self._first_start else 0.0)
        left = self.queued + self.busy
        rated = left / self.pace.current if self.pace is not None else 0.0
        return max(left * pace / self.endpoint.max_concurrency, rated)

    async def put_wait(self, job: Job) -> bool:
        """Queue a job, waiting for room in the endpoint's queue; False (not queued) once the lane is closing: its
        workers finish what they hold and stop, and a job queued behind them would never be attempted."""
        while not self.closing:
            if self.put(job):
                return True
            self._room.clear()
            await self._room.wait()
        return False

    def put(self, job: Job, force: bool = False) -> bool:
        """Queue a job. False when the endpoint's queue is full (the caller defers the job), unless ``force``."""
        if not force and self._queue.qsize() >= self.endpoint.queue_size:
            return False
        self.stats.queued += 1
        if self.tenant is not None:
            self.tenant.held += 1
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
            breaker = self.breaker
            tenant = self.tenant
            if self.pace is not None or breaker is not None or (tenant is not None and tenant.pace is not None):
                if not await self._gate(job):
                    self._left()
                    continue
            else:
                stats.queued -= 1
                if job.trigger in _HELD_BACK and settles.held_back(endpoint, job):
                    self._left()
                    continue
            probe = breaker.admit() if breaker is not None else False
            self.busy += 1
            stats.busy += 1
            if not self._first_start:
                self._first_start = time.monotonic()
            try:
                outcome = await sender.attempt(endpoint, job)
            except Exception:  # a bug, not an endpoint's doing: record it rather than lose the job
                log.exception("delivery %s to %s failed unexpectedly", job.delivery_id, endpoint.id)
                outcome = internal_error(endpoint.id, job)
            finally:
                self.busy -= 1
                stats.busy -= 1
            if outcome.duration_ms is not None:
                took = outcome.duration_ms / 1000
                self.mean_s = self.mean_s + (took - self.mean_s) * 0.05 if self.mean_s else took
            if outcome.http_status == 429 or outcome.retry_after_s is not None:
                self._slow_down(outcome.retry_after_s)
            elif self.pace is not None and outcome.http_status is not None and outcome.http_status < 300:
                self._recovered()
            if breaker is not None:
                self._judged(breaker, outcome, probe)
            settles.settle(endpoint, job, outcome)
            if self.tenant is not None:
                self.tenant.held -= 1
            self.last_active = time.monotonic()

    async def _gate(self, job: Job) -> bool:
        """Wait until the endpoint's circuit breaker lets an attempt start and its pace lets one more request start
        (counting it); False (the job settled) if the endpoint is paused before or meanwhile. Every worker that waits
        looks again when its wait is over or the breaker changes: a 429 or an opening meanwhile holds it longer. The
        job waiting is still counted queued (and ``cancel`` counts it abandoned)."""
        held = job.trigger in _HELD_BACK
        stats = self.stats
        if held and self._settles.held_back(self.endpoint, job):
            stats.queued -= 1
            return False
        self._pacing += 1
        waited = paced = False
        try:
            while True:
                now = time.monotonic()
                breaker, pace = self.breaker, self.pace
                wait = breaker.wait_s(now) if breaker is not None else 0.0
                if wait == 0.0 and pace is not None:
                    wait = pace.wait_s(now)
                    paced = paced or wait > 0
                shared = self.tenant.pace if self.tenant is not None else None  # the tenant's, every lane of it
                if wait == 0.0 and shared is not None:
                    wait = shared.wait_s(now)
                    paced = paced or wait > 0
                if wait == 0.0:
                    break
                waited = True
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):  # None: until the probe's outcome
                        await self._changed.wait()
        finally:
            self._pacing -= 1
        stats.queued -= 1
        if paced:
            stats.paced += 1
        if waited and held and self._settles.held_back(self.endpoint, job):
            return False
        if pace is not None:
            pace.take(now)
        if shared is not None:
            shared.take(now)
        return True

    def _left(self) -> None:
        """A job is done with this lane (settled, or held back): its tenant holds one fewer."""
        if self.tenant is not None:
            self.tenant.held -= 1

    def _judged(self, breaker: Breaker, outcome: Outcome, probe: bool) -> None:
        """Tell the breaker what an attempt said of the endpoint: failed when its contract would retry it."""
        if outcome.status in _SAYS_NOTHING:
            ok = None
        else:
            ok = self.endpoint.statuses.verdict(outcome.http_status) in ("delivered", "final")
        was_closed = breaker.state == CLOSED
        state = breaker.record(ok, probe, time.monotonic())
        self._changed.set()
        if state is not None:
            if was_closed or state == CLOSED:  # a failed probe opens it again: still one
                self.stats.circuits_open += 1 if state == OPEN else -1
            self._settles.circuit(self.endpoint, state)

    def _slow_down(self, retry_after_s: float | None) -> None:
        """A 429 or a ``Retry-After``: slow the pace down (an unlimited endpoint's starts at its recent throughput)."""
        if self.pace is None:
            recent = self.endpoint.max_concurrency / self.mean_s if self.mean_s else 1.0
            self.pace = Pace(min(max(recent, 1.0), 10_000.0), 1)
        self.pace.slow_down(time.monotonic(), retry_after_s)
        self.stats.slowed += 1

    def _recovered(self) -> None:
        pace = self.pace
        if pace is not None:
            pace.succeeded()
            if self._adaptive and pace.factor >= 1.0:
                self.pace = None

    async def close(self) -> None:
        """Finish every queued job under this lane's settings, then stop the workers."""
        self._stop_taking()
        for _ in self._workers:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._forget_circuit()

    def _stop_taking(self) -> None:
        self.closing = True
        self._room.set()  # who waits for room looks again, and is told

    def _forget_circuit(self) -> None:
        """A lane that goes takes its breaker with it: no longer counted open."""
        if self.breaker is not None and self.breaker.state != CLOSED:
            self.breaker = None
            self.stats.circuits_open -= 1

    async def cancel(self) -> int:
        """Stop now. Returns how many deliveries were abandoned (queued or under way)."""
        self._stop_taking()
        pacing = self._pacing
        abandoned = self.busy + pacing + sum(1 for job in self._drain() if job is not None)
        self.stats.queued -= pacing
        if self.tenant is not None:
            self.tenant.held -= self.busy + pacing
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._forget_circuit()
        return abandoned

    def _drain(self) -> list[Job | None]:
        items: list[Job | None] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        dropped = sum(1 for j in items if j is not None)
        self.stats.queued -= dropped
        if self.tenant is not None:
            self.tenant.held -= dropped
        return items
