"""The endpoints API (/v1) against the real broker and real receivers: endpoints managed at run time, kept in the
compacted endpoints topic, shared by every instance, scoped by tenant."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from daemon.tools.embedded import free_port
from tests.helpers import ADMIN_TOKEN, DaemonProcess, Receiver, eventually, produce, read_raw
from tests.integration.conftest import Setup, receiver, running, spawn

ADMIN = ADMIN_TOKEN
KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WR_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("WR_SECRETS_KEY", KEY)


def api_config(
    setup: Setup, tenant_field: str | None = "tenant", loopback: bool = True, **kafka: Any
) -> dict[str, Any]:
    """The API on, tenants scoped by the event field ``tenant_field``; ``loopback``: the endpoints of the API may reach
    127.0.0.0/8, where the test receivers listen (``api.allowed_networks``; the config file's always may)."""
    doc = setup.config([], [], **kafka)
    doc["admin"]["token_env"] = "WR_ADMIN_TOKEN"
    doc["api"] = {"enabled": True, "secrets_key_env": "WR_SECRETS_KEY", "rotation_grace_s": 3600}
    if loopback:
        doc["api"]["allowed_networks"] = ["127.0.0.0/8"]
    if tenant_field is not None:
        doc["api"]["tenant_field"] = tenant_field
    return doc


class Client:
    def __init__(self, session: aiohttp.ClientSession, port: int, token: str = ADMIN) -> None:
        self.session, self.base, self.token = session, f"http://127.0.0.1:{port}", token

    def as_(self, token: str) -> Client:
        return Client(self.session, int(self.base.rsplit(":", 1)[1]), token)

    async def call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        auth = {"Authorization": f"Bearer {self.token}", **headers}
        kwargs: dict[str, Any] = {"headers": auth}
        if isinstance(body, bytes):
            kwargs["data"] = body
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)


@asynccontextmanager
async def api(port: int) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(session, port)


def new(tenant: str | None, url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A create request for an http test receiver (allow_http: a plain-http URL)."""
    body = {"url": url, "events": events or ["*"], "allow_http": True, **extra}
    return body if tenant is None else {"tenant": tenant, **body}


def ev(event_type: str = "lead.created", **fields: Any) -> bytes:
    """An event of tenant acme (``api_config``'s tenant field), unless ``fields`` say otherwise."""
    return json.dumps({"event": event_type, "tenant": "acme", **fields}).encode()


async def test_create_deliver_update_delete_through_the_api(setup: Setup, receivers: list[Receiver]) -> None:
    first, second = await receiver(receivers), await receiver(receivers)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        assert (await c.call("POST", "/v1/tenants", {"id": "acme"}))[0] == 201
        status, created = await c.call("POST", "/v1/endpoints", new("acme", first.url, ["lead.*"]))
        assert status == 201, created
        assert created["status"] == "active" and created["events"] == ["lead.*"] and created["url"] == first.url
        assert created["id"].startswith("ep_") and created["created_at"] and created["version"] == 1
        secret = created.pop("secret")
        assert secret.startswith("whsec_")
        endpoint_id = created["id"]
        assert "secret" not in (await c.call("GET", f"/v1/endpoints/{endpoint_id}"))[1]  # never shown again

        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1), ev("call.ended", n=2)])
        (request,) = await first.wait_for(1)
        Webhook(secret).verify(request.body, request.headers)  # signed with the secret handed out
        assert json.loads(request.body)["n"] == 1

        status, updated = await c.call("PATCH", f"/v1/endpoints/{endpoint_id}", {"url": second.url})
        assert (status, updated["version"], updated["url"], updated["events"]) == (200, 2, second.url, ["lead.*"])
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=3)])
        (moved,) = await second.wait_for(1)
        assert json.loads(moved.body)["n"] == 3
        Webhook(secret).verify(moved.body, moved.headers)  # the secret survives an update

        assert (await c.call("DELETE", f"/v1/endpoints/{endpoint_id}"))[0] == 204
        assert (await c.call("GET", f"/v1/endpoints/{endpoint_id}"))[0] == 404
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=4)])
        await asyncio.sleep(1.5)
        assert len(first.requests) == 1 and len(second.requests) == 1  # deleted: nothing more delivered


