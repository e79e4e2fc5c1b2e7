"""Metrics read at scrape time."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from daemon.observe.metrics import Metrics


def _tasks(metrics: Metrics) -> float:
    line = next(
        line for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith("webhook_router_event_loop_tasks ")
    )  # fmt: skip
    return float(line.split()[1])


async def test_the_event_loop_tasks_are_counted_when_scraped_on_the_loop() -> None:
    metrics = Metrics()
    before = _tasks(metrics)
    sleepers = [asyncio.create_task(asyncio.sleep(10)) for _ in range(5)]
    try:
        assert _tasks(metrics) == before + 5
    finally:
        for task in sleepers:
            task.cancel()
        await asyncio.gather(*sleepers, return_exceptions=True)
    assert _tasks(metrics) == before


def test_a_scrape_outside_an_event_loop_counts_none() -> None:
    assert _tasks(Metrics()) == 0
