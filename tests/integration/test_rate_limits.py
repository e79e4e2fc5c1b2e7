"""An endpoint's rate limit against the real broker, daemon and receivers that record when each request arrived: held
over a window of 30 s, never above the bucket's allowance and not far below its rate; a 429 with Retry-After holds
the endpoint for it, slows it down and it recovers; none of the waiting is a failure; and a tenant's token keeps under
the platform's ceiling."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
from typing import Any

from tests.helpers import SECRET, DaemonProcess, Receiver, produce, read_topic
from tests.integration.conftest import Setup, receiver, running, spawn
from tests.integration.test_endpoints_api import _environment, api, api_config, new  # noqa: F401 - the fixture
from tests.integration.test_tenant_guard import tenants

# The requests leave the daemon paced by its bucket; they are timed on arrival here. Between the two, one request may
# be held up (the socket, this test's loop) and the next not: arrivals may come closer together than they were sent by
# this much, plus however long this test's loop was held up (measured: a busy machine stalls it), which the allowance
# of a window takes in.
_ARRIVAL_JITTER_S = 0.05


class LoopLag:
    """The longest this test's event loop was held up while it ran (what may bunch the receiver's arrival times)."""

    def __init__(self) -> None:
        self.most = 0.0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.most = max(self.most, loop.time() - before - 0.005)

    def stop(self) -> float:
        self._task.cancel()
        return self.most


def ev(n: int) -> bytes:
    return json.dumps({"event": "lead.created", "n": n}).encode()


def most_in_any_window(times: list[float], width: float) -> int:
    """The most arrivals within any ``width`` seconds (ends included)."""
    times = sorted(times)
    return max(bisect.bisect_right(times, t + width) - i for i, t in enumerate(times))


async def test_a_rate_limit_is_held_over_the_window_never_above_and_not_far_below_with_nothing_failed(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    per_second, burst, seconds = 25, 5, 30  # the window: 30 s
    count = burst + per_second * seconds
    sink = await receiver(receivers)
    endpoint = {"id": "paced", "url": sink.url, "secret": SECRET, "max_concurrency": 8,
                "rate_limit": {"per_second": per_second, "burst": burst}}  # fmt: skip
    setup.write(setup.config([endpoint], [{"endpoint": "paced", "events": ["lead.*"]}]))
    d = await spawn(daemons, setup)
    lag = LoopLag()
    await produce(setup.broker.bootstrap, setup.topic, [ev(n) for n in range(count)])
    arrived = await sink.wait_for(count, within_s=seconds * 4 + 30)
    jitter = _ARRIVAL_JITTER_S + lag.stop()
    times = sorted(r.at for r in arrived)
    span = times[-1] - times[0]
    rate = (count - burst) / span
    print(
        f"\n{count} deliveries at rate_limit {per_second}/s (burst {burst}) over {span:.2f} s: {rate:.2f}/s "
        f"(arrivals timed within {jitter:.3f} s)"
    )
    for width in (0.2, 1.0, 5.0, span):
        assert most_in_any_window(times, width) <= burst + per_second * (width + jitter), width
    assert rate >= per_second * 0.9  # not far below (a busy machine may hold the daemon up: 25.0/s here when idle)
    results = await read_topic(setup.broker.bootstrap, setup.results, lambda rs: len(rs) >= count)
    assert {(r["status"], r["attempt"]) for r in results} == {("delivered", 1)}  # waiting is never a failure
    assert await d.metric("webhook_router_deliveries_paced_total") > 0
    assert await d.metric("webhook_router_retries_scheduled_total") == 0


async def test_a_429_with_retry_after_holds_the_endpoint_for_it_slows_it_down_and_it_recovers(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    per_second, count = 20, 200
    sink = await receiver(receivers, statuses=[200] * 20 + [429] + [200] * 1000, retry_after="1")
    endpoint = {"id": "paced", "url": sink.url, "secret": SECRET, "max_concurrency": 1,
                "rate_limit": {"per_second": per_second, "burst": 1},
                "retry": {"policy": "schedule", "delays_s": [0.5]}}  # fmt: skip
    setup.write(setup.config([endpoint], [{"endpoint": "paced", "events": ["lead.*"]}]))
    d = await spawn(daemons, setup)
    lag = LoopLag()
    await produce(setup.broker.bootstrap, setup.topic, [ev(n) for n in range(count)])
    arrived = await sink.wait_for(count + 1, within_s=90)  # the one answered 429 comes again
    jitter = _ARRIVAL_JITTER_S + lag.stop()
    times = [r.at for r in arrived]
    refused = times[20]
    after = [t for t in times if t > refused]
    print(f"\nfirst request after the 429 {after[0] - refused:.3f} s later (Retry-After: 1)")
    assert after[0] - refused >= 1.0 - jitter  # held for its Retry-After: never sooner
    slowed = after[1:11]  # at half the pace, recovering by 5 % a success
    assert (slowed[-1] - slowed[0]) / 9 > 1 / per_second * 1.2
    recovered = times[-60:]  # back at the configured pace, never above it
    assert most_in_any_window(recovered, 1.0) <= 1 + per_second * (1.0 + jitter)
    gaps = sorted(b - a for a, b in itertools.pairwise(recovered))
    # The median gap: back at the configured pace (50 ms), not at the slowed one (100 ms). With a burst of 1 a late
    # start is never made up, so every gap carries the timer's and the machine's lateness: 30 % of room for it.
    assert gaps[len(gaps) // 2] <= 1 / per_second * 1.3
    assert await d.metric("webhook_router_endpoint_slowdowns_total") == 1
    results = await read_topic(setup.broker.bootstrap, setup.results, lambda rs: len(rs) >= count + 1)
    assert sum(1 for r in results if r["status"] == "delivered") == count


async def test_a_tenant_token_keeps_under_the_platform_ceiling_and_gets_it_by_default(setup: Setup) -> None:
    doc = api_config(setup)
    doc["api"]["max_rate_limit_per_second"] = 10
    async with running(setup.write(doc)), api(setup.admin_port) as c:
        acme = (await tenants(c, "acme"))["acme"]
        url = "http://127.0.0.1:9/hook"
        over: list[tuple[dict[str, Any] | None, str]] = [
            ({"per_second": 11}, "rate_limit.per_second: at most api.max_rate_limit_per_second (10)"),
            ({"per_second": 5, "burst": 11}, "rate_limit.burst: at most 10 (one second of at most "
                                             "api.max_rate_limit_per_second (10))"),
            (None, "rate_limit: required for a tenant's endpoint, with per_second at most "
                   "api.max_rate_limit_per_second (10)"),
        ]  # fmt: skip
        for limit, error in over:
            status, answer = await acme.call("POST", "/v1/endpoints", {"url": url, "events": ["*"],
                                                                      "rate_limit": limit})  # fmt: skip
            assert (status, answer["error"]) == (400, error)
        status, created = await acme.call("POST", "/v1/endpoints", {"url": url, "events": ["*"]})
        assert status == 201, created
        assert created["settings"]["rate_limit"] == {"per_second": 10}
        status, updated = await acme.call("PATCH", f"/v1/endpoints/{created['id']}",
                                          {"rate_limit": {"per_second": 2.5, "burst": 3}})  # fmt: skip
        assert (status, updated["settings"]["rate_limit"]) == (200, {"per_second": 2.5, "burst": 3})
        status, answer = await acme.call("PATCH", f"/v1/endpoints/{created['id']}", {"rate_limit": {"per_second": 50}})
        assert status == 400, answer
        status, platform = await c.call("POST", "/v1/endpoints", new("acme", url, rate_limit={"per_second": 500}))
        assert (status, platform["settings"]["rate_limit"]) == (201, {"per_second": 500})  # the platform sets any
        status, unlimited = await c.call("POST", "/v1/endpoints", new("acme", url))
        assert status == 201 and "rate_limit" not in unlimited["settings"]
