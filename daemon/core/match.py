"""Routing table: which endpoints an event goes to. Pure; built once per config, changed in place by the endpoints
managed at run time, one endpoint at a time."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from daemon.core.config import SubscriptionConfig, WhereConfig
from daemon.core.heap import drain
from daemon.core.shards import Shards

# The answers cached per (topic, type): event types come from outside, so the number of entries and the bytes they
# hold (their keys' text and their matches: about 8 bytes an endpoint that always applies, 80 one under a condition)
# are bounded, and a type too long to be a real one, or an answer too large to keep, is answered without being kept.
_CACHE_LIMIT = 65_536
_CACHE_BYTES = 32 * 1024 * 1024
_CACHED_TYPE_MAX = 256
_ENTRY_BYTES = 100  # an entry's own size, about
_PLAIN_BYTES = 8
_CONDITIONAL_BYTES = 80


class Where:
    """A condition on one field of the event: its value is (or, negated, is not) one of ``values``.

    ``__slots__`` here and below: read for every matched record (the hot path).
    """

    __slots__ = ("also", "negate", "path", "values")

    def __init__(self, field: str, values: Iterable[str], negate: bool, also: Where | None = None) -> None:
        self.path = tuple(field.split("."))
        self.values = frozenset(values)
        self.negate = negate
        self.also = also  # a condition that must hold as well (a subscription's scope)

    @classmethod
    def of(cls, config: WhereConfig | None, also: Where | None = None) -> Where | None:
        if config is None:
            return also
        negate = config.none_of is not None
        return cls(config.field, (config.none_of if negate else config.one_of) or (), negate, also)

    def holds(self, event: Any) -> bool:
        inside = field_value(event, self.path) in self.values
        return inside != self.negate and (self.also is None or self.also.holds(event))


def field_value(event: Any, path: tuple[str, ...]) -> str | None:
    """The value of a field (a dotted path) of a decoded event as conditions compare it: a string or an integer as
    text; None for anything else (absent, null, a boolean, a list, an object)."""
    value = event
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None


# One route: its subscription's place in the config, the endpoint id, the topics it is limited to (None: all),
# the event types its endpoint's contract knows (None: any), and its condition.
_Route = tuple[int, str, frozenset[str] | None, frozenset[str] | None, Where | None]
# Where a scoped route is indexed: its scope's field (a path) and one of the values it allows.
_Scope = tuple[tuple[str, ...], str]


class Tally:
    """What matching has cost: the routes whose condition was checked, over every event (a metric reads it)."""

    __slots__ = ("checked",)

    def __init__(self) -> None:
        self.checked = 0


class _Index:
    """Routes by event type: exact types in a dict, prefix wildcards by prefix, ``*`` on its own; each route under
    each distinct pattern of its subscription once."""

    __slots__ = ("_by_endpoint", "_exact", "_prefix_lengths", "_prefixes", "_star", "place")
    place: tuple[_Scope] | None

    def __init__(self, place: _Scope | None = None) -> None:
        # A scoped index's ((field, value),): where its endpoints' routes are, one object for every endpoint of it.
        self.place = (place,) if place is not None else None
        self._exact: dict[str, list[_Route]] = {}
        self._prefixes: dict[str, list[_Route]] = {}
        self._star: list[_Route] = []
        self._prefix_lengths: list[int] = []
        # endpoint id -> each (pattern, route) it added, flat: (pattern, route, pattern, route...), one tuple a endpoint
        self._by_endpoint: dict[str, tuple[str | _Route, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_endpoint)

    def add(self, route: _Route, patterns: Iterable[str]) -> None:
        added: list[str | _Route] = []
        for pattern in _indexed(patterns):
            if pattern == "*":
                self._star.append(route)
            elif pattern.endswith("*"):
                prefix = pattern[:-1]
                if len(prefix) not in self._prefix_lengths:
                    bisect.insort(self._prefix_lengths, len(prefix))
                self._prefixes.setdefault(prefix, []).append(route)
            else:
                self._exact.setdefault(pattern, []).append(route)
            added += (pattern, route)
        self._by_endpoint[route[1]] = (*self._by_endpoint.get(route[1], ()), *added)

    def added(self, endpoint_id: str) -> list[tuple[str, _Route]]:
        """Each (pattern, route) an endpoint was indexed under."""
        flat = self._by_endpoint.get(endpoint_id, ())
        return list(zip(flat[::2], flat[1::2], strict=True))  # type: ignore[arg-type]

    def remove(self, endpoint_id: str) -> list[tuple[str, _Route]]:
        """Remove every route of an endpoint: each (pattern, route) it was indexed under (none: it had none)."""
        routes = self.added(endpoint_id)
        self._by_endpoint.pop(endpoint_id, None)
        for pattern, route in routes:
            if pattern == "*":
                self._star.remove(route)
                continue
            index = self._prefixes if pattern.endswith("*") else self._exact
            key = pattern[:-1] if pattern.endswith("*") else pattern
            listed = index[key]
            listed.remove(route)
            if not listed:
                del index[key]
                if index is self._prefixes:
                    self._prefix_lengths = sorted({len(p) for p in self._prefixes})
        return routes

    def take_apart(self) -> None:
        """Empty it a route at a time (``heap.drain``): a million unscoped endpoints are one list of a million."""
        for by_pattern in (self._exact, self._prefixes):
            while by_pattern:
                drain(by_pattern.popitem()[1])
        drain(self._star)
        drain(self._by_endpoint)

    def each(self, event_type: str) -> Iterator[_Route]:
        """The routes whose patterns match ``event_type``; a route matched by several patterns comes once each."""
        yield from self._exact.get(event_type, ())
        for length in self._prefix_lengths:
            if length > len(event_type):
                break
            yield from self._prefixes.get(event_type[:length], ())
        yield from self._star

    def routes(self, topic: str, event_type: str) -> list[_Route]:
        """The routes for (topic, type): each once, in config order, its topics and its contract's catalogue
        allowing it."""
        found = {route[0]: route for route in self.each(event_type) if _admits(route, topic, event_type)}
        return [found[i] for i in sorted(found)]


def _indexed(patterns: Iterable[str]) -> Iterable[str]:
    """The patterns a route is indexed under: each distinct one once, or '*' alone, which takes in every other."""
    distinct = dict.fromkeys(patterns)
    return ("*",) if "*" in distinct else distinct


class _Wanted:
    """Which (topic, type) some route under a scope field may want, whatever its value: each distinct (pattern, topics,
    catalogue) of those routes indexed once, with how many routes have it, rather than every route a second time (a
    million endpoints of the API, each scoped to its tenant, share a few)."""

    __slots__ = ("_counts", "_ids", "_index")

    def __init__(self) -> None:
        self._counts: dict[tuple[str, frozenset[str] | None, frozenset[str] | None], int] = {}
        self._ids: dict[tuple[str, frozenset[str] | None, frozenset[str] | None], str] = {}
        self._index = _Index()  # one route per distinct (pattern, topics, catalogue), under an id of its own

    def add(self, route: _Route, patterns: Iterable[str]) -> None:
        for pattern in _indexed(patterns):
            key = (pattern, route[2], route[3])
            held = self._counts.get(key, 0)
            if not held:
                self._ids[key] = kind = f"#{id(key)}"  # unique while the key is held
                self._index.add((0, kind, route[2], route[3], None), (pattern,))
            self._counts[key] = held + 1

    def remove(self, pattern: str, route: _Route) -> None:
        """Remove one route's ``pattern`` (as ``_Index.remove`` gave it back)."""
        key = (pattern, route[2], route[3])
        left = self._counts[key] - 1
        if left:
            self._counts[key] = left
        else:
            del self._counts[key]
            self._index.remove(self._ids.pop(key))

    def wants(self, topic: str, event_type: str) -> bool:
        return any(_admits(route, topic, event_type) for route in self._index.each(event_type))


