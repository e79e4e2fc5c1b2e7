"""The cyclic garbage collector beside the daemon's big states: a million endpoints are tens of millions of objects.

A full pass of the collector traverses every object it tracks and holds the interpreter while it does: over such a
state, the event loop stopped for hundreds of milliseconds to seconds (or a thread holding the interpreter from it).
What is built to last is frozen (``gc.freeze``): out of the collector's reach, still freed when its last reference
goes, which is why a state let go must hold no cycle (``Routing``). While a routing is built beside the running one
(a reload), no full pass runs at all: only the young generations are collected.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Callable, Iterator
from typing import Any

_NEVER: int = 2**31 - 1  # a threshold the count of the old generation does not reach
# glibc's malloc_trim; None where the C library has none (musl, macOS): then what is freed stays with the process.
_MALLOC_TRIM: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)


def freeze_built() -> None:
    """Move what was built out of the collector's reach: the young generations are collected first, so only what
    lives on is frozen."""
    gc.collect(1)
    gc.freeze()


def drain(items: dict[Any, Any] | list[Any]) -> None:
    """Empty ``items`` an entry at a time (``popitem``, ``pop``): each let go of on its own, so that a thread doing it
    lets the interpreter go to the event loop between entries, where emptying or dropping it whole frees every entry
    in one step (a routing swapped out: ``Routing.take_apart``)."""
    pop = items.popitem if isinstance(items, dict) else items.pop
    while items:
        pop()


def give_back() -> bool:
    """Return the C allocator's free pages to the system, once a big state is read or a routing let go of: what was
    built and freed on the way (a million records decoded, a routing's copy) stays in the process's RSS otherwise
    (27 MiB after the first read of a million endpoints, in 3.4 ms). False where the C library cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


@contextlib.contextmanager
def no_full_collections() -> Iterator[None]:
    """No full pass of the collector inside (the young generations are still collected): each one would traverse what
    is being built, growing (284-663 ms each, building the routing of a million endpoints). The thresholds are put
    back after, whatever happens inside."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)
