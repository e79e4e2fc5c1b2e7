"""The endpoints of the endpoints topic (``daemon.kafka.store``), applied to the routing as they are added, changed
or deleted: each scoped to its tenant's events (``daemon.core.registry.routed``)."""

from __future__ import annotations

import logging

import msgspec

from daemon.core.registry import EndpointRecord, Sealed, routed
from daemon.core.secretbox import Keyring, SecretError
from daemon.engine.settle import Settlement

log = logging.getLogger(__name__)


class EndpointsFeed:
    """The store's ``apply``: routes by an endpoint of the topic as soon as this instance reads it."""

    def __init__(self, settlement: Settlement, keyring: Keyring, tenant_field: str | None) -> None:
        self._settlement = settlement
        self._keyring = keyring
        self._tenant_field = tenant_field  # a reload cannot change it (daemon.core.reload)

    def __call__(self, endpoint_id: str, record: EndpointRecord | None) -> None:
        """An endpoint was added or changed, or deleted (``record`` None): route by it now."""
        settlement = self._settlement
        if record is None:
            settlement.drop(endpoint_id)
        else:
            try:
                config, subscription = routed(record, self._keyring, self._tenant_field)
                settlement.put(config, subscription, Sealed(record, self._keyring))
            except (SecretError, msgspec.ValidationError, ValueError) as exc:
                # A record this instance cannot use (another key, a config this version refuses): not routed to.
                log.error("endpoint %s of the endpoints topic not routed to: %s", endpoint_id, exc)
                settlement.drop(endpoint_id)
