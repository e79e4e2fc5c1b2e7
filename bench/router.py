"""The router under test, as a real process, and what the harness reads from its /metrics."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import tomli_w

from bench.procs import Child, http_get

Metrics = dict[str, float]
Sample = tuple[float, float]  # (perf_counter seconds, count)


def parse_metrics(text: str) -> Metrics:
    """Prometheus text: every series by its full name, plus each labelled metric summed over its labels."""
    out: Metrics = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        number = float(value)
        out[series] = number
        name, brace, _ = series.partition("{")
        if brace:
            out[name] = out.get(name, 0.0) + number
    return out


def sum_prefix(metrics: Metrics, prefix: str) -> float:
    """Sum of the series whose full name starts with ``prefix`` (e.g. one label value)."""
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


# What ``track`` polls: the counts it waits on and what the throughput scenarios read from its samples.
POLLED = (
    "webhook_router_deliveries_total",
    "webhook_router_results_written_total",
    "webhook_router_deliveries_deferred_total",
    "webhook_router_fetch_paused",
)


def results_written(m: Metrics) -> float:
    return m.get("webhook_router_results_written_total", 0.0)


def delivered(m: Metrics) -> float:
    return sum_prefix(m, 'webhook_router_deliveries_total{outcome="delivered"')


class Router:
    """``sys.executable -m daemon run --config FILE`` with its config written as TOML beside its log."""

    def __init__(self, name: str, workdir: Path, config: dict[str, Any]) -> None:
        self.name = name
        self.admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(tomli_w.dumps(config))
        argv = [sys.executable, "-m", "daemon", "run", "--config", str(self.config_path)]
        self.child = Child(name, argv, workdir / f"{name}.log")

    @property
    def pid(self) -> int:
        return self.child.pid

    async def start(self) -> Router:
        await self.child.start()
        return self

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        self.child.check_alive()
        answer = await http_get(session, f"http://127.0.0.1:{self.admin_port}/readyz")
        return answer is not None and answer[0] == 200

    async def metrics(self, session: aiohttp.ClientSession, names: Sequence[str] = ()) -> Metrics:
        """Its /metrics; with ``names``, only those series (``name[]``: a poll 20 times a second costs the router a
        few counters, not its every family, which a Prometheus scraping every 15 s would never cost it)."""
        self.child.check_alive()
        query = "?" + urlencode([("name[]", name) for name in names]) if names else ""
        answer = await http_get(session, f"http://127.0.0.1:{self.admin_port}/metrics{query}")
        return parse_metrics(answer[1]) if answer is not None and answer[0] == 200 else {}

    async def stop(self, kill: bool = False) -> None:
        import signal

        await self.child.stop(signal.SIGKILL if kill else signal.SIGTERM, within_s=15)


async def wait_ready(session: aiohttp.ClientSession, routers: Sequence[Router], within_s: float = 30.0) -> None:
    """Every router a joined member of the group; then, after a rebalance could have started, still so."""
    deadline = time.monotonic() + within_s
    for settle in (0.0, 1.0) if len(routers) > 1 else (0.0,):
        await asyncio.sleep(settle)
        while not all(await asyncio.gather(*(r.ready(session) for r in routers))):
            if time.monotonic() > deadline:
                raise TimeoutError("the routers did not join their group")
            await asyncio.sleep(0.1)


async def track(
    session: aiohttp.ClientSession,
    routers: Sequence[Router],
    count: Callable[[Metrics], float],
    until: float,
    within_s: float,
    interval_s: float = 0.05,
    on_sample: Callable[[float, list[Metrics]], None] | None = None,
) -> list[Sample]:
    """Poll every router's /metrics (the series ``POLLED``) until ``count`` summed over them reaches ``until``; returns
    the samples.

    Stops early, without raising, once ``within_s`` has passed.
    """
    samples: list[Sample] = []
    deadline = time.perf_counter() + within_s
    while True:
        before = time.perf_counter()
        metrics = list(await asyncio.gather(*(r.metrics(session, POLLED) for r in routers)))
        now = time.perf_counter()
        total = sum(count(m) for m in metrics)
        samples.append(((before + now) / 2, total))
        if on_sample is not None:
            on_sample(now, metrics)
        if total >= until or now > deadline:
            return samples
        await asyncio.sleep(interval_s)


def crossing(samples: Sequence[Sample], level: float) -> float | None:
    """When the count reached ``level``, interpolated between the two samples around it."""
    prev = samples[0]
    for t, c in samples:
        if c >= level:
            t0, c0 = prev
            return t if c == c0 else t0 + (t - t0) * (level - c0) / (c - c0)
        prev = (t, c)
    return None


def window_cpu(
    samples: Sequence[Sample], cpu: Sequence[float], total: float, lo: float = 0.1, hi: float = 0.9
) -> float:
    """CPU seconds per counted item between the samples around ``lo`` and ``hi`` of ``total`` (``cpu``: per sample)."""
    first = next((i for i, (_, c) in enumerate(samples) if c >= lo * total), None)
    last = next((i for i, (_, c) in enumerate(samples) if c >= hi * total), None)
    if first is None or last is None or last <= first or len(cpu) != len(samples):
        return 0.0
    counted = samples[last][1] - samples[first][1]
    return (cpu[last] - cpu[first]) / counted if counted > 0 else 0.0


def window_rate(samples: Sequence[Sample], total: float, lo: float = 0.1, hi: float = 0.9) -> float:
    """Steady rate: the count between ``lo`` and ``hi`` of ``total`` over the time it took (start-up excluded)."""
    t_lo, t_hi = crossing(samples, lo * total), crossing(samples, hi * total)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return 0.0
    return (hi - lo) * total / (t_hi - t_lo)
