"""The endpoints topic as a store: read into the ``Directory`` before the daemon is ready, followed, written with
read-your-writes (``daemon.core.registry`` says what a record is and how conflicts resolve)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import KafkaError

from daemon.core.errors import Conflict, KafkaUnavailable, reason_of
from daemon.core.registry import Changed, Directory, EndpointRecord, Record, encode, endpoint_key, next_expiry
from daemon.kafka.follow import Follower

log = logging.getLogger(__name__)

_WRITE_TIMEOUT_S = 10.0  # for Kafka to acknowledge a write, then for this instance to read it back
_OUTCOMES_KEPT = 10_000  # recent offsets whose fate a writer may still be waiting to learn


class Store:
    def __init__(self, topic: str, client_options: Mapping[str, Any], producer: Any, changed: Changed) -> None:
        self.topic = topic
        self.directory = Directory()
        self._producer = producer
        self._changed = changed
        self._follower = Follower(topic, client_options, self._apply, "endpoints")
        self._outcomes: OrderedDict[tuple[int, int], bool] = OrderedDict()  # (partition, offset) -> accepted
        self._expiries: dict[str, asyncio.TimerHandle] = {}

    async def start(self) -> int:
        """Read the topic to its end (every endpoint applied before this returns); returns how many records."""
        return await self._follower.start()

    async def stop(self) -> None:
        for timer in self._expiries.values():
            timer.cancel()
        self._expiries.clear()
        await self._follower.stop()

    def _apply(self, record: Any) -> None:
        key = record.key.decode() if record.key is not None else ""
        accepted, applied = self.directory.apply(key, record.value)
        self._outcomes[(record.partition, record.offset)] = accepted
        while len(self._outcomes) > _OUTCOMES_KEPT:
            self._outcomes.popitem(last=False)
        if not accepted:
            log.info("%s version %s lost to an earlier write of it: not applied", key, getattr(applied, "version", "?"))
            return
        kind, _, ident = key.partition("/")
        if kind != "endpoint":
            return
        current = self.directory.endpoints.get(ident)
        self._changed(ident, current)
        self._expire_later(ident, current)

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
        """Write a new version; returns once this instance has applied it. Conflict when another write won;
        KafkaUnavailable (a 503) when Kafka did not take it, or took it and this instance has not applied it yet."""
        key = endpoint_key(record.id) if isinstance(record, EndpointRecord) else f"tenant/{record.id}"
        partition, offset = await self._send(key, encode(record))
        await self._applied(key, record.version, partition, offset)
        if not self._outcomes.pop((partition, offset), False):
            raise Conflict(f"{key} was changed meanwhile (version {record.version} taken): read it and try again")
        return record

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
