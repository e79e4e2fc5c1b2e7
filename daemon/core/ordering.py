"""Ordered delivery per key (an endpoint's ``ordering = "key"``): the deliveries of one Kafka key go one at a time, in
the order they were read (offset order within a partition); another key never waits for it. Pure.

``Keys`` holds, per key, the delivery under way (the head) and those parked behind it. The settlement asks ``admit``
when a delivery of the endpoint is handed over (True: it goes now; False: it waits behind its key's head), and
``release`` once the head is settled for good (delivered, or its attempts over), which hands back the next one.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Keys(Generic[T]):
    """One ordered endpoint's keys with a delivery under way, and what waits behind each."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[bytes, deque[T]] = {}  # key -> parked behind its head (the head itself not kept)

    def __len__(self) -> int:
        """Keys with a delivery under way."""
        return len(self._waiting)

    def parked(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def admit(self, key: bytes, item: T) -> bool:
        """True: ``item`` is its key's head now; False: it waits behind the head (``release`` hands it back)."""
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = deque()
            return True
        waiting.append(item)
        return False

    def release(self, key: bytes) -> T | None:
        """The head of ``key`` is settled: the next one, now its head (None: the key has nothing left)."""
        waiting = self._waiting.get(key)
        if waiting is None:
            return None
        if waiting:
            return waiting.popleft()
        del self._waiting[key]
        return None

    def give_up(self, key: bytes) -> list[T]:
        """The head of ``key`` was settled without being delivered and its endpoint dead-letters what follows: every
        delivery parked behind it, in order; the key is free again."""
        return list(self._waiting.pop(key, ()))
