"""What a tenant's token can make an instance read from Kafka, against a live daemon with two tenants: scans and replays
bounded per tenant and per instance (429, never queued), replays capped in range (400 naming the field and the cap),
a scan that stops when its caller goes away, nothing learnt of another tenant's deliveries or traffic."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import pytest

from daemon.app import App
from tests.helpers import Receiver, eventually, produce
from tests.integration.conftest import Setup, parts, receiver, running
from tests.integration.test_endpoints_api import Client, _environment, api, api_config, ev, new  # noqa: F401

# The admin token creates each tenant's endpoints: only it may set how much of an instance one endpoint takes.
SLOW: dict[str, Any] = {"max_concurrency": 1, "queue_size": 1, "timeout_s": 120}


def bounded(setup: Setup, **api_settings: Any) -> dict[str, Any]:
    doc = api_config(setup)
    doc["api"].update(api_settings)
    return doc


async def tenants(c: Client) -> tuple[Client, Client]:
    """Tenants acme and globex, each with a token: their clients."""
    clients = []
    for tenant in ("acme", "globex"):
        assert (await c.call("POST", "/v1/tenants", {"id": tenant}))[0] == 201
        status, token = await c.call("POST", f"/v1/tenants/{tenant}/tokens")
        assert status == 201, token
        clients.append(c.as_(token["token"]))
    return clients[0], clients[1]


async def endpoint(c: Client, tenant: str, url: str, events: list[str] | None = None, **extra: Any) -> str:
    status, created = await c.call("POST", "/v1/endpoints", new(tenant, url, events, **extra))
    assert status == 201, created
    return str(created["id"])


async def call_with_headers(
    client: Client, method: str, path: str, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {client.token}"}
    async with client.session.request(method, client.base + path, headers=headers, json=body) as resp:
        return resp.status, json.loads(await resp.text()), dict(resp.headers)


def rfc3339(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


async def delivery_of(c: Client, endpoint_id: str) -> str:
    """The delivery id of the endpoint's newest attempt, once its results record can be read."""
    found: list[str] = []

    async def read() -> bool:
        status, answer = await c.call("GET", f"/v1/endpoints/{endpoint_id}/attempts?limit=1")
        if status == 200 and answer["data"]:
            found.append(answer["data"][0]["delivery_id"])
        return bool(found)

    await eventually(read, 20)
    return found[0]


def under_way(app: App, tenant: str | None = None) -> int:
    return parts(app).operator.scans.slots.under_way(tenant)


async def test_scans_over_a_tenants_or_the_instances_bound_are_refused_with_429_and_a_gone_caller_frees_its_slot(
    setup: Setup, receivers: list[Receiver]
) -> None:
    hold = asyncio.Event()  # every delivery waits: a replay then waits for room in its endpoint's queue, in its slot
    acme_r, globex_r = await receiver(receivers, hold=hold), await receiver(receivers, hold=hold)
    doc = bounded(setup, max_scans_per_tenant=2, max_scans=3)
    since = rfc3339(time.time() - 60)
    async with running(setup.write(doc)) as app, api(setup.admin_port) as c:
        acme, globex = await tenants(c)
        acme_ep = await endpoint(c, "acme", acme_r.url, **SLOW)
        globex_ep = await endpoint(c, "globex", globex_r.url, **SLOW)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=n) for n in range(3)])
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=n, tenant="globex") for n in range(3)])
        await acme_r.wait_for(1)
        await globex_r.wait_for(1)
        replay = {"from_time": since}
        first = asyncio.create_task(acme.call("POST", f"/v1/endpoints/{acme_ep}/replay", replay))
        second = asyncio.create_task(acme.call("POST", f"/v1/endpoints/{acme_ep}/replay", replay))
        await eventually(lambda: under_way(app, "acme") == 2, 20)

        for method, path, body in (
            ("GET", f"/v1/endpoints/{acme_ep}/attempts", None),
            ("POST", f"/v1/endpoints/{acme_ep}/replay", replay),
            ("POST", "/v1/deliveries/msg_" + "0" * 32 + "/redeliver", None),
        ):
            status, answer, headers = await call_with_headers(acme, method, path, body)
            assert (status, "api.max_scans_per_tenant" in answer["error"]) == (429, True), (path, answer)
            assert int(headers["Retry-After"]) >= 1
        assert (await globex.call("GET", f"/v1/endpoints/{globex_ep}/attempts"))[0] == 200  # its own bound

        third = asyncio.create_task(globex.call("POST", f"/v1/endpoints/{globex_ep}/replay", replay))
        await eventually(lambda: under_way(app) == 3, 20)
        status, answer = await globex.call("GET", f"/v1/endpoints/{globex_ep}/attempts")
        assert (status, "(api.max_scans)" in answer["error"]) == (429, True), answer
        status, answer = await c.call("GET", f"/v1/endpoints/{acme_ep}/attempts")  # the platform counts too
        assert status == 429, answer
        async with c.session.post(f"{c.base}/deliveries/msg_{'0' * 32}/redeliver",
                                  headers={"Authorization": f"Bearer {c.token}"}) as resp:  # fmt: skip
            assert resp.status == 429  # the operator route as well

        first.cancel()  # the caller goes away: its replay stops and gives its slot (and its consumer) back
        with pytest.raises(asyncio.CancelledError):
            await first
        await eventually(lambda: under_way(app, "acme") == 1, 20)
        assert (await acme.call("GET", f"/v1/endpoints/{acme_ep}/attempts"))[0] == 200
        readers = parts(app).operator.scans.readers
        assert readers.lent == 2  # the two replays still waiting; the cancelled one's consumer is not lent any more

        hold.set()
        assert await second == (200, {"matched": 3, "complete": True})
        assert await third == (200, {"matched": 3, "complete": True})
        assert under_way(app) == 0 and readers.lent == 0


