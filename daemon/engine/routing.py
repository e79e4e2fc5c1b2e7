"""The routing: the endpoints, the table of who gets which event, and each topic's type reader.

Built once per config (start-up, SIGHUP) beside the running one and swapped whole, carrying over the
endpoints managed at run time; those change in place, one at a time (``put``, ``drop``), without a rebuild.
An ``Endpoint`` is prepared only for an endpoint that has work (``Endpoints``); one that delivers exactly as
before keeps its ``Endpoint`` object across a reload (and with it its lane and its connections).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from daemon.core.catalogue import Catalogue
from daemon.core.config import Config, DeliveryConfig, EndpointConfig, SubscriptionConfig
from daemon.core.event import TypeReader
from daemon.core.heap import drain
from daemon.core.match import RoutingTable
from daemon.core.profiles import PROFILES
from daemon.core.registry import EndpointRecord, Sealed, profile_of
from daemon.core.resolve import resolve
from daemon.core.schemas import SchemaCache
from daemon.core.secretbox import Keyring
from daemon.core.shards import PARTS, Shards
from daemon.delivery.endpoint import API, CONFIG, Endpoint, Managed

DEFAULT_READER: Final = TypeReader()  # a topic outside the config's (a subscription changed under a fetch)


# An endpoint as the routing keeps it: its config, or its record still sealed (opened with the routing's keyring: a
# record is kept without a handle of its own, 48 bytes an endpoint, 46 MiB at a million).
Held = EndpointConfig | EndpointRecord


class Configs(Mapping[str, EndpointConfig]):
    """Every endpoint's config by id, a sealed one opened as it is read (``Endpoints.opened``): to look at a few, or at
    every one when an operator asks; the routing itself never opens an idle endpoint."""

    __slots__ = ("_endpoints",)

    def __init__(self, endpoints: Endpoints) -> None:
        self._endpoints = endpoints

    def __getitem__(self, endpoint_id: str) -> EndpointConfig:
        held = self._endpoints.held(endpoint_id)
        if held is None:
            raise KeyError(endpoint_id)
        return self._endpoints.opened(held)

    def __iter__(self) -> Iterator[str]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)


class Endpoints(Mapping[str, Endpoint]):
    """The endpoints by id, each ``Endpoint`` built on first use from its config and kept while it is used: an
    idle endpoint costs its config and its routes, not a prepared ``Endpoint`` (signer, headers, request head); one
    of the endpoints topic costs its record, opened only when its ``Endpoint`` is built, with the one keyring every
    record of the routing is sealed under (the API's secrets key, which a reload cannot change).
    Each is built as the config file's or the API's (``managed``), which decides the network guard it meets.

    ``__slots__``: read for every delivery (the hot path).
    """

    __slots__ = ("_built", "_configs", "_delivery", "_environ", "_file", "_sealed", "keyring")

    def __init__(self, delivery: DeliveryConfig, environ: Mapping[str, str], keyring: Keyring | None = None) -> None:
        self._configs: dict[str, EndpointConfig] = {}
        self._sealed: Shards[str, EndpointRecord] = Shards()  # the API's endpoints: up to a million
        self.keyring = keyring  # what the records are opened with: the first ``Sealed``'s, or an earlier routing's
        self._built: dict[str, Endpoint] = {}
        self._file: set[str] = set()  # the ids of the config file's endpoints (the rest are the API's: many more)
        self._delivery = delivery
        self._environ = environ

    def __getitem__(self, endpoint_id: str) -> Endpoint:
        try:
            return self._built[endpoint_id]
        except KeyError:
            pass
        config = self._configs.get(endpoint_id)
        if config is None:
            config = self.opened(self._sealed[endpoint_id])
        endpoint = self._built[endpoint_id] = Endpoint(config, self._delivery, self._environ, self.managed(endpoint_id))
        return endpoint

    def __contains__(self, endpoint_id: object) -> bool:
        return endpoint_id in self._configs or endpoint_id in self._sealed

    def __iter__(self) -> Iterator[str]:
        return itertools.chain(self._configs, self._sealed)

    def __len__(self) -> int:
        return len(self._configs) + len(self._sealed)

    @property
    def configs(self) -> Configs:
        """Every endpoint's config by id (a view made on each call: kept, it would tie the two in a cycle that only the
        cyclic collector frees, and a routing let go after a freeze must go by its references alone)."""
        return Configs(self)

    def held(self, endpoint_id: str) -> Held | None:
        """An endpoint as it is kept: its config, or its record still sealed (None: no such endpoint)."""
        return self._configs.get(endpoint_id) or self._sealed.get(endpoint_id)

    def opened(self, held: Held) -> EndpointConfig:
        """An endpoint's config: a record opened now (``Sealed.open``), a config as it is."""
        if not isinstance(held, EndpointRecord):
            return held
        if self.keyring is None:
            raise ValueError(f"endpoint {held.id!r}: a sealed record and no keyring to open it with")
        return Sealed(held, self.keyring).open()

    def unsealed(self) -> dict[str, EndpointConfig]:
        """A copy of the endpoints kept as configs: the file's, and the API's put unsealed (none of the topic's)."""
        return self._configs.copy()

    def sealed_part(self, index: int) -> dict[str, EndpointRecord]:
        """A copy of part ``index`` of the sealed endpoints (``Shards.copy_part``)."""
        return self._sealed.copy_part(index)

    def take_apart(self) -> None:
        """Empty the sealed endpoints an entry at a time (``Routing.take_apart``)."""
        self._sealed.take_apart()

    def file_configs(self) -> dict[str, EndpointConfig]:
        """The config file's endpoints' configs."""
        return {endpoint_id: self._configs[endpoint_id] for endpoint_id in self._file}

    def managed(self, endpoint_id: str) -> Managed:
        """Where an endpoint comes from: ``"api"`` (the endpoints API) or ``"config"`` (the config file); an id it does
        not hold is the API's (the stricter network guard)."""
        return CONFIG if endpoint_id in self._file else API

    def set(self, config: EndpointConfig, managed: Managed = CONFIG, sealed: Sealed | None = None) -> None:
        """Add or change one; a built ``Endpoint`` whose config or origin changed is let go (the next use builds
        anew). ``sealed``: ``config`` is that record's, opened: the record is kept, not ``config``."""
        built = self._built.get(config.id)
        if built is not None and (built.config != config or built.managed != managed):
            del self._built[config.id]
        if managed == CONFIG:
            self._file.add(config.id)
        else:
            self._file.discard(config.id)
        if sealed is None:
            self._sealed.pop(config.id, None)
            self._configs[config.id] = config
        else:
            if self.keyring is None:
                self.keyring = sealed.keyring
            elif sealed.keyring is not self.keyring:
                raise ValueError(f"endpoint {config.id!r}: sealed under another keyring than the routing's others")
            self._configs.pop(config.id, None)
            self._sealed[config.id] = sealed.record

    def set_sealed(self, record: EndpointRecord) -> None:
        """Carry over an endpoint of the API kept sealed (by an earlier routing, which checked it)."""
        self._built.pop(record.id, None)  # a routing being built has built none (``adopt`` takes the old ones)
        self._file.discard(record.id)
        self._configs.pop(record.id, None)
        self._sealed[record.id] = record

    def remove(self, endpoint_id: str) -> None:
        self._configs.pop(endpoint_id, None)
        self._sealed.pop(endpoint_id, None)
        self._built.pop(endpoint_id, None)
        self._file.discard(endpoint_id)

    def adopt(self, endpoint: Endpoint) -> bool:
        """Keep ``endpoint`` (built under an earlier routing) as this one's when it delivers exactly as this one's
        config would; False when it does not (its lane finishes under the old settings)."""
        held = self.held(endpoint.id)
        config = self.opened(held) if held is not None else None
        if config is None or endpoint.managed != self.managed(endpoint.id):
            return False
        if not endpoint.delivers_as(config, self._delivery, self._environ):
            return False
        self._built[endpoint.id] = endpoint
        return True

    def check(self, config: EndpointConfig) -> None:
        """Raise ValueError when no ``Endpoint`` could be built from ``config``."""
        Endpoint.check(config, self._environ)

    def forget(self, endpoint_id: str) -> None:
        """Let an idle endpoint's ``Endpoint`` go (built again on its next use)."""
        self._built.pop(endpoint_id, None)

    @property
    def built(self) -> int:
        return len(self._built)


