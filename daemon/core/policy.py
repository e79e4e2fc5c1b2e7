"""Retry policies and status classification. Pure.

An attempt's answer is read by its contract's ``StatusRules`` (delivered, retried, final, or pausing the
endpoint), then the endpoint's policy says whether and when the next attempt is due
(``Policy.next_delay``). Delays wait in Kafka, on the delay tier that fits them (``tier_for``);
``Retry-After`` is honoured within bounds.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Sequence
from typing import Final, Literal

import msgspec

# What an outcome means for what happens next.
Verdict = Literal["delivered", "retry", "final", "gone"]

RETRIABLE_4XX: Final = frozenset({408, 425, 429})
_RNG: Final = random.Random()  # noqa: S311 - jitter spreads load; it guards nothing


class StatusRules(msgspec.Struct, frozen=True, kw_only=True):
    """How a contract reads an answer. 2xx is delivered; a timeout or a connection error is retried.

    A status in ``pause`` pauses the endpoint (and ends the delivery); one in ``final`` ends the delivery;
    otherwise, with ``every_failure`` every non-2xx is retried, else 5xx and ``retry`` are and the rest
    (3xx: redirects are never followed; other 4xx) is final. Whether a retry is left is the policy's.
    """

    every_failure: bool = False
    retry: frozenset[int] = RETRIABLE_4XX
    final: frozenset[int] = frozenset()
    pause: frozenset[int] = frozenset({410})

    def verdict(self, http_status: int | None) -> Verdict:
        if http_status is None:
            return "retry"
        if 200 <= http_status < 300:
            return "delivered"
        if http_status in self.pause:
            return "gone"
        if http_status in self.final:
            return "final"
        if self.every_failure or http_status >= 500 or http_status in self.retry:
            return "retry"
        return "final"

    def overridden(
        self,
        retry: frozenset[int] = frozenset(),
        final: frozenset[int] = frozenset(),
        pause: frozenset[int] | None = None,
    ) -> StatusRules:
        """These rules with an endpoint's own: more statuses retried, some made final, another pause set."""
        if not retry and not final and pause is None:
            return self
        return StatusRules(
            every_failure=self.every_failure,
            retry=(self.retry | retry) - final,
            final=(self.final | final) - retry,
            pause=self.pause if pause is None else pause,
        )


# Standard Webhooks: 4xx final except 408/425/429, 410 disables the endpoint.
STANDARD_STATUSES: Final = StatusRules()
# Every non-2xx answer, timeout or connection error is a failure the schedule retries; nothing pauses.
EVERY_FAILURE: Final = StatusRules(every_failure=True, retry=frozenset(), pause=frozenset())


def classify(http_status: int | None, rules: StatusRules = STANDARD_STATUSES) -> Verdict:
    """``rules.verdict``; the Standard Webhooks rules when none are given."""
    return rules.verdict(http_status)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


PolicyName = Literal["none", "once", "schedule", "exponential"]


class Policy(msgspec.Struct, frozen=True):
    """When to try again. ``attempt`` counts from 1 (the first try); delays are in seconds."""

    name: PolicyName
    delays_s: tuple[float, ...] = ()  # schedule: the delay before retry 1, 2, ...
    attempts: int = 1  # exponential: total attempts, the first included
    base_s: float = 30.0
    max_s: float = 7200.0
    jitter: float = 0.0  # +/- this fraction, exponential only
    live_only: bool = False  # once: pings and manual redeliveries are never retried

    @property
    def max_attempts(self) -> int:
        if self.name == "none":
            return 1
        if self.name == "once":
            return 2
        if self.name == "schedule":
            return 1 + len(self.delays_s)
        return self.attempts

    def next_delay(self, attempt: int, rng: random.Random | None = None) -> float | None:
        """Delay before attempt ``attempt + 1``, or None when ``attempt`` was the last."""
        if attempt >= self.max_attempts:
            return None
        if self.name == "once":
            return self.delays_s[0] if self.delays_s else self.base_s
        if self.name == "schedule":
            return self.delays_s[attempt - 1]
        delay: float = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        if self.jitter:
            delay *= 1 + (rng or _RNG).uniform(-self.jitter, self.jitter)
        return min(delay, self.max_s)


def with_retry_after(scheduled: float, retry_after: float | None, cap_s: float) -> float:
    """The delay to use when the endpoint said ``Retry-After``: never sooner than scheduled, at most ``cap_s``."""
    if retry_after is None:
        return scheduled
    return max(scheduled, min(retry_after, cap_s))


def tier_for(remaining_s: float, tiers_s: Sequence[float]) -> float | None:
    """The longest delay tier that does not overshoot ``remaining_s`` (tiers ascending); None if none fits."""
    chosen: float | None = None
    for tier in tiers_s:
        if tier <= remaining_s:
            chosen = tier
        else:
            break
    return chosen


def defer_wait(deferrals: int, drain_s: float, tiers_s: Sequence[float], longest_s: float) -> float:
    """How long to park a delivery whose endpoint's queue is full.

    At least the tier its number of earlier deferrals reaches (1st: the shortest, 2nd: the next ...), and at
    least the time the endpoint needs to work off what it already has (``drain_s``): coming back sooner
    would only find the queue still full. Never more than ``longest_s``, so a recovered endpoint gets its
    deliveries back within that.
    """
    by_count = tiers_s[min(deferrals, len(tiers_s) - 1)]
    return max(min(max(by_count, drain_s), longest_s), tiers_s[0])


def lateness_allowed(delay_s: float) -> float:
    """How late a retry may be sent while the daemon is up: max(1 s, 5 % of its delay)."""
    return max(1.0, 0.05 * delay_s)


# What to do with a record read back from a delay tier.
Step = Literal["hold", "hop", "wait", "due"]


def back_from_tier(tier_due_ms: int, due_ms: int, now_ms: int, tiers_s: Sequence[float]) -> tuple[Step, float]:
    """A tier record's next step: ``hold`` its partition until its tier lets it out (the value: that time,
    unix ms); ``hop`` to the shorter tier that fits the time it still has to wait; ``wait`` here the
    seconds left when no tier is short enough; ``due``: it is time to send it."""
    if tier_due_ms > now_ms:
        return "hold", tier_due_ms
    left_ms = due_ms - now_ms
    if left_ms <= 0:
        return "due", 0.0
    if tier_for(left_ms / 1000, tiers_s) is not None:
        return "hop", 0.0
    return "wait", left_ms / 1000
