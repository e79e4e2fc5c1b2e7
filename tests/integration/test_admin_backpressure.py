"""The admin endpoints, and the cap on events in flight pausing the fetch."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import SECRET, Receiver, eventually, produce, read_topic
from tests.integration.conftest import Setup, parts, receiver, running


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_healthz_readyz(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    ep = {"id": "m", "url": r.url, "secret": SECRET}
    path = setup.write(setup.config([ep], [{"endpoint": "m", "events": ["*"]}]))
    async with running(path) as app:
        assert app.components is not None
        port = app.components.admin.port
        await produce(setup.broker.bootstrap, setup.topic, [b'{"event": "a.b"}', b"junk"])
        await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 2)
        status, body = await _get(port, "/healthz")
        assert (status, json.loads(body)["ok"]) == (200, True)
        status, body = await _get(port, "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True, "stuck": []})
        # The settled offsets committed (a commit interval, then the coordinator's answer): waited for, not slept.
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

        async def committed() -> bool:
            nonlocal samples
            status, text = await _get(port, "/metrics")
            samples = _samples(text) if status == 200 else {}
            return samples.get(("webhook_router_offset_commits_total", (("result", "ok"),)), 0) >= 1

        await eventually(committed, 10)
    t = setup.topic
    assert samples[("webhook_router_events_consumed_total", (("topic", t),))] == 2
    assert samples[("webhook_router_events_invalid_total", (("topic", t),))] == 1
    assert samples[("webhook_router_deliveries_total", (("outcome", "delivered"), ("status_class", "2xx")))] == 1
    assert samples[("webhook_router_delivery_duration_seconds_count", (("outcome", "delivered"),))] == 1
    assert (
        samples[("webhook_router_delivery_duration_seconds_bucket", (("le", "120.0"), ("outcome", "delivered")))] == 1
    )
    assert samples[("webhook_router_requests_in_flight", ())] == 0
    assert samples[("webhook_router_config_reloads_total", (("result", "ok"),))] == 0
    assert samples[("webhook_router_results_written_total", ())] == 2
    assert samples[("webhook_router_offset_commits_total", (("result", "ok"),))] >= 1
    # No label anywhere carries an endpoint id: cardinality does not grow with endpoints.
    assert not any(v == "m" for (_, labels) in samples for _, v in labels)


async def test_in_flight_cap_pauses_fetching(setup: Setup, receivers: list[Receiver]) -> None:
    hold = asyncio.Event()
    r = await receiver(receivers, hold=hold)
    ep = {"id": "held", "url": r.url, "secret": SECRET, "max_concurrency": 4, "timeout_s": 60}
    path = setup.write(setup.config([ep], [{"endpoint": "held", "events": ["*"]}], max_in_flight_events=10))
    values = [json.dumps({"event": "x", "n": i}).encode() for i in range(100)]
    async with running(path) as app:
        await produce(setup.broker.bootstrap, setup.topic, values)
        await r.wait_for(4)
        await eventually(lambda: app.metrics.fetch_paused.labels("events")._value.get() == 1, 10)
        await asyncio.sleep(1.0)
        assert parts(app).source.offsets.in_flight == 10  # exactly the cap: no more read while paused
        assert len(r.requests) == 4
        hold.set()
        records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 100)
        await eventually(lambda: parts(app).source.offsets.in_flight == 0, 10)
        assert app.metrics.fetch_paused.labels("events")._value.get() == 0
    assert sorted(rec["source_offset"] for rec in records) == list(range(100))
