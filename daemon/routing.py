"""One config's routing: its endpoints, the table of who gets which event, and each topic's type reader.

Built once per config (start-up, SIGHUP) beside the running one and swapped whole. An endpoint that
delivers exactly as before keeps its ``Endpoint`` object (and with it its lane and its connections).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from daemon.config import Config
from daemon.deliver import Endpoint
from daemon.match import RoutingTable
from daemon.model import TypeReader
from daemon.resolve import resolve

DEFAULT_READER: Final = TypeReader()  # a topic outside the config's (a subscription changed under a fetch)


class Routing:
    """Immutable once built. ``__slots__``: read for every record (the hot path)."""

    __slots__ = ("config", "endpoints", "readers", "subscriptions", "table")

    endpoints: dict[str, Endpoint]

    def __init__(self, config: Config, environ: Mapping[str, str], previous: Routing | None = None) -> None:
        self.config = config
        resolved = resolve(config)
        endpoints: dict[str, Endpoint] = {}
        for ep_config in resolved.endpoints:
            endpoint = Endpoint(ep_config, config.delivery, environ)
            kept = previous.endpoints.get(endpoint.id) if previous is not None else None
            endpoints[endpoint.id] = kept if kept is not None and kept.same_as(endpoint) else endpoint
        self.endpoints = endpoints
        self.subscriptions = len(resolved.subscriptions)
        self.table = RoutingTable(resolved.subscriptions, {e.id: e.profile.catalogue for e in endpoints.values()})
        kafka = config.kafka
        self.readers = {
            topic: TypeReader(
                kafka.event_type_fields.get(topic), kafka.event_id_fields.get(topic), kafka.max_event_bytes
            )
            for topic in kafka.topics
        }

    def reader(self, topic: str) -> TypeReader:
        return self.readers.get(topic, DEFAULT_READER)
