"""Durable retries, dead letters and endpoint health against the real broker, delays shortened by config.

Spacing is measured at the receiver: a retry is never sent before it is due, and at most
max(1 s, 5 % of its delay) after (plus the request's own time).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from typing import Any

import aiohttp
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from daemon.kafka.clients import admin_client
from tests.helpers import ADMIN_TOKEN, SECRET, DaemonProcess, Receiver, client_options, eventually, produce, read_topic
from tests.integration.conftest import BROKER_KIND, Setup, parts, receiver, running, spawn

LATE = 1.0  # max(1 s, 5 % of the delay): every delay here is under 20 s
# The request's own time, the clocks of two processes and a busy 2-core machine (the broker, the daemon and the
# test share it): "never early" is exact, "not late" keeps this margin.
SLACK = 1.5


def _ev(n: int, event: str = "lead.created") -> bytes:
    return json.dumps({"event": event, "n": n}).encode()


def _gaps(r: Receiver) -> list[float]:
    times = [req.at for req in r.requests]
    return [b - a for a, b in itertools.pairwise(times)]


def _assert_spacing(r: Receiver, delays: list[float]) -> None:
    gaps = _gaps(r)
    assert len(gaps) == len(delays), gaps
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay <= gap <= delay + LATE + SLACK, (gaps, delays)


def _final(records: list[dict[str, Any]]) -> bool:
    return any(rec["status"] in ("delivered", "dead_lettered") for rec in records)


async def _run(setup: Setup, endpoints: list[dict[str, Any]], events: list[bytes], until: Any,
               subs: list[dict[str, Any]] | None = None, within_s: float = 40) -> list[dict[str, Any]]:  # fmt: skip
    subs = subs or [{"endpoint": e["id"], "events": ["*"]} for e in endpoints]
    path = setup.write(setup.config(endpoints, subs))
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, events)
        return await read_topic(setup.broker.bootstrap, setup.results, until, within_s=within_s)


async def test_schedule_policy_attempts_and_spacing_then_dead_letter(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, status=500)
    ep = {"id": "lt", "url": r.url, "secret": SECRET, "retry": {"policy": "schedule", "delays_s": [1, 2, 4]}}
    records = await _run(setup, [ep], [_ev(1)], _final)
    assert [rec["status"] for rec in records] == ["failed", "failed", "failed", "dead_lettered"]
    assert [rec["attempt"] for rec in records] == [1, 2, 3, 4]
    assert all(rec["next_attempt_at"] for rec in records[:3]) and records[3]["next_attempt_at"] is None
    assert len({rec["delivery_id"] for rec in records}) == 1
    assert len({req.headers["webhook-id"] for req in r.requests}) == 1  # the same message id on every attempt
    _assert_spacing(r, [1, 2, 4])
    (letter,) = await read_topic(setup.broker.bootstrap, f"{setup.prefix}.dead-letter", lambda recs: len(recs) >= 1)
    assert letter["reason"] == "no attempts left"
    assert [a["attempt"] for a in letter["attempts"]] == [1, 2, 3, 4]
    assert [a["http_status"] for a in letter["attempts"]] == [500] * 4
    assert letter["event"] == {"event": "lead.created", "n": 1}
    assert (letter["source_topic"], letter["source_offset"]) == (setup.topic, 0)


async def test_agora_once_for_live_events_with_redelivery_of_id(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, status=503)
    ep = {"id": "9", "url": r.url, "profile": "agora", "secret": "s", "retry": {"policy": "once", "delays_s": [1]}}
    records = await _run(setup, [ep], [_ev(1)], _final)
    assert [rec["status"] for rec in records] == ["failed", "dead_lettered"]
    first, second = (req.headers["X-Agora-Delivery"] for req in r.requests)
    assert first.startswith("9-1-") and second.startswith("9-2-")
    assert records[0]["sent_id"] == first and records[0]["redelivery_of_id"] is None
    assert records[1]["sent_id"] == second
    assert records[1]["redelivery_of_id"] == records[0]["attempt_id"] != records[1]["attempt_id"]
    _assert_spacing(r, [1])


async def test_none_policy_one_attempt(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, status=500)
    ep = {"id": "cc", "url": r.url, "profile": "convocore", "secret": "w"}
    records = await _run(setup, [ep], [_ev(1, "message_received")], _final)
    await asyncio.sleep(1.5)
    assert [rec["status"] for rec in records] == ["dead_lettered"]
    assert len(r.requests) == 1


async def test_exponential_policy(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, statuses=[502, 504, 200])
    retry = {"policy": "exponential", "retries": 3, "base_s": 1, "max_s": 60, "jitter": 0}
    records = await _run(setup, [{"id": "x", "url": r.url, "secret": SECRET, "retry": retry}], [_ev(1)], _final)
    assert [rec["status"] for rec in records] == ["failed", "failed", "delivered"]
    _assert_spacing(r, [1, 2])


async def test_retry_after_is_honoured(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, statuses=[429, 200], retry_after="3")
    ep = {"id": "x", "url": r.url, "secret": SECRET, "retry": {"policy": "schedule", "delays_s": [1]}}
    records = await _run(setup, [ep], [_ev(1)], _final)
    assert records[0]["retry_after_s"] == 3
    assert [rec["status"] for rec in records] == ["failed", "delivered"]
    _assert_spacing(r, [3])


async def test_final_4xx_is_not_retried_and_410_pauses_the_endpoint(setup: Setup, receivers: list[Receiver]) -> None:
    bad, gone = await receiver(receivers, status=400), await receiver(receivers, status=410)
    retry = {"policy": "schedule", "delays_s": [1]}
    endpoints = [
        {"id": "bad", "url": bad.url, "secret": SECRET, "retry": retry},
        {"id": "gone", "url": gone.url, "secret": SECRET, "retry": retry},
    ]

    def settled(records: list[dict[str, Any]]) -> bool:
        return sum(rec["status"] in ("dead_lettered", "skipped_paused") for rec in records) >= 4

    path = setup.write(setup.config(endpoints, [{"endpoint": e["id"], "events": ["*"]} for e in endpoints]))
    async with running(path) as app:
        await produce(setup.broker.bootstrap, setup.topic, [_ev(1)])
        await gone.wait_for(1)
        await asyncio.sleep(0.5)
        await produce(setup.broker.bootstrap, setup.topic, [_ev(2)])
        records = await read_topic(setup.broker.bootstrap, setup.results, settled)
        assert app.metrics.endpoints_paused.labels("gone")._value.get() == 1
    by = {(rec["endpoint_id"], rec["status"]) for rec in records}
    assert ("bad", "dead_lettered") in by and len(bad.requests) == 2  # each event once, never retried
    assert ("gone", "endpoint_paused") in by
    assert ("gone", "skipped_paused") in by
    assert len(gone.requests) == 1


async def test_pause_after_n_failures_then_resume_by_admin_api(
    setup: Setup, receivers: list[Receiver], monkeypatch: Any
) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    r = await receiver(receivers, status=500)
    ep = {
        "id": "crm",
        "url": r.url,
        "profile": "crm",
        "secret": "wh_1",
        "pause_after_failures": 3,
        "max_concurrency": 1,
    }
    doc = setup.config([ep], [{"endpoint": "crm", "events": ["lead.*"]}])
    doc["admin"]["token_env"] = "ROUTER_ADMIN_TOKEN"
    path = setup.write(doc)
    base = f"http://127.0.0.1:{setup.admin_port}"
    async with running(path), aiohttp.ClientSession() as http:
        await produce(setup.broker.bootstrap, setup.topic, [_ev(i, "lead.update") for i in range(5)])
        records = await read_topic(
            setup.broker.bootstrap, setup.results, lambda recs: sum(x["status"] == "skipped_paused" for x in recs) >= 2
        )
        assert len(r.requests) == 3
        async with http.get(f"{base}/endpoints") as resp:
            assert resp.status == 401
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(f"{base}/endpoints", headers=auth) as resp:
            (info,) = (await resp.json())["endpoints"]
        assert (info["id"], info["paused"], info["consecutive_failures"]) == ("crm", True, 3)
        assert info["reason"] == "failures: 3 consecutive failed deliveries"
        r.status = 200
        async with http.post(f"{base}/endpoints/crm/resume", headers=auth) as resp:
            assert (resp.status, (await resp.json())["changed"]) == (200, True)
        await produce(setup.broker.bootstrap, setup.topic, [_ev(9, "lead.update")])
        await r.wait_for(4)
    statuses = [rec["status"] for rec in records if rec["endpoint_id"] == "crm"]
    assert statuses.count("dead_lettered") == 3 and statuses.count("endpoint_paused") == 1


async def test_restart_with_retries_pending_loses_none_and_sends_none_early(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers, statuses=[500, 500, 500, 200])
    ep = {"id": "x", "url": r.url, "secret": SECRET, "retry": {"policy": "schedule", "delays_s": [6]}}
    setup.write(setup.config([ep], [{"endpoint": "x", "events": ["*"]}]))
    first = await spawn(daemons, setup)
    await produce(setup.broker.bootstrap, setup.topic, [_ev(i) for i in range(3)])
    await r.wait_for(3)
    await asyncio.sleep(1.0)  # the retry records are written; their attempts are due 6 s after the first ones
    first.signal(signal.SIGTERM)
    assert await first.wait(30) == 0
    second = await spawn(daemons, setup)
    ready_at = time.time()
    await r.wait_for(6, within_s=30)
    await asyncio.sleep(1.0)
    assert len(r.requests) == 6  # each retried exactly once: none lost, none twice
    by_n: dict[int, list[float]] = {}
    for req in r.requests:
        by_n.setdefault(json.loads(req.body)["n"], []).append(req.at)
    for first_at, retry_at in by_n.values():
        assert retry_at - first_at >= 6  # never early
        # Not late: due 6 s after the first attempt, or as soon as the second daemon is ready when it starts later.
        assert retry_at <= max(first_at + 6, ready_at) + LATE + SLACK
    second.signal(signal.SIGTERM)
    assert await second.wait(30) == 0


async def test_a_dead_endpoint_does_not_hold_up_a_healthy_one(setup: Setup, receivers: list[Receiver]) -> None:
    hold = asyncio.Event()  # never set: the dead endpoint never answers
    dead, healthy = await receiver(receivers, hold=hold), await receiver(receivers)
    endpoints = [
        {"id": "dead", "url": dead.url, "secret": SECRET, "timeout_s": 60, "max_concurrency": 2, "queue_size": 10},
        {"id": "healthy", "url": healthy.url, "secret": SECRET, "max_concurrency": 8},
    ]
    total = 400
    path = setup.write(setup.config(endpoints, [{"endpoint": e["id"], "events": ["*"]} for e in endpoints]))
    async with running(path) as app:
        await produce(setup.broker.bootstrap, setup.topic, [_ev(i) for i in range(total)])
        await healthy.wait_for(total, within_s=60)
        # Every event reached the healthy endpoint while the dead one held two requests and ten in its queue;
        # the rest of its deliveries wait in the retry tiers, not in memory, and not in the consumer's way.
        assert len(dead.requests) == 2
        assert app.metrics.deliveries_deferred._value.get() >= total - 12
        # At most 2 under way + 10 queued hold source offsets; the rest of the dead endpoint's deliveries wait
        # on the retry tiers.
        await eventually(lambda: parts(app).source.offsets.in_flight <= 12, 10)
    assert sorted(json.loads(req.body)["n"] for req in healthy.requests) == list(range(total))


async def test_redeliver_by_cli_and_replay_ranges_by_admin_api(
    setup: Setup, receivers: list[Receiver], monkeypatch: Any
) -> None:
    import sys
    import time

    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    r = await receiver(receivers)
    ep = {"id": "x", "url": r.url, "secret": SECRET}
    doc = setup.config([ep], [{"endpoint": "x", "events": ["lead.*"]}])
    doc["admin"]["token_env"] = "ROUTER_ADMIN_TOKEN"
    path = setup.write(doc)
    base = f"http://127.0.0.1:{setup.admin_port}"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    before = time.time()
    async with running(path), aiohttp.ClientSession(headers=auth) as http:
        await produce(setup.broker.bootstrap, setup.topic, [_ev(i) for i in range(5)] + [_ev(5, "order.paid")])
        records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 5)
        third = next(rec for rec in records if rec["source_offset"] == 2)

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "redeliver", "--config", str(path), third["delivery_id"],
            "--endpoint", "x", "--topic", setup.topic, "--partition", "0", "--offset", "2",
            "--attempt", third["attempt_id"], "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (out.decode(), err.decode())
        redelivered = json.loads(out)
        assert (redelivered["status"], redelivered["trigger"]) == ("delivered", "redelivery")
        assert redelivered["redelivery_of_id"] == third["attempt_id"] != redelivered["attempt_id"]
        assert redelivered["delivery_id"] == third["delivery_id"]
        assert r.requests[-1].headers["webhook-id"] == third["delivery_id"]
        assert json.loads(r.requests[-1].body)["n"] == 2

        body = {"topic": setup.topic, "partition": 0, "from_offset": 1, "to_offset": 3}
        async with http.post(f"{base}/endpoints/x/replay", json=body) as resp:
            assert (resp.status, await resp.json()) == (200, {"scanned": 3, "matched": 3, "complete": True})
        await r.wait_for(9)
        assert [json.loads(req.body)["n"] for req in r.requests[6:9]] == [1, 2, 3]

        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before - 1))
        async with http.post(f"{base}/endpoints/x/replay", json={"from_time": since}) as resp:
            answer = await resp.json()
            assert (resp.status, answer) == (200, {"scanned": 6, "matched": 5, "complete": True})  # order.paid: not x's
        await r.wait_for(14)

        async with http.post(f"{base}/deliveries/msg_nope/redeliver", json={**third, "delivery_id": "x"}) as resp:
            assert resp.status == 404
        async with http.post(f"{base}/endpoints/nope/pause") as resp:
            assert resp.status == 404
        replays = await read_topic(
            setup.broker.bootstrap, setup.results, lambda recs: sum(x["trigger"] == "replay" for x in recs) >= 8
        )
    assert sorted(rec["source_offset"] for rec in replays if rec["trigger"] == "replay") == [0, 1, 1, 2, 2, 3, 3, 4]
    assert len(r.requests) == 14


@pytest.mark.skipif(
    BROKER_KIND == "tansu",
    reason="Tansu has no DeleteRecords (it closes the connection) and deletes nothing by retention: a partition's "
    "log always starts at 0 there, and a fetch past its end is answered empty, not OFFSET_OUT_OF_RANGE",
)
async def test_a_redelivery_from_outside_the_log_says_which_end_it_is_past(
    setup: Setup, receivers: list[Receiver], monkeypatch: Any
) -> None:
    """Kafka answers a fetch outside a partition's log with OFFSET_OUT_OF_RANGE; the daemon says which side it is
    (it said "outside the log" for both)."""
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    r = await receiver(receivers)
    doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["nothing.*"]}])
    doc["admin"]["token_env"] = "ROUTER_ADMIN_TOKEN"
    path = setup.write(doc)
    await produce(setup.broker.bootstrap, setup.topic, [_ev(i) for i in range(4)], partition=0)
    admin = admin_client(client_options(setup.broker.bootstrap))
    await admin.start()
    try:  # what retention does to a partition's oldest records
        await admin.delete_records({TopicPartition(setup.topic, 0): RecordsToDelete(2)})
    finally:
        await admin.close()
    base = f"http://127.0.0.1:{setup.admin_port}"
    async with running(path), aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        for offset, why in [(1, "before the start, 2: deleted by retention"), (4, "past the end, 4")]:
            body = {"endpoint_id": "x", "source_topic": setup.topic, "source_partition": 0, "source_offset": offset}
            async with http.post(f"{base}/deliveries/msg_x/redeliver", json=body) as resp:
                answer = await resp.json()
            assert (resp.status, answer["error"]) == (404, f"no record at {setup.topic}[0]@{offset} ({why})")
    assert r.requests == []


async def test_health_survives_a_restart_and_hold_keeps_events_until_resume(
    setup: Setup, receivers: list[Receiver], monkeypatch: Any
) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    skip, held = await receiver(receivers), await receiver(receivers)
    endpoints = [
        {"id": "skip", "url": skip.url, "secret": SECRET},
        {"id": "held", "url": held.url, "secret": SECRET, "while_paused": "hold"},
    ]
    doc = setup.config(endpoints, [{"endpoint": e["id"], "events": ["*"]} for e in endpoints])
    doc["admin"]["token_env"] = "ROUTER_ADMIN_TOKEN"
    doc["retry"]["tiers_s"] = [0.5, 1]  # a held delivery looks again every second
    path = setup.write(doc)
    base = f"http://127.0.0.1:{setup.admin_port}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        async with running(path):
            for name in ("skip", "held"):
                async with http.post(f"{base}/endpoints/{name}/pause") as resp:
                    assert resp.status == 200
        async with running(path):  # a new daemon: the pauses are read back from the health topic
            async with http.get(f"{base}/endpoints") as resp:
                info = {e["id"]: e for e in (await resp.json())["endpoints"]}
            assert info["skip"]["paused"] and info["held"]["paused"]
            assert info["held"]["reason"] == "operator: paused by an operator"
            await produce(setup.broker.bootstrap, setup.topic, [_ev(1)])
            await read_topic(
                setup.broker.bootstrap, setup.results, lambda recs: any(x["status"] == "skipped_paused" for x in recs)
            )
            await asyncio.sleep(2.5)  # the held delivery goes round the tiers, never to the paused endpoint
            assert skip.requests == [] and held.requests == []
            async with http.post(f"{base}/endpoints/held/resume") as resp:
                assert resp.status == 200
            await held.wait_for(1, within_s=10)
    assert skip.requests == []
    assert json.loads(held.requests[0].body) == {"event": "lead.created", "n": 1}
