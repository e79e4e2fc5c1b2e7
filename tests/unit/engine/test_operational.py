"""daemon.engine.operational.Operational at its seam: what it writes to the operational topic, and what it leaves out.

The writer is an in-memory stand-in (tests/unit/standins.py)."""

from __future__ import annotations

import json
from typing import Any, cast

from daemon.core.config import OperationalConfig
from daemon.engine.operational import Operational
from tests.unit.standins import Writer

TOPIC = "wr.operational"


def test_an_event_is_written_keyed_by_its_endpoint_with_who_did_it_and_without_empty_fields() -> None:
    writer = Writer()
    ops = Operational(cast(Any, writer), TOPIC, OperationalConfig(enabled=True, endpoints=["ops"]))
    ops.emit("endpoint.paused", "ep_1", "tenant:acme", reason="tenant: paused", tenant=None)
    (record,) = writer.on(TOPIC)
    body = json.loads(record.value)
    assert record.key == b"ep_1" and record.ack is None
    assert body["type"] == "endpoint.paused" and body["timestamp"].endswith("Z")
    assert body["data"] == {"endpoint_id": "ep_1", "actor": "tenant:acme", "reason": "tenant: paused"}


def test_only_the_events_asked_for_and_never_the_operational_endpoints_own_dead_letters() -> None:
    writer = Writer()
    config = OperationalConfig(enabled=True, endpoints=["ops"], events=["endpoint.*", "delivery.dead_lettered"])
    ops = Operational(cast(Any, writer), TOPIC, config)
    ops.emit("secret.rotated", "ep_1", "admin")
    ops.emit("delivery.dead_lettered", "ops", "router")  # announcing it would loop
    ops.emit("delivery.dead_lettered", "ep_1", "router")
    ops.emit("endpoint.created", "ep_1", "admin")
    assert [json.loads(r.value)["type"] for r in writer.records] == ["delivery.dead_lettered", "endpoint.created"]


def test_nothing_is_written_when_it_is_off() -> None:
    writer = Writer()
    Operational(None, TOPIC, OperationalConfig(enabled=True)).emit("endpoint.created", "ep_1", "admin")
    Operational(cast(Any, writer), TOPIC, OperationalConfig()).emit("endpoint.created", "ep_1", "admin")
    assert writer.records == []