def _admits(route: _Route, topic: str, event_type: str) -> bool:
    topics, catalogue = route[2], route[3]
    return (topics is None or topic in topics) and (catalogue is None or event_type in catalogue)


class _Scoping(Protocol):
    """What a ``Match`` looks scoped routes up in: a ``RoutingTable``, or a ``Layered`` pair of them."""

    @property
    def tally(self) -> Tally: ...

    def scoped(self, path: tuple[str, ...], value: str, topic: str, event_type: str) -> tuple[_Route, ...]: ...


class Match:
    """The endpoints for one (topic, event type): those that always apply, those under a condition, and the scopes
    (fields, such as ``api.tenant_field``) some of whose routes may apply: those are looked up in the table by the
    value the event has for the field, so that an event is checked against its own tenant's routes only."""

    __slots__ = ("_table", "_topic", "_type", "conditional", "endpoints", "scopes")

    def __init__(
        self, endpoints: tuple[str, ...], conditional: tuple[tuple[str, Where], ...],
        scopes: tuple[tuple[str, ...], ...] = (), table: _Scoping | None = None, topic: str = "",
        event_type: str = "",
    ) -> None:  # fmt: skip
        self.endpoints = endpoints
        self.conditional = conditional
        self.scopes = scopes
        self._table = table
        self._topic = topic
        self._type = event_type

    @property
    def empty(self) -> bool:
        """True when no event of this (topic, type) can go anywhere."""
        return not self.endpoints and not self.conditional and not self.scopes

    def select(self, event: Callable[[], Any]) -> tuple[str, ...]:
        """Endpoint ids for one event; ``event()`` decodes it, called only when a condition needs it."""
        if not self.conditional and not self.scopes:
            return self.endpoints
        decoded = event()
        chosen = dict.fromkeys(self.endpoints)
        checked = 0
        for endpoint, where in self.conditional:
            if endpoint not in chosen:
                checked += 1
                if where.holds(decoded):
                    chosen[endpoint] = None
        table = self._table
        if table is not None:
            for path in self.scopes:
                value = field_value(decoded, path)  # the event's tenant, read once
                if value is None:
                    continue
                for _, endpoint, _, _, own in table.scoped(path, value, self._topic, self._type):
                    if endpoint not in chosen:
                        checked += 1
                        if own is None or own.holds(decoded):
                            chosen[endpoint] = None
            table.tally.checked += checked
        return tuple(chosen)


