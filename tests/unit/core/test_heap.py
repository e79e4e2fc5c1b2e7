"""daemon.core.heap: no full pass of the cyclic collector while a big state is built, the thresholds put back after
(an error inside too), and what was built frozen. The process's own collector: no stand-in."""

from __future__ import annotations

import gc
import weakref

import pytest

import daemon.core.heap
from daemon.core.heap import freeze_built, give_back, no_full_collections


def full_passes() -> int:
    return int(gc.get_stats()[2]["collections"])


def build(count: int) -> list[list[object]]:
    """Objects the collector tracks, each one kept: what a routing being built is made of."""
    return [[n] for n in range(count)]


def test_no_full_pass_runs_while_a_state_is_built_and_the_thresholds_are_put_back() -> None:
    thresholds = gc.get_threshold()
    young_before = gc.get_stats()[0]["collections"]
    built: list[list[list[object]]] = []
    with no_full_collections():
        passes = full_passes()
        for _ in range(20):
            built.append(build(100_000))  # 2,000,000 tracked objects: several full passes at the usual thresholds
        assert full_passes() == passes
        assert gc.get_stats()[0]["collections"] > young_before  # the young generation is still collected
    assert gc.get_threshold() == thresholds
    del built
    passes = full_passes()
    kept = [build(100_000) for _ in range(20)]  # the same outside: the collector makes full passes (the test's check)
    assert full_passes() > passes and len(kept) == 20


def test_the_thresholds_are_put_back_when_the_build_fails() -> None:
    thresholds = gc.get_threshold()
    with pytest.raises(ValueError), no_full_collections():
        raise ValueError("a config that cannot be built")
    assert gc.get_threshold() == thresholds


class Node:
    """A tracked object a weak reference can follow."""

    def __init__(self, n: int) -> None:
        self.n = n


def test_what_was_built_is_frozen_and_still_freed_when_let_go() -> None:
    gc.unfreeze()  # what the test process froze before, back in reach: this test counts its own
    try:
        built = [Node(n) for n in range(10_000)]
        first = weakref.ref(built[0])
        freeze_built()
        assert gc.get_freeze_count() >= 10_000
        assert not any(o is built[0] for generation in range(3) for o in gc.get_objects(generation))  # out of reach
        del built
        assert first() is None  # freed by its references alone
    finally:
        gc.unfreeze()


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(daemon.core.heap._MALLOC_TRIM is None, reason="a C library without malloc_trim (not glibc)")
def test_the_free_pages_of_the_c_allocator_are_given_back() -> None:
    """What the C allocator's heap keeps once freed (objects over 512 bytes: records as read, dict tables) goes back to
    the system: 200 MiB of 2 KiB values freed but for the last, which holds the heap's top where glibc would trim."""
    values = [bytes(2048) + n.to_bytes(4, "big") for n in range(100_000)]
    last = values[-1]
    del values
    before = rss_kb()
    assert give_back()
    after = rss_kb()
    assert before - after > 100_000, (before, after)  # over 100 MiB of the 200 given back
    assert len(last) == 2052
