"""daemon.core.breaker: an endpoint's circuit breaker, on a clock the tests move by hand."""

from __future__ import annotations

from daemon.core.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def test_it_opens_after_the_failures_in_a_row_and_a_success_resets_the_count() -> None:
    b = Breaker(3, cooldown_s=10, max_cooldown_s=100)
    for ok in (False, False, True, False, False):
        assert b.record(ok, b.admit(), 0.0) is None
    assert b.state == CLOSED and b.wait_s(0.0) == 0.0
    assert b.record(False, b.admit(), 1.0) == OPEN
    assert b.wait_s(1.0) == 10.0 and (b.wait_s(10.999) or 0) > 0


def test_half_open_lets_exactly_one_probe_through_and_its_success_closes() -> None:
    b = Breaker(1, cooldown_s=5, max_cooldown_s=100)
    b.record(False, b.admit(), 0.0)
    assert b.wait_s(5.0) == 0.0 and b.state == HALF_OPEN
    assert b.admit() is True
    assert b.wait_s(5.0) is None and b.wait_s(50.0) is None  # the others wait for the probe's outcome
    assert b.record(False, False, 5.1) is None  # an attempt begun before it opened: the probe decides
    assert b.record(True, True, 6.0) == CLOSED
    assert b.wait_s(6.0) == 0.0 and b.admit() is False


def test_a_failed_probe_opens_it_again_for_twice_as_long_up_to_the_most() -> None:
    b = Breaker(1, cooldown_s=4, max_cooldown_s=10)
    b.record(False, b.admit(), 0.0)
    waits = []
    now = 0.0
    for _ in range(4):
        now += b.wait_s(now) or 0.0
        assert b.wait_s(now) == 0.0
        assert b.record(False, b.admit(), now) == OPEN
        waits.append(b.wait_s(now))
    assert waits == [8.0, 10.0, 10.0, 10.0]
    now += 10
    b.wait_s(now)
    assert b.record(True, b.admit(), now) == CLOSED
    b.record(False, b.admit(), now)
    assert b.wait_s(now) == 4.0  # closed again: the cool-down starts over


def test_a_probe_that_says_nothing_of_the_endpoint_leaves_it_half_open_for_the_next() -> None:
    b = Breaker(1, cooldown_s=1, max_cooldown_s=1)
    b.record(False, b.admit(), 0.0)
    b.wait_s(1.0)
    assert b.record(None, b.admit(), 1.0) is None
    assert b.state == HALF_OPEN and b.wait_s(1.0) == 0.0 and b.admit() is True
