"""A dict kept in 64 parts, for the maps that hold one entry per endpoint of the endpoints topic.

A dict grows by building its table again at twice the size, in one step that holds the interpreter: at 700,000
entries that step took 50-75 ms in a daemon holding a million endpoints, and the four maps keyed by endpoint id
(the directory's records, the routing's subscriptions, its sealed records, the match index's scopes) all grew on the
same record, stopping the event loop (``/healthz``) for 260-450 ms during the first read. Split by the key's hash into
64 dicts, each part grows at 1/64 of the size (about 1 ms at a million), and the parts reach their sizes at different
records, with the loop answering between them. Iteration goes part by part: not in insertion order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Generic, TypeVar, overload

from daemon.core.heap import drain

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

PARTS = 64  # a key's part: ``hash(key) & 63`` written as a constant in each method (no global looked up)
_MISSING: Any = object()


class Shards(Generic[K, V]):
    """The part of dict's interface these maps use; a key's part is ``hash(key) & 63`` (a str caches its hash)."""

    __slots__ = ("_len", "_parts")

    def __init__(self) -> None:
        self._parts: tuple[dict[K, V], ...] = tuple({} for _ in range(PARTS))
        self._len = 0  # kept, not summed over the parts

    def __getitem__(self, key: K) -> V:
        return self._parts[hash(key) & 63][key]

    def __setitem__(self, key: K, value: V) -> None:
        part = self._parts[hash(key) & 63]
        if key not in part:
            self._len += 1
        part[key] = value

    def __delitem__(self, key: K) -> None:
        del self._parts[hash(key) & 63][key]
        self._len -= 1

    def __contains__(self, key: object) -> bool:
        return key in self._parts[hash(key) & 63]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        return itertools.chain.from_iterable(self._parts)

    def __repr__(self) -> str:
        return f"Shards({len(self)} entries)"

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: V | T) -> V | T: ...

    def get(self, key: K, default: V | T | None = None) -> V | T | None:
        return self._parts[hash(key) & 63].get(key, default)

    @overload
    def pop(self, key: K) -> V: ...

    @overload
    def pop(self, key: K, default: V | T) -> V | T: ...

    def pop(self, key: K, default: V | T = _MISSING) -> V | T:
        part = self._parts[hash(key) & 63]
        if key in part:
            self._len -= 1
            return part.pop(key)
        return part.pop(key) if default is _MISSING else default

    def take_apart(self) -> None:
        """Empty it an entry at a time (``daemon.core.heap.drain``)."""
        for part in self._parts:
            drain(part)
        self._len = 0

    def keys(self) -> Iterator[K]:
        return iter(self)

    def values(self) -> Iterator[V]:
        return itertools.chain.from_iterable(part.values() for part in self._parts)

    def items(self) -> Iterator[tuple[K, V]]:
        return itertools.chain.from_iterable(part.items() for part in self._parts)
