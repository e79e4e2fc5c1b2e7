"""Memory in flight is bounded in bytes: large events to a slow endpoint, with the daemon as a real process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from daemon.core.config import KafkaConfig
from daemon.core.model import decode_retry
from tests.helpers import SECRET, DaemonProcess, Receiver, eventually, produce, read_raw, read_topic
from tests.integration.conftest import Setup, receiver, running, spawn

MiB = 1024 * 1024


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("bound", [64 * MiB, None])
async def test_600_events_of_1_mib_to_a_slow_endpoint_stay_under_the_byte_bound(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess], bound: int | None
) -> None:
    hold = asyncio.Event()
    r = await receiver(receivers, hold=hold)
    ep = {"id": "slow", "url": r.url, "secret": SECRET, "timeout_s": 120}
    kafka = {"max_in_flight_bytes": bound} if bound else {}
    bound = bound or next(f.default for f in msgspec.structs.fields(KafkaConfig) if f.name == "max_in_flight_bytes")
    setup.write(setup.config([ep], [{"endpoint": "slow", "events": ["*"]}], **kafka))
    d = await spawn(daemons, setup)
    pad = "x" * (1_000_000 - 60)
    events = [json.dumps({"event": "lead.created", "n": n, "pad": pad}).encode() for n in range(600)]
    for start in range(0, 600, 50):
        await produce(setup.broker.bootstrap, setup.topic, events[start : start + 50])
    await eventually(lambda: d.metric('webhook_router_fetch_paused{consumer="events"}'), 60)
    await asyncio.sleep(2.0)  # whatever it still reads, it reads now
    in_flight = await d.metric('webhook_router_events_in_flight_bytes{consumer="events"}')
    assert bound <= in_flight <= bound + 8 * MiB  # paused at the bound, within what one fetch returns of it
    held = await d.metric('webhook_router_events_in_flight{consumer="events"}')
    sizes = [len(e) for e in events]
    assert held * min(sizes) <= in_flight <= held * max(sizes)  # counted apart from the retries consumer's
    assert d.proc is not None
    held_peak = _peak_rss(d.proc.pid)
    hold.set()

    def all_delivered(records: list[dict[str, Any]]) -> bool:
        return sum(1 for rec in records if rec["status"] == "delivered") >= 600

    await read_topic(setup.broker.bootstrap, setup.results, all_delivered, within_s=120)
    peak = _peak_rss(d.proc.pid)
    print(f"peak RSS while held: {held_peak / MiB:.0f} MiB; after 600 MiB delivered: {peak / MiB:.0f} MiB")
    assert peak < 1.5 * bound + 100 * MiB  # the bound, copies on the way out, the process; the default fits 512 MiB
    assert len({json.loads(req.body)["n"] for req in r.requests}) == 600


async def test_an_event_too_large_for_its_retry_record_is_read_back_when_due(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers, statuses=[500, 200])
    ep = {"id": "x", "url": r.url, "secret": SECRET, "retry": {"policy": "schedule", "delays_s": [1]}}
    doc = setup.config([ep], [{"endpoint": "x", "events": ["*"]}])
    doc["retry"]["max_record_bytes"] = 10_000
    value = json.dumps({"event": "lead.created", "pad": "y" * 50_000}).encode()
    async with running(setup.write(doc)):
        await produce(setup.broker.bootstrap, setup.topic, [value])
        records = await read_topic(
            setup.broker.bootstrap, setup.results, lambda recs: any(rec["status"] == "delivered" for rec in recs)
        )
    assert [(rec["status"], rec["attempt"]) for rec in records] == [("failed", 1), ("delivered", 2)]
    assert [req.body for req in r.requests] == [value, value]
    retried = [v for t in ("0.5", "1") for v in await read_raw(setup.broker.bootstrap, f"{setup.prefix}.retry.{t}s")]
    assert retried and all(decode_retry(v).value_omitted and len(v) < 10_000 for v in retried)
