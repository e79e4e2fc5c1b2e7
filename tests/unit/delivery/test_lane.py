"""daemon.delivery.lane.Lane at its seam: a bounded queue and exactly max_concurrency workers per endpoint.

The sender and what the lane settles into are in-memory stand-ins (tests/unit/standins.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from daemon.core.config import CircuitBreakerConfig, DeliveryConfig, EndpointConfig, RateLimitConfig
from daemon.core.event import Event
from daemon.core.model import LIVE, REDELIVERY, REPLAY, Outcome
from daemon.delivery.endpoint import Endpoint
from daemon.delivery.job import Job
from daemon.delivery.lane import Lane, LaneStats, TenantLoad
from tests.unit.standins import ScriptedSender, event, settle_down


class Settles:
    """Keeps every settled outcome; holds back the delivery ids it is told to."""

    def __init__(self) -> None:
        self.settled: list[Outcome] = []
        self.hold: set[str] = set()
        self.asked: list[str] = []
        self.circuits: list[str] = []

    def settle(self, endpoint: Endpoint, job: Job, outcome: Outcome) -> None:
        self.settled.append(outcome)

    def held_back(self, endpoint: Endpoint, job: Job) -> bool:
        self.asked.append(job.delivery_id)
        return job.delivery_id in self.hold

    def circuit(self, endpoint: Endpoint, state: str) -> None:
        self.circuits.append(state)


def lane_of(sender: ScriptedSender, settles: Settles, stats: LaneStats | None = None, **over: Any) -> Lane:
    config = EndpointConfig(id="ep", url="https://ep.example.com/h", profile="raw", secret="whsec_QUJD", **over)
    return Lane(Endpoint(config, DeliveryConfig(), {}), cast(Any, sender), settles, stats or LaneStats())


def job(n: int, trigger: str = LIVE) -> Job:
    return Job(event=Event(event(n), "lead.created", "events", 0, n, 0), delivery_id=f"msg_{n}", ack=None,
               trigger=trigger)  # fmt: skip


async def test_at_most_max_concurrency_attempts_at_once_and_the_rest_queued() -> None:
    gate = asyncio.Event()
    sender, settles, stats = ScriptedSender(gate=gate), Settles(), LaneStats()
    lane = lane_of(sender, settles, stats, max_concurrency=3)
    try:
        for n in range(10):
            assert lane.put(job(n))
        await settle_down()
        assert (lane.busy, lane.queued) == (3, 7)
        assert (stats.busy, stats.queued) == (3, 7)
        gate.set()
        await settle_down(100)
        assert sender.most_under_way == 3
        assert sorted(o.delivery_id or "" for o in settles.settled) == sorted(f"msg_{n}" for n in range(10))
        assert (stats.busy, stats.queued) == (0, 0)
    finally:
        await lane.cancel()


async def test_a_job_waiting_for_room_in_a_lane_that_closes_is_told_and_never_queued_behind_its_workers() -> None:
    """A replay waits for room; the lane closes meanwhile (its endpoint changed or went): its workers finish what they
    hold and stop, so a job queued after them would never be attempted. ``put_wait`` says False instead."""
    gate = asyncio.Event()
    sender, settles = ScriptedSender(gate=gate), Settles()
    lane = lane_of(sender, settles, max_concurrency=1, queue_size=1)
    assert lane.put(job(0)) and (await _taken(lane)) and lane.put(job(1))  # one under way, one queued: full
    waiting = asyncio.create_task(lane.put_wait(job(2, REPLAY)))
    await settle_down()
    assert not waiting.done()
    closing = asyncio.create_task(lane.close())
    gate.set()
    assert await waiting is False
    await closing
    assert sorted(o.delivery_id or "" for o in settles.settled) == ["msg_0", "msg_1"]  # job 2 was never taken


async def _taken(lane: Lane) -> bool:
    await settle_down()
    return lane.busy == 1


async def test_a_full_queue_refuses_unless_forced() -> None:
    gate = asyncio.Event()
    lane = lane_of(ScriptedSender(gate=gate), Settles(), max_concurrency=1, queue_size=2)
    try:
        assert lane.put(job(0))
        await settle_down()  # the worker has taken job 0
        assert lane.put(job(1)) and lane.put(job(2))
        assert not lane.put(job(3))
        assert lane.put(job(3), force=True)
        assert lane.queued == 3
    finally:
        await lane.cancel()


async def test_put_wait_waits_for_room() -> None:
    gate = asyncio.Event()
    lane = lane_of(ScriptedSender(gate=gate), Settles(), max_concurrency=1, queue_size=1)
    try:
        lane.put(job(0))
        await settle_down()
        lane.put(job(1))
        waiting = asyncio.create_task(lane.put_wait(job(2)))
        await settle_down()
        assert not waiting.done()
        gate.set()
        await asyncio.wait_for(waiting, 5)
    finally:
        await lane.cancel()


async def test_a_live_or_replayed_job_is_offered_to_held_back_before_its_attempt_and_no_other() -> None:
    """A pause stops a replay's queued deliveries too (they were delivered to a paused endpoint)."""
    sender, settles = ScriptedSender(), Settles()
    settles.hold = {"msg_1", "msg_3"}
    lane = lane_of(sender, settles)
    try:
        lane.put(job(1))
        lane.put(job(2))
        lane.put(job(3, trigger=REPLAY))
        lane.put(job(4, trigger=REDELIVERY))
        await settle_down(50)
        assert [j.delivery_id for j in sender.attempts] == ["msg_2", "msg_4"]
        assert sorted(settles.asked) == ["msg_1", "msg_2", "msg_3"]
    finally:
        await lane.cancel()


