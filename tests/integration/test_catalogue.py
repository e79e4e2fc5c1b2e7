"""The event catalogue on the real daemon and broker: listed at /v1/event-types (tenant tokens too), and an event that
fails the schema its type validates is never delivered, recorded invalid_payload, dead-lettered and counted."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from tests.helpers import Receiver, produce, read_topic
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_endpoints_api import _environment, api, api_config, ev, new  # noqa: F401 - the fixture

LEAD: dict[str, Any] = {"type": "object", "required": ["lead_id"], "properties": {"lead_id": {"type": "integer"}}}
CATALOGUE: list[dict[str, Any]] = [
    {"name": "lead.created", "description": "A lead was created", "group": "Leads", "schema": LEAD,
     "example": {"event": "lead.created", "tenant": "acme", "lead_id": 7}, "validate": True},
    {"name": "lead.noted", "description": "A note was added to a lead"},
]  # fmt: skip


async def test_an_event_its_schema_refuses_is_never_delivered_but_recorded_dead_lettered_and_counted(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    doc = api_config(setup)
    doc["event_types"] = CATALOGUE
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        assert (await c.call("POST", "/v1/tenants", {"id": "acme"}))[0] == 201
        token = (await c.call("POST", "/v1/tenants/acme/tokens"))[1]["token"]
        status, listed = await c.as_(token).call("GET", "/v1/event-types")
        assert status == 200
        assert listed["data"] == [
            {"group": None, "schema": None, "example": None, "validate": False, **e} for e in CATALOGUE
        ]
        status, created = await c.call("POST", "/v1/endpoints", new("acme", r.url, ["lead.*"]))
        assert status == 201, created

        await produce(setup.broker.bootstrap, setup.topic,
                      [ev("lead.created", lead_id="seven", n=1), ev("lead.created", lead_id=7, n=2),
                       ev("lead.noted", lead_id="any", n=3)])  # fmt: skip
        results = await read_topic(setup.broker.bootstrap, setup.results, lambda rs: len(rs) >= 3)
        by_n = {rec["source_offset"]: rec for rec in results}
        refused = by_n[0]
        assert (refused["status"], refused["attempt"], refused["endpoint_id"]) == ("invalid_payload", 0, created["id"])
        assert refused["error"] == 'does not match the schema of \'lead.created\': $.lead_id: fails "type" ("integer")'
        assert "seven" not in json.dumps(refused)  # the event's values never reach the record
        assert by_n[1]["status"] == by_n[2]["status"] == "delivered"
        letters = await read_topic(setup.broker.bootstrap, f"{setup.prefix}.dead-letter", lambda rs: len(rs) >= 1)
        assert letters[0]["delivery_id"] == refused["delivery_id"] and letters[0]["reason"].startswith(
            "invalid_payload"
        )
        assert letters[0]["event"]["lead_id"] == "seven"  # the dead letter keeps the event, for whoever fixes it

        assert sorted(json.loads(q.body)["n"] for q in r.requests) == [2, 3]
        async with aiohttp.ClientSession() as session, session.get(f"{c.base}/metrics") as resp:
            metrics = await resp.text()
        assert 'webhook_router_events_invalid_payload_total{event_type="lead.created"} 1.0' in metrics

        status, answer = await c.call("POST", f"/v1/deliveries/{refused['delivery_id']}/redeliver")
        assert status == 422 and "never delivered" in answer["error"], answer
        status, counts = await c.call(
            "POST", f"/v1/endpoints/{created['id']}/replay", {"from_time": int(time.time() * 1000) - 3_600_000}
        )
        assert (status, counts) == (200, {"scanned": 3, "matched": 3, "complete": True, "invalid_payload": 1})
        await r.wait_for(4)
        await asyncio.sleep(0.5)
        assert sorted(json.loads(q.body)["n"] for q in r.requests) == [2, 2, 3, 3]
