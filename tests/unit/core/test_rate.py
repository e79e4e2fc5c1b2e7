"""daemon.core.rate: an endpoint's token bucket, its slowing down after a 429 and its recovery, on a clock the tests
move by hand."""

from __future__ import annotations

import bisect
import itertools
import random

import pytest

from daemon.core.rate import MAX_HOLD_S, MIN_FACTOR, Pace, default_burst


def run(pace: Pace, until: float, start: float = 0.0) -> list[float]:
    """The start times of requests made as soon as the pace lets them, from ``start`` to ``until``."""
    now, starts = start, []
    while now < until:
        wait = pace.wait_s(now)
        if wait:
            now += wait
            continue
        pace.take(now)
        starts.append(now)
    return [t for t in starts if t < until]


@pytest.mark.parametrize(("per_second", "burst"), [(1, 1), (10, 1), (10, 10), (250, 40), (0.5, 3)])
def test_no_window_ever_holds_more_than_the_burst_and_the_rate(per_second: float, burst: int) -> None:
    rng = random.Random(per_second * burst)
    pace = Pace(per_second, burst)
    now, starts = 0.0, []
    while now < 60:  # requests that arrive at random, taken when the pace allows
        now += rng.expovariate(per_second * 2)
        wait = pace.wait_s(now)
        now += wait
        pace.take(now)
        starts.append(now)
    for i, first in enumerate(starts):
        for width in (0.0, 0.5, 1.0, 7.3, 30.0):
            inside = bisect.bisect_right(starts, first + width + 1e-9) - i
            assert inside <= burst + per_second * width + 1e-6, (first, width, inside)


def test_a_busy_endpoint_is_sent_the_rate_exactly_after_its_burst() -> None:
    starts = run(Pace(20, 5), until=10)
    assert starts[:5] == [0.0] * 5
    assert len(starts) == 5 + 20 * 10 - 1  # the 6th at 1/20 s, ... the last before 10 s
    gaps = [b - a for a, b in itertools.pairwise(starts[5:])]
    assert min(gaps) == pytest.approx(0.05) and max(gaps) == pytest.approx(0.05)


def test_a_quiet_spell_refills_the_burst_and_no_more() -> None:
    pace = Pace(10, 3)
    run(pace, until=2)
    assert len(run(pace, until=12.0001, start=12)) == 3  # 10 s quiet: 3 at once, never 100


def test_a_429_halves_the_pace_spends_the_burst_and_successes_bring_it_back() -> None:
    pace = Pace(100, 50)
    pace.slow_down(0.0, None)
    assert pace.current == 50
    assert pace.wait_s(0.0) == 0.0
    pace.take(0.0)
    assert pace.wait_s(0.0) == pytest.approx(0.02)  # the next at the new pace: no burst
    pace.slow_down(0.5, None)  # within a second of the last: one halving per second at most
    assert pace.current == 50
    pace.slow_down(1.0, None)
    assert pace.current == 25
    for _ in range(15):
        pace.succeeded()
    assert 50 < pace.current < 100
    for _ in range(100):
        pace.succeeded()
    assert pace.current == 100 and pace.factor == 1.0


def test_the_pace_never_falls_below_its_floor() -> None:
    pace = Pace(64, 1)
    for second in range(20):
        pace.slow_down(float(second), None)
    assert pace.factor == MIN_FACTOR and pace.current == 1


def test_a_retry_after_holds_every_request_until_it_has_passed_within_the_cap() -> None:
    pace = Pace(10, 10)
    pace.slow_down(5.0, 3.0)
    assert pace.wait_s(5.0) == pytest.approx(3.0)
    assert pace.wait_s(7.9) == pytest.approx(0.1)
    assert pace.wait_s(8.0) == 0.0
    pace.slow_down(10.0, 86_400.0)
    assert pace.wait_s(10.0) == pytest.approx(MAX_HOLD_S)


def test_a_burst_left_out_is_one_second_worth_and_at_least_one() -> None:
    assert default_burst(0.2) == 1 and default_burst(50) == 50 and default_burst(2.7) == 2
