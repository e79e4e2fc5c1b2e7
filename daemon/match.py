"""Routing table: which endpoints an event goes to. Pure; built once per config, never mutated after."""

from __future__ import annotations

from collections.abc import Iterable

from daemon.config import SubscriptionConfig

# One route: its subscription's place in the config, the endpoint id, the topics it is limited to (None: all).
_Route = tuple[int, str, frozenset[str] | None]

_CACHE_LIMIT = 65_536


class RoutingTable:
    """An index by event type: exact types in a dict, prefix wildcards by prefix, ``*`` on its own.

    ``match`` resolves (topic, event type) once and caches the answer, so the steady-state cost of
    matching is one dict lookup however many subscriptions there are.
    """

    __slots__ = ("_cache", "_exact", "_prefix_lengths", "_prefixes", "_star")

    def __init__(self, subscriptions: Iterable[SubscriptionConfig]) -> None:
        self._exact: dict[str, list[_Route]] = {}
        self._prefixes: dict[str, list[_Route]] = {}
        self._star: list[_Route] = []
        for index, sub in enumerate(subscriptions):
            route: _Route = (index, sub.endpoint, frozenset(sub.topics) if sub.topics is not None else None)
            for pattern in sub.events:
                if pattern == "*":
                    self._star.append(route)
                elif pattern.endswith("*"):
                    self._prefixes.setdefault(pattern[:-1], []).append(route)
                else:
                    self._exact.setdefault(pattern, []).append(route)
        self._prefix_lengths = sorted({len(p) for p in self._prefixes})
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def match(self, topic: str, event_type: str) -> tuple[str, ...]:
        """Endpoint ids subscribed to ``event_type`` on ``topic``, each once, in config order."""
        key = (topic, event_type)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        found = self._resolve(topic, event_type)
        if len(self._cache) >= _CACHE_LIMIT:  # event types come from outside: bound the cache
            self._cache.clear()
        self._cache[key] = found
        return found

    def _resolve(self, topic: str, event_type: str) -> tuple[str, ...]:
        routes: list[_Route] = list(self._exact.get(event_type, ()))
        for length in self._prefix_lengths:
            if length > len(event_type):
                break
            routes.extend(self._prefixes.get(event_type[:length], ()))
        routes.extend(self._star)
        routes.sort()
        seen: dict[str, None] = {}
        for _, endpoint, topics in routes:
            if topics is None or topic in topics:
                seen[endpoint] = None
        return tuple(seen)
