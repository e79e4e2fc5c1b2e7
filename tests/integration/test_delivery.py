"""Per-endpoint concurrency, timeouts, malformed events: against a real broker and real receivers."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.helpers import SECRET, Receiver, committed, produce, read_topic
from tests.integration.conftest import Setup, receiver, running

pytestmark = pytest.mark.tansu_smoke  # also run against Tansu in CI (make smoke-tansu)


def _events(n: int, event: str = "lead.created") -> list[bytes]:
    return [json.dumps({"event": event, "n": i}).encode() for i in range(n)]


async def test_concurrency_limit_holds(setup: Setup, receivers: list[Receiver]) -> None:
    hold = asyncio.Event()
    r = await receiver(receivers, hold=hold)
    ep = {"id": "slow", "url": r.url, "secret": SECRET, "max_concurrency": 3, "timeout_s": 30}
    path = setup.write(setup.config([ep], [{"endpoint": "slow", "events": ["*"]}]))
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, _events(12))
        await r.wait_for(3)
        await asyncio.sleep(1.0)  # give a fourth request every chance to arrive while three are held
        assert len(r.requests) == 3
        assert r.max_concurrent == 3
        hold.set()
        await r.wait_for(12)
        records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 12)
    assert r.max_concurrent == 3
    assert sorted(json.loads(req.body)["n"] for req in r.requests) == list(range(12))
    assert {rec["status"] for rec in records} == {"delivered"}


async def test_waiting_for_a_slot_is_not_part_of_the_timeout(setup: Setup, receivers: list[Receiver]) -> None:
    # One slot, 0.3 s per request, 1 s timeout: the eighth request waits ~2.1 s for the slot and still succeeds (each
    # request keeps 0.7 s of its timeout for a busy machine).
    r = await receiver(receivers, delay_s=0.3)
    ep = {"id": "one", "url": r.url, "secret": SECRET, "max_concurrency": 1, "timeout_s": 1}
    path = setup.write(setup.config([ep], [{"endpoint": "one", "events": ["*"]}]))
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, _events(8))
        records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 8)
    assert [rec["status"] for rec in records] == ["delivered"] * 8
    assert r.max_concurrent == 1


async def test_slow_receiver_times_out(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, delay_s=4)
    ep = {"id": "sleepy", "url": r.url, "secret": SECRET, "timeout_s": 1}
    path = setup.write(setup.config([ep], [{"endpoint": "sleepy", "events": ["lead.created"]}]))
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, _events(1))
        (rec,) = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 1)
    assert rec["status"] == "failed"
    assert rec["http_status"] is None
    assert rec["error"].startswith("timeout")
    assert 900 <= rec["duration_ms"] < 1000 + 5000  # the 1 s timeout; later only by what a busy machine adds
    assert len(r.requests) == 1


async def test_non_2xx_is_failed_with_body(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, status=503)
    ep = {"id": "down", "url": r.url, "secret": SECRET}
    path = setup.write(setup.config([ep], [{"endpoint": "down", "events": ["*"]}]))
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, _events(1))
        (rec,) = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 1)
    assert (rec["status"], rec["http_status"], rec["response_body"], rec["error"]) == (
        "failed",
        503,
        "nope",
        "HTTP 503",
    )


async def test_connection_refused_is_failed(setup: Setup) -> None:
    from daemon.tools.embedded import free_port

    ep = {"id": "gone", "url": f"http://127.0.0.1:{free_port()}/x", "secret": SECRET}
    path = setup.write(setup.config([ep], [{"endpoint": "gone", "events": ["*"]}]))
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, _events(1))
        (rec,) = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 1)
    assert rec["status"] == "failed"
    assert rec["error"].startswith("connection error")
    assert "127.0.0.1" not in rec["error"]  # no URL (which may carry tokens) in results


async def test_malformed_events_are_recorded_and_the_stream_moves_on(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    ep = {"id": "ok", "url": r.url, "secret": SECRET}
    path = setup.write(setup.config([ep], [{"endpoint": "ok", "events": ["*"]}]))
    good = [json.dumps({"type": "call.completed", "n": i}).encode() for i in range(2)]
    values = [b"{not json", good[0], b"\xff\xfe\x00\x01binary", b'{"no_type": 1}', b"[1, 2]", good[1]]
    async with running(path) as app:
        await produce(setup.broker.bootstrap, setup.topic, values)
        await r.wait_for(2)
        records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 6)
        await asyncio.sleep(0.3)  # one commit interval
        assert app.metrics.events_invalid.labels(setup.topic)._value.get() == 4
    assert [req.body for req in r.requests] == good
    invalid = {rec["source_offset"]: rec["error"] for rec in records if rec["status"] == "invalid_event"}
    assert invalid == {
        0: "not valid JSON",
        2: "not valid UTF-8",
        3: "no event type field ('event' or 'type')",
        4: "not a JSON object",
    }
    assert sorted(rec["source_offset"] for rec in records if rec["status"] == "delivered") == [1, 5]
    assert await committed(setup.broker.bootstrap, setup.group, setup.topic) == {0: 6}
