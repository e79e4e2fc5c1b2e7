"""Where the latency goes: the daemon run with timing probes, beside Kafka alone, each on a fresh broker.

``python -m bench.probe [--rate 1000] [--duration 4] [--fetch-max-wait-ms 5]`` starts a Tansu broker, the
recording receiver and the daemon in a child process whose ``App._dispatch`` and ``Sender.attempt`` are
wrapped (``python -m bench.probe --daemon CONFIG``), produces paced events carrying their send
time, and prints p50 / p99 in ms from the send to: the record's dispatch in the daemon, the start of its
attempt, its arrival at the receiver, and the attempt's end. Then
the same producer with a bare aiokafka consumer on another fresh broker (the floor). The probes cost a
little CPU per event: the figures decompose the latency, they are not the reported one (``python -m bench
--scenario latency``).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from bench.procs import http_get
from bench.servers import start_python
from bench.workload import endpoint, kafka_latency, produce_paced, router_config, sent_at
from daemon.tools.embedded import EmbeddedBroker, free_port


def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.2f} / {ordered[int(0.99 * (len(ordered) - 1))]:.2f}"


def run_probed_daemon(config: str) -> None:
    """The daemon with probes; writes the probes' samples as JSON beside its config when it exits."""
    import daemon.delivery.sender
    import daemon.engine.settle
    from daemon.cli import main

    samples: dict[str, list[float]] = {"dispatch": [], "attempt": [], "answered": []}

    def note(name: str, value: bytes) -> None:
        sent = sent_at(value)
        if sent is not None:
            samples[name].append((time.time() - sent) * 1000)

    dispatch = daemon.engine.settle.Settlement.dispatch
    attempt = daemon.delivery.sender.Sender.attempt

    def probed_dispatch(self: Any, record: Any, part: Any) -> None:
        note("dispatch", record.value)
        dispatch(self, record, part)

    async def probed_attempt(self: Any, endpoint: Any, job: Any) -> Any:
        note("attempt", job.event.value)
        outcome = await attempt(self, endpoint, job)
        note("answered", job.event.value)
        return outcome

    daemon.engine.settle.Settlement.dispatch = probed_dispatch  # type: ignore[method-assign]
    daemon.delivery.sender.Sender.attempt = probed_attempt  # type: ignore[method-assign]
    atexit.register(lambda: Path(config).with_suffix(".probes.json").write_text(json.dumps(samples)))
    sys.argv = ["webhook-router", "run", "--config", config]
    main()


async def measure(
    rate: float, duration: float, fetch_wait_ms: int, size: int, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    workdir = Path(tempfile.mkdtemp(prefix="probe-"))
    receiver = await start_python(workdir, record=True)
    rows: dict[str, str] = {}
    try:
        async with EmbeddedBroker() as broker, aiohttp.ClientSession() as session:
            await broker.create_topics(["events"], 1)
            await broker.create_topics(["results"], 1)
            port = free_port()
            config = router_config(
                bootstrap=broker.bootstrap,
                group="probe",
                topic="events",
                results="results",
                admin_port=port,
                endpoints=[endpoint("ep-0", receiver.url(), 8, queue_size=10_000)],
                fetch_max_wait_ms=fetch_wait_ms,
            )
            for section, values in (extra or {}).items():
                config.setdefault(section, {}).update(values)
            path = workdir / "router.toml"
            path.write_text(tomli_w.dumps(config))
            argv = [sys.executable, "-m", "bench.probe", "--daemon", str(path)]
            child = await asyncio.create_subprocess_exec(*argv)
            for _ in range(300):
                answer = await http_get(session, f"http://127.0.0.1:{port}/readyz")
                if answer is not None and answer[0] == 200:
                    break
                await asyncio.sleep(0.1)
            await http_get(session, receiver.url("/__stats?reset=1"))
            await produce_paced(broker.bootstrap, "events", rate, duration, size)
            await asyncio.sleep(2)
            answer = await http_get(session, receiver.url("/__stats?reset=1"))
            arrivals: list[float] = json.loads(answer[1])["latencies_ms"] if answer else []
            child.send_signal(signal.SIGTERM)
            await child.wait()
            probes: dict[str, list[float]] = json.loads(path.with_suffix(".probes.json").read_text())
        rows["send -> dispatched in the daemon"] = _pct(probes["dispatch"])
        rows["send -> attempt started"] = _pct(probes["attempt"])
        rows["send -> arrival at the receiver"] = _pct(arrivals)
        rows["send -> answer read, attempt done"] = _pct(probes["answered"])
        async with EmbeddedBroker() as broker:
            await broker.create_topics(["alone"], 1)
            rows["Kafka alone: send -> a bare consumer"] = _pct(
                await kafka_latency(broker.bootstrap, "alone", rate, duration, size, fetch_wait_ms)
            )
    finally:
        await receiver.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    example = '{"retry": {"tiers_s": [5]}}'
    parser.add_argument("--config-json", default="{}", help=f"merged into the config by section, e.g. '{example}'")
    parser.add_argument("--daemon", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.daemon:
        run_probed_daemon(args.daemon)
        return
    extra = json.loads(args.config_json)
    rows = asyncio.run(measure(args.rate, args.duration, args.fetch_max_wait_ms, args.size, extra))
    print(f"| {args.rate:,.0f} events/s, fetch_max_wait_ms={args.fetch_max_wait_ms} | p50 / p99, ms |")
    print("|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