async def test_every_error_code_names_what_is_wrong(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    doc = api_config(setup, tenant_field=None)
    doc["endpoints"] = [{"id": "static", "url": r.url, "secret": "whsec_" + base64.b64encode(b"s" * 24).decode()}]
    doc["subscriptions"] = [{"endpoint": "static", "events": ["lead.*"]}, {"endpoint": "static", "events": ["call.x"]}]
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        await c.call("POST", "/v1/tenants", {"id": "acme"})
        lt = {"tenant": "acme", "profile": "leadterra", "events": ["reply.received"]}
        cases: list[tuple[tuple[str, str, Any], int, str]] = [
            (("POST", "/v1/endpoints", b"{not json"), 400, "JSON object"),
            (("POST", "/v1/endpoints", {**lt, "url": "http://lt.example.com/in"}), 400, "url: must use https://"),
            (("POST", "/v1/endpoints", {**lt, "url": "https://lt.example.com/in", "timeout_s": 500}), 400,
             "timeout_s: must be <= 120"),
            (("POST", "/v1/endpoints", {**lt, "url": "https://lt.example.com/\r\nX: 1"}), 400,
             "url: must not contain control characters"),
            (("POST", "/v1/endpoints", {**lt, "url": "https://lt.example.com/a/../in"}), 400,
             "url: would not be sent as written"),
            (("POST", "/v1/endpoints", {**lt, "url": "https://lt.example.com/in", "colour": 1}), 400,
             "unknown field `colour`"),
            (("POST", "/v1/endpoints", {**lt, "url": "https://lt.example.com/in", "events": ["lead.x"]}), 422,
             "events[0]: 'lead.x' is not one of the leadterra event types"),
            (("POST", "/v1/endpoints", {**lt, "tenant": "nobody", "url": "https://lt.example.com/in"}), 404,
             "no tenant 'nobody'"),
            (("GET", "/v1/endpoints/ep_missing", None), 404, "no endpoint 'ep_missing'"),
            (("PATCH", "/v1/endpoints/static", {"url": "https://x.example.com/"}), 409, "defined in the config file"),
            (("POST", "/v1/tenants/acme/tokens", None), 409, "api.tenant_field is not set"),
        ]  # fmt: skip
        for (method, path, body), code, message in cases:
            status, answer = await c.call(method, path, body)
            assert (status, message in answer["error"]) == (code, True), (method, path, answer)
        status, created = await c.call("POST", "/v1/endpoints", {**lt, "url": "https://lt.example.com/in"})
        assert status == 201 and "secret" not in created  # leadterra carries no secret
        status, answer = await c.call(
            "PATCH", f"/v1/endpoints/{created['id']}", {"description": "x"}, **{"If-Match": "7"}
        )
        assert (status, answer["error"]) == (409, "version: the endpoint is at version 1, not 7")
        assert (await c.as_("wrong").call("GET", "/v1/endpoints"))[0] == 401
        status, static = await c.call("GET", "/v1/endpoints/static")  # read-only, with its file's subscriptions
        assert (status, static["managed"], static["events"]) == (200, "config", ["lead.*", "call.x"])
        for event_type, listed in (("lead.created", True), ("call.x", True), ("call.y", False)):
            _, page = await c.call("GET", f"/v1/endpoints?event_type={event_type}")
            assert ("static" in [e["id"] for e in page["data"]]) == listed, event_type
        async with c.session.get(c.base + "/v1/endpoints") as resp:
            assert (resp.status, resp.headers["WWW-Authenticate"]) == (401, "Bearer")


async def test_a_config_file_that_takes_the_id_of_a_tenants_endpoint_is_refused_at_a_reload_and_wins_at_a_start(
    setup: Setup, receivers: list[Receiver]
) -> None:
    """The platform names one of its config file's endpoints with the id of a tenant's endpoint: a reload is refused,
    naming the field (retries, pauses and failures are kept by the id: the tenant's would become the platform's), and
    the tenant's endpoint goes on; a start with that file gives the id to the file (the topic's record is not routed)
    and the tenant's token neither sees nor acts on it any more (it would reach the platform's endpoint)."""
    tenants, platforms = await receiver(receivers), await receiver(receivers)
    doc = api_config(setup)
    path = setup.write(doc)
    async with running(path) as app, api(setup.admin_port) as c:
        await c.call("POST", "/v1/tenants", {"id": "acme"})
        _, token = await c.call("POST", "/v1/tenants/acme/tokens")
        acme = c.as_(token["token"])
        status, mine = await c.call("POST", "/v1/endpoints", new("acme", tenants.url, ["lead.*"]))  # http: the admin
        assert status == 201, mine
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1)])
        await tenants.wait_for(1)
        secret = "whsec_" + base64.b64encode(b"p" * 24).decode()
        doc["endpoints"] = [{"id": mine["id"], "url": platforms.url, "secret": secret}]
        doc["subscriptions"] = [{"endpoint": mine["id"], "events": ["call.*"]}]
        setup.write(doc)
        app.reload()
        await eventually(lambda: app.metrics.config_reloads.labels("error")._value.get() == 1, 20)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=2), ev("call.ended", n=3)])
        (second,) = (await tenants.wait_for(2))[1:]
        assert json.loads(second.body)["n"] == 2 and platforms.requests == []
    async with running(path), api(setup.admin_port) as c:  # a start with the file as it is now
        acme = c.as_(token["token"])
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=4), ev("call.ended", n=5)])
        (got,) = await platforms.wait_for(1)
        assert json.loads(got.body)["n"] == 5
        await asyncio.sleep(1.0)
        assert [json.loads(r.body)["n"] for r in tenants.requests] == [1, 2]  # the topic's record not routed
        for method, path_ in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/pause"), ("POST", "/ping"),
                              ("POST", "/replay"), ("GET", "/attempts")):  # fmt: skip
            body: dict[str, Any] | None = {} if method != "GET" else None
            status, answer = await acme.call(method, f"/v1/endpoints/{mine['id']}{path_}", body)
            assert (status, answer["error"]) == (404, f"no endpoint {mine['id']!r}"), (method, path_)
        _, listed = await acme.call("GET", "/v1/endpoints")
        assert listed["data"] == []
        assert (await c.call("GET", f"/v1/endpoints/{mine['id']}"))[0] == 200  # the platform sees it


