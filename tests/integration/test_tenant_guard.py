"""A tenant is untrusted input, against the real broker, receivers and daemon: with nothing but its own token a tenant
cannot reach the platform's network, replace the router's proxy credentials, or undo what the platform paused; and an
endpoint that holds its deliveries while paused does not hold them forever."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import web
from yarl import URL

from daemon.core.clock import ms_of_iso
from daemon.core.registry import sealed_record, signed
from daemon.core.secretbox import Keyring
from tests.helpers import SECRET, FakeDNS, Proxy, Receiver, eventually, produce, read_topic, serve
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_endpoints_api import ADMIN, KEY, _environment, api, api_config  # noqa: F401 - the fixture


def ev(n: int, tenant: str = "acme", event_type: str = "lead.created") -> bytes:
    return json.dumps({"event": event_type, "tenant": tenant, "n": n}).encode()


async def tenants(c: Any, *names: str) -> dict[str, Any]:
    """Create the tenants and a token for each: a client per tenant, calling with its own token."""
    clients = {}
    for name in names:
        assert (await c.call("POST", "/v1/tenants", {"id": name}))[0] == 201
        status, token = await c.call("POST", f"/v1/tenants/{name}/tokens")
        assert status == 201, token
        clients[name] = c.as_(token["token"])
    return clients


# --- the network guard: the API's endpoints have their own ---


async def test_an_endpoint_of_the_api_cannot_reach_what_delivery_allowed_networks_opens_to_the_config_file(
    setup: Setup, receivers: list[Receiver]
) -> None:
    """delivery.allowed_networks = 127.0.0.0/8 (every integration test's) lets the config file's endpoint reach the
    internal service on 127.0.0.1; a tenant's endpoint pointed at the same service (by a name resolving there, a
    path, a query and an Authorization header of its choosing) is blocked, and its ping carries nothing of the
    service's answer; with api.allowed_networks = 127.0.0.0/8 it delivers."""
    asked: list[tuple[str, str | None]] = []

    async def internal(request: web.Request) -> web.Response:
        asked.append((request.path_qs, request.headers.get("Authorization")))
        return web.Response(text="internal-service-secret")

    app = web.Application()
    app.router.add_post("/{tail:.*}", internal)
    runner, base = await serve(app)
    port = URL(base).port
    doc = api_config(setup, loopback=False)
    doc["endpoints"] = [{"id": "platform", "url": f"{base}/platform", "secret": SECRET}]
    doc["subscriptions"] = [{"endpoint": "platform", "events": ["*"]}]
    dns = FakeDNS({"internal.example": [["127.0.0.1"]]})
    hostile = {"url": f"http://internal.example:{port}/admin?x=1", "events": ["*"],
               "headers": {"Authorization": "Bearer chosen"}}  # fmt: skip
    bootstrap = setup.broker.bootstrap
    try:
        async with running(setup.write(doc), resolver=dns), api(setup.admin_port) as c:
            acme = (await tenants(c, "acme", "globex"))["acme"]
            status, answer = await acme.call("POST", "/v1/endpoints", {"url": f"{base}/admin", "events": ["*"]})
            assert (status, answer["error"]) == (
                400, "url: the host is refused: loopback address (unless api.allowed_networks allows its range)"
            )  # fmt: skip
            status, created = await acme.call("POST", "/v1/endpoints", hostile)
            assert status == 201, created  # a name: judged where it resolves, at connect time
            status, pinged = await acme.call("POST", f"/v1/endpoints/{created['id']}/ping")
            assert (status, pinged["status"], pinged["http_status"], pinged["response_body"]) == (
                200, "blocked", None, None
            )  # fmt: skip
            assert pinged["error"] == "blocked: loopback address (not in api.allowed_networks)"
            await produce(bootstrap, setup.topic, [ev(1)])
            records = await read_topic(bootstrap, setup.results, lambda recs: len(recs) >= 3)
            live = {rec["endpoint_id"]: rec["status"] for rec in records if rec["trigger"] == "live"}
            assert live == {"platform": "delivered", created["id"]: "blocked"}
            assert asked == [("/platform", None)]  # nothing of the tenant's reached the service

        doc["api"]["allowed_networks"] = ["127.0.0.0/8"]  # the platform lets its tenants in: a restart
        async with running(setup.write(doc), resolver=dns), api(setup.admin_port) as c:
            status, pinged = await c.call("POST", f"/v1/endpoints/{created['id']}/ping")
            assert (status, pinged["status"], pinged["response_body"]) == (200, "delivered", "internal-service-secret")
            assert asked[-1] == ("/admin?x=1", "Bearer chosen")
            status, answer = await c.call("POST", "/v1/endpoints", {"tenant": "acme", "url": f"{base}/in",
                                                                    "events": ["*"]})  # fmt: skip
            assert status == 201, answer
    finally:
        await runner.cleanup()