async def test_a_ping_whose_caller_goes_away_is_still_made_and_recorded(
    setup: Setup, receivers: list[Receiver]
) -> None:
    hold = asyncio.Event()
    r = await receiver(receivers, hold=hold)
    async with running(setup.write(api_config(setup))) as app, api(setup.admin_port) as c:
        acme, _ = await tenants(c)
        acme_ep = await endpoint(c, "acme", r.url)
        server = parts(app).admin._served.server
        assert server is not None
        async with aiohttp.ClientSession() as own:
            asking = Client(own, setup.admin_port, acme.token)
            ping = asyncio.create_task(asking.call("POST", f"/v1/endpoints/{acme_ep}/ping"))
            await r.wait_for(1)
            connected = len(server.connections)
            ping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ping
        await eventually(lambda: len(server.connections) < connected, 20)  # its handler was cancelled, and is done
        hold.set()

        async def recorded() -> bool:
            status, answer = await c.call("GET", f"/v1/endpoints/{acme_ep}/attempts")
            return status == 200 and [a["trigger"] for a in answer["data"]] == ["ping"]

        await eventually(recorded, 20)


async def test_a_replay_over_the_platforms_caps_is_a_400_naming_the_field_and_the_cap(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    doc = bounded(setup, replay_max_events=5, replay_max_span_s=3600)
    now = time.time()
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        acme, _ = await tenants(c)
        acme_ep = await endpoint(c, "acme", r.url)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=n) for n in range(8)])
        await r.wait_for(8)
        t = setup.topic
        cases = [
            ({"topic": t, "partition": 0, "from_offset": 0, "to_offset": 5}, "to_offset", "api.replay_max_events"),
            ({"topic": t, "partition": 0, "from_offset": 1}, "to_offset", "api.replay_max_events"),
            ({"from_time": rfc3339(now - 7200), "to_time": rfc3339(now)}, "to_time", "api.replay_max_span_s"),
            ({"from_time": rfc3339(now - 7200)}, "from_time", "api.replay_max_span_s"),
        ]
        for client in (acme, c):
            for body, field, cap in cases:
                status, answer = await client.call("POST", f"/v1/endpoints/{acme_ep}/replay", body)
                assert status == 400, (body, answer)
                assert answer["error"].startswith(f"{field}: ") and cap in answer["error"], answer
                assert re.search(r"\b(5|3,600)\b", answer["error"]), answer  # the cap itself
        await asyncio.sleep(0.5)
        assert len(r.requests) == 8  # nothing delivered for a refused replay

        body = {"topic": t, "partition": 0, "from_offset": 2, "to_offset": 6}
        assert await acme.call("POST", f"/v1/endpoints/{acme_ep}/replay", body) == (
            200, {"matched": 5, "complete": True})  # fmt: skip
        status, answer = await acme.call("POST", f"/v1/endpoints/{acme_ep}/replay", {"from_time": rfc3339(now - 60)})
        assert (status, answer) == (200, {"matched": 5, "complete": False})  # 8 in the range: it stopped at the cap
        await r.wait_for(18)
        await asyncio.sleep(0.5)
        assert len(r.requests) == 18


