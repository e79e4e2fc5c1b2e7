"""The routing: the endpoints, the table of who gets which event, and each topic's type reader.

The config file's part is built once per config (start-up, SIGHUP) beside the running one and swapped whole; the
endpoints managed at run time and their routes (``RunTimeEndpoints``) are shared by every routing of the daemon and
change in place, one at a time (``put``, ``drop``), never rebuilt nor copied.
An ``Endpoint`` is prepared only for an endpoint that has work (``Endpoints``); one that delivers exactly as
before keeps its ``Endpoint`` object across a reload (and with it its lane and its connections).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Final

from daemon.core.catalogue import Catalogue
from daemon.core.config import Config, DeliveryConfig, EndpointConfig, SubscriptionConfig
from daemon.core.event import TypeReader
from daemon.core.heap import drain
from daemon.core.match import Layered, RoutingTable
from daemon.core.profiles import PROFILES
from daemon.core.registry import EndpointRecord, Sealed
from daemon.core.resolve import resolve
from daemon.core.schemas import SchemaCache
from daemon.core.secretbox import Keyring
from daemon.core.shards import Shards
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


class RunTimeEndpoints:
    """The endpoints managed at run time (the API's, the endpoints topic's: up to a million) and their routing table:
    one for the life of a daemon, shared by each routing it builds (start-up, every SIGHUP) and changed in place by
    ``Routing.put`` and ``drop``. A reload builds the config file's part alone: the run-time endpoints are neither
    copied nor routed again (a second routing of a million endpoints built beside the first took 12-15 s and left the
    process 420 MiB larger). ``version`` moves on at every put and drop.

    ``__slots__``: read for every delivery (the hot path).
    """

    __slots__ = ("keyring", "sealed", "subscriptions", "table", "unsealed", "version")

    def __init__(self) -> None:
        self.unsealed: dict[str, EndpointConfig] = {}  # those put unsealed (none of the topic's)
        self.sealed: Shards[str, EndpointRecord] = Shards()  # the topic's, as records: up to a million
        self.keyring: Keyring | None = None  # what the records are opened with: the first ``Sealed``'s
        self.subscriptions: Shards[str, SubscriptionConfig] = Shards()
        # Half the caches' bound: each routing's file table and merged answers share the other half.
        self.table = RoutingTable((), share=0.5)
        self.version = 0

    def held(self, endpoint_id: str) -> Held | None:
        return self.unsealed.get(endpoint_id) or self.sealed.get(endpoint_id)

    def __contains__(self, endpoint_id: str) -> bool:
        return endpoint_id in self.unsealed or endpoint_id in self.sealed

    def __len__(self) -> int:
        return len(self.unsealed) + len(self.sealed)


class Endpoints(Mapping[str, Endpoint]):
    """The endpoints by id, each ``Endpoint`` built on first use from its config and kept while it is used: an
    idle endpoint costs its config and its routes, not a prepared ``Endpoint`` (signer, headers, request head); one
    of the endpoints topic costs its record, opened only when its ``Endpoint`` is built, with the one keyring every
    record is sealed under (the API's secrets key, which a reload cannot change).
    The config file's endpoints are this routing's own; the run-time ones are shared (``RunTimeEndpoints``), never of
    an id the file defines (``Routing.put`` refuses one; a reload whose file would take one is refused). Each is
    built as the config file's or the API's (``managed``), which decides the network guard it meets.

    ``__slots__``: read for every delivery (the hot path).
    """

    __slots__ = ("_built", "_configs", "_delivery", "_environ", "_run")

    def __init__(self, delivery: DeliveryConfig, environ: Mapping[str, str], run_time: RunTimeEndpoints) -> None:
        self._configs: dict[str, EndpointConfig] = {}  # the config file's
        self._run = run_time
        self._built: dict[str, Endpoint] = {}
        self._delivery = delivery
        self._environ = environ

    def __getitem__(self, endpoint_id: str) -> Endpoint:
        try:
            return self._built[endpoint_id]
        except KeyError:
            pass
        config = self._configs.get(endpoint_id)
        managed: Managed = CONFIG
        if config is None:
            held = self._run.held(endpoint_id)
            if held is None:
                raise KeyError(endpoint_id)
            config, managed = self.opened(held), API
        endpoint = self._built[endpoint_id] = Endpoint(config, self._delivery, self._environ, managed)
        return endpoint

    def __contains__(self, endpoint_id: object) -> bool:
        return endpoint_id in self._configs or (isinstance(endpoint_id, str) and endpoint_id in self._run)

    def __iter__(self) -> Iterator[str]:
        run = self._run
        return itertools.chain(self._configs, run.unsealed, run.sealed)

    def __len__(self) -> int:
        return len(self._configs) + len(self._run)

    @property
    def keyring(self) -> Keyring | None:
        return self._run.keyring

    @property
    def configs(self) -> Configs:
        """Every endpoint's config by id (a view made on each call: kept, it would tie the two in a cycle that only the
        cyclic collector frees, and a routing let go of must go by its references alone)."""
        return Configs(self)

    def held(self, endpoint_id: str) -> Held | None:
        """An endpoint as it is kept: its config, or its record still sealed (None: no such endpoint)."""
        return self._configs.get(endpoint_id) or self._run.held(endpoint_id)

    def opened(self, held: Held) -> EndpointConfig:
        """An endpoint's config: a record opened now (``Sealed.open``), a config as it is."""
        if not isinstance(held, EndpointRecord):
            return held
        keyring = self._run.keyring
        if keyring is None:
            raise ValueError(f"endpoint {held.id!r}: a sealed record and no keyring to open it with")
        return Sealed(held, keyring).open()

    def take_apart(self) -> None:
        """Empty the file's endpoints an entry at a time (``Routing.take_apart``); the run-time ones are shared."""
        drain(self._configs)

    def file_configs(self) -> dict[str, EndpointConfig]:
        """The config file's endpoints' configs."""
        return self._configs.copy()

    def managed(self, endpoint_id: str) -> Managed:
        """Where an endpoint comes from: ``"api"`` (the endpoints API) or ``"config"`` (the config file); an id it does
        not hold is the API's (the stricter network guard)."""
        return CONFIG if endpoint_id in self._configs else API

    def set_file(self, config: EndpointConfig) -> None:
        """Add one of the config file's (building the routing)."""
        self._configs[config.id] = config

    def set(self, config: EndpointConfig, sealed: Sealed | None = None) -> None:
        """Add or change one managed at run time (not an id of the file's: ``Routing.put`` refuses those); a built
        ``Endpoint`` whose config changed is let go (the next use builds anew). ``sealed``: ``config`` is that record's,
        opened: the record is kept, not ``config``."""
        run = self._run
        if sealed is not None:
            if run.keyring is None:
                run.keyring = sealed.keyring
            elif sealed.keyring is not run.keyring:
                raise ValueError(f"endpoint {config.id!r}: sealed under another keyring than the routing's others")
        built = self._built.get(config.id)
        if built is not None and built.config != config:
            del self._built[config.id]
        if sealed is None:
            run.sealed.pop(config.id, None)
            run.unsealed[config.id] = config
        else:
            run.unsealed.pop(config.id, None)
            run.sealed[config.id] = sealed.record

    def remove(self, endpoint_id: str) -> None:
        """Remove one managed at run time."""
        run = self._run
        run.unsealed.pop(endpoint_id, None)
        run.sealed.pop(endpoint_id, None)
        self._built.pop(endpoint_id, None)

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


