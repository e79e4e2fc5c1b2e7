"""daemon.core.policy: status classes, Retry-After, policies, tiers and deferral waits (pure)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from daemon.core.policy import (
    EVERY_FAILURE,
    STANDARD_STATUSES,
    Policy,
    classify,
    defer_wait,
    lateness_allowed,
    parse_retry_after,
    tier_for,
    with_retry_after,
)

TIERS = [1.0, 5.0, 30.0, 60.0, 300.0]


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (None, "retry"),  # timeout or connection error
        (500, "retry"),
        (503, "retry"),
        (429, "retry"),
        (408, "retry"),
        (425, "retry"),
        (410, "gone"),
        (400, "final"),
        (404, "final"),
        (301, "final"),  # redirects are never followed
        (101, "final"),
    ],
)
def test_classify(status: int | None, verdict: str) -> None:
    assert classify(status) == verdict


def test_an_endpoint_may_retry_more_make_some_final_and_change_what_pauses() -> None:
    rules = STANDARD_STATUSES.overridden(retry=frozenset({409}))
    assert (rules.verdict(409), rules.verdict(404), rules.verdict(410)) == ("retry", "final", "gone")
    rules = STANDARD_STATUSES.overridden(final=frozenset({429, 503}), pause=frozenset())
    assert (rules.verdict(429), rules.verdict(503), rules.verdict(500), rules.verdict(410)) == (
        "final",
        "final",
        "retry",
        "final",
    )
    assert STANDARD_STATUSES.overridden() is STANDARD_STATUSES


@pytest.mark.parametrize("status", [300, 301, 400, 401, 404, 409, 410, 422, 429, 500, 503, 599, None])
def test_every_failure_retries_every_non_2xx_and_pauses_on_nothing(status: int | None) -> None:
    assert EVERY_FAILURE.verdict(status) == "retry"
    assert EVERY_FAILURE.verdict(200) == "delivered"
    assert EVERY_FAILURE.overridden(final=frozenset({404})).verdict(404) == "final"
    assert EVERY_FAILURE.overridden(pause=frozenset({410})).verdict(410) == "gone"


def test_retry_after_seconds_and_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 7 ", now) == 7.0
    later = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    assert parse_retry_after(later, now) == pytest.approx(90.0)
    earlier = format_datetime(datetime.fromtimestamp(now - 90, UTC), usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2026 00:00:00 GMT"])
def test_retry_after_that_cannot_be_read_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, 0.0) is None


def test_retry_after_never_sooner_than_scheduled_and_capped() -> None:
    assert with_retry_after(30.0, None, 3600) == 30.0
    assert with_retry_after(30.0, 5.0, 3600) == 30.0
    assert with_retry_after(30.0, 600.0, 3600) == 600.0
    assert with_retry_after(30.0, 86_400.0, 3600) == 3600.0


def test_policy_none_and_once() -> None:
    assert Policy("none").max_attempts == 1
    assert Policy("none").next_delay(1) is None
    once = Policy("once", delays_s=(60.0,))
    assert (once.max_attempts, once.next_delay(1), once.next_delay(2)) == (2, 60.0, None)


def test_policy_schedule_walks_its_delays_then_stops() -> None:
    policy = Policy("schedule", delays_s=(5.0, 300.0, 1800.0))
    assert [policy.next_delay(a) for a in range(1, 5)] == [5.0, 300.0, 1800.0, None]
    assert policy.max_attempts == 4


def test_policy_exponential_doubles_up_to_its_cap() -> None:
    policy = Policy("exponential", attempts=6, base_s=30.0, max_s=200.0)
    assert [policy.next_delay(a) for a in range(1, 7)] == [30.0, 60.0, 120.0, 200.0, 200.0, None]


def test_policy_exponential_jitter_stays_within_its_fraction_and_the_cap() -> None:
    policy = Policy("exponential", attempts=10, base_s=10.0, max_s=100.0, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.next_delay(2, rng) for _ in range(500)]
    assert all(d is not None and 16.0 <= d <= 24.0 for d in delays)
    assert len({round(d or 0, 6) for d in delays}) > 100  # actually spread
    assert all((policy.next_delay(9, rng) or 0) <= 100.0 for _ in range(100))


@pytest.mark.parametrize(
    ("remaining", "tier"),
    [(0.5, None), (1.0, 1.0), (4.9, 1.0), (5.0, 5.0), (59.0, 30.0), (1e9, 300.0)],
)
def test_tier_for_picks_the_longest_tier_that_does_not_overshoot(remaining: float, tier: float | None) -> None:
    assert tier_for(remaining, TIERS) == tier


def test_deferrals_wait_one_tier_longer_each_time_up_to_the_longest() -> None:
    assert [defer_wait(n, 0.0, TIERS, 60.0) for n in range(6)] == [1.0, 5.0, 30.0, 60.0, 60.0, 60.0]


def test_a_deferral_waits_at_least_until_the_endpoint_can_have_drained_its_queue() -> None:
    assert defer_wait(0, 42.0, TIERS, 60.0) == 42.0  # a slow endpoint: no point in coming back in 1 s
    assert defer_wait(0, 500.0, TIERS, 60.0) == 60.0  # never longer than the longest
    assert defer_wait(2, 3.0, TIERS, 60.0) == 30.0  # the count still climbs
    assert defer_wait(0, 0.2, TIERS, 60.0) == 1.0  # never shorter than the shortest tier


def test_lateness_allowed() -> None:
    assert lateness_allowed(5.0) == 1.0
    assert lateness_allowed(3600.0) == 180.0
