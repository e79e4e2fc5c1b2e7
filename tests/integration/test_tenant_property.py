"""Issue 19's property, against a live daemon with two tenants: whatever endpoint body a tenant's token sends (any
fields, any sizes, any patterns, headers, conditions, URLs), the other tenant's events are delivered with the same
work (one route checked per event: its own), `/healthz` keeps answering, and memory stays bounded.

The bounds stated here are docs/security.md's ("Multi-tenant threat model"): per event of another tenant, exactly
its own routes are checked; `/healthz` answers within `HEALTHZ_S` (generous: this test shares a 2-core machine); the
process grows by less than `GROWTH_MB` over every example together."""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Receiver, produce
from tests.integration.conftest import Setup, receiver, running
from tests.integration.test_endpoints_api import Client, _environment, api, api_config  # noqa: F401 - the fixture
from tests.integration.test_tenant_cost import CHECKED, metric

HEALTHZ_S = 2.0
GROWTH_MB = 64
EVENTS = 10

_HEADER_NAMES = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,30}\Z") | st.sampled_from(
    ["Authorization", "Proxy-Authorization", "Host", "Content-Length", "webhook-signature", "X-Agora-Event"]
)
_PATTERNS = st.sampled_from(["*", "lead.*", "lead.created", "x.*", "a" * 250, "", "*.*", "lead.created"]) | st.text(
    max_size=40
)


def _bodies(victim_url: str) -> st.SearchStrategy[dict[str, Any]]:
    urls = st.sampled_from(
        [
            victim_url,
            "https://hooks.example.com/in",
            "http://169.254.169.254/latest",
            "http://127.1/",
            "https://" + "a" * 2100 + ".example/",
            "https://a.example/\r\nX: 1",
            "http://[::1]/",
        ]
    )
    events = st.lists(_PATTERNS, max_size=150) | st.just(["*"] * 120)
    fields: dict[str, st.SearchStrategy[Any]] = {
        "headers": st.dictionaries(_HEADER_NAMES, st.text(max_size=1_200), max_size=24),
        "where": st.fixed_dictionaries({"field": st.sampled_from(["tenant", "org.id", ""])}, optional={
            "one_of": st.lists(st.text(max_size=10), max_size=200), "none_of": st.lists(st.text(max_size=10))}),
        "profile": st.sampled_from(["standard-webhooks", "crm", "agora", "raw", "leadterra", "convocore", "zapier"]),
        "timeout_s": st.floats(allow_nan=False, min_value=-1, max_value=1e6),
        "max_concurrency": st.integers(-1, 10_000),
        "queue_size": st.integers(-1, 10_000_000),
        "description": st.text(max_size=600),
        "tenant": st.sampled_from(["hostile", "victim", "nobody"]),
        "topics": st.lists(st.text(max_size=20), max_size=5),
    }  # fmt: skip
    return st.fixed_dictionaries({"url": urls, "events": events}, optional=fields)


@pytest.fixture
async def tenants(
    setup: Setup, receivers: list[Receiver]
) -> AsyncIterator[tuple[Setup, Client, Client, Receiver, int]]:
    victim_r = await receiver(receivers)
    async with running(setup.write(api_config(setup))), api(setup.admin_port) as c:
        for tenant in ("hostile", "victim"):
            assert (await c.call("POST", "/v1/tenants", {"id": tenant}))[0] == 201
        _, token = await c.call("POST", "/v1/tenants/hostile/tokens")
        hostile = c.as_(token["token"])
        body = {"tenant": "victim", "url": victim_r.url, "events": ["lead.*"], "allow_http": True}
        assert (await c.call("POST", "/v1/endpoints", body))[0] == 201
        yield setup, c, hostile, victim_r, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _slowest_healthz(c: Client, stop: asyncio.Event) -> float:
    slowest = 0.0
    while not stop.is_set():
        began = time.monotonic()
        async with c.session.get(f"{c.base}/healthz") as resp:
            assert resp.status == 200
        slowest = max(slowest, time.monotonic() - began)
        await asyncio.sleep(0.05)
    return slowest


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.timeout(600)
async def test_no_endpoint_body_a_tenant_can_send_costs_another_tenant_work_time_or_memory(
    tenants: tuple[Setup, Client, Client, Receiver, int], data: st.DataObject
) -> None:
    setup, c, hostile, victim_r, rss_before = tenants  # the peak RSS once the daemon was up, before any example
    body = data.draw(_bodies(victim_r.url), label="body")
    status, answer = await hostile.call("POST", "/v1/endpoints", body)
    assert status < 500, answer
    created = answer["id"] if status == 201 else None

    before, arrived = await metric(setup.admin_port, CHECKED), len(victim_r.requests)
    stop = asyncio.Event()
    watch = asyncio.create_task(_slowest_healthz(c, stop))
    events = [json.dumps({"event": "lead.created", "tenant": "victim", "n": n}).encode() for n in range(EVENTS)]
    await produce(setup.broker.bootstrap, setup.topic, events)
    await victim_r.wait_for(arrived + EVENTS, within_s=60)
    stop.set()
    slowest = await watch

    assert len(victim_r.requests) == arrived + EVENTS  # its own events, once each: nothing of the hostile endpoint's
    assert await metric(setup.admin_port, CHECKED) - before == EVENTS  # one route an event: the victim's own
    assert slowest < HEALTHZ_S
    if created is not None:
        assert (await hostile.call("DELETE", f"/v1/endpoints/{created}"))[0] == 204
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < GROWTH_MB