async def test_close_finishes_what_is_queued_and_cancel_counts_what_it_abandons() -> None:
    sender, settles = ScriptedSender(), Settles()
    lane = lane_of(sender, settles, max_concurrency=2)
    for n in range(5):
        lane.put(job(n))
    await lane.close()
    assert len(settles.settled) == 5

    gate = asyncio.Event()
    stats = LaneStats()
    stuck = lane_of(ScriptedSender(gate=gate), Settles(), stats, max_concurrency=2)
    for n in range(5):
        stuck.put(job(n))
    await settle_down()
    assert await stuck.cancel() == 5  # 2 under way, 3 queued
    assert stats.queued == 0


async def test_an_attempt_that_raises_is_settled_as_an_internal_error() -> None:
    class Broken(ScriptedSender):
        async def attempt(self, endpoint: Endpoint, job: Job) -> Outcome:
            raise RuntimeError("a bug")

    settles = Settles()
    lane = lane_of(Broken(), settles)
    try:
        lane.put(job(1))
        await settle_down()
        (outcome,) = settles.settled
        assert (outcome.status, outcome.error) == ("failed", "internal error (see the router's log)")
    finally:
        await lane.cancel()


async def test_a_rate_limited_lane_starts_its_burst_at_once_then_one_attempt_per_interval_never_sooner() -> None:
    """Timing at a seam: never early is exact (the bucket's allowance), not late has a wide margin."""
    starts: list[float] = []

    def status(job: Job) -> int:
        starts.append(time.monotonic())
        return 200

    sender, settles, stats = ScriptedSender(status=status), Settles(), LaneStats()
    lane = lane_of(sender, settles, stats, max_concurrency=4, rate_limit=RateLimitConfig(per_second=20, burst=3))
    try:
        begun = time.monotonic()
        for n in range(9):
            lane.put(job(n))
        assert lane.queued == 9
        async with asyncio.timeout(10):
            while len(settles.settled) < 9:
                await asyncio.sleep(0.01)
        for k in range(9):  # the k-th start: at most the burst and 20 a second before it
            assert starts[k] - begun >= max(0, k - 2) / 20 - 0.001
        assert starts[-1] - begun < 0.3 + 2.0
        assert stats.paced >= 1 and (stats.queued, stats.busy, lane.queued) == (0, 0, 0)
    finally:
        await lane.cancel()