class RunTime:
    """The endpoints managed at run time of a running routing, for the next routing to carry over (``dynamic``):
    copied a part at a time (``Routing.copy_run_time``) with the event loop going on between parts, so the parts are
    of different moments; the running routing records every id put or dropped from the copy's start on
    (``Routing.changed``) and ``catch_up`` applies those, so the moments do not matter. Iterated in the thread that
    builds the next routing, as (held, subscription) pairs: a sealed one unopened."""

    __slots__ = ("parts", "unsealed")

    def __init__(self, unsealed: dict[str, EndpointConfig]) -> None:
        self.unsealed = unsealed
        self.parts: list[tuple[dict[str, SubscriptionConfig], dict[str, EndpointRecord]]] = []

    def take_apart(self) -> None:
        """Let the copy go a part at a time, in the thread that used it."""
        drain(self.parts)

    def __iter__(self) -> Iterator[tuple[Held, SubscriptionConfig]]:
        unsealed = self.unsealed
        for subscriptions, sealed in self.parts:
            for endpoint_id, subscription in subscriptions.items():
                held = unsealed.get(endpoint_id) or sealed.get(endpoint_id)
                if held is not None:
                    yield held, subscription


class Routing:
    """``__slots__``: read for every record (the hot path)."""

    __slots__ = (
        "catalogue", "changed", "config", "dynamic", "endpoints", "readers", "schemas", "static", "subscriptions",
        "table",
    )  # fmt: skip
    table: RoutingTable
    endpoints: Endpoints

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str],
        previous: Routing | None = None,
        dynamic: Iterable[tuple[Held, SubscriptionConfig]] = (),
    ) -> None:
        """``dynamic``: the endpoints managed at run time to carry over (a snapshot: this may run in a thread). The
        writer schemas decoded so far (``schemas``) are ``previous``'s, or a new cache."""
        self.config = config
        self.catalogue = Catalogue(config.event_types)  # each validating schema compiled once per config
        resolved = resolve(config)
        keyring = previous.endpoints.keyring if previous is not None else None
        endpoints = self.endpoints = Endpoints(config.delivery, environ, keyring)
        for ep_config in resolved.endpoints:
            endpoints.set(ep_config)
        self.static = frozenset(endpoints)  # the config file's; the rest are managed at run time
        self.subscriptions = len(resolved.subscriptions)
        catalogues = {e.id: PROFILES[e.profile].catalogue for e in resolved.endpoints}
        tally = previous.table.tally if previous is not None else None  # what matching cost, over reloads
        self.table = RoutingTable(resolved.subscriptions, catalogues, tally)
        self.dynamic: Shards[str, SubscriptionConfig] = Shards()  # their configs are in ``endpoints``
        self.changed: set[str] | None = None  # the ids put or dropped since ``copy_run_time`` began (None: not copied)
        for held, subscription in dynamic:
            if held.id not in self.static:
                self._put(held, subscription)
        kafka = config.kafka
        registry = config.schema_registry
        self.schemas: SchemaCache = previous.schemas if previous is not None else SchemaCache(registry.cache_size)
        self.readers: dict[str, TypeReader] = {}
        for topic in kafka.topics:
            self.readers[topic] = TypeReader(
                kafka.event_type_fields.get(topic), kafka.event_id_fields.get(topic), kafka.max_event_bytes,
                value_format=kafka.value_formats.get(topic, "json"), schemas=self.schemas,
                event_types=registry.event_types, type_header=kafka.event_type_headers.get(topic),
                id_header=kafka.event_id_headers.get(topic),
            )  # fmt: skip

    async def copy_run_time(self) -> RunTime:
        """The endpoints managed at run time as they are kept, a part at a time with the loop going on between parts
        (a million at once held the loop for seconds); from now on until ``catch_up`` (or ``stop_recording``) every
        id put or dropped is recorded (``changed``)."""
        self.changed = set()
        copy = RunTime(self.endpoints.unsealed())
        for index in range(PARTS):
            copy.parts.append((self.dynamic.copy_part(index), self.endpoints.sealed_part(index)))
            await asyncio.sleep(0)
        return copy

    def stop_recording(self) -> None:
        """No more recording of the ids put or dropped (a reload that failed, or was caught up with)."""
        self.changed = None

    def catch_up(self, previous: Routing) -> None:
        """Take, on the loop, the run-time changes ``previous`` saw since its endpoints were copied for this one
        (``copy_run_time``): the ids it recorded, not every endpoint; ``previous`` records no more."""
        changed = previous.changed or set()
        previous.stop_recording()
        if self.endpoints.keyring is None:  # its first sealed record came during the build
            self.endpoints.keyring = previous.endpoints.keyring
        for endpoint_id in changed:
            if endpoint_id in self.static:
                continue
            held = previous.endpoints.held(endpoint_id)
            subscription = previous.dynamic.get(endpoint_id)
            if held is None or subscription is None:
                self.drop(endpoint_id)
            elif self.dynamic.get(endpoint_id) != subscription or self.endpoints.held(endpoint_id) != held:
                self._put(held, subscription)

    def take_apart(self) -> None:
        """Empty this routing a piece at a time, in a thread, once it is swapped out and nothing else holds it
        (``daemon.app.reload.let_go``): let go whole, a million endpoints' routes and maps were freed in one step on
        the event loop (500-950 ms). What the next routing shares with it (the sealed records, the subscriptions, the
        built ``Endpoint`` objects, the tally and the schema cache) is only let go of here, never emptied."""
        self.dynamic.take_apart()
        self.endpoints.take_apart()
        self.table.take_apart()

    def reader(self, topic: str) -> TypeReader:
        return self.readers.get(topic, DEFAULT_READER)

    def tenant_of(self, endpoint_id: str) -> str | None:
        """The tenant an endpoint of the API delivers the events of (``api.tenant_field``); None for the config file's
        endpoints (the platform's), or without a tenant field."""
        held = self.dynamic.get(endpoint_id)
        scope = held.scope if held is not None else None
        return scope.one_of[0] if scope is not None and scope.one_of else None

    def put(self, config: EndpointConfig, subscription: SubscriptionConfig, sealed: Sealed | None = None) -> None:
        """Add or change an endpoint managed at run time (an id of the config file's stays the file's). ``sealed``:
        ``config`` is that record's, opened (and checked here): the record is kept, opened again when it has work."""
        if config.id in self.static:
            raise ValueError(f"endpoint {config.id!r} is defined in the config file")
        self.endpoints.check(config)
        self.endpoints.set(config, API, sealed)
        self._route(config.id, config.profile, subscription)
        if self.changed is not None:
            self.changed.add(config.id)

    def _put(self, held: Held, subscription: SubscriptionConfig) -> None:
        """Carry over an endpoint checked when it was first put (a sealed one stays sealed)."""
        if isinstance(held, EndpointRecord):
            self.endpoints.set_sealed(held)
            self._route(held.id, profile_of(held), subscription)
        else:
            self.put(held, subscription)

    def _route(self, endpoint_id: str, profile: str, subscription: SubscriptionConfig) -> None:
        if endpoint_id in self.dynamic:  # a change: its routes go first (a new one has none: most of a first read)
            self.table.remove(endpoint_id)
        self.dynamic[endpoint_id] = subscription
        self.table.add([subscription], PROFILES[profile].catalogue)

    def drop(self, endpoint_id: str) -> None:
        """Remove an endpoint managed at run time."""
        if self.changed is not None:
            self.changed.add(endpoint_id)
        if endpoint_id in self.static or self.dynamic.pop(endpoint_id, None) is None:
            return
        self.endpoints.remove(endpoint_id)
        self.table.remove(endpoint_id)
