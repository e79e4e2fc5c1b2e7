"""Issue 19, as a hostile customer of a platform would try it with nothing but its tenant token, against a live daemon
with two tenants: it can neither slow another tenant's deliveries (its event patterns and endpoints are capped, and
an event is matched against its own tenant's routes only) nor hold the event loop up with the size of what it sets
(custom headers are bounded; masking a response is linear in the body)."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from tests.helpers import Receiver, produce, serve
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_endpoints_api import _environment, api, api_config, new  # noqa: F401 - the fixture

CHECKED = "webhook_router_routes_checked_total"


async def metric(port: int, name: str) -> float:
    async with api(port) as c, c.session.get(f"{c.base}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_a_hostile_tenant_cannot_slow_another_tenants_deliveries(setup: Setup, receivers: list[Receiver]) -> None:
    hostile_r, victim_r = await receiver(receivers), await receiver(receivers)
    doc = api_config(setup)  # tenant_field = "tenant"
    doc["api"]["max_endpoints_per_tenant"] = 3
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        for tenant in ("hostile", "victim"):
            assert (await c.call("POST", "/v1/tenants", {"id": tenant}))[0] == 201
        _, token = await c.call("POST", "/v1/tenants/hostile/tokens")
        hostile = c.as_(token["token"])

        # The request: one endpoint with "*" 50,000 times (200 KB, answered 201 before).
        status, answer = await hostile.call("POST", "/v1/endpoints", {"url": hostile_r.url, "events": ["*"] * 50_000})
        assert (status, answer["error"]) == (400, "events: at most 100 patterns (api.max_events_per_endpoint), "
                                                  "50000 given")  # fmt: skip
        for n in range(3):  # as many patterns as it may give, repeats dropped
            status, created = await hostile.call("POST", "/v1/endpoints", {"url": hostile_r.url,
                                                 "events": ["*"] * 90 + [f"x.{i}" for i in range(10)]})  # fmt: skip
            assert (status, created["events"]) == (201, ["*", *(f"x.{i}" for i in range(10))]), (n, created)
        status, answer = await hostile.call("POST", "/v1/endpoints", {"url": hostile_r.url, "events": ["*"]})
        assert (status, answer["error"]) == (409, "tenant: 'hostile' has 3 endpoints, the most "
                                                  "api.max_endpoints_per_tenant allows (delete one first)")  # fmt: skip
        assert (await c.call("POST", "/v1/endpoints", new("hostile", hostile_r.url)))[0] == 409  # the platform's too
        assert (await c.call("POST", "/v1/endpoints", new("victim", victim_r.url, ["lead.*"])))[0] == 201

        before = await metric(setup.admin_port, CHECKED)
        events = [json.dumps({"event": "lead.created", "tenant": "victim", "n": n}).encode() for n in range(200)]
        await produce(setup.broker.bootstrap, setup.topic, events)
        await victim_r.wait_for(200, within_s=60)
        # The victim's route, once an event: none of the hostile tenant's routes was looked at.
        assert await metric(setup.admin_port, CHECKED) - before == 200
        assert hostile_r.requests == []
        assert await metric(setup.admin_port, "webhook_router_routing_cache_bytes") < 1_000  # one answer, no route

        await produce(setup.broker.bootstrap, setup.topic, [json.dumps({"event": "y", "tenant": "hostile"}).encode()])
        await hostile_r.wait_for(3)  # its own events still reach each of its endpoints, once
        assert await metric(setup.admin_port, CHECKED) - before == 203


class Echo:
    """A receiver that answers every request with 5,000 bytes made of the request's custom header values."""

    def __init__(self) -> None:
        self.answered = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        values = "".join(v for k, v in request.headers.items() if k.lower().startswith("x-key"))
        self.answered += 1
        return web.Response(text=(values * 5)[:5_000])


async def test_a_tenant_s_headers_cannot_hold_the_event_loop(setup: Setup) -> None:
    echo = Echo()
    app = web.Application()
    app.router.add_post("/{tail:.*}", echo.handle)
    runner, base = await serve(app)
    try:
        async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
            await c.call("POST", "/v1/tenants", {"id": "hostile"})
            _, token = await c.call("POST", "/v1/tenants/hostile/tokens")
            hostile = c.as_(token["token"])
            # The endpoint: 140 custom header values of 4,100 characters (accepted before).
            headers = {f"X-Key-{i:03d}": f"{i:03d}" + "k/=+" * 1024 + "v" for i in range(140)}
            status, answer = await hostile.call("POST", "/v1/endpoints", {"url": f"{base}/in", "events": ["*"],
                                                                          "headers": headers})  # fmt: skip
            assert status == 400 and answer["error"].startswith(
                "headers: at most 20 custom headers (140 given); headers: names and values must total at most 8192"
            )
            assert "headers.X-Key-000: value must be at most 1024 bytes (4100 given)" in answer["error"]
            # The most it may set: 20 values of 400 characters, echoed back 5,000 bytes at a time.
            headers = {f"X-Key-{i:02d}": f"{i:02d}" + "k/=+" * 99 + "v" * 2 for i in range(20)}
            status, created = await hostile.call("POST", "/v1/endpoints", {"url": f"{base}/in", "events": ["*"],
                                                                           "headers": headers})  # fmt: skip
            assert status == 201, created
            pings = [hostile.call("POST", f"/v1/endpoints/{created['id']}/ping") for _ in range(20)]
            answers = asyncio.gather(*pings)
            slowest = 0.0
            while not answers.done():  # /healthz keeps answering while the 20 masks are made
                started = time.monotonic()
                async with c.session.get(f"{c.base}/healthz") as resp:
                    assert resp.status == 200
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.01)
            for status, outcome in await answers:
                assert status == 200 and outcome["http_status"] == 200
                body = outcome["response_body"]
                assert "***" in body and not any(value in body for value in headers.values())
                assert "k/=+" * 8 not in body  # the body's end, cut at 4096 bytes, masked too
            assert echo.answered == 20
            assert slowest < 2.0  # 5.4 s before, for the endpoint; a generous margin for a busy machine
    finally:
        await runner.cleanup()
