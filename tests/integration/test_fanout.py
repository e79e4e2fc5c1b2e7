"""One event fanned out to three endpoints: exact body, verifying signature, one results record each."""

from __future__ import annotations

import json

from standardwebhooks.webhooks import Webhook

from tests.helpers import SECRET, Receiver, produce, read_topic
from tests.integration.conftest import Setup, receiver, running


async def test_one_event_three_endpoints(setup: Setup, receivers: list[Receiver]) -> None:
    rs = [await receiver(receivers) for _ in range(3)]
    endpoints = [
        {"id": f"ep-{i}", "url": r.url, "secret": SECRET, "headers": {"X-Tenant": f"t{i}"}} for i, r in enumerate(rs)
    ]
    subs = [
        {"endpoint": "ep-0", "events": ["lead.created"]},
        {"endpoint": "ep-1", "events": ["lead.*"]},
        {"endpoint": "ep-2", "events": ["*"], "topics": [setup.topic]},
    ]
    path = setup.write(setup.config(endpoints, subs))
    body = json.dumps({"event": "lead.created", "lead_id": 1234, "name": "Zoë"}).encode()
    async with running(path):
        await produce(setup.broker.bootstrap, setup.topic, [body])
        for r in rs:
            await r.wait_for(1)
        records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 3)

    ids = set()
    for i, r in enumerate(rs):
        (req,) = r.requests
        assert req.body == body
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["X-Tenant"] == f"t{i}"
        Webhook(SECRET).verify(req.body, req.headers)  # raises if the signature does not verify
        ids.add(req.headers["webhook-id"])
    assert len(ids) == 3

    assert sorted(r["endpoint_id"] for r in records) == ["ep-0", "ep-1", "ep-2"]
    for rec in records:
        assert rec["status"] == "delivered"
        assert rec["http_status"] == 200
        assert rec["event_type"] == "lead.created"
        assert rec["attempt"] == 1
        assert rec["response_body"] == "ok"
        assert rec["source_topic"] == setup.topic
        assert rec["source_offset"] == 0
        assert rec["delivery_id"] in ids
        assert rec["duration_ms"] >= 0
