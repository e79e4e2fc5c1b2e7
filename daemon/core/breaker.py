"""An endpoint's circuit breaker. Pure: the caller passes the clock (``time.monotonic()``) and does the waiting.

Closed, every delivery is attempted. After ``failures`` consecutive failed attempts (what the endpoint's contract
retries: a timeout, a connection error, a 5xx, a 429) it opens: nothing is attempted for ``cooldown_s``; the
deliveries wait (none is dropped, none uses an attempt up). Then it is half open: exactly one delivery is attempted,
the probe, while the others keep waiting. The probe delivered (or answered with a status its contract takes as final:
the endpoint is up), it closes; the probe failed, it opens again for twice as long (up to ``max_cooldown_s``).

Distinct from a pause, which an operator, a tenant or a contract sets, which skips or holds deliveries and which only
a resume lifts: the breaker is this instance's own and lifts itself.
"""

from __future__ import annotations

from typing import Final, Literal

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
State = Literal["closed", "open", "half_open"]


class Breaker:
    """One endpoint's breaker on this instance.

    ``__slots__``: consulted before every attempt of an endpoint that has one.
    """

    __slots__ = ("_cooldown_s", "_failures", "_probing", "_until", "base_cooldown_s", "max_cooldown_s", "state",
                 "threshold")  # fmt: skip

    def __init__(self, threshold: int, cooldown_s: float, max_cooldown_s: float) -> None:
        self.threshold = threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max(cooldown_s, max_cooldown_s)
        self.state: State = CLOSED
        self._failures = 0
        self._cooldown_s = cooldown_s
        self._until = 0.0  # while open: when it turns half open
        self._probing = False

    def wait_s(self, now: float) -> float | None:
        """0: a delivery may be attempted now (``admit`` it); more: seconds until it may look again; None: the probe is
        under way, wait for its outcome (``record``)."""
        if self.state == CLOSED:
            return 0.0
        if self.state == OPEN:
            if now < self._until:
                return self._until - now
            self.state = HALF_OPEN
        return None if self._probing else 0.0

    def admit(self) -> bool:
        """Count an attempt starting (after ``wait_s`` said 0): True if it is the half-open breaker's probe."""
        if self.state == HALF_OPEN:
            self._probing = True
            return True
        return False

    def record(self, ok: bool | None, probe: bool, now: float) -> State | None:
        """An attempt's outcome (``ok`` None: one that says nothing of the endpoint, e.g. a body that could not be
        built); ``probe``: what ``admit`` said of it. Returns the state the breaker moved to (OPEN or CLOSED), or None
        when it stayed."""
        if probe:
            self._probing = False
            if ok is None:
                return None  # still half open: the next delivery probes
            if ok:
                self.state, self._failures, self._cooldown_s = CLOSED, 0, self.base_cooldown_s
                return CLOSED
            self._cooldown_s = min(self._cooldown_s * 2, self.max_cooldown_s)
            return self._open(now)
        if ok is None or self.state != CLOSED:
            return None  # an attempt begun before it opened: the probe decides
        if ok:
            self._failures = 0
            return None
        self._failures += 1
        return self._open(now) if self._failures >= self.threshold else None

    def _open(self, now: float) -> State:
        self.state = OPEN
        self._until = now + self._cooldown_s
        return OPEN
