"""Every read of Kafka that a caller of the admin server can start, in one place: an endpoint's recent attempts and a
delivery looked for by its id (both read the results topic backwards, ``daemon.kafka.history``), and the slot a replay
reads its range in (``daemon.admin.operate``).

- **Bounded**: each holds a slot of ``daemon.core.slots`` for as long as it reads, at most ``api.max_scans_per_tenant``
  per tenant and ``api.max_scans`` on the instance (the platform's own count towards the instance's); over either, a
  429 at once.
- **Scoped before it reads**: the caller's tenant and the endpoints it may see are known before anything is read; a
  tenant's lookup of a delivery reads only the partitions its endpoints' keys land on, and only their records.
- **Cancelled with its caller**: the admin server cancels a request's handler when its client goes away; the read
  stops there, and its slot and consumer are given back (the consumer closed).
- **On consumers lent by one pool** (``daemon.kafka.readers``, kept up to ``api.max_scans`` at start-up).

A delivery is looked for in the delivery index first (``daemon.kafka.index``): exact at any age the results topic keeps,
its records read by their positions. Where the index cannot answer (switched off, still being read at start-up, missing
the delivery, or its entries pointing at records the topic no longer has), the bounded scan answers, and says why it
was needed. A search of deliveries (by endpoint, outcome, event type and time) is the index's alone.

Reading the index costs every delivery of the deployment in each process that keeps a copy, so only the process that
answers the instance's lookups keeps one from its start: the one process, or worker 0 of ``process.workers`` (the
worker the supervisor's admin server sends them to while it runs, ``daemon.admin.front``). Another worker keeps one
``on_demand``: from the first lookup or search it answers (while worker 0 is down), the scan answering meanwhile, until
it has answered none for ``ON_DEMAND_IDLE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import AbstractContextManager
from typing import Any, Final

import msgspec

from daemon.core.config import Config
from daemon.core.errors import Conflict, NotFound
from daemon.core.model import IndexEntry, decode_outcome
from daemon.core.slots import Slots
from daemon.kafka.history import find_delivery, recent_attempts
from daemon.kafka.index import DeliveryIndex
from daemon.kafka.readback import read_one
from daemon.kafka.readers import Readers
from daemon.observe.metrics import Metrics

log = logging.getLogger(__name__)

BY_INDEX = "index"
BY_SCAN = "scan"
ON_DEMAND_IDLE_S: Final = 900.0  # an index kept on demand is closed after this long without a lookup or a search


class Found(msgspec.Struct, kw_only=True):
    """A delivery's results records (their values, oldest first), how they were found (``BY_INDEX`` or ``BY_SCAN``),
    and why the index could not answer (None: it answered, or it is up to date and has no entry for the delivery)."""

    records: list[bytes]
    by: str
    note: str | None = None


class Scans:
    """The scans of Kafka under way for callers; ``config()`` is the running config (its bounds are re-read by every
    scan, so a reload changes them); up to ``keep`` consumers are kept between scans. ``stop()`` closes them."""

    def __init__(self, client_options: Mapping[str, Any], config: Callable[[], Config], keep: int) -> None:
        self.readers = Readers(client_options, keep)
        self.slots = Slots()
        self.index: DeliveryIndex | None = None  # the copy of the delivery index kept now
        self._index_topic: str | None = None
        self._on_demand = False
        self._opening = asyncio.Lock()
        self._using = 0  # lookups and searches under way on the index
        self._used_at = 0.0  # monotonic: when the last one ended
        self._idle: asyncio.Task[None] | None = None
        self._client_options = client_options
        self._config = config

    async def start(self, index_topic: str | None, on_demand: bool = False, metrics: Metrics | None = None) -> None:
        """Start reading the delivery index ``index_topic`` (None: no index) in the background; ``on_demand``: only
        from the first lookup or search on, until none has come for ``ON_DEMAND_IDLE_S``. ``metrics``: where the
        index's lag and size are shown."""
        self._index_topic, self._on_demand = index_topic, on_demand
        if metrics is not None:
            metrics.index_behind_records.set_function(lambda: self.index.lag()[0] if self.index is not None else 0)
            metrics.index_behind_seconds.set_function(lambda: self.index.lag()[1] if self.index is not None else 0)
            metrics.index_entries.set_function(lambda: self.index.size()[0] if self.index is not None else 0)
            metrics.index_bytes.set_function(lambda: self.index.size()[1] if self.index is not None else 0)
        if index_topic is not None and not on_demand:
            await self._open(index_topic)
        elif index_topic is not None:
            self._idle = asyncio.create_task(self._close_when_idle(ON_DEMAND_IDLE_S), name="delivery-index-idle")

    async def stop(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            await asyncio.gather(self._idle, return_exceptions=True)
            self._idle = None
        index, self.index = self.index, None
        if index is not None:
            await index.stop()
        await self.readers.stop()

    async def _open(self, topic: str) -> DeliveryIndex:
        async with self._opening:
            if self.index is None:
                index = DeliveryIndex(topic, self._config().kafka.results_topic, self._client_options)
                await index.start()
                self.index = index
                if self._on_demand:
                    log.info("reading the delivery index %s from its start: this worker answers lookups now", topic)
            return self.index

    @contextlib.asynccontextmanager
    async def _indexed(self, topic: str) -> AsyncIterator[DeliveryIndex]:
        """The delivery index ``topic`` for one lookup or search, opened first when it is kept on demand."""
        self._using += 1
        try:
            yield self.index if self.index is not None else await self._open(topic)
        finally:
            self._using -= 1
            self._used_at = time.monotonic()

    async def _close_when_idle(self, idle_s: float) -> None:
        while True:
            await asyncio.sleep(min(60.0, idle_s / 4))
            index = self.index
            if index is None or self._using or time.monotonic() - self._used_at < idle_s:
                continue
            self.index = None
            await index.stop()
            log.info("the delivery index closed: no lookup for %.0f s (worker 0 answers them while it runs)", idle_s)

    def slot(self, tenant: str | None) -> AbstractContextManager[None]:
        """A slot for one scan of ``tenant`` (None: the platform); TooManyRequests when over a bound."""
        api = self._config().api
        return self.slots.taken(tenant, api.max_scans_per_tenant, api.max_scans)

    async def attempts(self, tenant: str | None, endpoint_id: str, limit: int) -> list[bytes]:
        """The newest ``limit`` results records of an endpoint the caller may see (their values), newest first."""
        config = self._config()
        with self.slot(tenant):
            return await recent_attempts(
                self.readers, config.kafka.results_topic, endpoint_id, limit, config.api.max_scan_records
            )

    async def delivery(
        self, tenant: str | None, delivery_id: str, endpoint_ids: Collection[str] | None, limit: int = 1
    ) -> Found:
        """The newest ``limit`` results records of a delivery to one of ``endpoint_ids`` (None: to any endpoint, the
        platform's lookup), from the index, else from the bounded scan; none when neither finds it."""
        if endpoint_ids is not None and not endpoint_ids:
            return Found(records=[], by=BY_INDEX)  # no endpoint: nothing of the caller's to look for
        config = self._config()
        with self.slot(tenant):
            note: str | None = "the delivery index is off (api.delivery_index = false)"
            if self._index_topic is not None:
                async with self._indexed(self._index_topic) as index:
                    entries = await index.attempts(delivery_id, endpoint_ids)
                    records = await self._records(config.kafka.results_topic, delivery_id, entries[-limit:])
                    if records:
                        return Found(records=records, by=BY_INDEX)
                    if entries:
                        note = "the delivery index's entries for it point at records the results topic no longer has"
                    else:  # behind, or it has no entry: deliveries recorded before the index was on, say
                        note = index.behind()
            found = await find_delivery(self.readers, config.kafka.results_topic, delivery_id,
                                        config.api.max_scan_records, endpoint_ids, limit)  # fmt: skip
            return Found(records=found[::-1], by=BY_SCAN, note=note)

    async def _records(self, topic: str, delivery_id: str, entries: list[IndexEntry]) -> list[bytes]:
        """The results records the entries point at (their values), those still there and of this delivery only."""
        records = []
        for entry in entries:
            try:
                record = await read_one(self.readers, topic, entry.partition, entry.offset)
            except NotFound:  # deleted by retention since
                continue
            value = record.value
            if value is None or decode_outcome(value).delivery_id != delivery_id:
                log.warning("the delivery index's entry for %s points at %s[%d]@%d, a record of another delivery",
                            delivery_id, topic, entry.partition, entry.offset)  # fmt: skip
                continue
            records.append(value)
        return records

    async def search(
        self, tenant: str | None, endpoint_ids: Collection[str] | None, **filters: Any
    ) -> tuple[list[IndexEntry], str | None]:
        """The index's entries of ``endpoint_ids`` (None: every endpoint) that match ``filters``
        (``IndexStore.search``), newest first, and why some may be missing (None: the index is not behind); in a slot
        of ``tenant``'s (a search of many endpoints' entries may sort many of them)."""
        topic = self._index_topic
        if topic is None:
            raise Conflict("the delivery index is off (api.delivery_index = false): an endpoint's recent attempts "
                           "are at /v1/endpoints/{id}/attempts")  # fmt: skip
        if endpoint_ids is not None and not endpoint_ids:
            return [], None
        with self.slot(tenant):
            async with self._indexed(topic) as index:
                return await index.search(endpoint_ids, **filters), index.behind()
