"""An endpoint's circuit breaker against the real broker, daemon and a receiver that fails and then recovers: it
opens after its failures in a row, then one delivery at a time probes it once each cool-down, and it closes on the
probe that gets through; open is not paused (the API shows both apart), and metrics and the results topic say so."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp

from tests.helpers import SECRET, Receiver, produce, read_topic
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_endpoints_api import _environment, api, api_config  # noqa: F401 - the fixture


def ev(n: int) -> bytes:
    return json.dumps({"event": "lead.created", "n": n}).encode()


async def circuits_open(port: int) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    line = next(x for x in text.splitlines() if x.startswith("webhook_router_endpoint_circuits_open "))
    return float(line.rsplit(" ", 1)[1])


async def test_a_failing_endpoint_opens_is_probed_one_delivery_at_a_time_and_closes_when_a_probe_gets_through(
    setup: Setup, receivers: list[Receiver]
) -> None:
    count, cooldown_s = 12, 1.0
    sink = await receiver(receivers, status=500)
    doc = api_config(setup)
    doc["endpoints"] = [{
        "id": "flaky", "url": sink.url, "secret": SECRET, "max_concurrency": 4,
        "circuit_breaker": {"failures": 3, "cooldown_s": cooldown_s, "max_cooldown_s": cooldown_s},
        "retry": {"policy": "schedule", "delays_s": [0.5] * 20},
    }]  # fmt: skip
    doc["subscriptions"] = [{"endpoint": "flaky", "events": ["lead.*"]}]
    bootstrap = setup.broker.bootstrap
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        await produce(bootstrap, setup.topic, [ev(n) for n in range(count)])
        opened = lambda recs: any(r["status"] == "endpoint_circuit_opened" for r in recs)  # noqa: E731
        await read_topic(bootstrap, setup.results, opened)
        seen_open = time.time()
        status, view = await c.call("GET", "/v1/endpoints/flaky")
        assert (status, view["circuit"], view["status"], view["paused_by"]) == (200, "open", "active", None)
        assert await circuits_open(setup.admin_port) == 1
        await asyncio.sleep(3.5)  # three cool-downs: a probe after each, each failing
        probes = [r.at for r in sink.requests if seen_open < r.at <= seen_open + 3.5]  # the window, however late now
        print(f"\nprobes while open, after each other: {[round(b - a, 3) for a, b in itertools.pairwise(probes)]}")
        assert 2 <= len(probes) <= 4
        assert all(b - a >= cooldown_s - 0.05 for a, b in itertools.pairwise(probes))  # one at a time, never sooner
        assert sink.max_concurrent <= 4

        sink.status = 200
        closed = lambda recs: any(r["status"] == "endpoint_circuit_closed" for r in recs)  # noqa: E731
        records = await read_topic(bootstrap, setup.results, closed)
        delivered = lambda recs: sum(r["status"] == "delivered" for r in recs) == count  # noqa: E731
        records = await read_topic(bootstrap, setup.results, delivered, within_s=60)
        assert not any(r["status"] in ("dead_lettered", "endpoint_paused") for r in records)
        assert (await c.call("GET", "/v1/endpoints/flaky"))[1]["circuit"] == "closed"
        assert await circuits_open(setup.admin_port) == 0
