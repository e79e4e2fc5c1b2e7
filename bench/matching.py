"""Matching cost, in process: ``daemon.core.match.RoutingTable`` with 10,000 endpoints and 100,000 subscriptions.

The subscriptions mix exact types (most), prefix wildcards (``order.*``, ``order.line.*``), a few ``*``
and some limited to one topic; the events follow a skewed (Zipf-like) mix of types over three topics,
with 2 % of types nobody subscribed to. Seeded: every run builds the same table and stream.
"""

from __future__ import annotations

import gc
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

from daemon.core.config import SubscriptionConfig
from daemon.core.match import RoutingTable

TOPICS = ("events", "orders", "billing")
_ACTIONS: tuple[str, ...] = (
    "created",
    "updated",
    "deleted",
    "archived",
    "restored",
    "assigned",
    "qualified",
    "paid",
    "failed",
)
_ACTIONS += ("refunded", "shipped", "cancelled", "completed", "opened", "closed")


@dataclass(frozen=True)
class MatchResult:
    endpoints: int
    subscriptions: int
    types: int
    build_s: float
    warm_us: float  # per event, answers cached (the steady state)
    cold_us: float  # per distinct (topic, type), first sight after a start or a reload
    unique_us: float  # per event, every event of a type never seen before (the cache never hits)
    fanout: float  # endpoints per matched event, mean
    events: int


def _types(rng: random.Random) -> tuple[list[str], list[str]]:
    """Event types, and the prefixes wildcards may use."""
    domains = [f"dom{i:03d}" for i in range(200)]
    types = [f"{d}.{a}" for d in domains for a in _ACTIONS]
    prefixes = [f"{d}." for d in domains]
    for d in rng.sample(domains, 40):
        for sub in ("line", "item", "note"):
            types += [f"{d}.{sub}.{a}" for a in rng.sample(_ACTIONS, 8)]
            prefixes.append(f"{d}.{sub}.")
    return types, prefixes


def _zipf(count: int) -> list[float]:
    """Cumulative weights: the type of rank r is drawn in proportion to 1 / r ** 0.8."""
    return list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(count)))


def build_subscriptions(
    rng: random.Random, endpoints: int, subscriptions: int
) -> tuple[list[SubscriptionConfig], list[str]]:
    types, prefixes = _types(rng)
    weights = _zipf(len(types))
    subs: list[SubscriptionConfig] = []
    for n in range(subscriptions):
        patterns: list[str] = []
        for _ in range(rng.choices((1, 2, 3), (60, 30, 10))[0]):
            roll = rng.random()
            if roll < 0.0005:
                patterns.append("*")
            elif roll < 0.13:
                patterns.append(rng.choice(prefixes) + "*")
            else:
                patterns.append(rng.choices(types, cum_weights=weights)[0])
        topics = [rng.choice(TOPICS)] if rng.random() < 0.1 else None
        subs.append(SubscriptionConfig(endpoint=f"ep-{n % endpoints:05d}", events=patterns, topics=topics))
    return subs, types


def event_stream(rng: random.Random, types: list[str], count: int) -> list[tuple[str, str]]:
    unknown = [f"other{i}.thing" for i in range(500)]
    chosen = rng.choices(types, cum_weights=_zipf(len(types)), k=count)
    topics = rng.choices(TOPICS, (70, 20, 10), k=count)
    stream = list(zip(topics, chosen, strict=True))
    for i in range(0, count, 50):  # 2 %: types no subscription names
        stream[i] = (stream[i][0], unknown[i % len(unknown)])
    return stream


def _size(found: Any) -> int:
    """Endpoints in an answer of ``match``: a tuple of ids, or an object holding them (and conditional ones)."""
    if isinstance(found, tuple):
        return len(found)
    return len(getattr(found, "endpoints", ())) + len(getattr(found, "conditional", ()))


def measure(events: int, endpoints: int = 10_000, subscriptions: int = 100_000) -> MatchResult:
    rng = random.Random(5)
    subs, types = build_subscriptions(rng, endpoints, subscriptions)
    stream = event_stream(rng, types, events)
    distinct = list(dict.fromkeys(stream))
    unique = [(topic, f"{etype}.v{n}") for n, (topic, etype) in enumerate(stream[: min(events, 50_000)])]

    gc.collect()
    started = time.perf_counter()
    table = RoutingTable(subs)
    build_s = time.perf_counter() - started

    match = table.match
    started = time.perf_counter()
    fanout = [_size(match(topic, etype)) for topic, etype in distinct]
    cold_us = (time.perf_counter() - started) * 1e6 / len(distinct)

    started = time.perf_counter()
    for topic, etype in stream:
        match(topic, etype)
    warm_us = (time.perf_counter() - started) * 1e6 / len(stream)

    started = time.perf_counter()
    for topic, etype in unique:
        match(topic, etype)
    unique_us = (time.perf_counter() - started) * 1e6 / len(unique)

    matched = [n for n in fanout if n]
    return MatchResult(
        endpoints=endpoints,
        subscriptions=len(subs),
        types=len(types),
        build_s=build_s,
        warm_us=warm_us,
        cold_us=cold_us,
        unique_us=unique_us,
        fanout=sum(matched) / max(1, len(matched)),
        events=len(stream),
    )
