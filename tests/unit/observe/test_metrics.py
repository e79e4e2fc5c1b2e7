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


def _exposition(metrics: Metrics) -> list[str]:
    lines = generate_latest(metrics.registry).decode().splitlines()
    wanted = ("deliveries_total", "delivery_duration")
    return sorted(line for line in lines if any(w in line for w in wanted) and "_created" not in line)


def test_attempts_tallied_read_as_if_each_had_been_observed() -> None:
    tallied, observed = Metrics(), Metrics()
    attempts = [("delivered", "2xx", 0.0004), ("delivered", "2xx", 0.001), ("delivered", "2xx", 0.3),
                ("failed", "5xx", 2.5), ("failed", "timeout", 130.0), ("failed", "connection", 0.0)]  # fmt: skip
    for round_ in range(2):  # folded at the first read, then tallied again
        for outcome, status_class, seconds in attempts[round_ * 3 : round_ * 3 + 3]:
            tallied.attempts.add(outcome, status_class, seconds)
            observed.deliveries.labels(outcome, status_class).inc()
            observed.delivery_duration.labels(outcome).observe(seconds)
        assert _exposition(tallied) == _exposition(observed)
    assert 'webhook_router_delivery_duration_seconds_bucket{le="0.001",outcome="delivered"} 2.0' in _exposition(tallied)
    timeouts = {"outcome": "failed", "status_class": "timeout"}
    assert tallied.registry.get_sample_value("webhook_router_deliveries_total", timeouts) == 1


def test_a_scrape_of_some_names_serves_those_series_alone_with_what_was_tallied() -> None:
    metrics = Metrics()
    metrics.attempts.add("delivered", "2xx", 0.002)
    metrics.attempts.add("failed", "5xx", 0.002)
    metrics.requests_in_flight.set(3)
    text = metrics.exposition(["webhook_router_deliveries_total"]).decode()
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert sorted(samples) == [
        'webhook_router_deliveries_total{outcome="delivered",status_class="2xx"} 1.0',
        'webhook_router_deliveries_total{outcome="failed",status_class="5xx"} 1.0',
    ]  # folded in although the fold has no name of its own; nothing else
    metrics.attempts.add("delivered", "2xx", 0.002)
    assert 'status_class="2xx"} 2.0' in metrics.exposition(["webhook_router_deliveries_total"]).decode()
    assert _steady(metrics.exposition()) == _steady(generate_latest(metrics.registry))  # no names: everything


def _steady(text: bytes) -> list[str]:
    """An exposition without the values that move between two reads of one process (its CPU time, memory and
    collections: two scrapes a microsecond apart once differed by 0.01 s of CPU and failed CI)."""
    moving = ("process_", "python_gc_")
    return [line for line in text.decode().splitlines() if not line.startswith(moving)]
