"""Brokers lost under a steady load, on three Kafka brokers of the test's own (replication factor 3,
``min.insync.replicas`` 2): each test prints lost (always 0), duplicates and the time to recover (``pytest -s``;
bench/RESULTS.md keeps the figures). Skipped on Tansu and on one Kafka node (``chaos.three_brokers``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from daemon.kafka.clients import admin_client
from tests.helpers import DaemonProcess, client_options, eventually
from tests.integration.chaos import (
    AWAY_S,
    daemon_of,
    delivered_after,
    processes,
    report,
    settle,
    three_brokers,
    under_load,
)

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
        # The one broker left leads every partition with one in-sync replica of the two asked for. Until the daemon's
        # probe hears from it (seconds to tens of seconds on a loaded machine: aiokafka tries the dead brokers of its
        # metadata first) /readyz says there is no contact; then why writes wait.
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
