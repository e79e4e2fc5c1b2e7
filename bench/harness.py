"""What every scenario shares: options, the work directory, the rows of the table, broker/router/limit runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec

from bench.procs import Child, cpu_seconds, descendants, status_kb, tree_cpu_seconds
from bench.router import (
    Metrics,
    Router,
    Sample,
    delivered,
    results_written,
    track,
    wait_ready,
    window_cpu,
    window_rate,
)
from bench.servers import Receiver, start_fast
from bench.workload import Broker, endpoint, labelled_config, labelled_topics, produce_backlog, with_api
from daemon.core.config import KafkaConfig
from daemon.tools.embedded import EmbeddedBroker

T = TypeVar("T")

# The router's default kafka.max_in_flight_events: the most events it holds unfinished at once.
IN_FLIGHT_CAP = int(next(f.default for f in msgspec.structs.fields(KafkaConfig) if f.name == "max_in_flight_events"))


@dataclass(frozen=True)
class Options:
    quick: bool = False
    receiver: str = "auto"  # auto | nginx | python
    workers: int = 2
    profile: bool = False
    size: int = 512  # event body bytes
    concurrency: int = 8  # max_concurrency of each endpoint
    fetch_wait_ms: int = 5  # kafka.fetch_max_wait_ms of the latency scenario
    delivery_index: bool | None = None  # None: the endpoints API off (its default); else on, with the index or not
    duration: float | None = None  # seconds of the soak (None: its default)
    rate: float | None = None  # events/s of the fan-out latency (None: its default)
    count: int | None = None  # endpoints of the control-plane scenario (None: its default)
    tls: bool = False  # the throughput receiver (nginx) over https
    broker: str = "tansu"  # tansu (embedded, in memory) | kafka (one Apache Kafka node: tests/kafka)


@dataclass
class Row:
    scenario: str
    metric: str
    router: str
    limit: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: str = "-"


@dataclass
class Run:
    """One router run: its steady rate, and what was seen along the way."""

    rate: float
    seconds: float
    samples: list[Sample]
    peak_rss_kb: int = 0
    paused: bool = False
    cpu_us: float = 0.0  # the routers' CPU time per delivery, over the same window as the rate
    broker_cpu_us: float = 0.0  # the broker's, likewise
    extra: dict[str, Any] = field(default_factory=dict)


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}/s"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f} x"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


class Bench:
    def __init__(self, options: Options, workdir: Path, session: aiohttp.ClientSession) -> None:
        self.options = options
        self.workdir = workdir
        self.session = session
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.measured: dict[str, Any] = {}  # figures one scenario leaves for another (baselines)
        self.receiver_kind = "?"
        self.profile_text = ""
        self.profile_raw = ""
        self._runs = 0

    def row(self, *args: Any, **kwargs: Any) -> None:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(f"  {row.metric}: {row.router}  limit {row.limit}  ratio {row.ratio}  target {row.target}  {row.met}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}")

    def label(self, name: str) -> str:
        self._runs += 1
        return f"{self._runs:02d}-{name}"

    @contextlib.asynccontextmanager
    async def receiver(self) -> AsyncIterator[Receiver]:
        receiver = await start_fast(self.workdir, self.options.receiver, self.options.tls)
        self.receiver_kind = receiver.kind
        try:
            yield receiver
        finally:
            await receiver.stop()

    @property
    def broker_kind(self) -> str:
        return "one Apache Kafka node" if self.options.broker == "kafka" else "Tansu (memory)"

    @contextlib.asynccontextmanager
    async def broker(self, label: str) -> AsyncIterator[Broker]:
        """A fresh broker: Tansu, or with ``--broker kafka`` one Apache Kafka node (tests/kafka, its jars cached)."""
        if self.options.broker == "kafka":
            from tests.kafka import KafkaCluster, missing_tools

            if (missing := missing_tools()) is not None:
                raise RuntimeError(f"--broker kafka: {missing}")
            async with KafkaCluster(self.workdir / f"kafka-{label}", brokers=1) as cluster:
                yield cluster
            return
        async with EmbeddedBroker(log_path=self.workdir / f"tansu-{label}.log") as broker:
            yield broker

    async def limit(self, urls: Sequence[str], concurrency: int, *args: str) -> dict[str, Any]:
        """Run the bare aiohttp loop (``bench.limit``) in its own process; its JSON answer."""
        argv = [
            sys.executable,
            "-m",
            "bench.limit",
            "--concurrency",
            str(concurrency),
            "--size",
            str(self.options.size),
        ]
        for url in urls:
            argv += ["--url", url]
        child = Child("limit", [*argv, *args], self.workdir / f"{self.label('limit')}.log", pipe_stdout=True)
        await child.start()
        try:
            result: dict[str, Any] = json.loads(await child.output(300))
        finally:
            await child.stop()
        if result.get("errors"):
            raise RuntimeError(f"the bare loop had {result['errors']} failed requests")
        return result

    async def wrk_rate(self, url: str, connections: int = 64, seconds: float = 5.0) -> float:
        """wrk (C, one thread, ``connections`` keep-alive connections) POSTing the same body size to ``url``:
        requests per second; 0 when wrk is not installed (``apt-get install wrk``)."""
        binary = shutil.which("wrk")
        if binary is None:
            return 0.0
        script = self.workdir / "post.lua"
        body = "x" * self.options.size
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        argv = [binary, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url]
        child = Child("wrk", argv, self.workdir / f"{self.label('wrk')}.log", pipe_stdout=True)
        await child.start()
        try:
            out = await child.output(seconds + 60)
        finally:
            await child.stop()
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        return float(found[1]) if found else 0.0

    async def limit_rate(
        self, urls: Sequence[str], concurrency: int, requests: int, client: str = "aiohttp"
    ) -> tuple[float, float]:
        """The bare loop's requests per second, and its CPU µs per request (middle 80 % of the requests)."""
        result = await self.limit(urls, concurrency, "--requests", str(requests), "--client", client)
        return float(result["rate"]), float(result["cpu_us"])

    async def throughput(
        self,
        name: str,
        urls: Sequence[str],
        events: int,
        *,
        dead_url: str | None = None,
        workers: int = 1,
        processes: int = 1,
        partitions: int = 1,
        join_first: bool = False,
        poll_s: float = 0.05,
        on_started: Callable[[list[Router]], Any] | None = None,
        on_done: Callable[[list[Router]], Any] | None = None,
        shaping: dict[str, Any] | None = None,
        keys: int = 0,
    ) -> Run:
        """Deliver ``events`` events, each to every URL (and to ``dead_url``), through ``workers`` routers, each of
        ``processes`` worker processes (``process.workers``: more than one runs a supervisor).

        ``shaping``: settings every endpoint gets besides (``rate_limit``, ``ordering``); ``keys``: the records keyed
        by that many keys in turn. The events are produced first, as a backlog; with ``join_first`` (for several
        routers) the routers join their group first, so that the rate is not measured across a rebalance. The rate is
        that of healthy deliveries (2xx answers) per second, read from each router's /metrics every ``poll_s``.
        """
        label = self.label(name)
        expected = events * len(urls)
        opts = self.options
        async with self.broker(label) as broker:
            topic, _ = await labelled_topics(broker, label, partitions)
            if not join_first:
                await produce_backlog(broker.bootstrap, topic, events, opts.size, keys)
            # Healthy endpoints may queue every event in flight: a backlog is delivered, not deferred to retry tiers.
            eps = [endpoint(f"ep-{i}", url, opts.concurrency, queue_size=IN_FLIGHT_CAP) for i, url in enumerate(urls)]
            eps = [{**ep, **(shaping or {})} for ep in eps]
            if dead_url is not None:
                eps.append(endpoint("dead", dead_url, opts.concurrency, timeout_s=1))
            routers = []
            for w in range(workers):
                config = labelled_config(broker.bootstrap, label, eps)
                if opts.delivery_index is not None:
                    with_api(config, opts.delivery_index)
                if processes > 1:
                    config["process"] = {"workers": processes}
                routers.append(Router(f"{label}-router-{w}", self.workdir, config))
            try:
                for router in routers:
                    await router.start()
                if on_started is not None:
                    await on_started(routers)
                if join_first:
                    await wait_ready(self.session, routers)
                    await produce_backlog(broker.bootstrap, topic, events, opts.size)
                paused = False
                last: list[Metrics] = []
                cpu: list[float] = []
                own_cpu: list[float] = []  # the routers' own processes (a supervisor's, without its workers)
                broker_cpu: list[float] = []
                broker_pid = broker_process_id(broker)

                def seen(_: float, metrics: list[Metrics]) -> None:
                    nonlocal paused, last
                    paused = paused or any(m.get("webhook_router_fetch_paused", 0) > 0 for m in metrics)
                    last = metrics
                    cpu.append(sum(tree_cpu_seconds(r.pid) for r in routers))
                    own_cpu.append(sum(cpu_seconds(r.pid) for r in routers))
                    broker_cpu.append(cpu_seconds(broker_pid) if broker_pid else 0.0)

                samples = await track(
                    self.session, routers, delivered, expected, within_s=300, interval_s=poll_s, on_sample=seen
                )
                if samples[-1][1] < expected:
                    raise TimeoutError(f"{name}: {samples[-1][1]:.0f} of {expected} deliveries after 300 s")
                if on_done is not None:
                    await on_done(routers)
                peak = max(r.child.status_kb("VmHWM") for r in routers)
                if processes > 1:  # the supervisor and its workers, each at its peak
                    peak = max(sum(status_kb(p, "VmHWM") for p in [r.pid, *descendants(r.pid)]) for r in routers)
            finally:
                await asyncio.gather(*(r.stop(kill=dead_url is not None) for r in routers))
        return Run(
            rate=window_rate(samples, expected),
            seconds=samples[-1][0] - samples[0][0],
            samples=samples,
            peak_rss_kb=peak,
            paused=paused,
            cpu_us=window_cpu(samples, cpu, expected) * 1e6,
            broker_cpu_us=window_cpu(samples, broker_cpu, expected) * 1e6,
            extra={
                "per_router": [delivered(m) for m in last],
                "deferred": sum(m.get("webhook_router_deliveries_deferred_total", 0.0) for m in last),
                "results": sum(results_written(m) for m in last),
                "own_cpu_us": window_cpu(samples, own_cpu, expected) * 1e6,
            },
        )


def broker_process_id(broker: Broker) -> int | None:
    """The Tansu process's id, to read its CPU time (EmbeddedBroker keeps its process private)."""
    proc = getattr(broker, "_proc", None)
    pid = getattr(proc, "pid", None)
    return pid if isinstance(pid, int) else None


def spread(items: list[T], count: int) -> list[T]:
    """``count`` items evenly spread over ``items``, its first and last included."""
    if len(items) <= count:
        return items
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
