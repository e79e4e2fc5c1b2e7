"""Lifecycle: start-up, the main loop, reloads, signals, staged shutdown. What talks to what is wired in ``serve``.

``serve`` = ``_startup`` (every component started in an ``AsyncExitStack``, its stop pushed right after,
so teardown undoes start-up in reverse by construction), the main loop (until SIGTERM/SIGINT or the
fetch loop ends), and ``_shutdown`` (stop fetching, drain under the deadline, cancel the rest, flush
results, commit). Signal handlers only set state or schedule a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from daemon.admin import AdminServer
from daemon.config import Config
from daemon.consume import Source, kafka_client_options
from daemon.deliver import Sender
from daemon.errors import ConfigError
from daemon.health import Health, HealthReader
from daemon.metrics import Metrics
from daemon.operate import Operator
from daemon.results import ResultsWriter
from daemon.routing import Routing
from daemon.settle import Settlement
from daemon.validate import load_config

log = logging.getLogger(__name__)

# A config change to these needs a restart: the clients were built with them.
_LANE_IDLE_S = 60.0  # an endpoint's lane closes after this long without work (its tasks go with it)
_RESTART_ONLY = ("bootstrap_servers", "group_id", "results_topic", "client_id", "security_protocol")


class Components(msgspec.Struct, frozen=True):
    """What ``_startup`` built, for the main loop, reloads and shutdown."""

    results: ResultsWriter
    health: Health
    settlement: Settlement
    source: Source  # the events
    tiers: Source  # the retry tiers
    admin: AdminServer


class App:
    """The daemon. ``serve()`` runs until SIGTERM/SIGINT (or ``request_stop()``), then shuts down in stages."""

    def __init__(self, config: Config, config_path: str | Path | None = None, environ: Mapping[str, str] | None = None):
        self._config = config
        self._config_path = config_path
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self.metrics = Metrics()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reloading: asyncio.Task[None] | None = None
        self._sigint_count = 0
        self.components: Components | None = None  # set once start-up is complete

    # --- lifecycle ---

    async def serve(self, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            if install_signals:  # first: a signal during start-up stops the daemon once it has started
                self._install_signals(loop)
                stack.callback(self._remove_signals, loop)
            components = await self._startup(stack)
            fetch = self._main_loop(components)
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            crashed = fetch.exception() if fetch in done else None
            if crashed is not None:
                log.error("the fetch loop failed (%s: %s): shutting down", type(crashed).__name__, crashed)
            await self._shutdown(components)
            if crashed is not None:
                raise crashed

    async def _startup(self, stack: contextlib.AsyncExitStack) -> Components:
        config, environ, metrics = self._config, self._environ, self.metrics
        kafka, retry = config.kafka, config.retry
        client_options = kafka_client_options(kafka, environ)
        producer = AIOKafkaProducer(
            acks="all" if kafka.results_acks == "all" else 1,
            enable_idempotence=kafka.enable_idempotence,
            linger_ms=kafka.linger_ms,
            max_batch_size=256 * 1024,
            **client_options,
        )
        await producer.start()
        stack.push_async_callback(producer.stop)

        results = ResultsWriter(producer, kafka.results_topic, metrics)
        results.start()
        stack.push_async_callback(results.stop)

        written = [
            kafka.results_topic,
            retry.dead_letter_topic,
            retry.health_topic,
            *map(retry.tier_topic, retry.tiers_s),
        ]
        if retry.create_topics:
            await ensure_topics(client_options, written, retry.partitions)
        # Learn every written topic's partitions before the first send: a send that has to wait for a new topic's
        # metadata was seen to leave a record of another topic, queued just before, unsent until the next send.
        for topic in written:
            await producer.partitions_for(topic)

        health = Health(results, retry.health_topic, metrics)
        health_reader = HealthReader(retry.health_topic, client_options, health)
        restored = await health_reader.start()
        stack.push_async_callback(health_reader.stop)
        if restored:
            log.info("endpoint health restored from %d records", restored)

        sender = Sender(metrics)
        stack.push_async_callback(sender.close)

        routing = Routing(config, environ)
        settlement = Settlement(results, retry, metrics, health, sender, routing, client_options)
        stack.push_async_callback(settlement.cancel)
        stack.callback(settlement.cancel_timers)
        self._follow_config_pauses(health, None, routing)
        self._count_routing(routing)
        metrics.requests_in_flight.set_function(lambda: settlement.stats.busy)
        metrics.deliveries_queued.set_function(lambda: settlement.stats.queued)

        drain_s = config.delivery.drain_timeout_s
        source = Source(kafka, environ, metrics, settlement.dispatch, drain_s)
        await source.start()
        stack.push_async_callback(source.stop)

        # The tiers' consumer polls no faster than a tenth of the shortest tier (at most 500 ms): a tight fetch
        # wait on every tier partition costs the broker and this process CPU for nothing.
        tier_wait = int(min(500, max(kafka.fetch_max_wait_ms, retry.tiers_s[0] * 100)))
        tier_kafka = msgspec.structs.replace(
            kafka, group_id=f"{kafka.group_id}.retry", topics=settlement.tier_topics, fetch_max_wait_ms=tier_wait
        )
        tiers = Source(tier_kafka, environ, metrics, settlement.take, drain_s, "retries")
        await tiers.start()
        stack.push_async_callback(tiers.stop)

        operator = Operator(settlement, health, client_options)
        admin = AdminServer(config.admin.listen, metrics, self.ready, operator, config.admin.token(environ))
        await admin.start()
        stack.push_async_callback(admin.stop)

        self.components = Components(results, health, settlement, source, tiers, admin)
        _notify_systemd("READY=1")
        log.info(
            "webhook-router running: topics %s, %d endpoints, %d subscriptions",
            ", ".join(kafka.topics),
            len(routing.endpoints),
            routing.subscriptions,
        )
        return self.components

    def _main_loop(self, c: Components) -> asyncio.Task[None]:
        """Start fetching and committing; returns the events' fetch loop."""
        interval_s = self._config.kafka.commit_interval_ms / 1000
        fetch = self._spawn(c.source.run(), "fetch")
        self._spawn(c.tiers.run(), "fetch-retries")
        self._spawn(c.source.commit_every(interval_s), "commit")
        self._spawn(c.tiers.commit_every(interval_s), "commit-retries")
        self._spawn(c.settlement.retire_idle_every(_LANE_IDLE_S), "idle-lanes")
        return fetch

    def request_stop(self) -> None:
        self._stop.set()

    def ready(self) -> bool:
        return self.components is not None and self.components.source.joined and not self._stop.is_set()

    async def _shutdown(self, c: Components) -> None:
        """Stop fetching, drain under the deadline, cancel the rest, flush results, commit."""
        _notify_systemd("STOPPING=1")
        started = time.monotonic()
        deadline = self._config.delivery.drain_timeout_s
        c.source.stopping = c.tiers.stopping = True
        c.settlement.cancel_timers()  # their tier records stay uncommitted: read again after a restart
        drained = await c.source.drain(max(0.0, deadline * 0.8))
        drained = await c.tiers.drain(max(0.0, deadline * 0.8 - (time.monotonic() - started))) and drained
        abandoned = 0
        if not drained:
            abandoned = await c.settlement.cancel()
        flushed = await c.results.flush(max(1.0, deadline - (time.monotonic() - started)))
        for source in (c.source, c.tiers):  # a broker that is gone must not hold the exit up
            try:
                await asyncio.wait_for(source.commit(), max(1.0, deadline - (time.monotonic() - started)))
            except TimeoutError:
                log.warning("final offset commit timed out: those events will be read again")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info(
            "shutdown in %.1f s: drained=%s, deliveries abandoned=%d, results unacknowledged=%d, "
            "events unfinished (will be read again)=%d",
            time.monotonic() - started,
            drained,
            abandoned,
            0 if flushed else c.results.outstanding,
            c.source.offsets.in_flight + c.tiers.offsets.in_flight,
        )

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- signals ---

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_int)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _on_term(self) -> None:
        log.info("SIGTERM: shutting down")
        self._stop.set()

    def _on_int(self) -> None:
        self._sigint_count += 1
        if self._sigint_count > 1:
            log.warning("second SIGINT: exiting now")
            os._exit(1)
        log.info("SIGINT: shutting down (again to force)")
        self._stop.set()

    # --- reload ---

    def reload(self) -> None:
        """Re-read the config file (SIGHUP). A reload already under way is not started twice."""
        if self._reloading is None or self._reloading.done():
            self._reloading = self._spawn(self._reload(), "reload")

    async def _reload(self) -> None:
        c = self.components
        if c is None:
            log.warning("SIGHUP during start-up: ignored, the config was just read")
            return
        if self._config_path is None:
            log.warning("reload asked for, but the daemon was not started from a config file")
            return
        _notify_systemd(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = await asyncio.to_thread(load_config, self._config_path, dict(self._environ))
            old_routing = c.settlement.routing
            routing = Routing(new, self._environ, old_routing)
        except ConfigError as exc:
            self._refused(exc.errors)
            return
        except Exception as exc:  # validation should have caught it; never let a reload take the daemon down
            self._refused([f"{type(exc).__name__}: {exc}"])
            return
        finally:
            _notify_systemd("READY=1")
        old = self._config
        restart_needed = [name for name in _RESTART_ONLY if getattr(old.kafka, name) != getattr(new.kafka, name)]
        if old.admin != new.admin:
            restart_needed.append("admin")
        if restart_needed:
            log.warning("config reload: changes to %s take effect only after a restart", ", ".join(restart_needed))
        c.settlement.use(routing)
        self._config = new
        self._follow_config_pauses(c.health, old_routing, routing)
        self._count_routing(routing)
        if new.kafka.topics != old.kafka.topics:
            c.source.subscribe(new.kafka.topics)
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded: %d endpoints, %d subscriptions", len(routing.endpoints), routing.subscriptions)

    def _refused(self, errors: list[str]) -> None:
        self.metrics.config_reloads.labels("error").inc()
        log.error("config reload refused, keeping the running config: %d error(s)", len(errors))
        for line in errors:
            log.error("  %s", line)

    @staticmethod
    def _follow_config_pauses(health: Health, old: Routing | None, new: Routing) -> None:
        for endpoint_id, endpoint in new.endpoints.items():
            was = old.endpoints.get(endpoint_id) if old is not None else None
            health.follow_config(endpoint_id, endpoint.config.paused, was is not None and was.config.paused)

    def _count_routing(self, routing: Routing) -> None:
        self.metrics.endpoints.set(len(routing.endpoints))
        self.metrics.subscriptions.set(routing.subscriptions)


def _notify_systemd(state: str) -> None:
    """sd_notify without libsystemd: a datagram to $NOTIFY_SOCKET, when systemd set one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), path)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


async def ensure_topics(client_options: dict[str, Any], names: list[str], partitions: int) -> None:
    """Create the topics the router writes to, where they do not exist yet."""
    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("created topics: %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()
