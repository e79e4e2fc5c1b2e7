"""Operational webhooks against the real broker, daemon and receivers: the platform's endpoint receives the router's
own events (an endpoint created, updated, paused, resumed, its circuit opened and closed, a secret rotated, an
endpoint deleted, a delivery dead-lettered), each naming who did it (admin, the tenant's token, the router), signed
the Standard Webhooks way (verified here by the standardwebhooks library), and the same records are on the operational
topic."""

from __future__ import annotations

import json
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.helpers import SECRET, Receiver, eventually, produce, read_topic
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_endpoints_api import _environment, api, api_config  # noqa: F401 - the fixture
from tests.integration.test_tenant_guard import tenants


async def test_the_platform_receives_the_routers_own_events_signed_with_who_did_it_and_on_the_topic(
    setup: Setup, receivers: list[Receiver]
) -> None:
    ops, failing = await receiver(receivers), await receiver(receivers, status=500)
    doc = api_config(setup)
    doc["endpoints"] = [
        {"id": "ops", "url": ops.url, "secret": SECRET},
        {"id": "platform", "url": failing.url, "secret": SECRET, "retry": {"policy": "none"},
         "circuit_breaker": {"failures": 1, "cooldown_s": 0.5}},
    ]  # fmt: skip
    doc["subscriptions"] = [{"endpoint": "platform", "events": ["lead.*"]}]
    doc["operational"] = {"enabled": True, "endpoints": ["ops"]}
    bootstrap = setup.broker.bootstrap
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        acme = (await tenants(c, "acme"))["acme"]
        status, created = await acme.call("POST", "/v1/endpoints", {"url": ops.url + "/acme", "events": ["*"]})
        assert status == 201, created
        path = f"/v1/endpoints/{created['id']}"
        assert (await acme.call("PATCH", path, {"description": "ours"}))[0] == 200
        assert (await acme.call("POST", path + "/pause"))[0] == 200
        assert (await c.call("POST", path + "/resume"))[0] == 200
        assert (await acme.call("POST", path + "/rotate-secret", {}))[0] == 200
        assert (await c.call("DELETE", path))[0] == 204
        await produce(bootstrap, setup.topic, [json.dumps({"event": "lead.created", "n": 1}).encode()])
        await read_topic(bootstrap, setup.results, lambda rs: any(r["status"] == "endpoint_circuit_opened" for r in rs))
        failing.status = 200
        await produce(bootstrap, setup.topic, [json.dumps({"event": "lead.created", "n": 2}).encode()])

        def received() -> dict[str, dict[str, Any]]:
            return {json.loads(r.body)["type"]: json.loads(r.body) for r in ops.requests if r.path == "/hook"}

        expected = {"endpoint.created": "tenant:acme", "endpoint.updated": "tenant:acme", "endpoint.paused":
                    "tenant:acme", "endpoint.resumed": "admin", "secret.rotated": "tenant:acme", "endpoint.deleted":
                    "admin", "delivery.dead_lettered": "router", "endpoint.circuit_opened": "router",
                    "endpoint.circuit_closed": "router"}  # fmt: skip
        await eventually(lambda: set(expected) <= set(received()), 30)
        got = received()
        assert {kind: got[kind]["data"]["actor"] for kind in expected} == expected
        assert got["endpoint.created"]["data"]["endpoint_id"] == created["id"]
        assert got["endpoint.created"]["data"]["tenant"] == "acme"
        assert got["delivery.dead_lettered"]["data"]["endpoint_id"] == "platform"
        assert got["endpoint.paused"]["data"]["paused_by"] == "tenant"
        hooks = [r for r in ops.requests if r.path == "/hook"]
        assert len(hooks) >= len(expected)
        assert [Webhook(SECRET).verify(r.body, dict(r.headers))["type"] for r in hooks] == [
            json.loads(r.body)["type"] for r in hooks
        ]  # every one signed as Standard Webhooks says (verify raises otherwise)
        assert not any(SECRET.removeprefix("whsec_") in r.body.decode() for r in ops.requests)
        assert not any(r.path == "/hook/acme" for r in ops.requests)  # no subscription of a tenant's ever matches

        on_topic = await read_topic(
            bootstrap,
            f"{doc['retry']['topic_prefix']}.operational",
            lambda rs: set(expected) <= {r["type"] for r in rs},
        )
        assert {r["type"] for r in on_topic} == set(expected)