# --- the router's proxy credentials are the router's ---

_PROXY_HEADER = "a hop-by-hop or proxy header (it speaks to the connection or the egress proxy, not the receiver)"


def test_check_config_refuses_an_endpoints_proxy_authorization_naming_the_field(tmp_path: Path) -> None:
    kafka = {"bootstrap_servers": "127.0.0.1:1", "group_id": "g", "topics": ["t"], "results_topic": "r"}
    headers = {"X-Ok": "1", "Proxy-Authorization": "Basic ZXZpbDpldmls", "Keep-Alive": "timeout=5"}
    ep = {"id": "x", "url": "https://hooks.example.com/in", "secret": SECRET, "headers": headers}
    path = tmp_path / "router.toml"
    path.write_text(tomli_w.dumps({"kafka": kafka, "endpoints": [ep]}))
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr.splitlines()) == (2, [
        f"endpoints[0].headers.Proxy-Authorization: {_PROXY_HEADER}",
        f"endpoints[0].headers.Keep-Alive: {_PROXY_HEADER}",
    ])  # fmt: skip


async def test_no_endpoint_replaces_the_routers_credentials_for_its_egress_proxy(
    setup: Setup, receivers: list[Receiver]
) -> None:
    """A tenant's Proxy-Authorization is a 400 naming the field; one on the endpoints topic all the same (written
    before the header was refused) is never sent: the proxy, which answers 407 to any credentials but the router's,
    gets the router's, and the receiver no proxy header."""
    r = await receiver(receivers)
    bootstrap = setup.broker.bootstrap
    async with Proxy(credentials="router:s3cret-proxy").running() as proxy:
        doc = api_config(setup)
        doc["delivery"]["proxy_url"] = proxy.url
        doc["endpoints"] = [{"id": "platform", "url": r.url, "secret": SECRET}]
        doc["subscriptions"] = [{"endpoint": "platform", "events": ["*"]}]
        async with running(setup.write(doc)), api(setup.admin_port) as c:
            acme = (await tenants(c, "acme", "globex"))["acme"]
            for name in ("Proxy-Authorization", "proxy-authorization", "Proxy-Connection", "Upgrade", "TE"):
                body = {"url": "https://hooks.example.com/in", "events": ["*"], "headers": {name: "Basic ZXZpbA=="}}
                status, answer = await acme.call("POST", "/v1/endpoints", body)
                assert (status, answer["error"]) == (400, f"headers.{name}: {_PROXY_HEADER}")
                status, answer = await c.call("POST", "/v1/endpoints", {"tenant": "acme", **body})
                assert (status, answer["error"]) == (400, f"headers.{name}: {_PROXY_HEADER}")  # the platform's too
            keyring = Keyring(base64.b64decode(KEY))  # the platform's key: the record is as genuine as any
            record = sealed_record(
                keyring, endpoint_id="ep_older", tenant="acme", version=1, created_at=None, url=r.url,
                headers={"Proxy-Authorization": "Basic ZXZpbDpldmls", "X-Tenant": "acme"}, secrets=[(SECRET, None)],
                events=["*"], topics=None, where=None, description=None, settings={},
            )  # fmt: skip
            await produce(bootstrap, f"{setup.prefix}.endpoints", [signed(record, keyring)], key=b"endpoint/ep_older")

            async def routed() -> bool:
                return (await c.call("GET", "/v1/endpoints/ep_older"))[0] == 200

            await eventually(routed, 10)
            await produce(bootstrap, setup.topic, [ev(1)])
            records = await read_topic(bootstrap, setup.results, lambda recs: len(recs) >= 2)
    assert {(rec["endpoint_id"], rec["status"], rec["http_status"]) for rec in records} == {
        ("platform", "delivered", 200), ("ep_older", "delivered", 200)
    }  # fmt: skip
    router = "Basic " + base64.b64encode(b"router:s3cret-proxy").decode()
    assert [(target, auth) for _, target, auth in proxy.asked] == [(r.url, router)] * 2
    assert len(r.requests) == 2 and not any(k.lower().startswith("proxy-") for q in r.requests for k in q.headers)
    assert [q.headers.get("X-Tenant") for q in r.requests].count("acme") == 1  # its other headers still go


