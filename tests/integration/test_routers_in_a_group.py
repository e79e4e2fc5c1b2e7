"""Three router instances in one consumer group under the steady load of ``chaos`` (``WEBHOOK_ROUTER_CHAOS_RATE``
events a second, 500 by default: what this two-core machine holds with six Kafka JVMs and three or four daemons; the
issue's 2,000/s saturates it) on three Kafka brokers of the test's own (replication factor 3,
``min.insync.replicas`` 2): one instance killed with SIGKILL, a fourth added, a rolling restart of all three (SIGTERM,
its exit awaited, started again). Each test prints lost (asserted 0), duplicates, the rebalance time and the time to
recover (``pytest -s``; bench/RESULTS.md keeps the figures). Skipped on Tansu and on one Kafka node
(``chaos.three_brokers``).

The rebalance time is read from the instances' own logs: from the fault (the kill, the new process started, the
SIGTERM or the start again) until every partition of the events topic is assigned to a live instance, each live one
having been assigned after the fault (``events: partitions assigned``); ``stopped_s`` is the part of it from the first
revoke (its drain beginning) to the last assignment, while no instance consumed (aiokafka's rebalances are eager: every
member gives up all its partitions, drains and commits them, before any is assigned again; docs/kafka.md, 'Several
instances'); ``moved``, the partitions that changed hands. The time to recover runs from the fault until, from every
partition, an event produced after the rebalance began was delivered (in the rolling restart, from the last start:
the next instance is restarted once the last one is ready, a backlog or not)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.helpers import DaemonProcess, eventually
from tests.integration.chaos import (
    PARTITIONS,
    Counting,
    Load,
    daemon_of,
    delivered_from_every_partition,
    processes,
    report,
    settle,
    three_brokers,
    under_load,
)
from tests.integration.conftest import Setup

pytestmark = three_brokers
__all__ = ["processes"]  # a fixture

MEMBERS = 3
_CHANGE = re.compile(  # the log's time (text format), assigned or revoked, the partitions' names, the drain's time
    r"^(\S+ \S+) INFO daemon\.kafka\.consume: events: partitions (assigned|revoked): (.*?)"
    r"(?: \(drained and committed in ([\d.]+) s\))?$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Change:
    at: float  # monotonic
    assigned: bool  # else revoked
    partitions: frozenset[int]


def changes(d: DaemonProcess, topic: str) -> list[Change]:
    """The events consumer's assignments and revocations in ``d``'s log, with the test's monotonic clock."""
    offset = time.time() - time.monotonic()
    name = re.compile(rf"{re.escape(topic)}\[(\d+)\]")
    found = []
    for when, kind, names, drained_s in _CHANGE.findall(d.log()):  # a revoke is when its drain began
        at = datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f").timestamp() - offset - float(drained_s or 0)
        found.append(Change(at, kind == "assigned", frozenset(int(p) for p in name.findall(names))))
    return found


@dataclass(frozen=True)
class Rebalance:
    took_s: float  # from the fault until every partition was assigned to a live instance
    stopped_s: float  # from the first revoke after the fault (its drain beginning) until then
    moved: int  # partitions that instance holds now and did not before the fault
    recovered_s: float = 0.0  # from the fault until, from every partition, an event produced after the first revoke


async def rebalanced(live: list[DaemonProcess], topic: str, moment: float, within_s: float = 120) -> Rebalance:
    """Wait until each of ``live`` was last assigned partitions after ``moment`` (monotonic) and together they hold
    every partition of ``topic``, each once."""
    found: list[Rebalance] = []

    def done() -> bool:
        seen_by = [changes(d, topic) for d in live]
        after = [[c for c in seen if c.at >= moment] for seen in seen_by]
        if not all(seen and seen[-1].assigned for seen in after):
            return False
        held = [seen[-1].partitions for seen in after]
        if sum(len(p) for p in held) != PARTITIONS or frozenset().union(*held) != frozenset(range(PARTITIONS)):
            return False
        end = max(seen[-1].at for seen in after)
        revokes = [c.at for seen in after for c in seen if not c.assigned]
        before = [
            next((c.partitions for c in reversed(seen) if c.at < moment and c.assigned), frozenset())
            for seen in seen_by
        ]
        moved = sum(len(now - then) for now, then in zip(held, before, strict=True))
        found.append(Rebalance(end - moment, end - min(revokes, default=end), moved))
        return True

    await eventually(done, within_s)
    return found[-1]


