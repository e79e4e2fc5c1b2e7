"""A consumer aiokafka can no longer run is replaced, and nothing is held or lost.

aiokafka's consumer lives on background tasks it never starts again once they end: the group's coordination, its
heartbeat, the fetcher. Each is ended here the way a bug of aiokafka's (or of its transport: uvloop's RuntimeError on a
connection its broker reset, CI of 2026-12-06) ends it: one of the methods it calls raises an exception that is not
Kafka's. That is the only part that is not real: the daemon runs in this process against the real broker and a real
HTTP receiver. Before the router told a broken consumer from a bad batch, the first two held every partition as at a
batch that cannot be decoded, and the third fetched nothing more, saying nothing."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from daemon.app.lifecycle import App
from daemon.kafka.clients import consumer_broken
from tests.helpers import SECRET, Receiver, committed, eventually, produce
from tests.integration.conftest import Setup, parts, receiver, running

PER_PARTITION = 40


def _ev(p: int, n: int) -> bytes:
    return json.dumps({"event": "lead.created", "p": p, "n": n}).encode()


async def _produce(setup: Setup, start: int, stop: int) -> None:
    for p in (0, 1):
        await produce(setup.broker.bootstrap, setup.topic, [_ev(p, n) for n in range(start, stop)], partition=p)


def _break(consumer: Any, task: str) -> None:
    """End one of ``consumer``'s background tasks with a RuntimeError raised by a method it calls."""

    async def fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    def fails_now(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the fetcher's bug")

    coordinator = consumer._coordinator
    if task == "heartbeat":
        coordinator._do_heartbeat = fails
    elif task == "coordination":
        coordinator._maybe_do_autocommit = fails
        coordinator.request_rejoin()  # its loop runs again (a rejoin), and calls it
    else:
        consumer._fetcher._get_actions_per_node = fails_now


def _rebuilds(app: App) -> float:
    value = app.metrics.registry.get_sample_value("webhook_router_consumer_rebuilds_total", {"consumer": "events"})
    return value or 0.0


@pytest.mark.parametrize("setup", [2], indirect=True)
@pytest.mark.parametrize("task", ["heartbeat", "coordination", "fetcher"])
async def test_a_consumer_whose_background_task_ended_is_replaced_and_every_event_delivered(
    setup: Setup, receivers: list[Receiver], task: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = await receiver(receivers)
    path = setup.write(
        setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}])
    )

    def got() -> set[tuple[int, int]]:
        return {(json.loads(q.body)["p"], json.loads(q.body)["n"]) for q in r.requests}

    half = PER_PARTITION // 2
    async with running(path) as app:
        source = parts(app).source
        await _produce(setup, 0, half)
        await eventually(lambda: len(got()) == 2 * half, 30)
        old = source._consumer
        caplog.set_level(logging.INFO, logger="daemon.kafka.consume")
        _break(old, task)
        await eventually(lambda: consumer_broken(old) is not None or source._consumer is not old, 30)
        await _produce(setup, half, PER_PARTITION)  # while it is broken, or already replaced
        await eventually(lambda: len(got()) == 2 * PER_PARTITION, 60)
        assert got() == {(p, n) for p in (0, 1) for n in range(PER_PARTITION)}
        assert source._consumer is not old
        # the old one closed whole: no task of it left running (it would fetch, or keep a member in the group), no
        # connection left open
        coordinator, fetcher = old._coordinator, old._fetcher
        tasks = [coordinator._coordination_task, coordinator._heartbeat_task, coordinator._commit_refresh_task]
        assert all(t is None or t.done() for t in [*tasks, fetcher._fetch_task, *fetcher._pending_tasks])
        assert not any(conn.connected() for conn in old._client._conns.values())  # close() keeps them, closed
        assert _rebuilds(app) == 1
        assert source.stuck == {}  # nothing held as at a batch that cannot be decoded
        await eventually(app.ready, 30)
        marks = {0: PER_PARTITION, 1: PER_PARTITION}
        await eventually(lambda: _committed(setup, marks), 30)  # the new member commits

        # and it goes on: what comes after is delivered too, by the same new consumer
        await _produce(setup, PER_PARTITION, PER_PARTITION + 5)
        await eventually(lambda: len(got()) == 2 * (PER_PARTITION + 5), 30)
        assert _rebuilds(app) == 1
    said = [rec.getMessage() for rec in caplog.records if "Replacing it with a new one" in rec.getMessage()]
    ended = {
        "heartbeat": "events: aiokafka's heartbeat task ended: RuntimeError: unable to perform operation",
        # aiokafka's coordination and fetcher tasks wrap what ended them
        "coordination": "events: aiokafka's coordination task ended: KafkaError: KafkaError: Unexpected error during "
        "coordination RuntimeError('unable to perform operation",
        "fetcher": "events: aiokafka's fetcher task ended: KafkaError: KafkaError: Unexpected error during data",
    }
    assert len(said) == 1 and ended[task] in said[0], said
    assert any("a new consumer replaced the broken one" in rec.getMessage() for rec in caplog.records)
    assert not any("cannot be decoded" in rec.getMessage() for rec in caplog.records)


async def _committed(setup: Setup, expected: dict[int, int]) -> bool:
    marks: dict[int, Any] = await committed(setup.broker.bootstrap, setup.group, setup.topic, 2)
    return marks == expected


async def test_the_retry_tiers_consumer_broken_is_replaced_and_every_retry_delivered(
    setup: Setup, receivers: list[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """The retry tiers' consumer is the same ``Source``: its heartbeat ended while ten retries wait in a tier (each
    held until due), it is replaced, and each retry is delivered when due, once."""
    count = 10
    r = await receiver(receivers, statuses=[500] * count + [200])
    retry = {"policy": "schedule", "delays_s": [2]}
    endpoint = {"id": "x", "url": r.url, "secret": SECRET, "retry": retry}
    path = setup.write(setup.config([endpoint], [{"endpoint": "x", "events": ["*"]}]))
    async with running(path) as app:
        tiers = parts(app).tiers
        await produce(setup.broker.bootstrap, setup.topic, [_ev(0, n) for n in range(count)])
        await r.wait_for(count)  # every first attempt failed: ten retries written to the 2 s tier
        old = tiers._consumer
        caplog.set_level(logging.INFO, logger="daemon.kafka.consume")
        _break(old, "heartbeat")
        await eventually(lambda: consumer_broken(old) is not None or tiers._consumer is not old, 30)
        await r.wait_for(2 * count, within_s=60)
        await eventually(app.ready, 30)
        await asyncio.sleep(4)  # nothing more comes (the tier's 2 s, the new member's join): each retry once
        assert len(r.requests) == 2 * count
        assert sorted(json.loads(q.body)["n"] for q in r.requests[count:]) == list(range(count))
        assert tiers._consumer is not old and tiers.stuck == {}
        value = app.metrics.registry.get_sample_value("webhook_router_consumer_rebuilds_total", {"consumer": "retries"})
        assert value == 1
    said = [rec.getMessage() for rec in caplog.records if "Replacing it with a new one" in rec.getMessage()]
    assert len(said) == 1 and said[0].startswith("retries: aiokafka's heartbeat task ended: RuntimeError"), said
