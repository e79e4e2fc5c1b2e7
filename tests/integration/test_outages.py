"""Kafka outages, seen and waited out by the real daemon process: a broker suspended (SIGSTOP) under load, a broker
that is not listening yet at start-up, SIGTERM while the cluster is gone, ``ping`` without a cluster.

Each test that suspends, stops or starts a broker runs its own (never the session's), of the session's kind: Tansu,
or a Kafka cluster whose every broker is suspended or stopped at once (WEBHOOK_ROUTER_TEST_KAFKA); they are skipped
against an outside cluster (WEBHOOK_ROUTER_TEST_BOOTSTRAP)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.tools.embedded import EmbeddedBroker, free_port
from tests.helpers import (
    SECRET,
    DaemonProcess,
    NotifySocket,
    Receiver,
    env_with,
    eventually,
    produce,
    read_topic,
    unique,
)
from tests.integration.conftest import Broker, Setup, needs_own_broker, own_broker, receiver, spawn
from tests.integration.test_signals import produce_keyed


def own_setup(broker: Broker, tmp_path: Path) -> Setup:
    return Setup(broker, unique("events"), unique("results"), unique("group"), tmp_path / "router.toml")


def clean(log: str) -> None:
    """What a user must never see in the daemon's log."""
    for bad in ("Traceback", "Unclosed AIOKafka", "Task exception was never retrieved", "CancelledError"):
        assert bad not in log, f"{bad!r} in the log:\n{log}"


async def readiness(d: DaemonProcess) -> tuple[int | None, Any]:
    return await d.get_json("/readyz")


@needs_own_broker
@pytest.mark.timeout(300)  # its own cluster's start, the 30 s outage, then the backlog and the results read back
async def test_a_broker_suspended_for_30_s_under_load_is_waited_out_and_nothing_is_lost(
    tmp_path: Path, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    total = 600
    async with own_broker(tmp_path) as broker:
        s = own_setup(broker, tmp_path)
        await broker.create_topics([s.topic], partitions=2)
        await broker.create_topics([s.results])
        r = await receiver(receivers, delay_s=0.05)  # about 80 deliveries a second: the load outlasts the outage start
        ep = {"id": "sink", "url": r.url, "secret": SECRET, "max_concurrency": 4}
        s.write(s.config([ep], [{"endpoint": "sink", "events": ["*"]}], contact_timeout_s=3))
        d = await spawn(daemons, s)
        await produce_keyed(broker.bootstrap, s.topic, total)
        await r.wait_for(50, within_s=30)

        lines_before = len(d.log().splitlines())
        broker.suspend()
        suspended = time.monotonic()
        await eventually(lambda: _not_ready(d), 15)
        status, body = await readiness(d)
        assert status == 503 and body["reason"].startswith(f"no contact with Kafka at {broker.bootstrap}"), body
        lag = await _lag(d, s.topic)
        assert lag > 0, "the lag gauge keeps the last known high watermarks during the outage"
        delivered_in_outage = len(r.requests)
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - suspended)))
        assert len(r.requests) > delivered_in_outage, "deliveries already fetched went on during the outage"
        broker.resume()
        resumed = time.monotonic()
        await produce(broker.bootstrap, s.topic, [json.dumps({"event": "after", "n": total}).encode()])
        await eventually(lambda: any(json.loads(req.body)["n"] == total for req in r.requests), 60)
        print(f"an event produced as the broker resumed was delivered {time.monotonic() - resumed:.2f} s later")
        await eventually(d.ready, 60)
        total += 1
        await r.wait_for(total, within_s=120)

        read: list[dict[str, Any]] = []

        def all_delivered(records: list[dict[str, Any]]) -> bool:
            read[:] = records
            done = {(rec["source_partition"], rec["source_offset"]) for rec in records if rec["status"] == "delivered"}
            return len(done) == total

        try:
            await read_topic(broker.bootstrap, s.results, all_delivered, within_s=120)
        except TimeoutError:  # which outcomes are missing, and what the results say of their events
            pytest.fail(_missing_outcomes(read, d.log()))
        seen = {json.loads(req.body)["n"] for req in r.requests}
        assert seen == set(range(total))
        outage_log = d.log().splitlines()[lines_before:]
        text = "\n".join(outage_log)
        assert text.count("lost contact with Kafka") == 1, text
        assert text.count("contact with Kafka at") == 2 and "is back after" in text, text
        # The group's own work is not the outage's noise: sessions that expired meanwhile rejoin (partitions revoked
        # and assigned, a retry tier's partition without an offset yet said once). Brokers of a cluster come back one
        # by one on a busy machine: each may be said silent, then answering, once (20 lines in a CI run at load 7,
        # 12 of them the outage's).
        membership = ("partitions revoked", "partitions assigned", "has no offset for it")
        said = [line for line in outage_log if not any(m in line for m in membership)]
        bound = 12 + 2 * (len(broker.bootstrap.split(",")) - 1)
        assert len(said) <= bound, f"{len(said)} log lines for one outage (at most {bound}):\n{text}"
        clean(d.log())
        d.signal(signal.SIGTERM)
        assert await d.wait(30) == 0


