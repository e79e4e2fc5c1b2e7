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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from daemon.core.config import Config
from daemon.core.errors import Conflict, NotFound
from daemon.core.model import IndexEntry, decode_outcome
from daemon.core.slots import Slots
from daemon.kafka.history import find_delivery, recent_attempts
from daemon.kafka.index import DeliveryIndex
from daemon.kafka.readback import read_one
from daemon.kafka.readers import Readers

log = logging.getLogger(__name__)

BY_INDEX = "index"
BY_SCAN = "scan"


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
        self.index: DeliveryIndex | None = None
        self._client_options = client_options
        self._config = config

    async def start(self, index_topic: str | None) -> None:
        """Start reading the delivery index ``index_topic`` (None: no index) in the background."""
        if index_topic is not None:
            self.index = DeliveryIndex(index_topic, self._config().kafka.results_topic, self._client_options)
            await self.index.start()

    async def stop(self) -> None:
        if self.index is not None:
            await self.index.stop()
        await self.readers.stop()

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
            if self.index is not None:
                entries = await self.index.attempts(delivery_id, endpoint_ids)
                records = await self._records(config.kafka.results_topic, delivery_id, entries[-limit:])
                if records:
                    return Found(records=records, by=BY_INDEX)
                if entries:
                    note = "the delivery index's entries for it point at records the results topic no longer has"
                else:  # behind, or it has no entry: deliveries recorded before the index was on, say
                    note = self.index.behind()
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
        if self.index is None:
            raise Conflict("the delivery index is off (api.delivery_index = false): an endpoint's recent attempts "
                           "are at /v1/endpoints/{id}/attempts")  # fmt: skip
        if endpoint_ids is not None and not endpoint_ids:
            return [], None
        with self.slot(tenant):
            return await self.index.search(endpoint_ids, **filters), self.index.behind()