async def test_a_tenant_token_sees_its_own_endpoints_only(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        for tenant in ("acme", "globex"):
            await c.call("POST", "/v1/tenants", {"id": tenant})
        _, acme_token = await c.call("POST", "/v1/tenants/acme/tokens")
        acme = c.as_(acme_token["token"])
        status, mine = await acme.call("POST", "/v1/endpoints", {"url": r.url, "events": ["*"]})
        assert status == 201 and mine["tenant"] == "acme"
        _, theirs = await c.call("POST", "/v1/endpoints", new("globex", r.url))
        status, listed = await acme.call("GET", "/v1/endpoints")
        assert [e["id"] for e in listed["data"]] == [mine["id"]]
        for method, path in (
            ("GET", ""),
            ("PATCH", ""),
            ("DELETE", ""),
            ("POST", "/pause"),
            ("POST", "/resume"),
            ("POST", "/ping"),
            ("POST", "/replay"),
            ("POST", "/rotate-secret"),
            ("GET", "/attempts"),
        ):
            status, answer = await acme.call(
                method, f"/v1/endpoints/{theirs['id']}{path}", {} if method != "GET" else None
            )
            assert (status, answer["error"]) == (404, f"no endpoint {theirs['id']!r}"), (method, path)
        assert (await acme.call("GET", "/v1/endpoints?tenant=globex"))[0] == 404
        assert (await acme.call("POST", "/v1/endpoints", {"tenant": "globex", "url": r.url, "events": ["*"]}))[0] == 404
        assert (await acme.call("POST", "/v1/tenants", {"id": "evil"}))[0] == 404  # admin only
        for field, value in (("allow_http", True), ("queue_size", 1_000_000), ("max_concurrency", 1024)):
            status, answer = await acme.call("POST", "/v1/endpoints", {"url": r.url, "events": ["*"], field: value})
            assert (status, answer["error"]) == (400, f"{field}: set by the platform (the admin token) only")
            status, answer = await acme.call("PATCH", f"/v1/endpoints/{mine['id']}", {field: value})
            assert status == 400, answer
        stored = b"".join(await read_raw(setup.broker.bootstrap, f"{setup.prefix}.endpoints"))
        assert acme_token["token"].encode() not in stored  # only its hash is kept


async def test_an_endpoint_of_the_api_receives_its_own_tenants_events_only(
    setup: Setup, receivers: list[Receiver]
) -> None:
    acme_r, globex_r = await receiver(receivers), await receiver(receivers)
    async with running(setup.write(api_config(setup, tenant_field="org.id"))), api(setup.admin_port) as c:
        for tenant in ("acme", "globex"):
            await c.call("POST", "/v1/tenants", {"id": tenant})
        await c.call("POST", "/v1/endpoints", new("acme", acme_r.url, ["*"]))
        not_7 = {"field": "n", "none_of": ["7"]}
        await c.call("POST", "/v1/endpoints", new("globex", globex_r.url, ["*"], where=not_7))
        events = [ev(n=1, org={"id": "acme"}), ev(n=2, org={"id": "globex"}), ev(n=3), ev(n=4, org="acme"),
                  ev(n=5, tenant="acme"), ev(n=6, org={"id": ["acme"]}), ev(n=7, org={"id": "globex"}),
                  ev(n=8, org={"id": "acme"}), ev(n=9, org={"id": "globex"})]  # fmt: skip
        await produce(setup.broker.bootstrap, setup.topic, events, key=b"one-partition-in-order")
        await acme_r.wait_for(2)
        await globex_r.wait_for(2)
        assert [json.loads(q.body)["n"] for q in acme_r.requests] == [1, 8]
        assert [json.loads(q.body)["n"] for q in globex_r.requests] == [2, 9]  # its own condition holds as well


async def test_the_topic_never_holds_a_secret_in_clear(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    url = r.url.replace("http://", "http://user:pa55word@")
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        await c.call("POST", "/v1/tenants", {"id": "acme"})
        headers = {"Authorization": "Bearer hdr-t0ken"}
        status, created = await c.call("POST", "/v1/endpoints", new("acme", url, headers=headers))
        assert status == 201 and created["url"] == r.url  # the credentials are not shown either
        _, rotated = await c.call("POST", f"/v1/endpoints/{created['id']}/rotate-secret")
    stored = b"".join(await read_raw(setup.broker.bootstrap, f"{setup.prefix}.endpoints"))
    assert stored and created["id"].encode() in stored
    for secret in (created["secret"], rotated["secret"], "pa55word", "hdr-t0ken"):
        assert secret.encode() not in stored, secret


async def test_a_rotated_secret_signs_beside_the_old_one_for_the_grace_period(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        await c.call("POST", "/v1/tenants", {"id": "acme"})
        _, created = await c.call("POST", "/v1/endpoints", new("acme", r.url))
        old = created["secret"]
        status, rotated = await c.call("POST", f"/v1/endpoints/{created['id']}/rotate-secret", {"grace_s": 6})
        assert status == 200 and rotated["secret"] != old and rotated["version"] == 2
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1)])
        (during,) = await r.wait_for(1)
        Webhook(old).verify(during.body, during.headers)  # a receiver still on the old secret verifies
        Webhook(rotated["secret"]).verify(during.body, during.headers)
        assert len(during.headers["webhook-signature"].split()) == 2
        await asyncio.sleep(6.5)  # the grace is over: the old secret no longer signs
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=2)])
        after = (await r.wait_for(2))[1]
        assert len(after.headers["webhook-signature"].split()) == 1
        Webhook(rotated["secret"]).verify(after.body, after.headers)


