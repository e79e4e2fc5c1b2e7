"""Each profile's status rules, as its platform's document states them, through the real broker and receiver.

agora ("Automatic retry: once, on non-2xx or timeout — live events only") and leadterra ("Any non-2xx
response or a timeout is treated as a delivery failure and triggers the retry schedule") retry every
non-2xx; standard-webhooks keeps the Standard Webhooks rules (404 final, 410 pauses the endpoint).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.helpers import SECRET, Receiver, produce, read_topic
from tests.integration.conftest import Setup, receiver, running
from tests.seeds import AGORA_STATUS_CHANGED, LEADTERRA_REPLY

HTTPS_OFF = {"allow_http": True}  # leadterra is https-only by contract; the test receiver is plain http


def _ended(records: list[dict[str, Any]]) -> bool:
    return any(rec["status"] in ("delivered", "dead_lettered") for rec in records)


async def _run(setup: Setup, endpoint: dict[str, Any], events: list[bytes], until: Any) -> list[dict[str, Any]]:
    doc = setup.config([endpoint], [{"endpoint": endpoint["id"], "events": ["*"]}])
    async with running(setup.write(doc)):
        await produce(setup.broker.bootstrap, setup.topic, events)
        return await read_topic(setup.broker.bootstrap, setup.results, until, within_s=40)


def _attempts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rec for rec in records if rec["delivery_id"]]


@pytest.mark.parametrize("status", [404, 400, 410])
async def test_agora_retries_a_live_event_once_on_any_non_2xx(
    setup: Setup, receivers: list[Receiver], status: int
) -> None:
    r = await receiver(receivers, statuses=[status, 200])
    # The contract's one retry, its delay shortened for the test (the profile's is 60 s).
    ep = {"id": "42", "url": r.url, "profile": "agora", "secret": "s", "retry": {"policy": "once", "delays_s": [1]}}
    everything = await _run(setup, ep, [json.dumps(AGORA_STATUS_CHANGED).encode()], _ended)
    records = _attempts(everything)
    assert [(rec["status"], rec["attempt"], rec["http_status"]) for rec in records] == [
        ("failed", 1, status),
        ("delivered", 2, 200),
    ]
    assert records[1]["redelivery_of_id"] == records[0]["attempt_id"]
    assert len(r.requests) == 2
    assert r.requests[0].body == r.requests[1].body
    assert "endpoint_paused" not in {rec["status"] for rec in everything}  # Agora's contract pauses on nothing


@pytest.mark.parametrize("status", [404, 400, 410])
async def test_leadterra_retries_any_non_2xx_at_the_first_step_of_its_schedule(
    setup: Setup, receivers: list[Receiver], status: int
) -> None:
    r = await receiver(receivers, status=status)
    ep = {"id": "lt", "url": r.url, "profile": "leadterra", **HTTPS_OFF}  # the profile's own schedule: 30 s first
    before = time.time()
    records = await _run(setup, ep, [json.dumps(LEADTERRA_REPLY).encode()], lambda recs: len(recs) >= 1)
    (first,) = _attempts(records)
    assert (first["status"], first["http_status"], first["attempt"]) == ("failed", status, 1)
    due = time.mktime(time.strptime(first["next_attempt_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before + 30 - 1 <= due <= time.time() + 30 + 1  # the first step: 30 s after the attempt


async def test_standard_webhooks_keeps_404_final_and_pauses_on_410(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers, statuses=[404, 410])
    ep = {"id": "sw", "url": r.url, "secret": SECRET, "retry": {"policy": "schedule", "delays_s": [1, 1]}}
    events = [json.dumps({"event": "lead.created", "n": n}).encode() for n in range(2)]

    def two_ended(records: list[dict[str, Any]]) -> bool:
        return sum(1 for rec in records if rec["status"] == "dead_lettered") >= 2

    doc = setup.config([ep], [{"endpoint": "sw", "events": ["*"]}], max_poll_records=1)
    async with running(setup.write(doc)) as app:
        await produce(setup.broker.bootstrap, setup.topic, events[:1])
        await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 1)
        await produce(setup.broker.bootstrap, setup.topic, events[1:])
        records = await read_topic(setup.broker.bootstrap, setup.results, two_ended, within_s=30)
        assert app.metrics.endpoints_paused.labels("gone")._value.get() == 1
    attempts = [(rec["status"], rec["http_status"]) for rec in records if rec["delivery_id"]]
    assert attempts == [("dead_lettered", 404), ("dead_lettered", 410)]  # neither retried
    assert len(r.requests) == 2


async def test_agora_all_other_events_example_arrives_byte_for_byte(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    ep = {"id": "42", "url": r.url, "profile": "agora", "secret": "s"}
    value = json.dumps(AGORA_STATUS_CHANGED, separators=(",", ":")).encode()  # as the seed prints it, compact
    await _run(setup, ep, [value], lambda recs: len(recs) >= 1)
    (req,) = r.requests
    assert req.body == value
