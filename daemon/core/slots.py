"""How many scans of Kafka are under way, per tenant and on this instance: the bound every scan a caller of the admin
server can start is held to (an endpoint's attempts, a delivery found by its id, a replay).

A scan over either bound is refused at once (``TooManyRequests``, a 429 with ``Retry-After``), never queued: a caller
that waits in a queue still holds a connection and a request, and a queue only moves the pile-up. The platform (the
admin token, the operator routes) has no tenant: it counts towards the instance's bound only. A slot is given back when
its ``with`` block ends, however it ends (an answer, an error, the caller gone and the request cancelled).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from daemon.core.errors import TooManyRequests


class Slots:
    """The scans under way: ``taken(tenant, per_tenant, total)`` holds one for the length of a ``with`` block."""

    def __init__(self) -> None:
        self._total = 0
        self._by_tenant: dict[str, int] = {}

    def under_way(self, tenant: str | None = None) -> int:
        """The scans under way on this instance (of ``tenant`` alone, when given)."""
        return self._total if tenant is None else self._by_tenant.get(tenant, 0)

    @contextmanager
    def taken(self, tenant: str | None, per_tenant: int, total: int) -> Iterator[None]:
        """Hold a slot for a scan of ``tenant`` (None: the platform); TooManyRequests naming the bound (the setting
        that sets it) when the tenant already has ``per_tenant`` scans under way, or the instance ``total``."""
        if tenant is not None and self._by_tenant.get(tenant, 0) >= per_tenant:
            raise TooManyRequests(
                f"{per_tenant} scans of Kafka are under way for this tenant, as many as it may run at once "
                f"(api.max_scans_per_tenant): try again once one has answered"
            )
        if self._total >= total:
            raise TooManyRequests(
                f"{total} scans of Kafka are under way on this instance, as many as it runs at once (api.max_scans): "
                f"try again shortly"
            )
        self._total += 1
        if tenant is not None:
            self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1
        try:
            yield
        finally:
            self._total -= 1
            if tenant is not None:
                left = self._by_tenant[tenant] - 1
                if left:
                    self._by_tenant[tenant] = left
                else:
                    del self._by_tenant[tenant]