def _missing_outcomes(records: list[dict[str, Any]], log: str) -> str:
    by_event: dict[tuple[int, int], list[str]] = {}
    ends: dict[int, int] = {}  # partition -> the highest offset with a record
    for rec in records:
        partition, offset = rec["source_partition"], rec["source_offset"]
        by_event.setdefault((partition, offset), []).append(rec["status"])
        ends[partition] = max(ends.get(partition, offset), offset)
    missing = sorted(where for where, said in by_event.items() if "delivered" not in said)
    absent = [(p, o) for p, end in ends.items() for o in range(end) if (p, o) not in by_event]
    lines = [line for line in log.splitlines() if "results" in line or "commit" in line][-30:]
    return (
        f"{len(records)} results records; events with no 'delivered' outcome: "
        f"{[(w, by_event[w]) for w in missing[:20]]} ({len(missing)} in all); the highest offset seen by partition: "
        f"{ends}, offsets below it with no record at all: {absent[:20]} ({len(absent)}); the daemon's last log lines "
        "of results and commits:\n" + "\n".join(lines)
    )


async def _not_ready(d: DaemonProcess) -> bool:
    return (await readiness(d))[0] == 503


async def _lag(d: DaemonProcess, topic: str) -> float:
    lag = 0.0
    for line in (await d.metrics()).splitlines():
        if line.startswith("webhook_router_consumer_lag_records{") and f'topic="{topic}"' in line:
            lag += float(line.rsplit(" ", 1)[1])
    return lag


@needs_own_broker
async def test_the_daemon_started_before_its_broker_listens_becomes_ready_when_it_does(
    tmp_path: Path, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    notify = NotifySocket()
    notify.follow()  # every status as it comes: the socket's queue holds ten, and each try to connect sends one
    try:
        async with own_broker(tmp_path, start=False) as broker:
            s = own_setup(broker, tmp_path)
            r = await receiver(receivers)
            s.write(s.config([{"id": "a", "url": r.url, "secret": SECRET}], [{"endpoint": "a", "events": ["*"]}]))
            d = await spawn(daemons, s, wait_ready=False, env=env_with(NOTIFY_SOCKET=notify.path))
            await eventually(lambda: d.get_status("/healthz"), 15)
            assert await d.get_status("/healthz") == 200
            await asyncio.sleep(3)  # a few attempts against nothing
            status, body = await readiness(d)
            assert status == 503 and body["reason"].startswith(f"waiting for Kafka at {broker.bootstrap} ("), body
            assert any(m.startswith(f"STATUS=waiting for Kafka at {broker.bootstrap}") for m in notify.read())
            assert "READY=1" not in notify.messages

            await broker.start()
            await broker.create_topics([s.topic])
            await eventually(d.ready, 30)
            assert "READY=1" in notify.read()
            await produce_keyed(broker.bootstrap, s.topic, 1)
            await r.wait_for(1)
            log = d.log()
            clean(log)
            assert log.count(f"Kafka at {broker.bootstrap}: ") <= 2, "the attempts' lines are throttled"
            assert re.search(r"Kafka at \S+ reached after \d+ attempts", log), log
            d.signal(signal.SIGTERM)
            assert await d.wait(30) == 0
    finally:
        notify.close()


@needs_own_broker
async def test_sigterm_before_any_broker_answers_exits_zero_at_once(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    s = own_setup(EmbeddedBroker(port=free_port()), tmp_path)  # never started: nothing listens there
    s.write(s.config([], []))
    d = await spawn(daemons, s, wait_ready=False)
    await eventually(lambda: _not_ready(d), 15)
    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    assert await d.wait(10) == 0
    assert time.monotonic() - sent < 8  # at once: well under the 10 s drain, with room for a busy machine
    clean(d.log())
    assert "stopped before start-up was complete" in d.log()


@needs_own_broker
@pytest.mark.parametrize("outage", ["suspended", "stopped"])
async def test_sigterm_during_an_outage_exits_zero_within_the_drain_deadline(
    tmp_path: Path, receivers: list[Receiver], daemons: list[DaemonProcess], outage: str
) -> None:
    drain_s = 5
    async with own_broker(tmp_path) as broker:
        s = own_setup(broker, tmp_path)
        await broker.create_topics([s.topic])
        await broker.create_topics([s.results])
        hold = asyncio.Event()
        r = await receiver(receivers, hold=hold)
        ep = {"id": "sink", "url": r.url, "secret": SECRET, "max_concurrency": 4}
        config = s.config([ep], [{"endpoint": "sink", "events": ["*"]}], contact_timeout_s=2)
        config["delivery"]["drain_timeout_s"] = drain_s
        s.write(config)
        d = await spawn(daemons, s)
        await produce_keyed(broker.bootstrap, s.topic, 20)
        await r.wait_for(4)  # four deliveries under way, sixteen queued

        if outage == "suspended":
            broker.suspend()
        else:
            await broker.stop()
        await eventually(lambda: _not_ready(d), 15)
        hold.set()  # the deliveries under way finish; their results cannot be written
        await r.wait_for(20)

        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        assert await d.wait(drain_s + 10) == 0
        took = time.monotonic() - sent
        assert took < drain_s + 6, f"took {took:.1f} s with a {drain_s} s drain deadline"
        log = d.log()
        clean(log)
        assert f"not committed, so read and delivered again after a restart (at least once): {s.topic}[0]" in log
        assert "shutdown in" in log


async def test_ping_without_a_reachable_cluster_says_so_and_exits_1(
    setup: Setup, receivers: list[Receiver], tmp_path: Path
) -> None:
    r = await receiver(receivers)
    config = setup.config([{"id": "a", "url": r.url, "secret": SECRET}], [{"endpoint": "a", "events": ["*"]}])
    nowhere = f"127.0.0.1:{free_port()}"
    config["kafka"]["bootstrap_servers"] = nowhere
    path = setup.write(config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "ping", "--config", str(path), "a",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert out.decode().startswith("delivered 200"), out
    message = err.decode()
    assert f"not recorded on {setup.results}: Kafka at {nowhere} (KafkaConnectionError" in message, message
    clean(message)
    assert len(r.requests) == 1
