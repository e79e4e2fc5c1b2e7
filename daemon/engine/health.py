"""Endpoint health: consecutive failures, automatic pause, operator pause and resume, kept on a topic.

Every change is written to a compacted topic keyed by endpoint id. At start-up the whole topic is read
back, so a restart keeps its pauses; afterwards the topic is tailed, so every instance of the router
sees a pause made by any of them.

The topic's order decides: the state of an endpoint is its last record there. An instance applies its own changes at
once and reads them back later, so a record read back while a later change of its own to the same endpoint is still
on its way (not read back yet) is older than that change in the topic and is not applied (a tenant's pause read back
after the platform's pause here would otherwise undo the platform's until its own record came back).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec

from daemon.core.breaker import OPEN
from daemon.core.clock import ms_of_iso, utc_now_iso
from daemon.core.model import (
    ENDPOINT_CIRCUIT_CLOSED,
    ENDPOINT_CIRCUIT_OPENED,
    ENDPOINT_PAUSED,
    ENDPOINT_RESUMED,
    PAUSED_BY_AUTOMATIC,
    PAUSED_BY_CONTRACT,
    PAUSED_BY_PLATFORM,
    PAUSED_BY_TENANT,
    TENANT_MAY_LIFT,
    HealthState,
    Outcome,
    decode_health,
    encode_health,
    encode_outcome,
    paused_by,
)
from daemon.engine.operational import ACTOR_ADMIN, ACTOR_ROUTER, Operational
from daemon.kafka.follow import Follower
from daemon.kafka.results import ResultsWriter
from daemon.observe.metrics import Metrics

log = logging.getLogger(__name__)

# Bounded reasons for the metrics label; the full text goes to the results topic and /endpoints.
REASON_FAILURES = "failures"
REASON_GONE = "gone"
REASON_OPERATOR = "operator"  # the platform: the admin token, the operator's routes and commands
REASON_CONFIG = "config"
REASON_TENANT = "tenant"  # the endpoint's tenant, with its own token
_REASONS = (REASON_FAILURES, REASON_GONE, REASON_OPERATOR, REASON_CONFIG, REASON_TENANT)
# Who a pause of each kind is (``HealthState.paused_by``).
_PAUSED_BY = {
    REASON_FAILURES: PAUSED_BY_AUTOMATIC, REASON_GONE: PAUSED_BY_CONTRACT, REASON_OPERATOR: PAUSED_BY_PLATFORM,
    REASON_CONFIG: PAUSED_BY_PLATFORM, REASON_TENANT: PAUSED_BY_TENANT,
}  # fmt: skip


# Who did it, in an operational event, by who paused (a tenant's own pause names its tenant where it is known).
_ACTORS = {PAUSED_BY_PLATFORM: ACTOR_ADMIN, PAUSED_BY_TENANT: "tenant"}

_WHO = {PAUSED_BY_PLATFORM: "the platform", PAUSED_BY_TENANT: "its tenant", PAUSED_BY_CONTRACT: "its contract",
        PAUSED_BY_AUTOMATIC: "its failures"}  # fmt: skip


def pause_text(state: HealthState) -> str:
    """A pause in words, naming who paused: ``paused by the platform (operator: paused through the API)``."""
    by = paused_by(state) or PAUSED_BY_PLATFORM
    return f"paused by {_WHO.get(by, by)} ({state.reason or 'no reason given'})"


class Health:
    """In-memory health of every endpoint, persisted through the writer to ``topic``."""

    def __init__(
        self, writer: ResultsWriter, topic: str, metrics: Metrics, operational: Operational | None = None
    ) -> None:
        """``operational``: where its changes are announced as operational events too (None: nowhere)."""
        self._writer = writer
        self._operational = operational
        self._topic = topic
        self._metrics = metrics
        self.states: dict[str, HealthState] = {}
        self._failures: dict[str, int] = {}
        self._paused_ms: dict[str, int] = {}  # when each paused endpoint was paused (unix ms)
        self._unread: dict[str, deque[bytes]] = {}  # per endpoint: the records of this instance not read back yet

    def is_paused(self, endpoint_id: str) -> bool:
        state = self.states.get(endpoint_id)
        return state is not None and state.paused

    def failures(self, endpoint_id: str) -> int:
        return self._failures.get(endpoint_id, 0)

    def paused_since_ms(self, endpoint_id: str) -> int | None:
        """When a paused endpoint was paused (unix ms; a pause whose time cannot be read: when this instance learnt
        of it); None when it is not paused."""
        return self._paused_ms.get(endpoint_id)

    def _keep(self, state: HealthState) -> None:
        self.states[state.endpoint_id] = state
        if state.paused:
            since = ms_of_iso(state.since)
            if since is None:
                since = self._paused_ms.get(state.endpoint_id, int(time.time() * 1000))
            self._paused_ms[state.endpoint_id] = since
        else:
            self._paused_ms.pop(state.endpoint_id, None)

    def observe(self, endpoint_id: str, ok: bool, gone: int | None, threshold: int | None) -> None:
        """Count one live attempt's result; pause on an answer its contract pauses on (``gone``: that HTTP
        status, usually 410) or after ``threshold`` consecutive failures."""
        if ok:
            if self._failures.get(endpoint_id):
                self._failures[endpoint_id] = 0
            return
        count = self._failures[endpoint_id] = self._failures.get(endpoint_id, 0) + 1
        if self.is_paused(endpoint_id):
            return
        if gone is not None:
            self.pause(endpoint_id, REASON_GONE, "the endpoint answered 410 Gone" if gone == 410 else f"HTTP {gone}")
        elif threshold is not None and count >= threshold:
            self.pause(endpoint_id, REASON_FAILURES, f"{count} consecutive failed deliveries")

    def pause(self, endpoint_id: str, kind: str, detail: str, actor: str | None = None) -> bool:
        """Pause an endpoint (``kind``: one of the ``REASON_*``, which says who pauses; ``actor``: who, for the
        operational event, default from ``kind``). False if it was paused already, unless the pause in force is one
        its tenant may lift and this one is not (the platform's, its contract's): this one then replaces it, paused
        since the first, so the tenant cannot lift it."""
        by = _PAUSED_BY[kind]
        current = self.states.get(endpoint_id)
        since = utc_now_iso()
        if current is not None and current.paused:
            if paused_by(current) not in TENANT_MAY_LIFT or by in TENANT_MAY_LIFT:
                return False
            since = current.since or since
        reason = f"{kind}: {detail}"
        failures = self._failures.get(endpoint_id, 0)
        self._set(
            HealthState(
                endpoint_id=endpoint_id, paused=True, reason=reason, since=since, consecutive_failures=failures,
                paused_by=by,
            )
        )  # fmt: skip
        log.warning("endpoint %s paused by %s (%s)", endpoint_id, by, reason)
        self._announce_op("endpoint.paused", endpoint_id, actor or _ACTORS.get(by, ACTOR_ROUTER), reason=reason,
                          paused_by=by)  # fmt: skip
        return True

    def resume(self, endpoint_id: str, actor: str = ACTOR_ADMIN) -> bool:
        """Resume an endpoint (``actor``: who, for the operational event). False if it was not paused."""
        if not self.is_paused(endpoint_id):
            return False
        self._failures[endpoint_id] = 0
        self._set(HealthState(endpoint_id=endpoint_id, paused=False, since=utc_now_iso()))
        log.info("endpoint %s resumed", endpoint_id)
        self._announce_op("endpoint.resumed", endpoint_id, actor)
        return True

    def _announce_op(self, event_type: str, endpoint_id: str, actor: str, **data: Any) -> None:
        if self._operational is not None:
            self._operational.emit(event_type, endpoint_id, actor, **data)

    def _set(self, state: HealthState) -> None:
        """Keep a change, persist it on the health topic, and announce it on the results topic (owed to no event)."""
        self._keep(state)
        self._update_gauge()
        key = state.endpoint_id.encode()
        value = encode_health(state)
        self._unread.setdefault(state.endpoint_id, deque()).append(value)
        self._writer.submit(key, value, None, topic=self._topic)
        self._announce(state.endpoint_id, ENDPOINT_PAUSED if state.paused else ENDPOINT_RESUMED, state.reason)

    def _announce(self, endpoint_id: str, status: str, error: str | None) -> None:
        """A change of an endpoint's health on the results topic (owed to no event)."""
        outcome = Outcome(
            delivery_id=None,
            endpoint_id=endpoint_id,
            event_type=None,
            attempt=0,
            status=status,
            error=error,
            source_topic=None,
            source_partition=None,
            source_offset=None,
            timestamp=utc_now_iso(),
            trigger="health",
        )
        self._writer.submit(endpoint_id.encode(), encode_outcome(outcome), None)

    def circuit(self, endpoint_id: str, state: str, threshold: int) -> None:
        """An endpoint's circuit breaker on this instance opened or closed (``daemon.core.breaker``): logged, counted
        and announced on the results topic. Not kept on the health topic: each instance's breaker is its own."""
        self._announce_op("endpoint.circuit_opened" if state == OPEN else "endpoint.circuit_closed", endpoint_id,
                          ACTOR_ROUTER)  # fmt: skip
        if state == OPEN:
            self._metrics.circuits_opened.inc()
            log.warning("endpoint %s: circuit opened after %d consecutive failures", endpoint_id, threshold)
            self._announce(endpoint_id, ENDPOINT_CIRCUIT_OPENED, f"circuit opened: failures ({threshold} in a row, or "
                           "its probe)")  # fmt: skip
        else:
            log.info("endpoint %s: circuit closed (its probe was delivered)", endpoint_id)
            self._announce(endpoint_id, ENDPOINT_CIRCUIT_CLOSED, None)

    def follow_config(self, endpoint_id: str, paused: bool, was_paused: bool) -> None:
        """``paused = true`` in the config pauses the endpoint; taking it out again resumes it."""
        if paused:
            self.pause(endpoint_id, REASON_CONFIG, "paused = true in the config")
        elif was_paused:
            self.resume(endpoint_id)

    def apply(self, state: HealthState, value: bytes | None = None) -> None:
        """A state read back from the topic (at start-up, written by another instance, or this one's own: ``value``,
        its record's bytes, says which). Not applied while a later change of this instance's to the endpoint is
        still to be read back: that one comes after it in the topic."""
        unread = self._unread.get(state.endpoint_id)
        if unread:
            if value == unread[0]:
                unread.popleft()  # this instance's own, read back
            if unread:
                return
            del self._unread[state.endpoint_id]
        current = self.states.get(state.endpoint_id)
        if current is not None and (current.paused, current.reason, current.paused_by, current.since) == (
            state.paused, state.reason, state.paused_by, state.since
        ):  # fmt: skip
            return
        self._keep(state)
        if not state.paused:
            self._failures[state.endpoint_id] = 0
        self._update_gauge()

    def _update_gauge(self) -> None:
        counts: dict[str, int] = dict.fromkeys(_REASONS, 0)
        for state in self.states.values():
            if state.paused and state.reason:
                kind = state.reason.split(":", 1)[0]
                counts[kind] = counts.get(kind, 0) + 1
        for kind, count in counts.items():
            self._metrics.endpoints_paused.labels(kind).set(count)


class HealthReader:
    """Reads the health topic from its start, then follows it (``daemon.kafka.follow``): however long the first read
    takes, an endpoint paused on the topic must not be delivered to because its pause was not read yet."""

    def __init__(self, topic: str, client_options: Mapping[str, Any], health: Health) -> None:
        self._topic = topic
        self._health = health
        self._follower = Follower(topic, client_options, self._apply, "health")
        self.read = 0

    async def start(self) -> int:
        """Load every state on the topic, up to its end as a fetch reports it; returns how many were read."""
        await self._follower.start()
        return self.read

    def _apply(self, record: Any) -> None:
        if record.value is None:  # a tombstone (an operator clearing a key): nothing to restore
            return
        try:
            state = decode_health(record.value)
        except msgspec.DecodeError:
            log.warning("unreadable record on %s at offset %d: skipped", self._topic, record.offset)
            return
        self._health.apply(state, record.value)
        self.read += 1

    async def stop(self) -> None:
        await self._follower.stop()
