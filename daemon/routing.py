"""The routing: the endpoints, the table of who gets which event, and each topic's type reader.

Built once per config (start-up, SIGHUP) beside the running one and swapped whole, carrying over the
endpoints managed at run time; those change in place, one at a time (``put``, ``drop``), without a rebuild.
An endpoint that delivers exactly as before keeps its ``Endpoint`` object (and with it its lane and its
connections).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from daemon.config import Config, EndpointConfig, SubscriptionConfig
from daemon.deliver import Endpoint
from daemon.match import RoutingTable
from daemon.model import TypeReader
from daemon.resolve import resolve

DEFAULT_READER: Final = TypeReader()  # a topic outside the config's (a subscription changed under a fetch)


class Routing:
    """``__slots__``: read for every record (the hot path)."""

    __slots__ = ("_environ", "config", "dynamic", "endpoints", "readers", "static", "subscriptions", "table")

    endpoints: dict[str, Endpoint]

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str],
        previous: Routing | None = None,
        dynamic: Iterable[tuple[EndpointConfig, SubscriptionConfig]] = (),
    ) -> None:
        """``dynamic``: the endpoints managed at run time to carry over (a snapshot: this may run in a thread)."""
        self.config = config
        self._environ = environ
        resolved = resolve(config)
        endpoints: dict[str, Endpoint] = {}
        for ep_config in resolved.endpoints:
            endpoint = Endpoint(ep_config, config.delivery, environ)
            kept = previous.endpoints.get(endpoint.id) if previous is not None else None
            endpoints[endpoint.id] = kept if kept is not None and kept.same_as(endpoint) else endpoint
        self.endpoints = endpoints
        self.static = frozenset(endpoints)  # the config file's; the rest are managed at run time
        self.subscriptions = len(resolved.subscriptions)
        self.table = RoutingTable(resolved.subscriptions, {e.id: e.profile.catalogue for e in endpoints.values()})
        self.dynamic: dict[str, tuple[EndpointConfig, SubscriptionConfig]] = {}
        for ep_config, subscription in dynamic:
            kept = previous.endpoints.get(ep_config.id) if previous is not None else None
            if ep_config.id not in self.static:
                self.put(ep_config, subscription, kept)
        kafka = config.kafka
        self.readers = {
            topic: TypeReader(
                kafka.event_type_fields.get(topic), kafka.event_id_fields.get(topic), kafka.max_event_bytes
            )
            for topic in kafka.topics
        }

    def catch_up(self, previous: Routing) -> None:
        """Take the run-time changes ``previous`` saw while this one was built (in a thread), on the loop."""
        for endpoint_id, (ep_config, subscription) in previous.dynamic.items():
            if self.dynamic.get(endpoint_id) != (ep_config, subscription) and endpoint_id not in self.static:
                self.put(ep_config, subscription, previous.endpoints.get(endpoint_id))
        for endpoint_id in [i for i in self.dynamic if i not in previous.dynamic]:
            self.drop(endpoint_id)

    def reader(self, topic: str) -> TypeReader:
        return self.readers.get(topic, DEFAULT_READER)

    def put(self, config: EndpointConfig, subscription: SubscriptionConfig, kept: Endpoint | None = None) -> Endpoint:
        """Add or change an endpoint managed at run time (an id of the config file's stays the file's)."""
        if config.id in self.static:
            raise ValueError(f"endpoint {config.id!r} is defined in the config file")
        endpoint = Endpoint(config, self.config.delivery, self._environ)
        old = kept or self.endpoints.get(config.id)
        if old is not None and old.same_as(endpoint):
            endpoint = old
        self.endpoints[config.id] = endpoint
        self.dynamic[config.id] = (config, subscription)
        self.table.remove(config.id)
        self.table.add([subscription], endpoint.profile.catalogue)
        return endpoint

    def drop(self, endpoint_id: str) -> None:
        """Remove an endpoint managed at run time."""
        if endpoint_id in self.static or self.dynamic.pop(endpoint_id, None) is None:
            return
        self.endpoints.pop(endpoint_id, None)
        self.table.remove(endpoint_id)
