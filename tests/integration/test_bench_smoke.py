"""The benchmark harness still runs: ``python -m bench --quick`` on its 1 -> 1 scenario. No timings are checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_one_to_one_runs_and_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--scenario", "one-to-one", "--no-results"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| one-to-one |")]
    assert rows, done.stdout[-3000:]
    assert not any("| failed |" in row for row in rows)
