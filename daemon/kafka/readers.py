"""Read-back consumers (no group, nothing committed, never an offset reset outside the log), lent one read at a time
and kept for the next: an attempts query, a delivery found by its id, a replay, one event read back.

A consumer is cheap to start (1-2 ms on loopback) but each opens its own connections to the brokers, and with TLS or
SASL every connection costs a handshake and a login on both sides: reads that follow one another at the rate callers
ask would turn that into churn the brokers pay for. So a consumer whose read ended in order (an answer, or one of the
router's own errors: a topic not found...) is unassigned and kept, up to ``keep`` of them; one whose read ended any
other way (cancelled because its caller went away, a Kafka error, a bug) is closed, since what it was doing when it
was cut off (a fetch under way, a half-read batch) is not worth reasoning about. A kept consumer fetches nothing while
idle (no partition assigned), refreshes its metadata when it is lent again, and is closed once idle for ``IDLE_S``.
``keep=0`` starts a consumer for every read and closes it after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer

from daemon.core.errors import RouterError
from daemon.kafka.clients import close_consumer, reader, refresh_metadata

IDLE_S = 60.0


class Readers:
    """Lends started read-back consumers (``lent()``); ``stop()`` closes those kept (safe twice)."""

    def __init__(self, client_options: Mapping[str, Any], keep: int = 0) -> None:
        self._client_options = client_options
        self._keep = keep
        self._idle: list[tuple[float, AIOKafkaConsumer]] = []  # (since, consumer), the most recently used last
        self._stopped = False
        self.lent = 0  # consumers lent now
        self.open = 0  # consumers started and not closed (lent or kept)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @asynccontextmanager
    async def lent_one(self) -> AsyncIterator[AIOKafkaConsumer]:
        """A started consumer with no partition assigned, for the length of the block."""
        consumer = await self._take()
        self.lent += 1
        in_order = False
        try:
            yield consumer
            in_order = True
        except RouterError:
            in_order = True
            raise
        finally:
            self.lent -= 1
            if in_order and not self._stopped and len(self._idle) < self._keep:
                consumer.unsubscribe()  # nothing is fetched while it waits
                self._idle.append((time.monotonic(), consumer))
            else:
                await self._close(consumer)

    async def stop(self) -> None:
        self._stopped = True
        idle, self._idle = self._idle, []
        for _, consumer in idle:
            await self._close(consumer)

    async def _take(self) -> AIOKafkaConsumer:
        await self._close_idle(time.monotonic() - IDLE_S)
        if self._idle:
            _, consumer = self._idle.pop()
            await refresh_metadata(consumer)  # partitions added since its last read are seen
            return consumer
        consumer = reader(self._client_options)
        self.open += 1
        try:
            await consumer.start()
            # start() creates the coordinator's task without running it; a task cancelled before its first step makes
            # stop() raise CancelledError and skip closing the fetcher and the connections. One loop turn starts it, so
            # a read that fails at once (a missing partition) closes the consumer in order.
            await asyncio.sleep(0)
        except BaseException:
            await self._close(consumer)
            raise
        return consumer

    async def _close_idle(self, before: float) -> None:
        while self._idle and self._idle[0][0] < before:
            _, consumer = self._idle.pop(0)
            await self._close(consumer)

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await close_consumer(consumer)
        finally:
            self.open -= 1