async def test_a_429_slows_an_unlimited_lane_for_its_retry_after_then_it_recovers_and_drops_its_pace() -> None:
    starts: list[float] = []

    def status(job: Job) -> int:
        starts.append(time.monotonic())
        return 429 if job.delivery_id == "msg_0" else 200

    sender, settles, stats = ScriptedSender(status=status), Settles(), LaneStats()
    lane = lane_of(sender, settles, stats, max_concurrency=1)
    original = sender.attempt

    async def with_retry_after(endpoint: Endpoint, job: Job) -> Outcome:
        outcome = await original(endpoint, job)
        if outcome.http_status == 429:
            outcome.retry_after_s = 0.5
        return outcome

    sender.attempt = with_retry_after  # type: ignore[method-assign]
    try:
        assert lane.pace is None
        lane.put(job(0))
        async with asyncio.timeout(5):
            while not settles.settled:
                await asyncio.sleep(0.01)
        assert lane.pace is not None and stats.slowed == 1
        for n in range(1, 40):
            lane.put(job(n))
        async with asyncio.timeout(30):
            while len(settles.settled) < 40:
                await asyncio.sleep(0.01)
        assert starts[1] - starts[0] >= 0.5  # held for its Retry-After, never sooner
        assert lane.pace is None  # recovered: the lane is unlimited again
    finally:
        await lane.cancel()


async def test_cancel_counts_a_job_waiting_for_the_pace_as_abandoned() -> None:
    stats = LaneStats()
    lane = lane_of(ScriptedSender(), Settles(), stats, max_concurrency=1, rate_limit=RateLimitConfig(per_second=0.1))
    lane.put(job(0))
    lane.put(job(1))
    await settle_down(50)
    assert lane.queued == 1  # job 1 taken, waiting 10 s for the pace
    assert await lane.cancel() == 1
    assert stats.queued == 0


async def test_an_open_circuit_attempts_nothing_then_one_probe_at_a_time_and_closes_on_its_success() -> None:
    failing = True
    starts: list[float] = []

    def status(job: Job) -> int:
        starts.append(time.monotonic())
        return 500 if failing else 200

    sender, settles, stats = ScriptedSender(status=status), Settles(), LaneStats()
    breaker = CircuitBreakerConfig(failures=2, cooldown_s=0.3, max_cooldown_s=0.3)
    lane = lane_of(sender, settles, stats, max_concurrency=4, circuit_breaker=breaker)
    try:
        lane.put(job(0))
        lane.put(job(1))
        async with asyncio.timeout(5):
            while len(settles.settled) < 2:
                await asyncio.sleep(0.01)
        assert settles.circuits == ["open"] and stats.circuits_open == 1
        for n in range(2, 10):
            lane.put(job(n))
        async with asyncio.timeout(5):
            while len(settles.settled) < 3:  # the first probe, after the cool-down
                await asyncio.sleep(0.005)
        assert starts[2] - starts[1] >= 0.3  # it opened after the second failure began: the probe, never sooner
        assert sender.most_under_way <= 2 and lane.queued == 7  # the others wait, counted queued
        failing = False
        async with asyncio.timeout(5):
            while len(settles.settled) < 10:
                await asyncio.sleep(0.01)
        assert settles.circuits == ["open", "open", "closed"] and stats.circuits_open == 0
        assert starts[3] - starts[2] >= 0.3  # the failed probe opened it again for its cool-down
    finally:
        await lane.cancel()


async def test_the_lanes_of_one_tenant_count_its_load_and_share_its_rate() -> None:
    """api.max_per_second_per_tenant: one bucket (a second's worth) that each of the tenant's lanes takes from."""
    starts: list[float] = []

    def status(job: Job) -> int:
        starts.append(time.monotonic())
        return 200

    tenant, settles = TenantLoad(most=100, per_second=10), Settles()
    lanes = [lane_of(ScriptedSender(status=status), settles) for _ in range(2)]
    for lane in lanes:
        lane.tenant = tenant
    try:
        begun = time.monotonic()
        for n in range(15):
            lanes[n % 2].put(job(n))
        assert tenant.held == 15
        async with asyncio.timeout(10):
            while len(settles.settled) < 15:
                await asyncio.sleep(0.01)
        assert sorted(starts)[-1] - begun >= 0.5 - 0.001  # 10 at once, then 5 more at 10 a second: never sooner
        assert tenant.held == 0
    finally:
        for lane in lanes:
            await lane.cancel()
