"""The endpoints topic against a live daemon, written to directly as a principal without the secrets key could:
forged records are not applied and leak nothing; a key rotation and the migration of records written before
records were signed."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from standardwebhooks.webhooks import Webhook

from daemon.app import App
from daemon.core.registry import EndpointRecord, SealedSecret, endpoint_key, token_hash
from daemon.core.secretbox import SecretBox
from daemon.kafka.clients import close_consumer, refresh_metadata
from daemon.tools.embedded import free_port
from tests.helpers import ADMIN_TOKEN, Receiver, client_options, eventually, produce
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_endpoints_api import (  # noqa: F401 - _environment: the fixture
    KEY,
    Client,
    _environment,
    api,
    api_config,
    ev,
    new,
)


async def latest(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """The last value of each key of a topic now, decoded (tombstones left out)."""
    consumer = AIOKafkaConsumer(**client_options(bootstrap), auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: dict[str, dict[str, Any]] = {}
    try:
        await refresh_metadata(consumer)
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())])
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=300)
            got = [r for records in batch.values() for r in records]
            found.update({r.key.decode(): orjson.loads(r.value) for r in got if r.value is not None})
            idle = 0 if got else idle + 1
    finally:
        await close_consumer(consumer)
    return found


async def write(bootstrap: str, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    """Records written straight to the topic, as any principal allowed to write it could."""
    producer = AIOKafkaProducer(**client_options(bootstrap), enable_idempotence=False)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


def refused(app: App, reason: str) -> float:
    return (
        app.metrics.registry.get_sample_value("webhook_router_endpoints_records_refused_total", {"reason": reason}) or 0
    )


def under_old_keys(app: App) -> float | None:
    return app.metrics.registry.get_sample_value("webhook_router_endpoints_records_under_old_keys")


async def test_records_forged_on_the_topic_are_not_applied_and_nothing_leaks(
    setup: Setup, receivers: list[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    r1, r2, r3 = await receiver(receivers), await receiver(receivers), await receiver(receivers)
    topic = f"{setup.prefix}.endpoints"
    bootstrap = setup.broker.bootstrap
    async with running(setup.write(api_config(setup))) as app, api(setup.admin_port) as c:
        for tenant in ("acme", "globex"):
            assert (await c.call("POST", "/v1/tenants", {"id": tenant}))[0] == 201
        _, globex_token = await c.call("POST", "/v1/tenants/globex/tokens")
        globex = c.as_(globex_token["token"])
        _, e1 = await c.call("POST", "/v1/endpoints", new("acme", r1.url))
        _, e2 = await c.call("POST", "/v1/endpoints", new("acme", r2.url, ["lead.create"], profile="crm"))
        _, e3 = await c.call("POST", "/v1/endpoints", new("acme", r3.url))
        views = {e["id"]: (await c.call("GET", f"/v1/endpoints/{e['id']}"))[1] for e in (e1, e2, e3)}
        k1, k2, k3 = (endpoint_key(e["id"]) for e in (e1, e2, e3))
        held = await latest(bootstrap, topic)
        r1_rec, r2_rec, r3_rec, acme_rec = held[k1], held[k2], held[k3], held["tenant/acme"]
        planted = "wrt_acme_" + os.urandom(24).hex()
        forged_id = "ep_forged0000000000"
        forged = [  # each keeps the MAC it was written with, or has none
            (k1, {**r1_rec, "version": 2, "url": r1_rec["secrets"][0]["value"]}),  # the secret copied into the URL
            (k2, {**r2_rec, "version": 2, "secrets": [],
                  "settings": {**r2_rec["settings"], "secret_env": "WR_SECRETS_KEY"}}),  # a variable of the router's
            (k3, {**r3_rec, "version": 2, "tenant": "globex"}),  # handed to another tenant
            ("tenant/acme", {**acme_rec, "version": acme_rec["version"] + 1,
                             "tokens": [{"id": "tok_x", "sha256": token_hash(planted), "created_at": "t"}]}),
            (endpoint_key(forged_id), {**{k: v for k, v in r2_rec.items() if k not in ("mac", "key_id")},
                                       "id": forged_id, "secrets": [], "settings": {"secret_env": "WR_ADMIN_TOKEN"}}),
        ]  # fmt: skip
        await write(bootstrap, topic, [(k, orjson.dumps(v)) for k, v in forged] + [(k1, None)])  # and a tombstone
        # A write through the API returns once this instance applied it: every forged record before it is read.
        assert (await c.call("POST", "/v1/endpoints", new("acme", r1.url, ["never.*"])))[0] == 201

        for endpoint in (e1, e2, e3):  # each is as it was: version 1, its own tenant, its URL, its settings
            assert await c.call("GET", f"/v1/endpoints/{endpoint['id']}") == (200, views[endpoint["id"]])
        assert (await c.call("GET", f"/v1/endpoints/{forged_id}"))[0] == 404
        assert (await globex.call("GET", f"/v1/endpoints/{e3['id']}"))[0] == 404
        assert e3["id"] not in [e["id"] for e in (await globex.call("GET", "/v1/endpoints"))[1]["data"]]
        assert (await c.as_(planted).call("GET", "/v1/endpoints"))[0] == 401
        assert [refused(app, why) for why in ("mac", "unauthenticated", "tombstone")] == [4, 1, 1]

        await produce(bootstrap, setup.topic, [ev("lead.create", n=1)])
        (one,), (two,), (three,) = await r1.wait_for(1), await r2.wait_for(1), await r3.wait_for(1)
        assert json.loads(two.body)["secret"] == e2["secret"]  # the CRM contract's own secret, never a variable's
        for request in (one, two, three):
            seen = request.body + json.dumps(request.headers).encode()
            for secret in (KEY, ADMIN_TOKEN, e1["secret"], e3["secret"]):
                assert secret.encode() not in seen
    lines = [rec.getMessage() for rec in caplog.records if "not applied (the state" in rec.getMessage()]
    assert len(lines) == 6
    for key in (k1, k2, k3, "tenant/acme", endpoint_key(forged_id)):
        assert any(repr(key) in line for line in lines), key
    for secret in (KEY, ADMIN_TOKEN, e1["secret"], e2["secret"], e3["secret"]):
        assert secret not in caplog.text


async def test_a_key_rotation_rewrites_every_record_under_the_new_key(
    setup: Setup, receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "daemon.kafka.store")
    r = await receiver(receivers)
    doc = api_config(setup)
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        await c.call("POST", "/v1/tenants", {"id": "acme"})
        _, created = await c.call("POST", "/v1/endpoints", new("acme", r.url, headers={"X-Token": "hdr"}))
    new_key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("WR_NEW_KEY", new_key)
    doc["api"] = {**doc["api"], "secrets_key_env": "WR_NEW_KEY", "previous_secrets_key_envs": ["WR_SECRETS_KEY"]}
    async with running(setup.write(doc)) as app, api(setup.admin_port) as c:
        await eventually(lambda: under_old_keys(app) == 0, 20)
        status, view = await c.call("GET", f"/v1/endpoints/{created['id']}")
        assert (status, view["version"], view["url"]) == (200, 2, r.url)  # rewritten once, unchanged
    monkeypatch.delenv("WR_SECRETS_KEY")  # the old key is gone
    doc["api"] = {**doc["api"], "previous_secrets_key_envs": []}
    async with running(setup.write(doc)) as app, api(setup.admin_port) as c:
        assert under_old_keys(app) == 0 and refused(app, "key") == 0  # the old key's records were superseded
        assert "2 records of a key this instance does not have, or without a MAC, were superseded" in caplog.text
        assert (await c.call("GET", f"/v1/endpoints/{created['id']}"))[1]["version"] == 2
        assert (await c.call("GET", "/v1/tenants/acme"))[0] == 200
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1)])
        (request,) = await r.wait_for(1)
        assert request.headers["X-Token"] == "hdr"
        Webhook(created["secret"]).verify(request.body, request.headers)  # the secret survived both keys


def _legacy_record(endpoint_id: str, url: str, version: int = 1) -> bytes:
    """An endpoint record as a version before records were signed wrote it: v1 values bound to the endpoint only, no
    key id, no MAC."""
    box, bound = SecretBox(base64.b64decode(KEY)), endpoint_key(endpoint_id)
    record = EndpointRecord(
        id=endpoint_id, tenant="acme", version=version, created_at="2026-01-01T00:00:00Z",
        updated_at="2026-01-01T00:00:00Z", url=box.seal(url, bound), events=["*"], settings={"allow_http": True},
        secrets=[SealedSecret(value=box.seal("whsec_" + base64.b64encode(b"l" * 24).decode(), bound))],
    )  # fmt: skip
    body = msgspec.to_builtins(record)
    del body["key_id"], body["mac"]
    return orjson.dumps(body)


async def test_records_written_before_records_were_signed_are_read_only_in_a_migration_window(
    setup: Setup, receivers: list[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    r = await receiver(receivers)
    topic = f"{setup.prefix}.endpoints"
    doc = api_config(setup)
    async with running(setup.write(doc)), api(setup.admin_port):
        pass  # creates the topic
    await write(setup.broker.bootstrap, topic, [("endpoint/ep_legacy", _legacy_record("ep_legacy", r.url))])
    async with running(setup.write(doc)) as app, api(setup.admin_port) as c:
        assert (await c.call("GET", "/v1/endpoints/ep_legacy"))[0] == 404
        assert refused(app, "unauthenticated") == 1
    assert "set api.accept_unauthenticated_records = true" in caplog.text

    doc["api"] = {**doc["api"], "accept_unauthenticated_records": True}
    async with running(setup.write(doc)) as app, api(setup.admin_port) as c:
        await eventually(lambda: under_old_keys(app) == 0, 20)
        status, view = await c.call("GET", "/v1/endpoints/ep_legacy")
        assert (status, view["version"], view["url"]) == (200, 2, r.url)  # rewritten, signed
        # A record without a MAC written after a signed one is refused, even in the window.
        await write(setup.broker.bootstrap, topic, [("endpoint/ep_legacy", _legacy_record("ep_legacy", r.url, 9))])
        assert (await c.call("POST", "/v1/tenants", {"id": "later"}))[0] == 201
        assert (await c.call("GET", "/v1/endpoints/ep_legacy"))[1]["version"] == 2
        assert refused(app, "unauthenticated") == 1
    doc["api"] = {**doc["api"], "accept_unauthenticated_records": False}
    async with running(setup.write(doc)) as app, api(setup.admin_port) as c:
        assert (await c.call("GET", "/v1/endpoints/ep_legacy"))[1]["version"] == 2  # the window may close
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1)])
        await r.wait_for(1)


async def test_an_instance_behind_the_topic_refuses_tenant_tokens_past_the_bound_and_readyz_says_so(
    setup: Setup, receivers: list[Receiver]
) -> None:
    doc = api_config(setup)
    doc["api"]["max_token_lag_s"] = 2
    path_a, port_a = setup.write(doc), setup.admin_port
    doc_b = json.loads(json.dumps(doc))
    port_b = free_port()
    doc_b["admin"]["listen"] = f"127.0.0.1:{port_b}"
    doc_b["kafka"]["group_id"] = setup.group + "-b"  # no rebalance between the two: A's readiness is its own
    path_b = setup.write(doc_b, setup.path.with_name("b.toml"))
    async with running(path_a) as a, running(path_b), api(port_a) as on_a, api(port_b) as on_b:
        await on_b.call("POST", "/v1/tenants", {"id": "acme"})
        _, issued = await on_b.call("POST", "/v1/tenants/acme/tokens")
        holder_a, holder_b = on_a.as_(issued["token"]), on_b.as_(issued["token"])
        await eventually(lambda: _status(holder_a, "GET", "/v1/endpoints", 200), 10)  # A has read the token
        assert await _ready(on_a) == (200, None)

        # A's reader stops hearing from the topic, as when its fetches fail: its partition is paused.
        assert a._api is not None
        consumer = a._api._store._follower.consumer
        (partition,) = consumer.assignment()
        consumer.pause(partition)
        paused = time.monotonic()
        assert (await on_b.call("DELETE", f"/v1/tenants/acme/tokens/{issued['id']}"))[0] == 204
        assert (await holder_b.call("GET", "/v1/endpoints"))[0] == 401  # revoked where it was deleted

        await eventually(lambda: _status(holder_a, "GET", "/v1/endpoints", 503), 10)
        print(f"A refused the revoked token {time.monotonic() - paused:.1f} s after its reader stopped (bound 2 s)")
        async with on_a.session.get(on_a.base + "/v1/endpoints", headers={"Authorization": f"Bearer {issued['token']}"}
                                    ) as resp:  # fmt: skip
            answer = await resp.json()
            assert (resp.status, resp.headers["Retry-After"]) == (503, "1")
        assert answer["error"].startswith("tenant tokens are refused while this instance is behind the endpoints topic")
        assert "api.max_token_lag_s = 2 s" in answer["error"]
        assert (await on_a.call("GET", "/v1/endpoints"))[0] == 200  # the admin token still works
        status, reason = await _ready(on_a)
        assert status == 503 and reason is not None
        assert reason.startswith(f"behind the endpoints topic {setup.prefix}.endpoints (last caught up ")
        assert reason.endswith("s): tenant tokens are refused")
        lag = a.metrics.registry.get_sample_value("webhook_router_endpoints_behind_seconds")
        assert lag is not None and lag > 2

        consumer.resume(partition)  # it hears from the topic again: catches up, and the deletion applies
        await eventually(lambda: _status(holder_a, "GET", "/v1/endpoints", 401), 10)
        assert await _ready(on_a) == (200, None)


async def _status(client: Client, method: str, path: str, expected: int) -> bool:
    return (await client.call(method, path))[0] == expected


async def _ready(client: Client) -> tuple[int, str | None]:
    async with client.session.get(client.base + "/readyz") as resp:
        return resp.status, (await resp.json()).get("reason")
