"""The supervisor's hold on a worker (``daemon.app.workers``): the back-off between starts, how an exit is told, and
what a worker says over its notify socket (a real unix datagram socket, as systemd's)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from daemon.app.supervisor import workers_of
from daemon.app.workers import BACKOFF_MAX_S, Worker, backoff_s, exit_text
from daemon.core.validate import parse_config


def test_the_back_off_doubles_with_each_exit_in_a_row_up_to_its_cap() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 16, 30]
    assert backoff_s(100) == BACKOFF_MAX_S


def test_an_exit_is_told_by_its_code_or_its_signal() -> None:
    assert exit_text(0) == "exited with code 0"
    assert exit_text(3) == "exited with code 3"
    assert exit_text(-9) == "was killed by signal 9 (SIGKILL)"
    assert exit_text(-6) == "was killed by signal 6 (SIGABRT)"


async def test_what_a_worker_says_on_its_notify_socket_is_heard(tmp_path: Path) -> None:
    heard: list[str] = []
    worker = Worker(1, tmp_path, ["true"], {}, lambda w, state: heard.append(state))
    worker.open()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for datagram in ("STATUS=joining consumer group g", "WATCHDOG=1", "READY=1",
                             "RELOADING=1\nMONOTONIC_USEC=5", "READY=1", "STOPPING=1"):  # fmt: skip
                sock.sendto(datagram.encode(), str(tmp_path / "notify-1.sock"))
        for _ in range(100):
            if len(heard) == 4:
                break
            await asyncio.sleep(0.01)
    finally:
        worker.close()
    assert heard == ["STARTED", "RELOADING", "READY", "STOPPING"]
    assert worker.started and worker.reloads == 1 and worker.last_ping is not None
    assert worker.status == "joining consumer group g"
    assert worker.socket == tmp_path / "worker-1.sock"


def test_workers_auto_is_the_cpus_this_process_may_use_and_a_number_is_itself() -> None:
    kafka = {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"}
    assert workers_of(parse_config({"kafka": kafka, "process": {"workers": 3}}, {})) == 3
    assert workers_of(parse_config({"kafka": kafka, "process": {"workers": "auto"}}, {})) >= 1


def test_the_private_directories_of_supervisors_that_are_gone_are_removed_and_no_other(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from daemon.app.supervisor import PREFIX, sweep

    ended = subprocess.Popen([sys.executable, "-c", "pass"])  # a process id that has ended
    ended.wait()
    dead, alive, other = tmp_path / f"{PREFIX}dead", tmp_path / f"{PREFIX}alive", tmp_path / f"{PREFIX}made"
    for directory in (dead, alive, other):
        directory.mkdir()
        (directory / "config.toml").write_text("secret = 'x'")
    (dead / "supervisor.pid").write_text(str(ended.pid))
    (alive / "supervisor.pid").write_text(str(os.getpid()))
    bench = tmp_path / "webhook-router-bench-1"
    bench.mkdir()
    assert sweep(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists() and bench.exists()