def _size(topic: str, event_type: str, found: Match) -> int:
    """The bytes a cached answer holds, about."""
    return (len(topic) + len(event_type) + _ENTRY_BYTES + _PLAIN_BYTES * len(found.endpoints)
            + _CONDITIONAL_BYTES * len(found.conditional))  # fmt: skip


class RoutingTable:
    """An index by event type (``_Index``), and one per scope value: a subscription scoped to the values of a field
    (an endpoint of the API, scoped to its tenant) is indexed under each value, so that an event is matched against
    the routes of its own value only, whatever other tenants subscribed.

    ``match`` resolves (topic, event type) once and caches the answer, so the steady-state cost of matching is one
    dict lookup however many subscriptions there are (and, for an event some scoped route may want, its scope value
    read once and one more lookup: that value's routes for the type, resolved once and cached alike). Both caches
    share one bound: a tenant's unusual types can empty them, never make another tenant's event cost more than one
    resolve of its own routes. Subscriptions can be added and an endpoint's removed in place (endpoints managed at
    run time): a change costs the endpoint's own routes and empties the cache, which refills one resolve per
    (topic, type) as events come.
    """

    __slots__ = (
        "_cache", "_cache_bytes", "_next_index", "_routes", "_scoped", "_scoped_any", "_scoped_cache", "_scopes_of",
        "_share", "generation", "tally",
    )  # fmt: skip

    def __init__(
        self,
        subscriptions: Iterable[SubscriptionConfig],
        catalogues: Mapping[str, frozenset[str] | None] | None = None,
        tally: Tally | None = None,
        share: float = 1.0,
    ) -> None:
        """``share``: the part of the caches' bound (``_CACHE_LIMIT`` entries, ``_CACHE_BYTES``) its own may hold (a
        ``Layered`` pair shares one bound)."""
        self._share = share
        self._routes = _Index()  # the routes without a scope to index them by
        self._scoped: dict[tuple[str, ...], dict[str, _Index]] = {}  # scope field -> value -> its routes
        self._scoped_any: dict[tuple[str, ...], _Wanted] = {}  # scope field -> what its routes want (any value)
        self._scopes_of: Shards[str, tuple[_Scope, ...]] = Shards()  # endpoint id -> where its scoped routes are
        self._next_index = 0
        self._cache: dict[tuple[str, str], Match] = {}
        # (topic, type, scope field, value) -> the routes of that value: sharing the bound of ``_cache``.
        self._scoped_cache: dict[tuple[str, str, tuple[str, ...], str], tuple[_Route, ...]] = {}
        self._cache_bytes = 0
        self.generation = 0  # moved on by every change (and every emptying of the caches): what ``Layered`` caches by
        self.tally = tally or Tally()
        catalogues = catalogues or {}
        for sub in subscriptions:
            self._add(sub, catalogues.get(sub.endpoint))

    def add(self, subscriptions: Iterable[SubscriptionConfig], catalogue: frozenset[str] | None = None) -> None:
        """Add subscriptions (of one endpoint, whose contract knows ``catalogue``), after every earlier one."""
        for sub in subscriptions:
            self._add(sub, catalogue)
        self._forget()

    def take_apart(self) -> None:
        """Empty the table a piece at a time, once nothing routes by it (``Routing.take_apart``): its scoped indexes,
        one per tenant, and where each endpoint's routes are."""
        self._scopes_of.take_apart()
        for by_value in self._scoped.values():
            while by_value:
                by_value.popitem()[1].take_apart()
        self._routes.take_apart()
        self._forget()

    def remove(self, endpoint_id: str) -> bool:
        """Remove every subscription of an endpoint; False if it had none."""
        removed = bool(self._routes.remove(endpoint_id))
        places = self._scopes_of.pop(endpoint_id, ())
        gone: dict[tuple[str, int], tuple[tuple[str, ...], str, _Route]] = {}  # a route of several values: once
        for path, value in places:
            by_value = self._scoped[path]
            for pattern, route in by_value[value].remove(endpoint_id):
                gone[(pattern, id(route))] = (path, pattern, route)
            if not by_value[value]:
                del by_value[value]
        for path, pattern, route in gone.values():
            self._scoped_any[path].remove(pattern, route)
        for path in {path for path, _ in places}:
            if not self._scoped[path]:
                del self._scoped[path], self._scoped_any[path]
        self._forget()
        return removed or bool(places)

    def _add(self, sub: SubscriptionConfig, catalogue: frozenset[str] | None) -> None:
        topics = frozenset(sub.topics) if sub.topics is not None else None
        scope = sub.scope
        if scope is None or scope.one_of is None:  # none: a condition like any other
            route: _Route = (self._next_index, sub.endpoint, topics, catalogue, Where.of(sub.where, Where.of(scope)))
            self._routes.add(route, sub.events)
        else:
            route = (self._next_index, sub.endpoint, topics, catalogue, Where.of(sub.where))
            path = tuple(scope.field.split("."))
            by_value = self._scoped.setdefault(path, {})
            places = self._scopes_of.get(sub.endpoint, ())
            for value in dict.fromkeys(scope.one_of):
                index = by_value.get(value)
                if index is None:
                    index = by_value[value] = _Index((path, value))
                index.add(route, sub.events)
                if index.place is not None and index.place[0] not in places:
                    places = index.place if not places else (*places, index.place[0])
            self._scopes_of[sub.endpoint] = places
            self._scoped_any.setdefault(path, _Wanted()).add(route, sub.events)
        self._next_index += 1

    def retire(self) -> None:
        """Let the cached answers go and keep none from now on: a ``Match`` points back at its table, so a table let go
        of with its cache is a cycle (never collected once frozen: ``daemon.app.reload.let_go``), and one still read by
        a request under way would make new ones."""
        self._share = 0.0  # no room for any answer
        self._forget()

    def _forget(self) -> None:
        self._cache = {}
        self._scoped_cache = {}
        self._cache_bytes = 0
        self.generation += 1

    def _room(self, size: int) -> bool:
        """Whether an answer of ``size`` bytes may be kept, the caches emptied first when they are full."""
        most = _CACHE_BYTES * self._share  # read here, on a miss: a test lowers the bounds
        if size > most // 4:
            return False
        entries = len(self._cache) + len(self._scoped_cache)
        if entries >= _CACHE_LIMIT * self._share or self._cache_bytes + size > most:
            self._forget()
        self._cache_bytes += size
        return True

    def scoped(self, path: tuple[str, ...], value: str, topic: str, event_type: str) -> tuple[_Route, ...]:
        """The routes scoped to ``value`` of the field ``path`` for (topic, type), in config order."""
        index = self._scoped.get(path, {}).get(value)
        if index is None:  # no such tenant: nothing kept for a value that comes from outside
            return ()
        key = (topic, event_type, path, value)
        hit = self._scoped_cache.get(key)
        if hit is not None:
            return hit
        found = tuple(index.routes(topic, event_type))
        size = len(topic) + len(event_type) + len(value) + _ENTRY_BYTES + _CONDITIONAL_BYTES * len(found)
        if len(event_type) <= _CACHED_TYPE_MAX and self._room(size):
            self._scoped_cache[key] = found
        return found

    def scoped_routes(self, topic: str, event_type: str) -> list[tuple[str, str, str, Where | None]]:
        """Every scoped route for (topic, type), whatever the value: (endpoint, field, value, its own condition). To
        show the routing (``check-config --routes``), never to route an event."""
        return [
            (endpoint, ".".join(path), value, where)
            for path, by_value in self._scoped.items()
            for value, index in by_value.items()
            for _, endpoint, _, _, where in index.routes(topic, event_type)
        ]

    @property
    def cache_bytes(self) -> int:
        """The bytes the cached answers hold, about."""
        return self._cache_bytes

    def match(self, topic: str, event_type: str) -> Match:
        """What is subscribed to ``event_type`` on ``topic``: each endpoint once, in config order."""
        key = (topic, event_type)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        found = self._resolve(topic, event_type)
        size = _size(topic, event_type, found)
        if len(event_type) <= _CACHED_TYPE_MAX and self._room(size):
            self._cache[key] = found
        return found

    def _resolve(self, topic: str, event_type: str) -> Match:
        plain: dict[str, None] = {}
        conditional: list[tuple[str, Where]] = []
        for _, endpoint, _, _, where in self._routes.routes(topic, event_type):
            if where is None:
                plain[endpoint] = None
            else:
                conditional.append((endpoint, where))
        # The scope fields some of whose routes may want this (topic, type): an event is decoded for those only.
        scopes = tuple(path for path, wanted in self._scoped_any.items() if wanted.wants(topic, event_type))
        return Match(tuple(plain), tuple((e, w) for e, w in conditional if e not in plain), scopes, self, topic,
                     event_type)  # fmt: skip


