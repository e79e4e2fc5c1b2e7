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

A delivery index (the portal's) is to answer attempts and lookups by id without reading the topic: it replaces
``attempts`` and ``delivery`` here, and nothing outside this module reads the results topic for a caller.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from typing import Any

from daemon.core.config import Config
from daemon.core.slots import Slots
from daemon.kafka.history import find_delivery, recent_attempts
from daemon.kafka.readers import Readers


class Scans:
    """The scans of Kafka under way for callers; ``config()`` is the running config (its bounds are re-read by every
    scan, so a reload changes them); up to ``keep`` consumers are kept between scans. ``stop()`` closes them."""

    def __init__(self, client_options: Mapping[str, Any], config: Callable[[], Config], keep: int) -> None:
        self.readers = Readers(client_options, keep)
        self.slots = Slots()
        self._config = config

    async def stop(self) -> None:
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
        self, tenant: str | None, delivery_id: str, endpoint_ids: Collection[str] | None
    ) -> bytes | None:
        """The newest results record of a delivery to one of ``endpoint_ids`` (None: to any endpoint, the platform's
        lookup); None when none is within reach."""
        if endpoint_ids is not None and not endpoint_ids:
            return None  # no endpoint: nothing of the caller's to look for
        config = self._config()
        with self.slot(tenant):
            return await find_delivery(
                self.readers, config.kafka.results_topic, delivery_id, config.api.max_scan_records, endpoint_ids
            )
