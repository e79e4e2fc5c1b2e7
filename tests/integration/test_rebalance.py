"""A second member joins the group: the first drains and commits on revoke, and stays paused after."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from daemon.tools.embedded import free_port
from tests.helpers import SECRET, Receiver, eventually, read_topic
from tests.integration.conftest import Setup, parts, receiver, running
from tests.integration.test_signals import produce_keyed


@pytest.mark.parametrize("setup", [2], indirect=True)
async def test_pause_survives_a_rebalance_and_nothing_is_lost(setup: Setup, receivers: list[Receiver]) -> None:
    hold = asyncio.Event()
    r = await receiver(receivers, hold=hold)
    ep = {"id": "held", "url": r.url, "secret": SECRET, "max_concurrency": 5, "timeout_s": 60}
    config = setup.config([ep], [{"endpoint": "held", "events": ["*"]}], max_in_flight_events=5)
    config["delivery"]["drain_timeout_s"] = 1
    first_path = setup.write(config)
    config["admin"]["listen"] = f"127.0.0.1:{free_port()}"
    second_path = setup.write(config, first_path.with_name("second.toml"))
    total = 40
    await produce_keyed(setup.broker.bootstrap, setup.topic, total)

    async with running(first_path) as first:
        await r.wait_for(5)
        await eventually(lambda: first.metrics.fetch_paused.labels("events")._value.get() == 1, 10)
        async with running(second_path) as second:
            await eventually(lambda: parts(first).source.joined and parts(second).source.joined, 30)
            consumer = parts(first).source._consumer
            assert consumer.assignment(), "the first member kept no partition"
            assert consumer.paused() == consumer.assignment()  # the pause was re-applied after the rebalance
            await asyncio.sleep(1.0)
            assert parts(first).source.offsets.in_flight == 5
            hold.set()

            def all_delivered(records: list[dict[str, Any]]) -> bool:
                got = {
                    (rec["source_partition"], rec["source_offset"]) for rec in records if rec["status"] == "delivered"
                }
                return len(got) >= total

            await read_topic(setup.broker.bootstrap, setup.results, all_delivered, within_s=60)
    assert {json.loads(req.body)["n"] for req in r.requests} == set(range(total))


async def test_a_drain_on_revoke_longer_than_the_session_timeout_keeps_the_member_and_delivers_nothing_twice(
    setup: Setup, receivers: list[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """A second member joins while the first has deliveries under way that take 4 s, longer than the session timeout
    (3 s): the group waits for the first one's drain and commit (kafka's rebalance timeout covers
    ``delivery.drain_timeout_s``) instead of dropping it, which made its commit fail and the next owner deliver what
    it had drained again, and the next rebalance the same. Tansu waits for every member however long it takes: there
    this passes either way; Apache Kafka dropped the member."""
    r = await receiver(receivers, delay_s=4)
    ep = {"id": "slow", "url": r.url, "secret": SECRET, "max_concurrency": 5, "timeout_s": 30}
    config = setup.config([ep], [{"endpoint": "slow", "events": ["*"]}])
    first_path = setup.write(config)
    second_path = setup.instance(2).path
    total = 5
    await produce_keyed(setup.broker.bootstrap, setup.topic, total)

    async with running(first_path) as first:
        await r.wait_for(total)
        async with running(second_path) as second:
            await eventually(lambda: parts(first).source.joined and parts(second).source.joined, 30)
            await asyncio.sleep(5)  # whatever the next owner would read again has arrived by now
    assert sorted(json.loads(req.body)["n"] for req in r.requests) == list(range(total))
    assert "offset commit failed" not in caplog.text
