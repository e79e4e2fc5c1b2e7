"""``webhook-router demo`` as a user runs it: a real process with its own broker, receiver and router."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.tansu_smoke  # also run against Tansu in CI (make smoke-tansu)

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "daemon", "demo"]


def test_demo_delivers_and_records_results() -> None:
    proc = subprocess.run(
        [*DEMO, "--events", "4", "--rate", "10"], cwd=ROOT, capture_output=True, text=True, timeout=90, check=False
    )

    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    deliveries = [line for line in lines if line.startswith("-> delivery")]
    results = [line for line in lines if line.startswith("<- result")]
    assert deliveries
    assert all("signature verified: yes" in line for line in deliveries)
    assert any(" delivered " in line for line in results)
    assert any(" invalid_event " in line and "not valid JSON" in line for line in results)
    assert lines[-1].startswith("== done") and "4 events sent" in lines[-1]


def test_demo_stops_cleanly_on_sigint() -> None:
    with subprocess.Popen(
        [*DEMO, "--rate", "20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # until the first results record: the router is up and delivering
                if line.startswith("<- result"):
                    break
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            watchdog.cancel()

    assert proc.returncode == 0, err[-4000:]
    assert "Traceback" not in err
    assert "== SIGINT: stopping" in out
    assert "== done " in out
