"""Child processes of the harness: each dies with it, and is stopped by its own id, never by name."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


def die_with_parent() -> None:
    """In the child: Linux sends it SIGTERM when the harness dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class Child:
    """One process started with ``argv``; its output goes to ``log`` (or a pipe, with ``pipe_stdout``)."""

    def __init__(self, name: str, argv: list[str], log: Path, pipe_stdout: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self._pipe_stdout = pipe_stdout
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    async def start(self) -> Child:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=subprocess.PIPE if self._pipe_stdout else log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                preexec_fn=die_with_parent,
            )
        return self

    async def read_line(self, within_s: float = 15.0) -> str:
        """The next line the child prints (with ``pipe_stdout``)."""
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within_s)
        if not line:
            raise RuntimeError(f"{self.name} exited before saying anything:\n{self.log_tail()}")
        return line.decode().strip()

    async def output(self, within_s: float) -> str:
        """Everything the child prints until it exits (with ``pipe_stdout``)."""
        assert self.proc is not None
        out, _ = await asyncio.wait_for(self.proc.communicate(), within_s)
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return out.decode()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    async def stop(self, sig: int = signal.SIGTERM, within_s: float = 10.0) -> int | None:
        """Send ``sig`` to this process only, wait, then SIGKILL it if it is still there."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), within_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def status_kb(self, field: str) -> int:
        """A ``/proc/PID/status`` field in kB (``VmHWM``: peak RSS, ``VmRSS``: current); 0 when gone."""
        try:
            return status_kb(self.pid, field)
        except AssertionError:
            return 0


def status_kb(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` field of a process in kB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of stat
    except (OSError, IndexError, ValueError):
        return 0.0


def descendants(pid: int) -> list[int]:
    """The process ids under ``pid`` (its children, theirs...): a supervisor's workers."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                children = [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
        found += children
        todo += children
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of every process under it now (a supervisor and its workers)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in descendants(pid))


async def wait_port(port: int, within_s: float = 15.0, child: Child | None = None) -> None:
    deadline = time.monotonic() + within_s
    while True:
        if child is not None:
            child.check_alive()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            await asyncio.sleep(0.02)


async def http_get(session: aiohttp.ClientSession, url: str) -> tuple[int, str] | None:
    """Status and text of a GET; None when nothing answers."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
