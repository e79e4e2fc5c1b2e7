"""A tenant is untrusted input, against the real broker, receivers and daemon: with nothing but its own token a tenant
cannot reach the platform's network, replace the router's proxy credentials, or undo what the platform paused; and an
endpoint that holds its deliveries while paused does not hold them forever."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import web
from yarl import URL

from daemon.core.registry import sealed_record, signed
from daemon.core.secretbox import Keyring
from tests.helpers import SECRET, FakeDNS, Proxy, Receiver, eventually, produce, read_topic, serve
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_endpoints_api import KEY, _environment, api, api_config  # noqa: F401 - the fixture


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
