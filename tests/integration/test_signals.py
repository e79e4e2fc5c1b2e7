"""The real daemon process under signals: SIGHUP reloads, SIGKILL loses nothing, SIGTERM drains and commits."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest

from tests.helpers import (
    SECRET,
    DaemonProcess,
    Receiver,
    client_options,
    committed,
    eventually,
    produce,
    read_topic,
)
from tests.integration.conftest import Setup, receiver, spawn

pytestmark = pytest.mark.tansu_smoke  # also run against Tansu in CI (make smoke-tansu)


def _event(n: int, event: str = "lead.created") -> bytes:
    return json.dumps({"event": event, "n": n}).encode()


async def _reloads(d: DaemonProcess, result: str) -> float:
    return await d.metric(f'webhook_router_config_reloads_total{{result="{result}"}}')


async def test_sighup_adds_a_subscription_and_survives_a_broken_config(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    a, b = await receiver(receivers), await receiver(receivers)
    endpoints = [{"id": "a", "url": a.url, "secret": SECRET}, {"id": "b", "url": b.url, "secret": SECRET}]
    config = setup.config(endpoints, [{"endpoint": "a", "events": ["lead.*"]}])
    setup.write(config)
    d = await spawn(daemons, setup)
    bootstrap = setup.broker.bootstrap

    await produce(bootstrap, setup.topic, [_event(0)])
    await a.wait_for(1)
    assert b.requests == []

    config["subscriptions"].append({"endpoint": "b", "events": ["lead.created"]})
    setup.write(config)
    d.signal(signal.SIGHUP)
    await eventually(lambda: _reloads(d, "ok"), 10)
    await produce(bootstrap, setup.topic, [_event(1)])
    await a.wait_for(2)
    await b.wait_for(1)
    assert json.loads(b.requests[0].body)["n"] == 1

    broken: dict[str, Any] = json.loads(json.dumps(config))
    broken["endpoints"][1]["timeout_s"] = 500
    broken["subscriptions"] = [{"endpoint": "a", "events": ["nothing.matches"]}]
    setup.write(broken)
    d.signal(signal.SIGHUP)
    await eventually(lambda: _reloads(d, "error"), 10)
    assert d.alive()
    await produce(bootstrap, setup.topic, [_event(2)])
    await a.wait_for(3)  # still delivering under the config it had
    await b.wait_for(2)
    assert "endpoints[1].timeout_s: must be <= 120" in d.log()
    assert await _reloads(d, "ok") == 1

    d.signal(signal.SIGTERM)
    assert await d.wait(30) == 0


@pytest.mark.parametrize("setup", [3], indirect=True)
async def test_sigkill_mid_run_then_restart_loses_nothing(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    total = 2000
    r = await receiver(receivers, delay_s=0.002)
    ep = {"id": "sink", "url": r.url, "secret": SECRET, "max_concurrency": 16}
    setup.write(setup.config([ep], [{"endpoint": "sink", "events": ["*"]}], max_in_flight_events=200))
    bootstrap = setup.broker.bootstrap
    await produce_keyed(bootstrap, setup.topic, total)

    first = await spawn(daemons, setup)
    await r.wait_for(total // 4, within_s=60)
    await first.kill()  # SIGKILL: no drain, no flush, no commit
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    seen_before_restart = len(r.requests)
    assert seen_before_restart < total

    await spawn(daemons, setup)

    def delivered(records: list[dict[str, Any]]) -> bool:
        return len({rec["delivery_id"] for rec in records if rec["status"] == "delivered"}) >= total

    records = await read_topic(bootstrap, setup.results, delivered, within_s=120)
    got = {(rec["source_partition"], rec["source_offset"]) for rec in records if rec["status"] == "delivered"}
    assert len(got) == total
    assert {json.loads(req.body)["n"] for req in r.requests} == set(range(total))


async def produce_keyed(bootstrap: str, topic: str, total: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_options(bootstrap), enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, _event(i), key=str(i).encode()) for i in range(total)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@pytest.mark.parametrize("setup", [2], indirect=True)
async def test_sigterm_under_load_drains_commits_and_exits_zero(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    total = 3000
    r = await receiver(receivers, delay_s=0.01)
    ep = {"id": "sink", "url": r.url, "secret": SECRET, "max_concurrency": 8}
    config = setup.config([ep], [{"endpoint": "sink", "events": ["*"]}], max_in_flight_events=500)
    config["delivery"]["drain_timeout_s"] = 5
    setup.write(config)
    bootstrap = setup.broker.bootstrap
    await produce_keyed(bootstrap, setup.topic, total)
    d = await spawn(daemons, setup)
    await r.wait_for(300, within_s=60)

    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    code = await d.wait(30)
    took = time.monotonic() - sent
    assert code == 0, d.log()
    assert took < 5 + 5, f"took {took:.1f} s with a 5 s drain deadline"
    assert "shutdown in" in d.log()

    offsets = await committed(bootstrap, setup.group, setup.topic, partitions=2)
    assert sum(o or 0 for o in offsets.values()) >= 300, offsets
    # Every event below a committed offset has its outcome on the results topic.
    need = {(p, o) for p, c in offsets.items() for o in range(c or 0)}

    def covered(records: list[dict[str, Any]]) -> bool:
        return need <= {(rec["source_partition"], rec["source_offset"]) for rec in records}

    await read_topic(bootstrap, setup.results, covered, within_s=30)
    assert sum(c or 0 for c in offsets.values()) < total  # it stopped mid-stream, not after everything
