"""Request timeouts without a timer per request: deadlines in slots of ``tick_s``, swept by one timer.

``asyncio.timeout`` builds a context object, looks up the current task and schedules and cancels a timer
handle for every attempt: about a tenth of the router's CPU per delivery. Here an attempt adds its task
to the set of the slot its deadline falls in and takes it out when done (two set operations); one timer,
due at the earliest slot with attempts, cancels what is still in a slot once the slot's time has passed.
A deadline fires no sooner than asked and at most ``tick_s`` (and a millisecond of timer rounding) later.

The loop is looked up once, at the first deadline: on Python 3.11 ``asyncio.get_running_loop()`` and
``asyncio.current_task()`` without a loop make a ``getpid`` system call each (0.3-0.9 µs here), twice an attempt.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Deadlines:
    """The deadlines of one event loop's attempts."""

    def __init__(self, tick_s: float = 0.01) -> None:
        self._tick = tick_s
        self._slots: dict[int, set[asyncio.Task[object]]] = {}
        self._order: list[int] = []  # heap of the slots in _slots
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first deadline, and of every one after

    async def within(self, seconds: float, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` in the current task; TimeoutError once ``seconds`` have passed."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task: asyncio.Task[object] = asyncio.current_task(loop)  # type: ignore[assignment]
        slot = math.ceil((loop.time() + seconds) / self._tick)
        tasks = self._slots.get(slot)
        if tasks is None:
            tasks = self._slots[slot] = set()
            heapq.heappush(self._order, slot)
            if self._timer is None or slot < self._timer_slot:
                self._arm(loop, slot)
        tasks.add(task)
        cancelling = task.cancelling()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task in self._expired and task.uncancel() <= cancelling:
                raise TimeoutError from None  # our cancellation alone: the deadline passed
            raise  # cancelled from outside (also when the deadline passed at the same time)
        finally:
            tasks.discard(task)
            self._expired.discard(task)

    def _arm(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        # A millisecond late: the loop's timers round to milliseconds and must not fire before the slot ends.
        self._timer = loop.call_at(slot * self._tick + 0.001, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        order, slots = self._order, self._slots
        while order and order[0] * self._tick <= now:
            for task in slots.pop(heapq.heappop(order)):
                self._expired.add(task)
                task.cancel()
        if order:
            self._arm(loop, order[0])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
