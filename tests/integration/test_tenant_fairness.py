"""Fairness between tenants against the real broker, daemon and receivers: one tenant's flood to a slow endpoint does
not hold another tenant's small stream behind it. Tenant A holds at most api.max_in_flight_per_tenant deliveries
queued and under way on the instance (the rest wait on the retry tiers), so the instance's in-flight cap never fills
with A's backlog and the consumer keeps reading: B's delay is bounded by reading past what is ahead of its events in
the partitions, never by A's endpoint's pace. A per-tenant rate caps a tenant's endpoints together."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiokafka import AIOKafkaProducer

from tests.helpers import DaemonProcess, Receiver, client_options, produce
from tests.integration.conftest import Setup, receiver, spawn
from tests.integration.test_endpoints_api import _environment, api, api_config, new  # noqa: F401 - the fixture

FLOOD = 100_000  # the flood
B_PER_SECOND, B_SECONDS = 10, 12
B_P99_BOUND_S = 10.0  # reading past A's flood (each event over A's share deferred to a tier), not A's pace


def ev(tenant: str, n: int) -> bytes:
    return json.dumps({"event": "lead.created", "tenant": tenant, "n": n, "t": time.time()}).encode()


@pytest.mark.parametrize("setup", [3], indirect=True)
async def test_a_tenants_flood_to_a_slow_endpoint_does_not_hold_another_tenants_stream_behind_it(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    slow, fast = await receiver(receivers, delay_s=0.5), await receiver(receivers)
    setup.write(api_config(setup))
    await spawn(daemons, setup)
    async with api(setup.admin_port) as c:
        for tenant, sink in (("acme", slow), ("globex", fast)):
            assert (await c.call("POST", "/v1/tenants", {"id": tenant}))[0] == 201
            status, created = await c.call("POST", "/v1/endpoints", new(tenant, sink.url, max_concurrency=4))
            assert status == 201, created
    bootstrap = setup.broker.bootstrap
    started = time.monotonic()
    await produce(bootstrap, setup.topic, [ev("acme", n) for n in range(FLOOD)])
    flooded_s = time.monotonic() - started
    producer = AIOKafkaProducer(**client_options(bootstrap), acks="all", linger_ms=0)
    await producer.start()
    try:
        for n in range(B_PER_SECOND * B_SECONDS):
            await producer.send_and_wait(setup.topic, ev("globex", n))
            await asyncio.sleep(1 / B_PER_SECOND)
    finally:
        await producer.stop()
    arrived = await fast.wait_for(B_PER_SECOND * B_SECONDS, within_s=120)
    delays = sorted(r.at - json.loads(r.body)["t"] for r in arrived)
    p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99) - 1]
    print(f"\nA flooded {FLOOD} events in {flooded_s:.1f} s to an endpoint taking 8/s; B's {len(delays)} deliveries "
          f"at {B_PER_SECOND}/s: delay p50 {p50:.3f} s, p99 {p99:.3f} s, max {delays[-1]:.3f} s; A delivered "
          f"{len(slow.requests)} meanwhile")  # fmt: skip
    assert p99 < B_P99_BOUND_S
    assert len(slow.requests) < FLOOD  # A's backlog was there the whole time
