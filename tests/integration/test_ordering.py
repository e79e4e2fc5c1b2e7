"""Ordered delivery per key (ordering = "key") against the real broker, daemon and a receiver that records when each
request of each key arrived and fails some of them: a key's events reach the endpoint one at a time and in offset
order, across retries and a kill -9 of the daemon (its waiting events' offsets were never committed: read again, in
order), while other keys keep flowing past one that waits on a retry."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from tests.helpers import SECRET, DaemonProcess, client_options, serve
from tests.integration.conftest import Setup, spawn

KEYS, PER_KEY = 8, 40


def failing(seq: int) -> bool:
    """Which events fail their first two attempts."""
    return seq % 7 == 3


@dataclass
class KeyedReceiver:
    """Answers each (key, seq) 500 for its first two attempts when ``failing(seq)``, 200 otherwise, after 20 ms."""

    arrivals: list[tuple[float, str, int, int]] = field(default_factory=list)  # (at, key, seq, status)
    tries: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most_at_once: int = 0
    disrupted_at: int = 0  # arrivals when the test disrupted the daemons

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        key, seq = body["key"], body["seq"]
        self.in_flight[key] += 1
        self.most_at_once = max(self.most_at_once, self.in_flight[key])
        try:
            self.tries[key, seq] += 1
            status = 500 if failing(seq) and self.tries[key, seq] <= 2 else 200
            self.arrivals.append((time.time(), key, seq, status))
            await asyncio.sleep(0.02)
            return web.Response(status=status)
        finally:
            self.in_flight[key] -= 1

    def delivered(self) -> set[tuple[str, int]]:
        return {(k, s) for _, k, s, status in self.arrivals if status == 200}


def ev(key: int, seq: int) -> bytes:
    return json.dumps({"event": "lead.created", "key": f"k{key}", "seq": seq}).encode()


def ordered_config(setup: Setup, base: str) -> dict[str, object]:
    endpoint = {"id": "ordered", "url": f"{base}/hook", "secret": SECRET, "ordering": "key", "max_concurrency": 8,
                "retry": {"policy": "schedule", "delays_s": [0.3, 0.3, 0.3]}}  # fmt: skip
    return setup.config([endpoint], [{"endpoint": "ordered", "events": ["lead.*"]}])


async def deliver_in_order(
    setup: Setup, daemons: list[DaemonProcess], disrupt: Callable[[], Awaitable[None]]
) -> KeyedReceiver:
    """Produce KEYS x PER_KEY keyed events to an ordered endpoint of one daemon, ``disrupt`` once a third of them
    have arrived, and wait until every event was delivered; the receiver's record of it."""
    sink = KeyedReceiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", sink.handle)
    runner, base = await serve(app)
    setup.write(ordered_config(setup, base))
    try:
        await spawn(daemons, setup)
        producer = AIOKafkaProducer(**client_options(setup.broker.bootstrap), acks="all", linger_ms=0)
        await producer.start()
        disrupted = False
        try:
            for seq in range(PER_KEY):
                for key in range(KEYS):
                    await producer.send_and_wait(setup.topic, ev(key, seq), key=f"k{key}".encode())
                await asyncio.sleep(0.05)
                if len(sink.arrivals) > KEYS * PER_KEY // 3 and not disrupted:
                    disrupted = True
                    sink.disrupted_at = len(sink.arrivals)
                    await disrupt()
        finally:
            await producer.stop()
        assert disrupted
        deadline = time.monotonic() + 120
        while len(sink.delivered()) < KEYS * PER_KEY:
            assert time.monotonic() < deadline, f"{len(sink.delivered())} of {KEYS * PER_KEY} delivered"
            await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    again = sum(1 for *_, status in sink.arrivals if status == 200) - len(sink.delivered())
    print(f"\n{len(sink.arrivals)} requests for {KEYS * PER_KEY} events, disrupted after {sink.disrupted_at}; "
          f"at most {sink.most_at_once} at once per key; {again} delivered again")  # fmt: skip
    return sink


def assert_in_order(sink: KeyedReceiver) -> None:
    """One request of a key at a time; an event never before every earlier one of its key was delivered; other keys
    delivered while one waited on its retries."""
    assert sink.most_at_once == 1
    for name in (f"k{k}" for k in range(KEYS)):
        done: set[int] = set()
        for _, k, seq, status in sink.arrivals:
            if k != name:
                continue
            assert all(s in done for s in range(seq)), f"{name}: {seq} arrived before {sorted(set(range(seq)) - done)}"
            if status == 200:
                done.add(seq)
    tried = [at for at, k, s, _ in sink.arrivals if (k, s) == ("k0", 3)]
    assert any(tried[0] < at < tried[-1] and k != "k0" for at, k, _, _ in sink.arrivals)


@pytest.mark.parametrize("setup", [3], indirect=True)
async def test_each_key_in_offset_order_one_at_a_time_across_retries_and_a_kill_9_while_other_keys_flow(
    setup: Setup, daemons: list[DaemonProcess]
) -> None:
    async def kill_9_and_start_again() -> None:
        first = daemons[0]
        first.signal(signal.SIGKILL)
        await first.wait()
        await spawn(daemons, setup)

    assert_in_order(await deliver_in_order(setup, daemons, kill_9_and_start_again))


@pytest.mark.parametrize("setup", [3], indirect=True)
async def test_each_key_in_offset_order_one_at_a_time_across_two_rebalances(
    setup: Setup, daemons: list[DaemonProcess]
) -> None:
    """A second instance joins (its share of the partitions moves to it), then the first leaves (SIGTERM: all of them
    move): what waited for its key on a partition that moved is delivered by the new owner, never by both."""

    async def join_then_leave() -> None:
        await spawn(daemons, setup.instance(2))
        await asyncio.sleep(2)
        daemons[0].signal(signal.SIGTERM)

    assert_in_order(await deliver_in_order(setup, daemons, join_then_leave))
