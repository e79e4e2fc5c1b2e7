"""Profiling the router process with py-spy (``pip install py-spy``; not a dependency of the project).

py-spy attaches to the running daemon by pid, samples its Python stacks, and writes them collapsed
(``frame;frame;... count``) on SIGINT. Time spent in C (uvloop, hmac, msgspec, the socket calls) is
counted against the Python frame that called it.
"""

from __future__ import annotations

import shutil
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.procs import Child


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpy:
    def __init__(self, binary: str, pid: int, out: Path, rate: int = 250) -> None:
        self.out = out
        argv = [binary, "record", "-p", str(pid), "-r", str(rate), "--nolineno", "-f", "raw", "-o", str(out)]
        self.child = Child("py-spy", argv, out.with_suffix(".log"))

    async def start(self) -> None:
        await self.child.start()

    async def stop(self) -> None:
        await self.child.stop(signal.SIGINT, within_s=20)


def _is_serving(frames: list[str]) -> bool:
    """Samples of the running event loop, not of start-up imports."""
    return any(f.startswith("Runner.run ") for f in frames) and not any("_find_and_load" in f for f in frames)


_ENTRY = ("(daemon/cli.py)", "(daemon/__main__.py)")


def _package(frame: str) -> str:
    """The package of a frame: ``Sender.attempt (daemon/delivery/sender.py)`` -> ``daemon``."""
    where = frame.rpartition(" (")[2].rstrip(")")
    top = where.split("/", 1)[0] if "/" in where else where
    return "uvloop and C below the loop" if frame.startswith("Runner.run ") else top


def summarize(
    raw: str, top: int = 15
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]:
    """Samples; functions by self samples; the daemon's functions by inclusive samples; packages by self samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for frames, count in _serving(raw):
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            if "(daemon/" in frame and not frame.endswith(_ENTRY):
                inclusive[frame] += count
    return total, own.most_common(top), inclusive.most_common(top), packages.most_common()


# Where a sample's time goes: the first component (in this order) one of whose needles is in one of its frames.
_COMPONENTS = (
    ("admin /metrics scrape (the harness polls it)", ("AdminServer",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    (
        "signature and per-request headers (Endpoint.request_headers)",
        ("Endpoint.request_headers", "(daemon/core/sign.py)"),
    ),
    ("outcome record: build + encode", ("outcome_for ", "utc_now_iso", "encode_outcome", "internal_error ")),
    (
        "delivery index on the loop (its entries built and written, its topic followed)",
        ("index_entry ", "ResultsWriter._index", "DeliveryIndex.", "Follower."),
    ),
    ("results writer (aiokafka producer, ResultsWriter)", ("aiokafka/producer", "ResultsWriter")),
    ("dispatch (Settlement.dispatch: type, match, jobs)", ("Settlement.dispatch",)),
    (
        "settlement and health bookkeeping (Settlement, Health)",
        ("(daemon/engine/settle.py)", "(daemon/engine/health.py)"),
    ),
    ("consumer (aiokafka fetcher, Source.run)", ("aiokafka/", "Source.", "(daemon/core/offsets.py)")),
    (
        "HTTP request (daemon/delivery/http.py: write, aiohttp's pool and parser)",
        ("(daemon/delivery/http.py)", "aiohttp/"),
    ),
    ("rest of Sender.attempt / Lane._work", ("Sender.attempt", "Lane.", "asyncio/queues.py")),
)


def components(raw: str) -> tuple[int, list[tuple[str, int]]]:
    """Samples of the serving loop, and how many fall in each component of the hot path."""
    counts: Counter[str] = Counter()
    total = 0
    for frames, count in _serving(raw):
        total += count
        counts[_component(frames)] += count
    return total, counts.most_common()


def _component(frames: list[str]) -> str:
    if any(n in frames[-1] for n in ("(daemon/delivery/deadline.py)", "(asyncio/timeouts.py)")):
        # By the innermost frame only: Deadlines.within is on the stack for the whole exchange it bounds.
        return "request timeout (daemon/delivery/deadline.py)"
    for name, needles in _COMPONENTS:
        if any(n in frame for frame in frames for n in needles):
            return name
    if frames[-1].startswith("Runner.run "):
        return "event loop, I/O syscalls (uvloop, C)"
    return "other"


def index_thread(raw: str) -> int:
    """Samples of the delivery index's own thread (its SQLite copy's inserts and queries, off the event loop)."""
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if count_text.isdigit() and "IndexStore." in stack and "Runner.run " not in stack:
            total += int(count_text)
    return total


def render(raw: str, top: int = 15, cpu_us: float = 0.0) -> str:
    """Markdown tables: the hot path by component; functions by self time; the daemon's functions by total
    time; packages by self time. ``cpu_us`` (CPU per delivery, measured without the profiler) turns shares
    into microseconds per delivery."""
    total, own, inclusive, packages = summarize(raw, top)
    if total == 0:
        return "_no samples of the running event loop_\n"
    lines = [f"{total} samples of the event loop thread (idle time excluded).", ""]
    _, parts = components(raw)
    lines += ["| share | ≈ µs per delivery | component |", "|---:|---:|---|"]
    for name, n in parts:
        share = n / total
        us = f"{share * cpu_us:.0f}" if cpu_us else "-"
        lines.append(f"| {100 * share:.1f} % | {us} | {name} |")
    beside = index_thread(raw)
    if beside:
        us = f"{beside / total * cpu_us:.0f}" if cpu_us else "-"
        extra = f"(+{100 * beside / total:.1f} %)"
        lines.append(f"| {extra} | {us} | beside the loop: the delivery index's thread (its SQLite copy) |")
    lines.append("")
    lines += ["| self | function (file) |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} % | `{name}` |" for name, n in own]
    lines += ["", "| total | daemon function (file) |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} % | `{name}` |" for name, n in inclusive]
    lines += ["", "| self | package |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} % | {name} |" for name, n in packages]
    return "\n".join(lines) + "\n"


def _serving(raw: str) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) of each collapsed py-spy stack of the serving event loop."""
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if _is_serving(frames):
            yield frames, int(count_text)