async def test_recent_attempts_and_redelivery_by_delivery_id_alone(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, statuses=[500, 200, 200])
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        await c.call("POST", "/v1/tenants", {"id": "acme"})
        _, created = await c.call("POST", "/v1/endpoints", new("acme", r.url, retry={"policy": "none"}))

        async def listed(count: int) -> Any:
            status, answer = await c.call("GET", f"/v1/endpoints/{created['id']}/attempts?limit=5")
            return answer["data"] if status == 200 and len(answer["data"]) >= count else None

        # One event after the other: two in one fetch are delivered at once, and their attempts' order is a race.
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1)])
        await eventually(lambda: listed(1), 20)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=2)])
        await eventually(lambda: listed(2), 20)
        attempts = await listed(2)
        assert [a["status"] for a in attempts] == ["delivered", "dead_lettered"]  # newest first
        assert [(a["http_status"], a["response_body"]) for a in attempts] == [(200, "ok"), (500, "nope")]
        assert all(a["duration_ms"] > 0 and a["endpoint_id"] == created["id"] for a in attempts)
        assert attempts[1]["error"] and "500" in attempts[1]["error"]
        failed = attempts[1]
        status, again = await c.call("POST", f"/v1/deliveries/{failed['delivery_id']}/redeliver")
        assert status == 200, again
        assert (again["status"], again["trigger"], again["delivery_id"]) == ("delivered", "redelivery",
                                                                              failed["delivery_id"])  # fmt: skip
        assert again["redelivery_of_id"] == failed["attempt_id"]
        assert (await c.call("POST", "/v1/deliveries/msg_" + "0" * 32 + "/redeliver"))[0] == 404