@contextlib.asynccontextmanager
async def group_under_load(
    tmp_path: Path, pool: list[DaemonProcess]
) -> AsyncIterator[tuple[Setup, Counting, Load, list[DaemonProcess]]]:
    """Three instances of one router in one group, under the load, the partitions shared out between them and
    deliveries flowing."""
    async with under_load(tmp_path) as (_broker, s, receiver, load):
        began = time.monotonic()
        members = [await daemon_of(pool, s, n) for n in range(MEMBERS)]
        await rebalanced(members, s.topic, began)
        await eventually(lambda: len(receiver.seen) > 1000, 60)
        yield s, receiver, load, members
        for d in members:
            assert "Traceback" not in d.log(), d.log()


# What an instance logs when it leaves events to be delivered again: a drain that ran out of time (on revoke, at the
# exit), a commit that failed or was not made.
_AGAIN = ("still unfinished after", "drained=False", "offset commit failed", "final offset commit")


def nothing_twice_or_said_why(receiver: Counting, members: list[DaemonProcess]) -> None:
    """A rebalance of instances that leave with SIGTERM or join delivers nothing twice (each member drains and commits
    what it gives up), unless an instance said why (at least once: a drain or a commit that could not finish)."""
    said = [line for d in members for line in d.log().splitlines() if any(a in line for a in _AGAIN)]
    assert receiver.duplicates == 0 or said, f"{receiver.duplicates} delivered twice, no instance said why"


async def recovered(rebalance: Rebalance, moment: float, receiver: Counting, load: Load) -> Rebalance:
    """``rebalance`` (of a fault at ``moment``) once every partition delivers again (``recovered_s``)."""
    began = rebalance.took_s - rebalance.stopped_s  # after the fault
    recovered_s = began + await delivered_from_every_partition(receiver, load, moment + began)
    return dataclasses.replace(rebalance, recovered_s=recovered_s)


async def after(moment: float, live: list[DaemonProcess], s: Setup, receiver: Counting, load: Load) -> Rebalance:
    """The rebalance that followed a fault at ``moment``, once every partition delivers again."""
    return await recovered(await rebalanced(live, s.topic, moment), moment, receiver, load)


async def none_lost(name: str, receiver: Counting, load: Load, rebalances: list[Rebalance], before: int) -> None:
    """Wait for every acknowledged event, print the figures (the worst time to recover of ``rebalances``), assert
    that none was lost."""
    await settle(receiver, load)
    lost = report(name, receiver, load, max(r.recovered_s for r in rebalances), time.monotonic() - load.began,
                  duplicates_before=before, rebalance_s="/".join(f"{r.took_s:.1f}" for r in rebalances),
                  stopped_s="/".join(f"{r.stopped_s:.1f}" for r in rebalances),
                  moved="/".join(str(r.moved) for r in rebalances))  # fmt: skip
    assert lost == 0


async def test_one_of_three_instances_killed(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    async with group_under_load(tmp_path, processes) as (s, receiver, load, members):
        before = receiver.duplicates
        killed = members.pop(1)
        killed.signal(signal.SIGKILL)
        await killed.wait()
        rebalance = await after(time.monotonic(), members, s, receiver, load)
        await none_lost("one of three instances killed", receiver, load, [rebalance], before)


async def test_a_fourth_instance_added(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    async with group_under_load(tmp_path, processes) as (s, receiver, load, members):
        before, moment = receiver.duplicates, time.monotonic()
        members.append(await daemon_of(processes, s, MEMBERS))
        rebalance = await after(moment, members, s, receiver, load)
        await none_lost("a fourth instance added", receiver, load, [rebalance], before)
        nothing_twice_or_said_why(receiver, members)


async def test_a_rolling_restart_of_three_instances(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    """Each instance in turn, as a deployment does it: SIGTERM (it drains, commits and leaves the group: exit 0), the
    other two take its partitions, then it starts again, is ready (a member of the group) and gets its share back;
    the next one is restarted at once. The time to recover is counted from the last start."""
    async with group_under_load(tmp_path, processes) as (s, receiver, load, members):
        before = receiver.duplicates
        rebalances: list[Rebalance] = []
        for d in list(members):
            moment = time.monotonic()
            d.signal(signal.SIGTERM)
            assert await d.wait() == 0
            rebalances.append(await rebalanced([m for m in members if m is not d], s.topic, moment))
            moment = time.monotonic()
            await d.start()
            rebalances.append(await rebalanced(members, s.topic, moment))
        rebalances[-1] = await recovered(rebalances[-1], moment, receiver, load)
        await none_lost("a rolling restart of three instances", receiver, load, rebalances, before)
        nothing_twice_or_said_why(receiver, members)