async def test_another_tenants_delivery_id_is_answered_as_an_unknown_one(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        acme, globex = await tenants(c)
        acme_ep = await endpoint(c, "acme", r.url)
        globex_ep = await endpoint(c, "globex", r.url)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1), ev(n=2, tenant="globex")])
        await r.wait_for(2)
        theirs = await delivery_of(c, acme_ep)
        await delivery_of(c, globex_ep)
        unknown = "msg_" + "0" * 32

        status, answer = await globex.call("POST", f"/v1/deliveries/{theirs}/redeliver")
        status_unknown, answer_unknown = await globex.call("POST", f"/v1/deliveries/{unknown}/redeliver")
        assert (status, status_unknown) == (404, 404)
        assert answer == {"error": answer_unknown["error"].replace(unknown, theirs)}, (answer, answer_unknown)
        assert acme_ep not in json.dumps(answer) and "endpoint" not in answer["error"]

        status, again = await acme.call("POST", f"/v1/deliveries/{theirs}/redeliver")  # its own: found
        assert (status, again["delivery_id"], again["trigger"]) == (200, theirs, "redelivery")
        assert (await c.call("POST", f"/v1/deliveries/{theirs}/redeliver"))[0] == 200  # the platform finds any


async def test_a_tenants_replay_counts_only_what_it_delivered_to_its_own_endpoint(
    setup: Setup, receivers: list[Receiver]
) -> None:
    mine, theirs = await receiver(receivers), await receiver(receivers)
    since = rfc3339(time.time() - 60)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        acme, _ = await tenants(c)
        acme_ep = await endpoint(c, "acme", mine.url, ["lead.*"])
        await endpoint(c, "globex", theirs.url)
        events = [ev(n=1), ev("call.ended", n=2), ev(n=3)] + [ev(n=n, tenant="globex") for n in range(4, 8)]
        await produce(setup.broker.bootstrap, setup.topic, events)
        await mine.wait_for(2)
        await theirs.wait_for(4)
        status, answer = await acme.call("POST", f"/v1/endpoints/{acme_ep}/replay", {"from_time": since})
        assert (status, answer) == (200, {"matched": 2, "complete": True})  # never the 7 records it read
        status, answer = await c.call("POST", f"/v1/endpoints/{acme_ep}/replay", {"from_time": since})
        assert (status, answer) == (200, {"scanned": 7, "matched": 2, "complete": True})  # the platform's answer
        await mine.wait_for(6)


async def test_an_endpoint_changed_while_its_replay_runs_takes_its_live_traffic_to_the_new_url_at_once(
    setup: Setup, receivers: list[Receiver]
) -> None:
    """A replay waits for room in its endpoint's queue; the tenant moves the endpoint's URL meanwhile. The replay goes
    on under the endpoint as changed: it never brings back a lane of the old settings, which would have taken the live
    traffic that came after the change to the old URL."""
    old, moved = await receiver(receivers, delay_s=0.2), await receiver(receivers)
    since = rfc3339(time.time() - 60)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        await tenants(c)
        acme_ep = await endpoint(c, "acme", old.url, ["lead.*"], max_concurrency=1, queue_size=1)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=n) for n in range(1, 11)])
        await old.wait_for(10)
        replay = asyncio.create_task(c.call("POST", f"/v1/endpoints/{acme_ep}/replay", {"from_time": since}))
        await old.wait_for(12)  # the replay under way, waiting for room
        status, changed = await c.call("PATCH", f"/v1/endpoints/{acme_ep}", {"url": moved.url})
        assert status == 200, changed
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=100)])
        status, answer = await replay
        assert status == 200 and answer["matched"] == 10, answer
        arrived = await moved.wait_for(1)
        await asyncio.sleep(1.0)
        after = [json.loads(r.body)["n"] for r in old.requests[12:]]
        assert 100 not in after, after  # the live event of after the change went to the new URL
        assert 100 in [json.loads(r.body)["n"] for r in moved.requests], arrived


async def test_what_an_unauthenticated_caller_sees_carries_no_tenant_data(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        await tenants(c)
        endpoint_ids = [await endpoint(c, tenant, r.url) for tenant in ("acme", "globex")]
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1), ev(n=2, tenant="globex")])
        await r.wait_for(2)
        async with aiohttp.ClientSession() as anonymous:
            for path in ("/metrics", "/readyz", "/healthz"):
                async with anonymous.get(c.base + path) as resp:
                    assert resp.status == 200, path
                    text = await resp.text()
                for secret in ("acme", "globex", r.url, f"127.0.0.1:{r.port}", *endpoint_ids):
                    assert secret not in text, (path, secret)
