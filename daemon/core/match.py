"""Routing table: which endpoints an event goes to. Pure; built once per config, never mutated after."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from daemon.core.config import SubscriptionConfig, WhereConfig

# The answers cached per (topic, type): event types come from outside, so both the number of entries and the
# bytes of their keys are bounded, and a type too long to be a real one is answered without being kept.
_CACHE_LIMIT = 65_536
_CACHE_BYTES = 8 * 1024 * 1024
_CACHED_TYPE_MAX = 256


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
        value = event
        for step in self.path:
            value = value.get(step) if isinstance(value, dict) else None
        comparable = isinstance(value, (str, int)) and not isinstance(value, bool)
        inside = comparable and str(value) in self.values
        return inside != self.negate and (self.also is None or self.also.holds(event))


class Match:
    """The endpoints for one (topic, event type): those that always apply, and those under a condition."""

    __slots__ = ("conditional", "endpoints")

    def __init__(self, endpoints: tuple[str, ...], conditional: tuple[tuple[str, Where], ...]) -> None:
        self.endpoints = endpoints
        self.conditional = conditional

    def select(self, event: Callable[[], Any]) -> tuple[str, ...]:
        """Endpoint ids for one event; ``event()`` decodes it, called only when a condition needs it."""
        if not self.conditional:
            return self.endpoints
        decoded = event()
        chosen = dict.fromkeys(self.endpoints)
        for endpoint, where in self.conditional:
            if endpoint not in chosen and where.holds(decoded):
                chosen[endpoint] = None
        return tuple(chosen)


# One route: its subscription's place in the config, the endpoint id, the topics it is limited to (None: all),
# the event types its endpoint's contract knows (None: any), and its condition.
_Route = tuple[int, str, frozenset[str] | None, frozenset[str] | None, Where | None]


class RoutingTable:
    """An index by event type: exact types in a dict, prefix wildcards by prefix, ``*`` on its own.

    ``match`` resolves (topic, event type) once and caches the answer, so the steady-state cost of
    matching is one dict lookup however many subscriptions there are. Subscriptions can be added and an
    endpoint's removed in place (endpoints managed at run time): a change costs the endpoint's own
    routes and empties the cache, which refills one resolve per (topic, type) as events come.
    """

    __slots__ = (
        "_by_endpoint", "_cache", "_cache_bytes", "_exact", "_next_index", "_prefix_lengths", "_prefixes", "_star",
    )  # fmt: skip

    def __init__(
        self, subscriptions: Iterable[SubscriptionConfig], catalogues: Mapping[str, frozenset[str] | None] | None = None
    ) -> None:
        self._exact: dict[str, list[_Route]] = {}
        self._prefixes: dict[str, list[_Route]] = {}
        self._star: list[_Route] = []
        self._by_endpoint: dict[str, list[tuple[str, _Route]]] = {}  # endpoint id -> (pattern, route) it added
        self._next_index = 0
        self._cache: dict[tuple[str, str], Match] = {}
        self._cache_bytes = 0
        catalogues = catalogues or {}
        for sub in subscriptions:
            self._add(sub, catalogues.get(sub.endpoint))
        self._prefix_lengths = sorted({len(p) for p in self._prefixes})

    def add(self, subscriptions: Iterable[SubscriptionConfig], catalogue: frozenset[str] | None = None) -> None:
        """Add subscriptions (of one endpoint, whose contract knows ``catalogue``), after every earlier one."""
        for sub in subscriptions:
            self._add(sub, catalogue)
        self._prefix_lengths = sorted({len(p) for p in self._prefixes})
        self._forget()

    def remove(self, endpoint_id: str) -> bool:
        """Remove every subscription of an endpoint; False if it had none."""
        routes = self._by_endpoint.pop(endpoint_id, None)
        if routes is None:
            return False
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
        self._prefix_lengths = sorted({len(p) for p in self._prefixes})
        self._forget()
        return True

    def _add(self, sub: SubscriptionConfig, catalogue: frozenset[str] | None) -> None:
        where = Where.of(sub.where, Where.of(sub.scope))
        topics = frozenset(sub.topics) if sub.topics is not None else None
        route: _Route = (self._next_index, sub.endpoint, topics, catalogue, where)
        self._next_index += 1
        added = self._by_endpoint.setdefault(sub.endpoint, [])
        for pattern in sub.events:
            if pattern == "*":
                self._star.append(route)
            elif pattern.endswith("*"):
                self._prefixes.setdefault(pattern[:-1], []).append(route)
            else:
                self._exact.setdefault(pattern, []).append(route)
            added.append((pattern, route))

    def _forget(self) -> None:
        self._cache = {}
        self._cache_bytes = 0

    def match(self, topic: str, event_type: str) -> Match:
        """What is subscribed to ``event_type`` on ``topic``: each endpoint once, in config order."""
        key = (topic, event_type)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        found = self._resolve(topic, event_type)
        if len(event_type) > _CACHED_TYPE_MAX:
            return found
        if len(self._cache) >= _CACHE_LIMIT or self._cache_bytes >= _CACHE_BYTES:
            self._cache.clear()
            self._cache_bytes = 0
        self._cache[key] = found
        self._cache_bytes += len(topic) + len(event_type) + 100  # the key's text and about the entry's own size
        return found

    def _resolve(self, topic: str, event_type: str) -> Match:
        routes: list[_Route] = list(self._exact.get(event_type, ()))
        for length in self._prefix_lengths:
            if length > len(event_type):
                break
            routes.extend(self._prefixes.get(event_type[:length], ()))
        routes.extend(self._star)
        routes.sort(key=lambda route: route[0])
        plain: dict[str, None] = {}
        conditional: list[tuple[str, Where]] = []
        for _, endpoint, topics, catalogue, where in routes:
            if topics is not None and topic not in topics:
                continue
            if catalogue is not None and event_type not in catalogue:
                continue
            if where is None:
                plain[endpoint] = None
            else:
                conditional.append((endpoint, where))
        return Match(tuple(plain), tuple((e, w) for e, w in conditional if e not in plain))
