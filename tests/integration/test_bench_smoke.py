"""The benchmark harness still runs: ``python -m bench --quick`` on its 1 -> 1 scenario and a short soak. No timings
or verdicts are checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str, timeout: float) -> str:
    """``python -m bench --quick ARGS --no-results``: its output, once it exited 0."""
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", *args, "--no-results"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_quick_one_to_one_runs_and_prints_its_table() -> None:
    out = _bench("--scenario", "one-to-one", timeout=100)
    rows = [line for line in out.splitlines() if line.startswith("| one-to-one |")]
    assert rows, out[-3000:]
    assert not any("| failed |" in row for row in rows)


def test_bench_quick_soak_runs_and_reports_every_figure() -> None:
    out = _bench("--scenario", "soak", "--duration", "8", timeout=150)
    rows = [line for line in out.splitlines() if line.startswith("| soak |")]
    figures = ("| RSS", "| event loop tasks", "| sockets", "| file descriptors", "| consumer lag", "| events lost")
    assert all(any(row.startswith(f"| soak {figure}") for row in rows) for figure in figures), out[-3000:]
    assert not any("| failed |" in row for row in rows)
