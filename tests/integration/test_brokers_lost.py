"""Brokers lost under a steady load, on three Kafka brokers of the test's own (replication factor 3,
``min.insync.replicas`` 2): each test prints lost (always 0), duplicates and the time to recover (``pytest -s``;
bench/RESULTS.md keeps the figures). Skipped on Tansu and on one Kafka node (``chaos.three_brokers``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from daemon.kafka.clients import admin_client
from tests.helpers import DaemonProcess, client_options, eventually
from tests.integration.chaos import (
    AWAY_S,
    PARTITIONS,
    Counting,
    Load,
    daemon_of,
    delivered_after,
    processes,
    report,
    settle,
    three_brokers,
    under_load,
)
from tests.integration.conftest import Setup
from tests.kafka import KafkaCluster

pytestmark = three_brokers
__all__ = ["processes"]  # a fixture


async def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = admin_client(client_options(bootstrap))
    await admin.start()
    try:
        found = await asyncio.wait_for(admin.list_consumer_group_offsets(group), 10)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


async def coordinator_of(bootstrap: str, group: str) -> int:
    """The broker that coordinates ``group`` now (FindCoordinator)."""
    admin = admin_client(client_options(bootstrap))
    await admin.start()
    try:
        return int(await asyncio.wait_for(admin.find_coordinator(group), 10))
    finally:
        await admin.close()


async def reasons_of(d: DaemonProcess, said: list[str]) -> None:
    """Every reason /readyz gives (``ready`` while it answers 200), each time it changes, until cancelled."""
    while True:
        try:
            status, body = await asyncio.wait_for(d.get_json("/readyz"), 5)
            reason = "ready" if status == 200 else str(body["reason"] if body else status)
        except (TimeoutError, ValueError, KeyError) as exc:  # a loaded machine: the answer late, or cut
            reason = f"no answer ({exc!r})"
        if not said or said[-1] != reason:
            said.append(reason)
        await asyncio.sleep(0.1)


async def reason_has(d: DaemonProcess, text: str) -> bool:
    status, body = await d.get_json("/readyz")
    return status == 503 and text in body["reason"]


async def test_two_brokers_away_writes_wait_commits_stop_nothing_is_lost_and_readyz_says_why(
    tmp_path: Path, processes: list[DaemonProcess]
) -> None:
    async with under_load(tmp_path) as (broker, s, receiver, load):
        d = await daemon_of(processes, s)
        began = time.monotonic()
        await eventually(lambda: len(receiver.seen) > 1000, 60)
        cluster = broker.cluster
        away = cluster.broker_ids[:2]
        for node in away:
            await cluster.kill(node)
        gone = time.monotonic()
        # The one broker left leads every partition with one in-sync replica of the two asked for, once the
        # controllers have fenced the two others (seconds): /readyz then says why writes wait (the probe asks every
        # broker at once, so the one left is heard meanwhile: contact is never lost).
        await eventually(lambda: reason_has(d, "fewer in-sync replicas than min.insync.replicas"), 120)
        status, body = await d.get_json("/readyz")
        assert status == 503 and "(NOT_ENOUGH_REPLICAS)" in body["reason"], body
        await asyncio.sleep(5)  # what was committed before the loss is all that is
        frozen = await group_offsets(broker.bootstrap, s.group, s.topic)
        await asyncio.sleep(max(1.0, AWAY_S - (time.monotonic() - gone)))
        assert await group_offsets(broker.bootstrap, s.group, s.topic) == frozen, "commits stopped"
        assert await reason_has(d, "(NOT_ENOUGH_REPLICAS)")  # still saying why, as long as it lasts
        await cluster.start(away[0])
        back = time.monotonic()
        recover_s = await delivered_after(receiver, load, back)
        await eventually(d.ready, 60)
        ready_s = time.monotonic() - back
        await cluster.start(away[1])
        await settle(receiver, load)
        lost = report("two brokers away", receiver, load, recover_s, time.monotonic() - began,
                      away_s=f"{back - gone:.0f}", ready_again_s=f"{ready_s:.1f}")  # fmt: skip
        assert lost == 0
        assert sum((await group_offsets(broker.bootstrap, s.group, s.topic)).values()) > sum(frozen.values())
        log = d.log()
        assert log.count("writes to Kafka wait:") == 1 and log.count("writes to Kafka go on after") == 1, log
        assert "Traceback" not in log


Fault = Callable[[KafkaCluster, Setup, Counting, Load], Awaitable[tuple[float, dict[str, object]]]]


async def under_fault(tmp_path: Path, processes: list[DaemonProcess], name: str, fault: Fault) -> None:
    """One daemon under the steady load, ``fault`` done to the cluster once deliveries flow (it returns the time to
    recover and what else to print), then every acknowledged event awaited: none lost."""
    async with under_load(tmp_path) as (broker, s, receiver, load):
        d = await daemon_of(processes, s)
        began = time.monotonic()
        await eventually(lambda: len(receiver.seen) > 1000, 60)
        recover_s, more = await fault(broker.cluster, s, receiver, load)
        await settle(receiver, load)
        assert report(name, receiver, load, recover_s, time.monotonic() - began, **more) == 0
        assert "Traceback" not in d.log()


async def in_sync(cluster: KafkaCluster, s: Setup) -> None:
    for topic in (s.topic, s.results):
        for p in range(PARTITIONS):
            await cluster.wait_in_sync(topic, p, timeout=120)


async def kill_leader_of(topic: str, cluster: KafkaCluster, s: Setup, receiver: Counting, load: Load) -> float:
    leader = await cluster.leader(topic, 0)
    await cluster.kill(leader)
    killed = time.monotonic()
    recover_s = await delivered_after(receiver, load, killed)
    await cluster.start(leader)
    await in_sync(cluster, s)
    return recover_s


async def test_the_leader_of_an_events_partition_killed(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    async def fault(cluster: KafkaCluster, s: Setup, receiver: Counting, load: Load) -> tuple[float, dict[str, object]]:
        return await kill_leader_of(s.topic, cluster, s, receiver, load), {}

    await under_fault(tmp_path, processes, "leader of an events partition killed", fault)


async def test_the_leader_of_a_results_partition_killed(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    async def fault(cluster: KafkaCluster, s: Setup, receiver: Counting, load: Load) -> tuple[float, dict[str, object]]:
        return await kill_leader_of(s.results, cluster, s, receiver, load), {}

    await under_fault(tmp_path, processes, "leader of a results partition killed", fault)


async def test_one_broker_away_and_back(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    async def fault(cluster: KafkaCluster, s: Setup, receiver: Counting, load: Load) -> tuple[float, dict[str, object]]:
        node = await cluster.leader(s.topic, 0)
        await cluster.kill(node)
        gone = time.monotonic()
        recover_s = await delivered_after(receiver, load, gone)  # two replicas of three: writes go on meanwhile
        await asyncio.sleep(max(0.0, AWAY_S - (time.monotonic() - gone)))
        await cluster.start(node)
        back = time.monotonic()
        await in_sync(cluster, s)
        return recover_s, {"away_s": f"{back - gone:.0f}", "in_sync_again_s": f"{time.monotonic() - back:.1f}"}

    await under_fault(tmp_path, processes, "one broker away and back", fault)


async def test_a_hung_leader_of_results_partitions_holds_only_their_results_and_readyz_names_it(
    tmp_path: Path, processes: list[DaemonProcess]
) -> None:
    """A broker hung (SIGSTOP: its sockets open, nothing answers) while it leads results partitions, under the load:
    the other partitions' results go on being written (one endpoint's results in each partition), the cluster is still
    in contact (two brokers of three answer its probe), ``/readyz`` names the partitions that wait and the broker that
    does not answer; once it is back nothing is lost. The produce timeout is 30 s here (10 s by default) so that the
    hung leader's partitions are seen waiting while the others go on: the writer used to wait for the first of them,
    every other partition's results behind it."""
    async with under_load(tmp_path, PARTITIONS, produce_timeout_ms=30_000) as (broker, s, receiver, load):
        d = await daemon_of(processes, s)
        began = time.monotonic()
        await eventually(lambda: len(receiver.seen) > 1000, 60)
        cluster = broker.cluster
        leaders = {p: await cluster.leader(s.results, p) for p in range(PARTITIONS)}
        coordinators = {await coordinator_of(broker.bootstrap, g) for g in (s.group, f"{s.group}.retry")}
        # A leader of results partitions that coordinates neither group (its commits and heartbeats go on).
        node = next((n for n in leaders.values() if n not in coordinators), leaders[0])
        held = sorted(p for p, n in leaders.items() if n == node)
        tps = [TopicPartition(s.results, p) for p, n in leaders.items() if n != node]
        consumer = AIOKafkaConsumer(**client_options(broker.bootstrap), request_timeout_ms=5000)
        await consumer.start()  # its metadata read before the hang: it asks the other partitions' leaders only
        try:
            before = await consumer.end_offsets(tps)
            cluster.pause(node)
            paused = time.monotonic()
            try:

                async def others_written() -> bool:
                    ends = await consumer.end_offsets(tps)
                    return all(ends[tp] >= before[tp] + 200 for tp in tps)

                await eventually(others_written, 25)  # the hung leader's partitions wait 30 s
                written_s = time.monotonic() - paused
                waiting = [f"{s.results}[{p}]" for p in held]
                await eventually(lambda: reason_has(d, f"broker {node} at "), 25)
                status, body = await d.get_json("/readyz")
                assert status == 503, body
                reason = body["reason"]
                assert "records for " in reason and "waiting" in reason and f"broker {node} at " in reason, reason
                named = re.findall(r"\S+\[\d+\]", reason.split(" waiting ")[0])
                assert named and set(named) <= set(waiting), (reason, waiting)  # the held ones, no other
                assert "no contact" not in reason
                await eventually(lambda: f"broker {node} at " in d.log(), 25)  # said once it is silent 5 s
            finally:
                cluster.resume(node)
        finally:
            await consumer.stop()
        resumed = time.monotonic()
        recover_s = await delivered_after(receiver, load, resumed)
        await settle(receiver, load)
        lost = report("a hung leader of results partitions", receiver, load, recover_s, time.monotonic() - began,
                      hung_s=f"{resumed - paused:.0f}", others_written_s=f"{written_s:.1f}")  # fmt: skip
        assert lost == 0
        log = d.log()
        assert "lost contact" not in log, log
        silent = re.findall(rf"broker {node} at \S+ has not answered for \d+ s \(the others answer\)", log)
        assert len(silent) == 1 and re.search(rf"broker {node} at \S+ answers again", log), log  # and once back
        assert "Traceback" not in log


