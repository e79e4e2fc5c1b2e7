"""Each platform's contract, delivered exactly: the seed's own example event in, its documented body out.

The examples below are copied from the five seed documents (../shared/seeds/).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.helpers import SECRET, Receiver, produce, read_topic
from tests.integration.conftest import Setup, receiver, running
from tests.seeds import (
    AGORA_BULK,
    AGORA_LEAD_CREATED,
    CAMPAIGN_LEAD_DELIVERED,
    CONVOCORE_AGENT_CREATED,
    CONVOCORE_LEAD_CAPTURED,
    CRM_LEAD_CREATE,
)


def _without(d: dict[str, Any], *path: str) -> dict[str, Any]:
    """A deep copy of ``d`` without the field at ``path`` (the router injects it)."""
    out: dict[str, Any] = json.loads(json.dumps(d))
    target = out
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return out


async def _deliver(
    setup: Setup,
    endpoints: list[dict[str, Any]],
    subs: list[dict[str, Any]],
    events: list[Any],
    receivers: list[Receiver],
    expect: int,
    records: int,
    **extra: Any,
) -> list[dict[str, Any]]:
    doc = setup.config(endpoints, subs)
    doc.update(extra)
    path = setup.write(doc)
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, [json.dumps(e).encode() for e in events])
        result = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= records)
    assert sum(len(r.requests) for r in receivers) == expect
    return result


async def test_agora_lead_created_exactly(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    ep = {"id": "42", "url": r.url, "profile": "agora", "secret": "agora-endpoint-secret"}
    before = int(time.time())
    records = await _deliver(
        setup, [ep], [{"endpoint": "42", "events": ["lead.*"]}], [AGORA_LEAD_CREATED], receivers, expect=1, records=1
    )
    (req,) = r.requests
    assert json.loads(req.body) == AGORA_LEAD_CREATED
    assert list(json.loads(req.body)) == list(AGORA_LEAD_CREATED)  # the documented field order too
    assert req.headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(b"agora-endpoint-secret", req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req.headers["X-Agora-Signature-256"], expected)
    assert req.headers["X-Agora-Event"] == "lead.created"
    endpoint_id, attempt, ts = req.headers["X-Agora-Delivery"].split("-")
    assert (endpoint_id, attempt) == ("42", "1")
    assert before <= int(ts) <= time.time()
    assert not any(h.lower().startswith("webhook-") for h in req.headers)
    assert (records[0]["status"], records[0]["profile"]) == ("delivered", "agora")


async def test_agora_bulk_is_delivered_once_never_beside_its_items(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    ep = {"id": "7", "url": r.url, "profile": "agora", "secret": "s"}
    items = [
        {"event": "lead.created", "campaign_id": 7, "lead_id": 1234, "contact_id": 5678, "batch_id": "b1"},
        {"event": "lead.created", "campaign_id": 7, "lead_id": 1235, "contact_id": 5679, "batch_id": "b1"},
    ]
    single = {
        "event": "lead.created",
        "campaign_id": 7,
        "lead_id": 99,
        "contact_id": 98,
        "timestamp": "2026-06-12T20:00:01Z",
    }
    records = await _deliver(
        setup,
        [ep],
        [{"endpoint": "7", "events": ["lead.created", "leads.bulk_created"]}],
        [*items, AGORA_BULK, single],
        receivers,
        expect=2,
        records=4,
    )
    bodies = [json.loads(req.body) for req in r.requests]
    assert sorted(bodies, key=lambda b: b["event"]) == [single, AGORA_BULK]
    assert sorted(rec["status"] for rec in records) == [
        "delivered",
        "delivered",
        "skipped_bulk_item",
        "skipped_bulk_item",
    ]


async def test_leadterra_envelope_and_catalogue(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    ep = {"id": "lt", "url": r.url, "profile": "leadterra", "allow_http": True}
    reply = {
        "event": "reply.received",
        "timestamp": "2026-06-12T20:00:00Z",
        "data": {"replyId": "rep_1", "campaignId": "cmp_9", "from": "lead@example.com", "classification": "positive"},
    }
    flat = {"type": "message.sent", "messageId": "msg_7", "campaignId": "cmp_9"}
    unknown = {"event": "message.archived", "messageId": "msg_8"}  # matches message.* but is not in the catalogue
    before = time.time()
    records = await _deliver(
        setup,
        [ep],
        [{"endpoint": "lt", "events": ["reply.received", "message.*"]}],
        [reply, flat, unknown],
        receivers,
        expect=2,
        records=2,
    )
    got = [json.loads(req.body) for req in r.requests]
    assert got[0] == reply
    assert set(got[1]) == {"event", "timestamp", "data"}
    assert got[1]["event"] == "message.sent"
    assert got[1]["data"] == {"messageId": "msg_7", "campaignId": "cmp_9"}
    stamp = time.mktime(time.strptime(got[1]["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 2 <= stamp <= time.time() + 1
    assert r.requests[0].headers["Content-Type"] == "application/json"
    assert {rec["event_type"] for rec in records} == {"reply.received", "message.sent"}


async def test_convocore_secret_injected_and_vf_only_events_never_delivered(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    ep = {"id": "cc", "url": r.url, "profile": "convocore", "secret": "your_workspace_secret"}
    from_vf = _without(CONVOCORE_LEAD_CAPTURED, "payload", "workspaceSecret")
    from_vf["payload"]["agentPlatform"] = "vf"
    events = [
        _without(CONVOCORE_AGENT_CREATED, "payload", "workspaceSecret"),
        from_vf,
        _without(CONVOCORE_LEAD_CAPTURED, "payload", "workspaceSecret"),
    ]
    records = await _deliver(setup, [ep], [{"endpoint": "cc", "events": ["*"]}], events, receivers, expect=2, records=3)
    assert [json.loads(req.body) for req in r.requests] == [CONVOCORE_AGENT_CREATED, CONVOCORE_LEAD_CAPTURED]
    skipped = [rec for rec in records if rec["status"] == "skipped_unsupported"]
    assert [(rec["event_type"], rec["source_offset"]) for rec in skipped] == [("lead_captured", 1)]


async def test_campaign_inheritance_override_and_disabled(setup: Setup, receivers: list[Receiver]) -> None:
    org_r, camp_r = await receiver(receivers), await receiver(receivers)
    org = {
        "id": "acme",
        "url": org_r.url,
        "events": ["lead.delivered", "lead.failed"],
        "headers": {"X-Org": "acme"},
        "timeout_s": 30,
        "campaigns": [
            {"id": "ABC", "url": camp_r.url, "headers": {"X-Campaign": "abc"}, "events": ["lead.delivered"]},
            {"id": "OFF", "enabled": False},
            {"id": "INH"},
        ],
    }

    def ev(event: str, campaign: str, lead: str) -> dict[str, Any]:
        return {**CAMPAIGN_LEAD_DELIVERED, "event": event, "campaignId": campaign, "leadId": lead}

    events = [
        CAMPAIGN_LEAD_DELIVERED,  # ABC configures lead.delivered: the campaign's URL and headers
        ev("lead.failed", "ABC", "l2"),  # ABC does not configure lead.failed: the organisation's
        ev("lead.delivered", "OFF", "l3"),  # disabled campaign: nothing
        ev("lead.delivered", "XYZ", "l4"),  # no campaign block: the organisation's
        ev("lead.failed", "INH", "l5"),  # a campaign that overrides nothing inherits everything
        ev("lead.queued", "XYZ", "l6"),  # not an event the organisation asked for
    ]
    await _deliver(setup, [], [], events, receivers, expect=4, records=4, organizations=[org])
    (camp_req,) = camp_r.requests
    assert json.loads(camp_req.body) == CAMPAIGN_LEAD_DELIVERED
    assert camp_req.headers["X-Campaign"] == "abc"
    assert "X-Org" not in camp_req.headers
    assert sorted(json.loads(req.body)["leadId"] for req in org_r.requests) == ["l2", "l4", "l5"]
    assert all(req.headers["X-Org"] == "acme" for req in org_r.requests)


async def test_crm_secret_injected(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    ep = {"id": "crm", "url": r.url, "profile": "crm", "secret": "wh_a46f35f22d9723a"}
    await _deliver(
        setup,
        [ep],
        [{"endpoint": "crm", "events": ["lead.*"]}],
        [_without(CRM_LEAD_CREATE, "secret")],
        receivers,
        expect=1,
        records=1,
    )
    assert json.loads(r.requests[0].body) == CRM_LEAD_CREATE


async def test_standard_webhooks_rotation_signs_with_every_secret(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    new = "whsec_" + base64.b64encode(b"the-new-secret-0123456789").decode()
    ep = {"id": "sw", "url": r.url, "secrets": [new, SECRET]}
    await _deliver(
        setup,
        [ep],
        [{"endpoint": "sw", "events": ["*"]}],
        [{"type": "invoice.paid", "id": 1}],
        receivers,
        expect=1,
        records=1,
    )
    (req,) = r.requests
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, SECRET):  # a receiver that knows either one verifies
        Webhook(secret).verify(req.body, req.headers)


async def test_raw_sends_the_body_as_it_arrived_with_only_signature_headers(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    ep = {"id": "raw", "url": r.url, "profile": "raw", "secret": SECRET, "headers": {"X-Ignored": "1"}}
    body = b'{"type": "x.y",   "odd":  "spacing kept"}'
    path = setup.write(setup.config([ep], [{"endpoint": "raw", "events": ["*"]}]))
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, [body])
        await r.wait_for(1)
    (req,) = r.requests
    assert req.body == body
    Webhook(SECRET).verify(req.body, req.headers)
    assert {h.lower() for h in req.headers} == {
        "host",
        "content-length",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }


async def test_ping_command_sends_the_profile_test_event(setup: Setup, receivers: list[Receiver]) -> None:
    import asyncio

    r = await receiver(receivers)
    ep = {"id": "cc", "url": r.url, "profile": "convocore", "secret": "ws-secret"}
    path = setup.write(setup.config([ep], [{"endpoint": "cc", "events": ["*"]}]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "ping",
        "--config",
        str(path),
        "cc",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines()[0].startswith("delivered 200")
    (req,) = r.requests
    body = json.loads(req.body)
    assert body["type"] == "webhook_test"
    assert body["payload"]["message"] == "This is a test event"
    assert body["payload"]["workspaceSecret"] == "ws-secret"
    assert abs(body["payload"]["createdAt"] / 1000 - time.time()) < 60
    (rec,) = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 1)
    assert (rec["trigger"], rec["status"], rec["event_type"], rec["endpoint_id"]) == (
        "ping",
        "delivered",
        "webhook_test",
        "cc",
    )
    assert "ws-secret" not in json.dumps(rec)
