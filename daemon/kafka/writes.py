"""Whether the router's writes can be acknowledged now, read from the producer's view of the cluster.

With ``acks=all`` a record is acknowledged once every in-sync replica of its partition has it, and refused while the
partition has fewer in-sync replicas than its ``min.insync.replicas`` (NOT_ENOUGH_REPLICAS; the producer sends it again
until they are back) or no leader (a leader change under way). ``WriteWatch`` reads the partitions of the topics the
router writes from the contact probe's latest answer (``clients.ClusterProbe``, every second: no request of its own),
says once when writes start to wait and why, once when they go on, and gives ``/readyz`` the reason meanwhile. At
start-up it logs, once, the topics whose replication cannot keep what they acknowledge (``durability_notes``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from daemon.kafka.clients import ClusterProbe

log = logging.getLogger(__name__)

_CHECK_S = 1.0
_LISTED = 5  # partitions named in a reason; the rest are counted


class Partition(NamedTuple):
    topic: str
    partition: int
    leader: int  # -1: none
    replicas: int
    in_sync: int


def write_problems(partitions: Iterable[Partition], min_insync: Mapping[str, int]) -> list[str]:
    """Why writes to some of ``partitions`` wait now: one line per kind, none when every one can take writes."""
    leaderless = [f"{p.topic}[{p.partition}]" for p in partitions if p.leader < 0]
    short = [
        f"{p.topic}[{p.partition}] {p.in_sync} of {min_insync[p.topic]}"
        for p in partitions
        if p.leader >= 0 and p.in_sync < min_insync.get(p.topic, 1)
    ]
    problems = []
    if leaderless:
        problems.append(f"no leader for {_few(leaderless)} (a leader change under way): their writes wait")
    if short:
        problems.append(f"fewer in-sync replicas than min.insync.replicas ({_few(short)}): writes wait "
                        "(NOT_ENOUGH_REPLICAS) until enough replicas are back")  # fmt: skip
    return problems


def durability_notes(partitions: Iterable[Partition], min_insync: Mapping[str, int], brokers: int) -> list[str]:
    """The topics whose settings keep less than the cluster could: one line per kind, naming them."""
    factor: dict[str, int] = {}
    for p in partitions:
        factor[p.topic] = min(factor.get(p.topic, p.replicas), p.replicas)
    weak = [f"{t} (min.insync.replicas {min_insync.get(t, 1)}, replication factor {n})"
            for t, n in sorted(factor.items()) if n >= 3 and min_insync.get(t, 1) < 2]  # fmt: skip
    brittle = [t for t, n in sorted(factor.items()) if n > 1 and min_insync.get(t, 1) >= n]
    single = [t for t, n in sorted(factor.items()) if n == 1 and brokers >= 3]
    notes = []
    if weak:
        notes.append(f"topics whose writes are acknowledged by a single replica: {', '.join(weak)}: a record is "
                     "lost with that broker (set min.insync.replicas=2, or retry.min_insync_replicas for the topics "
                     "the router creates)")  # fmt: skip
    if brittle:
        notes.append(f"topics whose min.insync.replicas is their replication factor: {', '.join(brittle)}: one broker "
                     "away stops every write to them")  # fmt: skip
    if single:
        notes.append(
            f"topics with one replica on a cluster of {brokers} brokers: {', '.join(single)}: a broker lost "
            "loses their records (retry.replication_factor, or the broker's default.replication.factor)"
        )
    return notes


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


class WriteWatch:
    """``state()``: the partitions of the topics the router writes, as the producer knows them; ``brokers()``: how
    many brokers the cluster has. ``problem()`` is why writes wait now (None: they do not)."""

    def __init__(
        self, state: Callable[[], list[Partition]], brokers: Callable[[], int], min_insync: Mapping[str, int]
    ) -> None:
        self._state = state
        self._brokers = brokers
        self._min_insync = dict(min_insync)
        self._reason: str | None = None
        self._since = 0.0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, probe: ClusterProbe, min_insync: Mapping[str, int]) -> WriteWatch:
        """The watch of the topics ``probe`` asks about, as the cluster last told it."""
        return cls(lambda: [Partition(*p) for p in probe.partitions()], probe.brokers, min_insync)

    def problem(self) -> str | None:
        return self._reason

    def started(self) -> WriteWatch:
        """Log the start-up notes on the topics' replication, then check every second."""
        for note in durability_notes(self._state(), self._min_insync, self._brokers()):
            log.warning("%s", note)
        self._task = asyncio.create_task(self._run(), name="write-watch")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_CHECK_S)
            self.check()

    def check(self) -> None:
        reason = "; ".join(write_problems(self._state(), self._min_insync)) or None
        if reason is not None and self._reason is None:
            self._since = time.monotonic()
            log.warning("writes to Kafka wait: %s", reason)
        elif reason is None and self._reason is not None:
            log.info("writes to Kafka go on after %.1f s (%s)", time.monotonic() - self._since, self._reason)
        self._reason = reason
