"""An endpoint's pace: a token bucket that a 429 or a ``Retry-After`` slows down and successes bring back. Pure: the
caller passes the clock (``time.monotonic()``) and does the waiting.

The bucket is kept as the generic cell rate algorithm (GCRA): one number, the theoretical arrival time ``tat`` of
the next request at the full pace. A request may go at ``now`` when ``tat - now`` is within the burst's tolerance,
``(burst - 1)`` intervals. The rule it keeps: over any window of ``w`` seconds, at most ``burst + per_second * w``
requests start (at the configured pace; slowed, fewer).

Slowing down is multiplicative (the pace halves, at most once a second, down to 1/64 of the configured one) and a
``Retry-After`` also holds every request until it has passed (at most ``MAX_HOLD_S``); recovering is multiplicative
too (each success 5 % faster, up to the configured pace): about 15 successes from one halving.
"""

from __future__ import annotations

from typing import Final

MIN_FACTOR: Final = 1 / 64
MAX_HOLD_S: Final = 60.0
_SLOWER: Final = 0.5
_FASTER: Final = 1.05
_SLOW_AT_MOST_EVERY_S: Final = 1.0


class Pace:
    """One endpoint's token bucket on this instance, with its adaptive factor.

    ``__slots__``: consulted before every attempt of a rate-limited endpoint.
    """

    __slots__ = ("_hold_until", "_last_slowed", "_tat", "burst", "factor", "per_second")

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst
        self.factor = 1.0  # 1: the configured pace; less after a 429
        self._tat = float("-inf")
        self._hold_until = float("-inf")
        self._last_slowed = float("-inf")

    @property
    def current(self) -> float:
        """Requests a second at the pace in force."""
        return self.per_second * self.factor

    def wait_s(self, now: float) -> float:
        """Seconds until a request may start (0: now). Takes nothing: ``take`` does, once the wait is over."""
        interval = 1.0 / self.current
        due = max(self._tat - (self.burst - 1) * interval, self._hold_until)
        return due - now if due > now else 0.0

    def take(self, now: float) -> None:
        """Count one request starting at ``now`` (after ``wait_s(now)`` said 0)."""
        self._tat = max(self._tat, now) + 1.0 / self.current

    def slow_down(self, now: float, retry_after_s: float | None) -> None:
        """The endpoint said 429 (or gave a ``Retry-After``): halve the pace, and hold every request until its
        ``Retry-After`` has passed; the burst is spent, so that what follows starts at the new pace."""
        if now - self._last_slowed >= _SLOW_AT_MOST_EVERY_S:
            self._last_slowed = now
            self.factor = max(MIN_FACTOR, self.factor * _SLOWER)
        interval = 1.0 / self.current
        start = now
        if retry_after_s is not None and retry_after_s > 0:
            start = now + min(retry_after_s, MAX_HOLD_S)
            self._hold_until = max(self._hold_until, start)
        self._tat = max(self._tat, start + (self.burst - 1) * interval)

    def succeeded(self) -> None:
        """A request the endpoint took: back towards the configured pace."""
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor * _FASTER)


def default_burst(per_second: float) -> int:
    """A rate limit's burst when none is given: one second's worth, at least 1."""
    return max(1, int(per_second))