class Layered:
    """The config file's table over the one of the endpoints managed at run time, answering as one table of both would:
    the file's routes first, then the run-time ones (their ids never the file's: ``daemon.engine.routing`` drops a
    run-time endpoint whose id a reload gives the file). The run-time table is shared by every routing of a daemon and
    changed in place: a reload builds the file's table alone. Answers merged from both are cached for as long as
    neither table changed (their ``generation``); the three caches share one bound (``_CACHE_BYTES``, ``_CACHE_LIMIT``):
    the file's table and the merged answers a quarter of it each, the run-time table half.

    ``__slots__``: matched for every record (the hot path).
    """

    __slots__ = ("_cache", "_cache_bytes", "_file_seen", "_keeping", "_run_seen", "file", "run_time")

    def __init__(self, file: RoutingTable, run_time: RoutingTable) -> None:
        self.file = file
        self.run_time = run_time
        self._cache: dict[tuple[str, str], Match] = {}
        self._cache_bytes = 0
        self._file_seen = self._run_seen = -1
        self._keeping = True  # False once retired

    @property
    def tally(self) -> Tally:
        return self.run_time.tally

    @property
    def cache_bytes(self) -> int:
        """The bytes the cached answers hold, about: the file table's, the run-time table's and the merged ones (a
        ``Match`` kept by both a table and the merged cache counted twice)."""
        return self.file.cache_bytes + self.run_time.cache_bytes + self._cache_bytes

    def match(self, topic: str, event_type: str) -> Match:
        """What is subscribed to ``event_type`` on ``topic``, in either table: each endpoint once, the file's first."""
        file, run = self.file, self.run_time
        if self._file_seen != file.generation or self._run_seen != run.generation:
            self._reset()
        key = (topic, event_type)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        own, theirs = file.match(topic, event_type), run.match(topic, event_type)
        if theirs.empty:
            found = own
        elif own.empty:
            found = theirs
        else:
            scopes = tuple(dict.fromkeys((*own.scopes, *theirs.scopes)))
            found = Match(own.endpoints + theirs.endpoints, own.conditional + theirs.conditional, scopes, self, topic,
                          event_type)  # fmt: skip
        if self._file_seen != file.generation or self._run_seen != run.generation:
            self._reset()  # either table emptied its caches while answering: what is kept starts from now
        size = _size(topic, event_type, found)
        if self._keeping and len(event_type) <= _CACHED_TYPE_MAX and size <= _CACHE_BYTES // 16:
            if len(self._cache) >= _CACHE_LIMIT // 4 or self._cache_bytes + size > _CACHE_BYTES // 4:
                self._cache, self._cache_bytes = {}, 0
            self._cache[key] = found
            self._cache_bytes += size
        return found

    def scoped(self, path: tuple[str, ...], value: str, topic: str, event_type: str) -> tuple[_Route, ...]:
        """The routes scoped to ``value`` of the field ``path`` for (topic, type): the file's, then the run-time's."""
        theirs = self.run_time.scoped(path, value, topic, event_type)
        own = self.file.scoped(path, value, topic, event_type)
        return own + theirs if own else theirs

    def retire(self) -> None:
        """Let the merged answers and the file table's go, and keep none from now on (``RoutingTable.retire``: a routing
        swapped out); the run-time table is shared, its own are kept."""
        self.file.retire()
        self._keeping = False
        self._reset()

    def _reset(self) -> None:
        self._cache, self._cache_bytes = {}, 0
        self._file_seen, self._run_seen = self.file.generation, self.run_time.generation

    def take_apart(self) -> None:
        """Empty the file's table (``RoutingTable.take_apart``); the run-time one is shared, never emptied here."""
        self.file.take_apart()
        self._cache, self._cache_bytes = {}, 0
