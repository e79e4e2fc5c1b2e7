"""``process.workers``: one instance of the router as N worker processes under one supervisor, the way gunicorn and
uvicorn run workers (uvicorn/supervisors/multiprocess.py). Each worker is the whole daemon (``App``: its own Kafka
clients, in the instance's consumer group, so the partitions are shared among them); the supervisor reads no Kafka.

- The config file is copied, once validated, into the supervisor's private directory (mode 0700: it also holds the
  workers' admin and notify sockets), and every worker reads the copy: a worker started again runs what the others
  run, never an edit of the file that nobody has reloaded.
- SIGHUP: the supervisor reads and validates the file (and what a reload may not change, ``daemon.core.reload``). A
  config refused is refused once, here: logged, counted, never seen by a worker. One accepted replaces the copy and
  every worker whose start-up is complete gets SIGHUP (one still starting, once it is); systemd hears RELOADING, then
  READY once they have all reloaded.
- SIGTERM, SIGINT: every worker gets SIGTERM and drains within ``delivery.drain_timeout_s``; the supervisor waits
  that long and ``STOP_GRACE_S`` more for them (closing takes a moment after the drain), then kills what is left.
- A worker that ends is started again after a capped back-off (``daemon.app.workers``), each exit logged with its
  code or signal; a worker that ends over and over never takes the instance down: ``/readyz`` says so. One that
  exits with 2 (its config or its topics refused) before the instance was ever ready stops the instance with 2,
  as the one process would have exited.
- A worker's event loop pings over its notify socket (``WATCHDOG=1``, every half of systemd's ``WatchdogSec`` when the
  supervisor has one, at least ``WORKER_WATCHDOG_MIN_S``, else of ``WORKER_WATCHDOG_S``); one silent for the whole
  interval while it runs (not once it is stopping: its drain has its deadline) is sent SIGABRT (its stacks go to
  the log), SIGKILL ``KILL_AFTER_S`` later if it still runs, and started again.
- systemd hears only the supervisor (the workers' ``NOTIFY_SOCKET`` is their own socket here): READY once every
  worker's start-up is complete, STATUS, RELOADING, STOPPING, and the watchdog from the supervisor's event loop.
- One admin server for the instance, on ``admin.listen``: ``daemon.admin.front``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from daemon.admin.front import Front
from daemon.app.cpus import available
from daemon.app.signals import Signals
from daemon.app.workers import Worker, command
from daemon.core.config import Config
from daemon.core.errors import ConfigError
from daemon.core.reload import at_restart, refused
from daemon.core.validate import load_config
from daemon.observe.aggregate import Aggregate
from daemon.observe.logs import apply as apply_logs
from daemon.observe.metrics import SupervisorMetrics
from daemon.observe.systemd import notify, watchdog, watchdog_interval_s

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0
KILL_AFTER_S = 5.0
WORKER_WATCHDOG_S = 30.0  # a worker's, when systemd asked the supervisor for none
WORKER_WATCHDOG_MIN_S = 5.0  # at least, whatever systemd asked for
RELOAD_WAIT_S = 60.0  # how long systemd's READY after a reload waits for the workers' reloads
MAX_WORKERS = 256
EXIT_CONFIG = 2
PREFIX = "webhook-router-supervisor-"  # of its private directory


def workers_of(config: Config) -> int:
    """How many workers ``process.workers`` asks for (``"auto"``: the CPUs this process may use, logged)."""
    wanted = config.process.workers
    if wanted != "auto":
        return wanted
    cpus = available()
    count = min(cpus.workers, MAX_WORKERS)
    log.info("process.workers = auto: %s", cpus)
    return count


class Supervisor:
    """``serve()`` runs the instance until SIGTERM/SIGINT, then stops its workers; the exit code the process ends
    with: 0 when every worker drained and exited 0, 2 for a config refused, 1 otherwise."""

    def __init__(
        self,
        config: Config,
        config_path: str | Path,
        workers: int,
        environ: Mapping[str, str] | None = None,
        log_level: str | None = None,
    ) -> None:
        self._config = config
        self._source = Path(config_path)
        self._count = workers
        self._environ = dict(os.environ if environ is None else environ)
        self._log_level = log_level
        self._stop = asyncio.Event()
        self._heard = asyncio.Event()  # a worker said something (a reload waits for theirs)
        self._exit_code = 0
        self._generation = 0  # accepted configs since the start
        self._ready_sent = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reloading: asyncio.Task[None] | None = None
        self._aborted: dict[int, tuple[int, float]] = {}  # worker -> (its incarnation, when it was sent SIGABRT)
        self._directory = Path()
        self._watchdog_s = WORKER_WATCHDOG_S
        self.metrics = SupervisorMetrics(workers)
        self.aggregate = Aggregate()
        self.workers: list[Worker] = []

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._directory = _private_directory()
        try:
            async with contextlib.AsyncExitStack() as stack:
                signals = Signals(self._stop, self.reload)
                signals.install(loop)
                stack.callback(signals.remove, loop)
                await stack.enter_async_context(watchdog())
                try:
                    self._config = await self._accept(first=True)
                except ConfigError as exc:
                    _log_refused("cannot start", exc.errors)
                    return EXIT_CONFIG
                interval = watchdog_interval_s(self._environ)
                self._watchdog_s = max(WORKER_WATCHDOG_MIN_S, 2 * interval) if interval else WORKER_WATCHDOG_S
                environ = {k: v for k, v in self._environ.items() if k not in ("WATCHDOG_PID", "NOTIFY_SOCKET")}
                environ["WATCHDOG_USEC"] = str(int(self._watchdog_s * 1_000_000))
                run = command(self._directory / "config.toml", self._log_level)
                self.workers = [Worker(i, self._directory, run, environ, self._notice) for i in range(self._count)]
                for worker in self.workers:
                    worker.open()
                    stack.callback(worker.close)
                scrape_failed = self.metrics.worker_scrape_errors.labels
                front = Front(self._config.admin.listen, self.workers, self.metrics.registry, self.aggregate,
                              self.not_ready, lambda i: scrape_failed(str(i)).inc())  # fmt: skip
                await front.start()
                stack.push_async_callback(front.stop)
                self.metrics.workers_ready.set_function(lambda: sum(1 for w in self.workers if w.started))
                log.info("supervisor of %d workers (pid %d), group %s", self._count, os.getpid(),
                         self._config.kafka.group_id)  # fmt: skip
                self._status(f"starting {self._count} workers")
                runs = [self._spawn(w.run(self._stop, lambda: self._generation), f"worker-{w.index}")
                        for w in self.workers]  # fmt: skip
                watch = self._spawn(self._watch(), "worker-watchdog")
                await self._stop.wait()
                await self._shutdown()
                watch.cancel()
                await asyncio.gather(*runs, watch, return_exceptions=True)
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)
        return self._exit_code

    def not_ready(self) -> str | None:
        """Why the supervisor itself is not ready (its workers answer for themselves)."""
        return "shutting down" if self._stop.is_set() else None

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _status(self, status: str) -> None:
        notify(f"STATUS={status}")

    def _ready_count(self) -> int:
        return sum(1 for w in self.workers if w.started and w.pid is not None)

    # --- what the workers say ---

    def _notice(self, worker: Worker, state: str) -> None:
        self._heard.set()
        if state == "STARTED":
            log.info("worker %d ready (pid %s, %.1f s after its start)", worker.index, worker.pid,
                     time.monotonic() - worker.started_at)  # fmt: skip
        if state in ("STARTED", "READY"):
            if worker.generation < self._generation:  # started on the config before the last reload
                worker.generation = self._generation
                log.info("worker %d started on the config before the last reload: reloading it", worker.index)
                worker.signal(signal.SIGHUP)
            ready = self._ready_count()
            if ready == self._count and not self._ready_sent:
                self._ready_sent = True
                notify("READY=1")
                log.info("all %d workers ready", self._count)
            if not self._stop.is_set():
                self._status(f"running: {self._count} workers" if ready == self._count
                             else f"{ready} of {self._count} workers ready")  # fmt: skip
        elif state == "EXIT":
            self.aggregate.retire(str(worker.index), worker.incarnation)
            self._aborted.pop(worker.index, None)
            if self._stop.is_set():
                return
            self.metrics.worker_restarts.labels(str(worker.index)).inc()
            if worker.last_code == EXIT_CONFIG and not self._ready_sent:
                log.error("worker %d %s (its config or its topics were refused: see its lines above) before the "
                          "instance was ever ready: stopping", worker.index, worker.last_exit)  # fmt: skip
                self._exit_code = EXIT_CONFIG
                self._stop.set()
                return
            self._status(f"worker {worker.index} {worker.last_exit}; {self._ready_count()} of {self._count} ready")

    async def _watch(self) -> None:
        """SIGABRT to a worker whose event loop has stopped pinging, SIGKILL if it still runs a while later."""
        while True:
            await asyncio.sleep(min(1.0, self._watchdog_s / 4))
            now = time.monotonic()
            for worker in self.workers:
                if worker.pid is None or worker.last_ping is None or worker.stopping or self._stop.is_set():
                    continue  # not started yet, or stopping: the shutdown's deadline sees to a drain that hangs
                aborted = self._aborted.get(worker.index)
                if aborted is not None and aborted[0] == worker.incarnation:
                    if now - aborted[1] > KILL_AFTER_S:
                        log.error("worker %d (pid %d) still runs %.0f s after SIGABRT: SIGKILL", worker.index,
                                  worker.pid, KILL_AFTER_S)  # fmt: skip
                        worker.signal(signal.SIGKILL)
                    continue
                silent = now - worker.last_ping
                if silent > self._watchdog_s:
                    log.error("worker %d (pid %d): no watchdog ping for %.1f s, its event loop stands still: "
                              "SIGABRT (its stacks follow), then it is started again", worker.index, worker.pid,
                              silent)  # fmt: skip
                    self._aborted[worker.index] = (worker.incarnation, now)
                    worker.signal(signal.SIGABRT)

    # --- reload ---

    def reload(self) -> None:
        """SIGHUP. A reload under way is not started twice."""
        if self._reloading is None or self._reloading.done():
            self._reloading = self._spawn(self._reload(), "reload")

    async def _reload(self) -> None:
        if self._stop.is_set() or not self.workers:
            return
        if self._ready_sent:
            notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            try:
                new = await self._accept()
            except ConfigError as exc:
                self.metrics.config_reloads.labels("error").inc()
                _log_refused(f"config reload refused, keeping the running config (no worker was told): {self._source}",
                             exc.errors)  # fmt: skip
                return
            later = at_restart(self._config, new)
            if later:
                log.warning("config reload: changes to %s take effect only after a restart", ", ".join(later))
            self._config = new
            apply_logs(new.log)
            self._generation += 1
            told = [w for w in self.workers if w.started and w.pid is not None]
            before = {w.index: (w.incarnation, w.reloads) for w in told}
            for worker in told:
                worker.generation = self._generation
                worker.signal(signal.SIGHUP)
            log.info("config accepted: reloading %d workers (the others read it as they start)", len(told))
            deadline = time.monotonic() + RELOAD_WAIT_S

            def done(w: Worker) -> bool:
                return w.pid is None or (w.incarnation, w.reloads) != before[w.index]

            while True:
                self._heard.clear()
                if all(done(w) for w in told) or self._stop.is_set():
                    break
                if time.monotonic() > deadline:
                    log.warning("config reload: not every worker had reloaded %.0f s later", RELOAD_WAIT_S)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._heard.wait(), max(0.0, deadline - time.monotonic()))
            self.metrics.config_reloads.labels("ok").inc()
        finally:
            if self._ready_sent:
                notify("READY=1")

    async def _accept(self, first: bool = False) -> Config:
        """The config file, validated (and, but ``first``, checked against what a reload may change), copied where the
        workers read it; ConfigError (every fault, naming the file) leaves the copy alone."""
        copy, candidate = self._directory / "config.toml", self._directory / "config.next.toml"
        try:
            raw = self._source.read_bytes()
        except OSError as exc:
            raise ConfigError([f"{self._source}: cannot read: {exc.strerror or exc}"]) from None
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        try:
            config = await asyncio.to_thread(load_config, candidate, self._environ)
            refusals = [] if first else refused(self._config, config)
            if refusals:
                raise ConfigError(refusals)
        except ConfigError as exc:
            candidate.unlink()
            raise ConfigError([line.replace(str(candidate), str(self._source)) for line in exc.errors]) from None
        os.replace(candidate, copy)
        return config

    # --- shutdown ---

    async def _shutdown(self) -> None:
        """SIGTERM to every worker; each drains under ``delivery.drain_timeout_s``; what still runs ``STOP_GRACE_S``
        after that is killed."""
        notify("STOPPING=1")
        self._status("stopping: every worker drains")
        started = time.monotonic()
        budget = self._config.delivery.drain_timeout_s + STOP_GRACE_S
        told = [w for w in self.workers if w.signal(signal.SIGTERM)]
        log.info("stopping %d workers: each drains within %g s", len(told), self._config.delivery.drain_timeout_s)
        waits = {w.index: asyncio.ensure_future(w.wait()) for w in told}
        if waits:
            await asyncio.wait(waits.values(), timeout=budget)
        killed = []
        for worker in told:
            if not waits[worker.index].done():
                log.error("worker %d (pid %s) still runs %.1f s after SIGTERM: killed", worker.index, worker.pid,
                          time.monotonic() - started)  # fmt: skip
                worker.signal(signal.SIGKILL)
                killed.append(worker.index)
        codes = await asyncio.gather(*waits.values())
        if self._exit_code == 0 and (killed or any(code != 0 for code in codes)):
            self._exit_code = 1
        exits = ", ".join(f"worker {w.index} {w.last_exit}" for w in told) or "none was running"
        log.info("shutdown in %.1f s: %s", time.monotonic() - started, exits)


def _log_refused(what: str, errors: list[str]) -> None:
    log.error("%s: %d error(s)", what, len(errors))
    for line in errors:
        log.error("  %s", line)


def _private_directory(parent: str | None = None) -> Path:
    """A directory of this process's own (0700): the workers' sockets and the copy of the config, with this process's
    id in ``supervisor.pid``. Unix socket paths are short (107 bytes): a long TMPDIR gives way to /tmp. Those of
    supervisors that are gone (killed: nothing removed them) are removed first: they hold a copy of a config."""
    sweep(Path(parent or tempfile.gettempdir()))
    directory = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    if len(str(directory / f"notify-{MAX_WORKERS}.sock")) > 100:
        directory.rmdir()
        sweep(Path("/tmp"))  # noqa: S108 - the short place for sockets, when TMPDIR is long
        directory = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
    (directory / "supervisor.pid").write_text(str(os.getpid()))
    return directory


def sweep(parent: Path) -> list[Path]:
    """Remove the private directories under ``parent`` of supervisors no longer running; the ones removed."""
    removed = []
    for directory in parent.glob(PREFIX + "*"):
        try:
            pid = int((directory / "supervisor.pid").read_text())
        except (OSError, ValueError):
            continue  # not a supervisor's, or one just being made
        try:
            os.kill(pid, 0)
            continue  # running (or another user's process by that id: left alone)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    if removed:
        log.info("removed %d private directories of supervisors that are gone: %s", len(removed),
                 ", ".join(str(d) for d in removed[:5]))  # fmt: skip
    return removed