class Routing:
    """``__slots__``: read for every record (the hot path)."""

    __slots__ = (
        "_taken", "_taken_at", "catalogue", "config", "endpoints", "readers", "run_time", "schemas", "static",
        "subscriptions", "table",
    )  # fmt: skip
    table: Layered
    endpoints: Endpoints
    run_time: RunTimeEndpoints

    def __init__(self, config: Config, environ: Mapping[str, str], previous: Routing | None = None) -> None:
        """The routing of ``config``: the file's endpoints and routes its own, the run-time ones ``previous``'s (shared,
        not copied: this may run in a thread while the loop changes them), or none yet. The writer schemas decoded so
        far (``schemas``) are ``previous``'s, or a new cache."""
        self.config = config
        self.catalogue = Catalogue(config.event_types)  # each validating schema compiled once per config
        resolved = resolve(config)
        run_time: RunTimeEndpoints = previous.run_time if previous is not None else RunTimeEndpoints()
        self.run_time = run_time
        endpoints = self.endpoints = Endpoints(config.delivery, environ, run_time)
        for ep_config in resolved.endpoints:
            endpoints.set_file(ep_config)
        self.static = frozenset(endpoints.file_configs())  # the config file's; the rest are managed at run time
        self.subscriptions = len(resolved.subscriptions)
        catalogues = {e.id: PROFILES[e.profile].catalogue for e in resolved.endpoints}
        # What matching cost, over reloads: the run-time table's tally, which every routing shares.
        own = RoutingTable(resolved.subscriptions, catalogues, run_time.table.tally, share=0.25)
        self.table = Layered(own, run_time.table)
        self._taken_at = -1
        self._taken: list[str] = []
        self.taken()  # looked for here, in the reload's thread
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

    @property
    def dynamic(self) -> Shards[str, SubscriptionConfig]:
        """The run-time endpoints' subscriptions by id (shared by every routing)."""
        return self.run_time.subscriptions

    def taken(self) -> list[str]:
        """The ids of this config file's endpoints that endpoints managed at run time hold: a reload that would give one
        to the file is refused (its retries, pause and failures are kept by the id: the tenant's would become the
        platform's, and the platform's the tenant's should the file let the id go again). Looked for in the reload's
        thread, and again on the loop, just before the swap, if one was put or dropped since."""
        run = self.run_time
        if run.version != self._taken_at:
            self._taken_at = run.version  # read first: a change while this looks moves it on, and is looked at again
            self._taken = [endpoint_id for endpoint_id in self.static if endpoint_id in run]
        return self._taken

    def take_apart(self) -> None:
        """Empty this routing's own part (the file's endpoints and table) a piece at a time, in a thread, once it is
        swapped out and nothing else holds it (``daemon.app.reload.let_go``). The run-time endpoints, their table, the
        built ``Endpoint`` objects, the tally and the schema cache are shared with the next routing: never emptied."""
        self.endpoints.take_apart()
        self.table.take_apart()

    def reader(self, topic: str) -> TypeReader:
        return self.readers.get(topic, DEFAULT_READER)

    def tenant_of(self, endpoint_id: str) -> str | None:
        """The tenant an endpoint of the API delivers the events of (``api.tenant_field``); None for the config file's
        endpoints (the platform's), or without a tenant field."""
        if endpoint_id in self.static:
            return None
        held = self.run_time.subscriptions.get(endpoint_id)
        scope = held.scope if held is not None else None
        return scope.one_of[0] if scope is not None and scope.one_of else None

    def put(self, config: EndpointConfig, subscription: SubscriptionConfig, sealed: Sealed | None = None) -> None:
        """Add or change an endpoint managed at run time (an id of the config file's stays the file's). ``sealed``:
        ``config`` is that record's, opened (and checked here): the record is kept, opened again when it has work."""
        if config.id in self.static:
            raise ValueError(f"endpoint {config.id!r} is defined in the config file")
        self.endpoints.check(config)
        run = self.run_time
        # Moved on before and after: a reload's thread that looks while this changes, or after it failed half-way,
        # is sure to look again (``taken``).
        run.version += 1
        try:
            self.endpoints.set(config, sealed)
            if config.id in run.subscriptions:  # a change: its routes go first (a new one has none: a first read's)
                run.table.remove(config.id)
            run.subscriptions[config.id] = subscription
            run.table.add([subscription], PROFILES[config.profile].catalogue)
        finally:
            run.version += 1

    def drop(self, endpoint_id: str) -> bool:
        """Remove an endpoint managed at run time (an id of the config file's stays the file's); False when there was
        none of that id."""
        run = self.run_time
        if endpoint_id in self.static or run.subscriptions.pop(endpoint_id, None) is None:
            return False
        run.version += 1
        try:
            self.endpoints.remove(endpoint_id)
            run.table.remove(endpoint_id)
        finally:
            run.version += 1
        return True