# --- who paused, and who may lift it ---


async def test_a_tenant_lifts_its_own_and_automatic_pauses_never_the_platforms_nor_its_contracts(
    setup: Setup, receivers: list[Receiver]
) -> None:
    ok, failing, gone = (
        await receiver(receivers),
        await receiver(receivers, status=500),
        await receiver(receivers, status=410),
    )
    bootstrap = setup.broker.bootstrap
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        clients = await tenants(c, "acme", "globex")
        acme, globex = clients["acme"], clients["globex"]

        async def create(url: str, **extra: Any) -> str:
            status, created = await acme.call("POST", "/v1/endpoints", {"url": url, "events": ["*"], **extra})
            assert status == 201, created
            return str(created["id"])

        by_api, by_operator, own = await create(ok.url), await create(ok.url), await create(ok.url)
        automatic = await create(failing.url, pause_after_failures=1, retry={"policy": "none"})
        contract = await create(gone.url)
        await produce(bootstrap, setup.topic, [ev(1)])
        paused_twice = lambda recs: sum(r["status"] == "endpoint_paused" for r in recs) == 2  # noqa: E731
        records = await read_topic(bootstrap, setup.results, lambda recs: paused_twice(recs) and len(recs) >= 7)
        delivered = next(r for r in records if r["endpoint_id"] == by_api and r["status"] == "delivered")

        assert (await c.call("POST", f"/v1/endpoints/{by_api}/pause"))[0] == 200  # the platform, through the API
        admin = c.session.post(f"{c.base}/endpoints/{by_operator}/pause", headers={"Authorization": f"Bearer {ADMIN}"})
        async with admin as resp:
            assert resp.status == 200  # the platform, through the operator's route
        status, mine = await acme.call("POST", f"/v1/endpoints/{own}/pause")
        assert (status, mine["status"], mine["paused_by"]) == (200, "paused", "tenant")

        views = {i: (await acme.call("GET", f"/v1/endpoints/{i}"))[1] for i in (by_api, by_operator, automatic,
                                                                                 contract)}  # fmt: skip
        assert {i: (v["status"], v["paused_by"]) for i, v in views.items()} == {
            by_api: ("paused", "platform"), by_operator: ("paused", "platform"), automatic: ("paused", "automatic"),
            contract: ("paused", "contract"),
        }  # fmt: skip
        async with c.session.get(f"{c.base}/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            listed = {e["id"]: e["paused_by"] for e in (await resp.json())["endpoints"]}
        assert listed == {by_api: "platform", by_operator: "platform", own: "tenant", automatic: "automatic",
                          contract: "contract"}  # fmt: skip

        for endpoint_id, who in ((by_api, "the platform (operator: paused through the API)"),
                                 (by_operator, "the platform (operator: paused by an operator)"),
                                 (contract, "its contract (gone: the endpoint answered 410 Gone)")):  # fmt: skip
            status, answer = await acme.call("POST", f"/v1/endpoints/{endpoint_id}/resume")
            assert (status, answer["error"]) == (
                409, f"endpoint {endpoint_id!r} is paused by {who}: only the platform can resume it"
            )  # fmt: skip
            assert (await acme.call("GET", f"/v1/endpoints/{endpoint_id}"))[1]["status"] == "paused"
            assert (await globex.call("POST", f"/v1/endpoints/{endpoint_id}/resume"))[0] == 404  # not its own
        for endpoint_id in (own, automatic):
            status, view = await acme.call("POST", f"/v1/endpoints/{endpoint_id}/resume")
            assert (status, view["status"], view["paused_by"]) == (200, "active", None)

        # The platform pausing what the tenant paused: the tenant can no longer lift it.
        await acme.call("POST", f"/v1/endpoints/{own}/pause")
        await c.call("POST", f"/v1/endpoints/{own}/pause")
        assert (await acme.call("GET", f"/v1/endpoints/{own}"))[1]["paused_by"] == "platform"
        assert (await acme.call("POST", f"/v1/endpoints/{own}/resume"))[0] == 409
        status, view = await c.call("POST", f"/v1/endpoints/{contract}/resume")  # the platform lifts anything
        assert (status, view["status"]) == (200, "active")

        # Neither a replay nor a redelivery delivers to a paused endpoint, whoever asks.
        before = len(ok.requests)
        whole = {"from_time": 0}
        for caller in (acme, c):
            paused = f"endpoint {by_api!r} is paused by the platform (operator: paused through the API)"
            status, answer = await caller.call("POST", f"/v1/endpoints/{by_api}/replay", whole)
            assert (status, answer["error"]) == (409, f"{paused}: no replay while it is paused")
            status, answer = await caller.call("POST", f"/v1/deliveries/{delivered['delivery_id']}/redeliver")
            assert (status, answer["error"]) == (409, f"{paused}: no redelivery while it is paused")
        async with c.session.post(f"{c.base}/endpoints/{by_api}/replay", json=whole,
                                  headers={"Authorization": f"Bearer {ADMIN}"}) as resp:  # fmt: skip
            assert resp.status == 409
        assert len(ok.requests) == before


# --- a hold is bounded ---


async def test_an_endpoint_that_pauses_itself_holds_its_deliveries_for_max_hold_s_then_dead_letters_them(
    setup: Setup, receivers: list[Receiver]
) -> None:
    """It cycled every held delivery through the tiers forever: now a held delivery is recorded skipped_paused and
    dead-lettered once the endpoint has been paused for retry.max_hold_s (never before), as crm's contract (no retry
    policy) implies."""
    r = await receiver(receivers, status=500)
    ep = {"id": "crm-legacy", "url": r.url, "secret": SECRET, "while_paused": "hold", "pause_after_failures": 1,
          "retry": {"policy": "none"}}  # fmt: skip
    doc = setup.config([ep], [{"endpoint": "crm-legacy", "events": ["*"]}])
    doc["admin"]["token_env"] = "WR_ADMIN_TOKEN"
    doc["retry"]["max_hold_s"] = 3
    bootstrap = setup.broker.bootstrap
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        await produce(bootstrap, setup.topic, [ev(1)])
        await read_topic(bootstrap, setup.results, lambda recs: any(x["status"] == "endpoint_paused" for x in recs))
        async with c.session.get(f"{c.base}/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            (info,) = (await resp.json())["endpoints"]
        assert (info["paused"], info["paused_by"]) == (True, "automatic")
        await produce(bootstrap, setup.topic, [ev(2)])
        letters = await read_topic(bootstrap, f"{setup.prefix}.dead-letter", lambda recs: len(recs) >= 2, 30)
        records = await read_topic(bootstrap, setup.results, lambda recs: any(
            x["status"] == "skipped_paused" for x in recs))  # fmt: skip
    first, held = letters
    assert (first["reason"], held["reason"]) == ("no attempts left", "endpoint paused for longer than retry.max_hold_s")
    assert held["event"]["n"] == 2 and held["attempts"] == [] and len(r.requests) == 1
    paused_at, lettered_at = ms_of_iso(info["since"]), ms_of_iso(held["dead_lettered_at"])
    assert paused_at is not None and lettered_at is not None
    assert paused_at + 3000 <= lettered_at <= paused_at + 20_000  # never early; not late, with a generous margin
    (skipped,) = [x for x in records if x["status"] == "skipped_paused"]
    assert skipped["error"].endswith("for longer than retry.max_hold_s (3 s): no longer held")


async def test_the_platforms_pause_after_its_tenants_is_never_undone_by_the_tenants_pause_read_back(
    setup: Setup,
) -> None:
    """The health topic is followed: this instance reads back its own writes. The tenant's pause read back after the
    platform's pause here was applied over it (paused_by "tenant" again until the platform's came back too, and the
    tenant could lift it meanwhile): a record read back while a later change of this instance's is still on its way
    must not replace it. Each round polls the endpoint as the read-backs arrive."""
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        acme = (await tenants(c, "acme"))["acme"]
        status, created = await acme.call("POST", "/v1/endpoints", {"url": "http://127.0.0.1:9/h", "events": ["*"]})
        assert status == 201, created
        path = f"/v1/endpoints/{created['id']}"
        seen: list[str | None] = []
        for _ in range(25):
            assert (await acme.call("POST", path + "/pause"))[0] == 200
            assert (await c.call("POST", path + "/pause"))[1]["paused_by"] == "platform"
            for _ in range(15):
                seen.append((await acme.call("GET", path))[1]["paused_by"])
                await asyncio.sleep(0.01)
            assert (await c.call("POST", path + "/resume"))[1]["status"] == "active"
        assert set(seen) == {"platform"}, f"{seen.count('tenant')} of {len(seen)} views said tenant"