@pytest.mark.parametrize("setup", [4], indirect=True)
async def test_two_instances_share_the_endpoints_and_a_restart_keeps_them(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers)
    doc = api_config(setup)
    port_a = setup.admin_port
    path_b = setup.path.with_name("b.toml")
    setup.write(doc)
    doc_b = json.loads(json.dumps(doc))
    port_b = free_port()
    doc_b["admin"]["listen"] = f"127.0.0.1:{port_b}"
    setup.write(doc_b, path_b)
    a = await spawn(daemons, setup)
    b = DaemonProcess(path_b, port_b, setup.path.parent / "daemon-b.log")
    daemons.append(b)
    await b.start()
    async with api(port_a) as on_a, api(port_b) as on_b:
        await on_a.call("POST", "/v1/tenants", {"id": "acme"})
        status, created = await on_a.call("POST", "/v1/endpoints", new("acme", r.url))
        assert status == 201
        written = time.monotonic()
        await eventually(lambda: _found(on_b, created["id"]), 10)
        print(f"instance B applied the endpoint {time.monotonic() - written:.2f} s after A's write returned")
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=n) for n in range(20)], key=None)
        await r.wait_for(20)
        delivered_by = [await d.metric('webhook_router_deliveries_total{outcome="delivered",status_class="2xx"}')
                        for d in (a, b)]  # fmt: skip
        assert sum(delivered_by) == 20 and min(delivered_by) > 0  # B delivered some: it had A's endpoint
        for d in (a, b):
            d.signal(15)
            assert await d.wait(30) == 0
        await a.start()
        await b.start()
        status, again = await on_b.call("GET", f"/v1/endpoints/{created['id']}")
        assert (status, again["url"], again["version"]) == (200, r.url, 1)  # the same, read back from the topic
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=99)])
        await r.wait_for(21)


async def _found(client: Client, endpoint_id: str) -> bool:
    return (await client.call("GET", f"/v1/endpoints/{endpoint_id}"))[0] == 200


