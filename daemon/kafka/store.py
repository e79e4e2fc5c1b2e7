"""The endpoints topic as a store: read into the ``Directory`` before the daemon is ready, followed, written with
read-your-writes (``daemon.core.registry`` says what a record is, how it is signed and how conflicts resolve).

A record that is refused (not authentic, not one the API could have written) is not applied: the state before it
is kept, one line is logged naming its key and offset, and ``endpoints_records_refused_total{reason}`` counts it.
Once read to its end, records written under an older key (or before records were signed) are rewritten under the
current one in the background (``endpoints_records_under_old_keys`` says how many are left)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import KafkaError

from daemon.core.errors import Conflict, KafkaUnavailable, RouterError, reason_of
from daemon.core.registry import (
    Changed,
    Directory,
    EndpointRecord,
    Record,
    RecordRefused,
    endpoint_key,
    next_expiry,
    resealed,
    signed,
    tenant_key,
)
from daemon.core.secretbox import Keyring, SecretError
from daemon.kafka.follow import Follower
from daemon.observe.metrics import Metrics

log = logging.getLogger(__name__)

_WRITE_TIMEOUT_S = 10.0  # for Kafka to acknowledge a write, then for this instance to read it back
_OUTCOMES_KEPT = 10_000  # recent offsets whose fate a writer may still be waiting to learn
_RESEALS_AT_ONCE = 32  # records rewritten under the current key concurrently
_HELD_AT_START = 100_000  # refusals the first read holds back, to learn whether later records superseded them


class Refused(RouterError):
    """A write this instance refused on reading it back (a bug, or instances with different keys)."""


class Store:
    """``keyring`` seals, signs and verifies the records; ``accept_unauthenticated``: records without a MAC are read
    (a migration window: ``daemon.core.registry.Directory``)."""

    def __init__(
        self,
        topic: str,
        client_options: Mapping[str, Any],
        producer: Any,
        changed: Changed,
        keyring: Keyring,
        metrics: Metrics,
        accept_unauthenticated: bool = False,
    ) -> None:
        self.topic = topic
        self.directory = Directory(keyring, accept_unauthenticated)
        self._keyring = keyring
        self._producer = producer
        self._changed = changed
        self._follower = Follower(topic, client_options, self._apply, "endpoints")
        # (partition, offset) -> accepted (True), lost to an earlier version (False), or why it was refused
        self._outcomes: OrderedDict[tuple[int, int], bool | str] = OrderedDict()
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._refused = metrics.endpoints_records_refused
        for reason in RecordRefused.REASONS:
            self._refused.labels(reason)
        metrics.endpoints_records_under_old_keys.set_function(self.directory.under_old_keys)
        metrics.endpoints_behind_records.set_function(lambda: self._follower.lag()[0])
        metrics.endpoints_behind_seconds.set_function(lambda: _or_inf(self._follower.lag()[1]))
        self._resealing: asyncio.Task[None] | None = None
        # While the topic is first read: refusals that a later signed record of the same key may have made moot.
        self._held: list[tuple[str, int, RecordRefused]] | None = []

    async def start(self) -> int:
        """Read the topic to its end (every endpoint applied before this returns); returns how many records. Then
        rewrites, in the background, the records of an older key under the current one."""
        read = await self._follower.start()
        held, self._held = self._held or [], None
        # A record of a key this instance no longer has, or of no key, that a later signed version of its key
        # superseded is what a rotation or a migration leaves until compaction drops it: said once, not refused.
        superseded = 0
        for key, offset, refusal in held:
            if refusal.version is not None and self.directory.version(key) >= refusal.version:
                superseded += 1
            else:
                self._refuse(key, offset, refusal)
        if superseded:
            log.info("%s: %d records of a key this instance does not have, or without a MAC, were superseded by later "
                     "signed versions (compaction will drop them)", self.topic, superseded)  # fmt: skip
        self._resealing = asyncio.create_task(self._reseal(), name="reseal-endpoints")
        return read

    def lagging(self, bound_s: float) -> str | None:
        """How this instance is more than ``bound_s`` behind the topic (it may hold a token deleted elsewhere), or None
        when it has applied, within the last ``bound_s``, everything the topic held."""
        records, seconds = self._follower.lag()
        if seconds is not None and seconds <= bound_s:
            return None
        since = "not caught up yet" if seconds is None else f"last caught up {seconds:.0f} s ago"
        return f"behind the endpoints topic {self.topic} ({since}, {records} records known unread; more than " \
               f"api.max_token_lag_s = {bound_s:g} s)"  # fmt: skip

    async def stop(self) -> None:
        if self._resealing is not None:
            self._resealing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resealing
            self._resealing = None
        for timer in self._expiries.values():
            timer.cancel()
        self._expiries.clear()
        await self._follower.stop()

    def _apply(self, record: Any) -> None:
        key = record.key.decode(errors="replace") if record.key is not None else ""
        try:
            accepted, applied = self.directory.apply(key, record.value)
        except RecordRefused as exc:
            self._outcome(record, str(exc))
            if self._held is not None and exc.reason in ("key", "unauthenticated") and len(self._held) < _HELD_AT_START:
                self._held.append((key, record.offset, exc.with_traceback(None)))
            else:
                self._refuse(key, record.offset, exc)
            return
        self._outcome(record, accepted)
        if not accepted:
            log.info("%s version %s lost to an earlier write of it: not applied", key, getattr(applied, "version", "?"))
            return
        kind, _, ident = key.partition("/")
        if kind != "endpoint":
            return
        current = self.directory.endpoints.get(ident)
        self._changed(ident, current)
        self._expire_later(ident, current)

    def _refuse(self, key: str, offset: int, refusal: RecordRefused) -> None:
        self._refused.labels(refusal.reason).inc()
        log.error("%s: record %r at offset %d not applied (the state before it is kept): %s", self.topic, key[:300],
                  offset, refusal)  # fmt: skip

    def _outcome(self, record: Any, outcome: bool | str) -> None:
        if self._held is not None:  # the first read: no writer of this instance waits (the API is made after it)
            return
        self._outcomes[(record.partition, record.offset)] = outcome
        while len(self._outcomes) > _OUTCOMES_KEPT:
            self._outcomes.popitem(last=False)

    def _expire_later(self, endpoint_id: str, record: EndpointRecord | None) -> None:
        """When a rotated-out secret's grace ends, apply the endpoint again without it."""
        old = self._expiries.pop(endpoint_id, None)
        if old is not None:
            old.cancel()
        if record is None:
            return
        now_ms = int(time.time() * 1000)
        due = next_expiry(record, now_ms)
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._expiries[endpoint_id] = loop.call_later((due - now_ms) / 1000 + 0.001, self._expired, endpoint_id)

    def _expired(self, endpoint_id: str) -> None:
        self._expiries.pop(endpoint_id, None)
        current = self.directory.endpoints.get(endpoint_id)
        if current is not None:
            self._changed(endpoint_id, current)
            self._expire_later(endpoint_id, current)

    async def write(self, record: Record) -> Record:
        """Write a new version, signed under the current key; returns once this instance has applied it. Conflict when
        another write won; KafkaUnavailable (a 503) when Kafka did not take it, or took it and this instance has not
        applied it yet; Refused when this instance refused it on reading it back."""
        key = endpoint_key(record.id) if isinstance(record, EndpointRecord) else tenant_key(record.id)
        partition, offset = await self._send(key, signed(record, self._keyring))
        await self._applied(key, record.version, partition, offset)
        outcome = self._outcomes.pop((partition, offset), False)
        if isinstance(outcome, str):
            raise Refused(f"{key} was written but refused on reading it back: {outcome}")
        if not outcome:
            raise Conflict(f"{key} was changed meanwhile (version {record.version} taken): read it and try again")
        return record

    async def _reseal(self) -> None:
        """Rewrite every record of an older key (or of none) under the current one, a few at a time; a record another
        instance rewrote (or changed) first is left to it."""
        stale = self.directory.stale()
        if not stale:
            return
        current = self._keyring.current_id
        log.info("%s: rewriting %d records under the current key (id %s)", self.topic, len(stale), current)
        counts = {"done": 0, "taken": 0, "failed": 0}
        pending = iter(stale)

        async def rewrite() -> None:
            for record in pending:  # shared by the workers: each record is taken once
                try:
                    await self.write(resealed(record, self._keyring))
                    counts["done"] += 1
                except Conflict:
                    counts["taken"] += 1
                except (RouterError, SecretError, ValueError) as exc:
                    counts["failed"] += 1
                    log.warning("%s: %s not rewritten under the current key: %s", self.topic, record.id, exc)

        await asyncio.gather(*(rewrite() for _ in range(_RESEALS_AT_ONCE)))
        log.info("%s: %d records rewritten under key id %s, %d changed first by another writer, %d failed; %d left "
                 "under older keys", self.topic, counts["done"], current, counts["taken"], counts["failed"],
                 self.directory.under_old_keys())  # fmt: skip

    async def tombstone(self, key: str) -> None:
        """Let compaction drop a deleted key (its versioned delete marker was accepted)."""
        partition, offset = await self._send(key, None)
        await self._applied(key, None, partition, offset)

    async def _send(self, key: str, value: bytes | None) -> tuple[int, int]:
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                meta = await self._producer.send_and_wait(self.topic, value, key=key.encode())
        except (KafkaError, TimeoutError) as exc:
            why = reason_of(exc) if isinstance(exc, KafkaError) else f"no answer within {_WRITE_TIMEOUT_S:g} s"
            raise KafkaUnavailable(f"{key} not written: Kafka did not acknowledge it ({why}); try again") from None
        return meta.partition, meta.offset

    async def _applied(self, key: str, version: int | None, partition: int, offset: int) -> None:
        try:
            await self._follower.wait_applied(partition, offset, _WRITE_TIMEOUT_S)
        except TimeoutError:
            self._outcomes.pop((partition, offset), None)
            taken = f"version {version} of {key}" if version is not None else f"the delete of {key}"
            raise KafkaUnavailable(
                f"{taken} was written but this instance has not read it back yet: read it before writing again"
            ) from None


def _or_inf(seconds: float | None) -> float:
    return math.inf if seconds is None else seconds
