"""The supervisor's hold on one worker: its process, started again when it ends (after a back-off that doubles while
it keeps ending soon after its start), and what it says over its own notify socket (systemd's protocol: READY,
RELOADING, STOPPING, STATUS, WATCHDOG), which the supervisor gives it in place of systemd's.

A worker's files live in the supervisor's private directory: ``worker-N.sock`` (its admin server) and
``notify-N.sock`` (the datagrams it sends, bound by the supervisor for as long as it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# A worker that ends is started again after BACKOFF_S, doubling for each exit in a row up to BACKOFF_MAX_S; one that
# ran for STABLE_S before it ended starts the count again.
BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0


def exit_text(code: int) -> str:
    """``exited with code 3``, or ``was killed by signal 9 (SIGKILL)``."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "?"
    return f"was killed by signal {-code} ({name})"


def backoff_s(failures: int) -> float:
    """How long to wait before starting a worker again after ``failures`` exits in a row (1: the first)."""
    return float(min(BACKOFF_MAX_S, BACKOFF_S * 2 ** max(0, failures - 1)))


class Worker:
    """Worker ``index``: ``run()`` starts its process and starts it again whenever it ends, until ``stop``."""

    def __init__(
        self,
        index: int,
        directory: Path,
        command: Sequence[str],
        environ: Mapping[str, str],
        on_notice: Callable[[Worker, str], None],
    ) -> None:
        """``command``: ``run --config`` (``command()``), which this worker's own options follow; ``environ`` its
        environment (the notify socket is added here); ``on_notice(worker, state)``: a READY, RELOADING or STOPPING it
        sent (its first READY as ``STARTED``: its start-up is complete), and its exits (``EXIT``)."""
        self.index = index
        self.socket = directory / f"worker-{index}.sock"
        self._notify_path = directory / f"notify-{index}.sock"
        self._argv = [*command, "--worker", str(index), "--admin-socket", str(self.socket),
                      "--supervisor", str(os.getpid())]  # fmt: skip
        self._environ = {**environ, "NOTIFY_SOCKET": str(self._notify_path)}
        self._on_notice = on_notice
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.incarnation = 0  # how many processes this worker has had (a scrape says whose it is)
        self.started_at = 0.0  # monotonic, of this process
        self.started = False  # READY=1 since this process began: its start-up is complete
        self.status = "not started"  # the last STATUS= it sent
        self.failures = 0  # exits in a row, each soon after its start
        self.restarts = 0
        self.last_exit: str | None = None  # how its last process ended, and its exit code (-N: killed by signal N)
        self.last_code: int | None = None
        self.restart_at: float | None = None  # monotonic, while it waits to be started again
        self.reloads = 0  # READY=1 after a RELOADING=1: reloads done
        self.last_ping: float | None = None  # monotonic, of its last WATCHDOG=1
        self.generation = 0  # the config (supervisor's count of accepted configs) this process runs
        self.stopping = False  # it said STOPPING=1: it drains, then exits
        self._reloading = False

    @property
    def pid(self) -> int | None:
        """The process's id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def down(self) -> str | None:
        """Why this worker is not running (None: it runs)."""
        if self.pid is not None:
            return None
        if self.restart_at is None:
            return "not running" if self.last_exit is None else f"stopped: it {self.last_exit}"
        again = max(0.0, self.restart_at - time.monotonic())
        row = f", {self.failures} exits in a row" if self.failures > 1 else ""
        return f"it {self.last_exit}; starting it again in {again:.1f} s{row}"

    # --- the notify socket ---

    def open(self) -> None:
        """Bind the notify socket (once, for every process this worker will have)."""
        with contextlib.suppress(FileNotFoundError):
            self._notify_path.unlink()
        sock = self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self._notify_path))
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _read(self) -> None:
        while self._sock is not None:
            try:
                datagram = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("worker %d's notify socket: %s", self.index, exc)
                return
            for line in datagram.decode(errors="replace").splitlines():
                self._notice(*line.partition("=")[::2])

    def _notice(self, key: str, value: str) -> None:
        if key == "WATCHDOG" and value == "1":
            self.last_ping = time.monotonic()
        elif key == "STATUS":
            self.status = value
        elif key == "RELOADING" and value == "1":
            self._reloading = True
            self._on_notice(self, "RELOADING")
        elif key == "READY" and value == "1":
            if self._reloading:
                self._reloading = False
                self.reloads += 1
            first, self.started = not self.started, True
            self._on_notice(self, "STARTED" if first else "READY")
        elif key == "STOPPING" and value == "1":
            self.stopping = True
            self._on_notice(self, "STOPPING")

    # --- the process ---

    async def run(self, stop: asyncio.Event, generation: Callable[[], int]) -> None:
        """Start the process, and start it again each time it ends, until ``stop`` is set (the supervisor then stops
        it). ``generation()``: the config the process about to start reads."""
        while not stop.is_set():
            self.generation = generation()
            proc = await self._start()
            if stop.is_set():  # asked to stop while it was being started: it was not among those told
                proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            ran = time.monotonic() - self.started_at
            self.started = False
            self.last_ping = None
            self._reloading = False
            self.last_code, self.last_exit = code, exit_text(code)
            if stop.is_set():
                self._on_notice(self, "EXIT")
                return
            self.failures = self.failures + 1 if ran < STABLE_S else 1
            delay = backoff_s(self.failures)
            self.restart_at = time.monotonic() + delay
            row = f" ({self.failures} exits in a row)" if self.failures > 1 else ""
            log.error("worker %d (pid %d) %s after %.1f s; starting it again in %.1f s%s", self.index,
                      proc.pid, self.last_exit, ran, delay, row)  # fmt: skip
            self._on_notice(self, "EXIT")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            self.restart_at = None
            if not stop.is_set():
                self.restarts += 1

    async def _start(self) -> asyncio.subprocess.Process:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.incarnation += 1
        self.started = self.stopping = False
        self.status = "starting"
        proc = self._proc = await asyncio.create_subprocess_exec(
            *self._argv, env=self._environ, stdin=subprocess.DEVNULL
        )
        self.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", self.index, proc.pid)
        return proc

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the running process; False when none runs."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        return True

    async def wait(self) -> int | None:
        """Until the process ends; its exit code (None when none was started)."""
        if self._proc is None:
            return None
        return await self._proc.wait()


def command(config: Path, log_level: str | None) -> list[str]:
    """``webhook-router [--log-level L] run --config CONFIG`` as this interpreter runs it."""
    level = ["--log-level", log_level] if log_level else []
    return [sys.executable, "-m", "daemon", *level, "run", "--config", str(config)]