async def test_the_endpoints_command_manages_endpoints_through_any_instance(
    setup: Setup, receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await receiver(receivers)
    monkeypatch.setenv("NEW_SECRET", "whsec_" + base64.b64encode(b"n" * 24).decode())

    async def cli(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", *argv, "--url", f"http://127.0.0.1:{setup.admin_port}",
            "--token-env", "WR_ADMIN_TOKEN", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        assert (await cli("tenants", "create", "acme"))[0] == 0
        created = []
        for _ in range(3):
            code, out, err = await cli("endpoints", "create", "--tenant", "acme", "--endpoint-url", r.url,
                                       "--events", "lead.*", "--set", "allow_http=true", "--json")  # fmt: skip
            assert code == 0, err
            created.append(json.loads(out))
        ids = sorted(e["id"] for e in created)
        assert all(e["secret"].startswith("whsec_") for e in created)
        code, out, _ = await cli("endpoints", "list", "--tenant", "acme", "--limit", "2")
        assert code == 0 and ids[0] in out and ids[1] in out and ids[2] not in out
        assert f"(more: --after {ids[1]})" in out
        code, out, _ = await cli("endpoints", "list", "--tenant", "acme", "--limit", "2", "--after", ids[1], "--json")
        assert [e["id"] for e in json.loads(out)["data"]] == [ids[2]]
        code, out, err = await cli("endpoints", "update", ids[0], "--events", "call.*", "--version", "1", "--json")
        assert code == 0 and json.loads(out)["events"] == ["call.*"], err
        code, _, err = await cli("endpoints", "update", ids[0], "--description", "x", "--version", "1")
        assert code != 0 and "version" in err  # a version that moved: 409, said on stderr
        code, out, err = await cli("endpoints", "rotate-secret", ids[0], "--secret-env", "NEW_SECRET", "--json")
        assert code == 0 and json.loads(out)["secret"] == os.environ["NEW_SECRET"], err
        await produce(setup.broker.bootstrap, setup.topic, [ev("call.ended", n=1)])
        (request,) = await r.wait_for(1)
        Webhook(os.environ["NEW_SECRET"]).verify(request.body, request.headers)

        async def attempted() -> bool:
            code, out, _ = await cli("endpoints", "attempts", ids[0], "--json")
            return code == 0 and [a["status"] for a in json.loads(out)["data"]] == ["delivered"]

        await eventually(attempted, 20)
        code, out, _ = await cli("endpoints", "get", ids[0])
        assert code == 0 and "call.*" in out and "whsec_" not in out  # a readable view, never the secret
        assert (await cli("endpoints", "delete", ids[0]))[0] == 0
        assert (await c.call("GET", f"/v1/endpoints/{ids[0]}"))[0] == 404
        code, _, err = await cli("endpoints", "get", ids[0])
        assert code != 0 and "no endpoint" in err


async def test_an_update_naming_a_version_applies_only_at_that_version_0_included(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        await c.call("POST", "/v1/tenants", {"id": "acme"})
        _, created = await c.call("POST", "/v1/endpoints", new("acme", r.url))
        path = f"/v1/endpoints/{created['id']}"
        for stale, headers in (({"version": 0}, {}), ({"version": "0"}, {}), ({"version": 2}, {}),
                               ({}, {"If-Match": '"0"'}), ({"version": 1}, {"If-Match": "0"}),
                               ({"version": 0}, {"If-Match": "1"})):  # fmt: skip
            status, answer = await c.call("PATCH", path, {"description": "stale", **stale}, **headers)
            assert (status, answer["error"].startswith("version: the endpoint is at version 1, not ")) == (409, True)
        for wrong in (True, 1.5, [1]):
            status, answer = await c.call("PATCH", path, {"description": "wrong", "version": wrong})
            assert (status, "`$.version`" in answer["error"]) == (400, True), (wrong, answer)
        assert (await c.call("GET", path))[1]["description"] is None  # none of them applied
        status, updated = await c.call("PATCH", path, {"description": "now", "version": 1}, **{"If-Match": '"1"'})
        assert (status, updated["description"], updated["version"]) == (200, "now", 2)
        status, updated = await c.call("PATCH", path, {"description": "unconditional", "version": None})
        assert (status, updated["version"]) == (200, 3)