async def test_a_rolling_restart_of_every_broker(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    async def fault(cluster: KafkaCluster, s: Setup, receiver: Counting, load: Load) -> tuple[float, dict[str, object]]:
        worst = 0.0
        for node in cluster.broker_ids:
            await cluster.stop(node)  # graceful: its leaderships move first
            stopped = time.monotonic()
            worst = max(worst, await delivered_after(receiver, load, stopped))
            await cluster.start(node)
            await in_sync(cluster, s)
        return worst, {"brokers": len(cluster.broker_ids)}

    await under_fault(tmp_path, processes, "rolling restart of every broker", fault)


async def test_the_active_controller_killed(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    async def fault(cluster: KafkaCluster, s: Setup, receiver: Counting, load: Load) -> tuple[float, dict[str, object]]:
        controller = await cluster.active_controller()
        await cluster.kill(controller)
        killed = time.monotonic()
        recover_s = await delivered_after(receiver, load, killed)
        elected = await cluster.active_controller(exclude={controller})
        await cluster.start(controller)
        return recover_s, {"new_controller": elected}

    await under_fault(tmp_path, processes, "active controller killed", fault)


async def test_the_group_coordinator_killed(tmp_path: Path, processes: list[DaemonProcess]) -> None:
    """kill -9 of the broker that coordinates the daemon's group: its offset commits fail or wait until another broker
    takes the group over (its partition of __consumer_offsets elects a leader), /readyz says so meanwhile, nothing is
    lost."""
    said: list[str] = []

    async def fault(cluster: KafkaCluster, s: Setup, receiver: Counting, load: Load) -> tuple[float, dict[str, object]]:
        coordinator = await coordinator_of(cluster.bootstrap, s.group)
        watching = asyncio.create_task(reasons_of(processes[0], said))
        try:
            await cluster.kill(coordinator)
            killed = time.monotonic()
            recover_s = await delivered_after(receiver, load, killed)

            async def moved() -> bool:
                try:
                    return await coordinator_of(cluster.bootstrap, s.group) != coordinator
                except (KafkaError, OSError, TimeoutError):  # the brokers left are still electing
                    return False

            await eventually(moved, 60)
            moved_s = time.monotonic() - killed
            await cluster.start(coordinator)
            await in_sync(cluster, s)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        return recover_s, {"coordinator": coordinator, "moved_s": f"{moved_s:.1f}"}

    await under_fault(tmp_path, processes, "group coordinator killed", fault)
    print("/readyz said meanwhile:", *said, sep="\n  ")
    assert said[0] == "ready" and said[-1] == "ready", said
