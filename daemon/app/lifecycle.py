"""Lifecycle: start-up, the main loop, reloads, signals, staged shutdown. What talks to what is wired in ``serve``.

``serve`` = the admin server (first: liveness and the reason for not being ready answer while the daemon
waits for Kafka), ``_startup`` (tried again until the cluster answers, ``daemon.app.connect``: every component
started in an ``AsyncExitStack``, its stop pushed before it starts, so teardown undoes start-up in reverse by
construction and a failed attempt leaves nothing open), the main loop (until SIGTERM/SIGINT or the fetch loop ends), and
``_shutdown`` (stop fetching, drain, cancel the rest, flush results, commit, all under one deadline that the
clients' closes keep to as well). Signal handlers only set state or schedule a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from aiohttp.abc import AbstractResolver

from daemon.admin.api import Api
from daemon.admin.operate import Operator
from daemon.admin.portal.site import serve_api
from daemon.admin.server import AdminServer
from daemon.app.connect import until_connected
from daemon.app.reload import count_routing, follow_config_pauses, let_go, reloaded
from daemon.app.signals import Signals
from daemon.core.config import Config
from daemon.core.errors import ConfigError
from daemon.core.reload import at_restart
from daemon.core.secretbox import keyring_from
from daemon.delivery.sender import Sender, client_for
from daemon.engine.feed import EndpointsFeed
from daemon.engine.health import Health, HealthReader
from daemon.engine.operational import Operational
from daemon.engine.routing import Routing
from daemon.engine.settle import Settlement
from daemon.kafka.clients import ClusterProbe, RouterProducer, check_credentials, kafka_client_options, refused
from daemon.kafka.consume import Source
from daemon.kafka.contact import Contact, KafkaLogFilter, unretrieved_kafka_errors_quiet
from daemon.kafka.readback import read_one
from daemon.kafka.readers import Readers
from daemon.kafka.results import ResultsWriter
from daemon.kafka.store import Store
from daemon.kafka.topics import ready_topics
from daemon.kafka.writes import WriteWatch
from daemon.observe.logs import apply as apply_logs
from daemon.observe.metrics import Metrics
from daemon.observe.systemd import notify as _notify_systemd
from daemon.observe.systemd import watchdog
from daemon.observe.tracing import start as start_tracing
from daemon.schema_registry import SchemaLoader, loader_for

log = logging.getLogger(__name__)

_LANE_IDLE_S = 60.0  # an endpoint's lane closes after this long without work (its tasks go with it)
# Closing a Kafka client outside a shutdown (after a failed start-up attempt) waits at most this long.
_CLOSE_S = 5.0


class Components(msgspec.Struct, frozen=True):
    """What ``_startup`` built, for the main loop, reloads and shutdown."""

    results: ResultsWriter
    health: Health
    settlement: Settlement
    source: Source  # the events
    tiers: Source  # the retry tiers
    admin: AdminServer
    contact: Contact
    operator: Operator
    writes: WriteWatch


class App:
    """The daemon. ``serve()`` runs until SIGTERM/SIGINT (or ``request_stop()``), then shuts down in stages.

    ``resolver``: the DNS resolver deliveries use (default: aiohttp's, the system's); tests give a stand-in.
    ``admin_listen``: where the admin server listens instead of ``admin.listen`` (a worker's unix socket).
    ``index_on_demand``: the delivery index read only while this process answers lookups (a worker other than worker 0).
    """

    def __init__(
        self,
        config: Config,
        config_path: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        resolver: AbstractResolver | None = None,
        admin_listen: str | None = None,
        index_on_demand: bool = False,
    ):
        self._config = config
        self._config_path = config_path
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._resolver = resolver
        self._admin_listen, self._index_on_demand = admin_listen or config.admin.listen, index_on_demand
        self.metrics = Metrics()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reloading: asyncio.Task[None] | None = None
        self._status = "starting"  # what start-up is doing: the reason /readyz gives, and sd_notify's STATUS
        self._noise = KafkaLogFilter(self.metrics)
        self._operator: Operator | None = None
        self._api: Api | None = None
        self._schemas: SchemaLoader | None = None
        self._deadline: float | None = None  # monotonic; when the shutdown must be over
        self.components: Components | None = None  # set once start-up is complete

    # --- lifecycle ---

    async def serve(self, install_signals: bool = True) -> None:
        """Start (waiting for the cluster as long as it takes), run, shut down. Returns at once, after closing what
        was started, when a stop is asked for during start-up."""
        loop = asyncio.get_running_loop()
        config = self._config
        async with contextlib.AsyncExitStack() as stack:
            if install_signals:  # first: a signal during start-up stops the daemon
                signals = Signals(self._stop, self.reload)
                signals.install(loop)
                stack.callback(signals.remove, loop)
            await stack.enter_async_context(watchdog())  # until the very end: a drain is not a hang
            self._noise.install()
            stack.callback(self._noise.remove)
            previous = loop.get_exception_handler()
            loop.set_exception_handler(unretrieved_kafka_errors_quiet)
            stack.callback(loop.set_exception_handler, previous)
            # Before Kafka: liveness, and why the daemon is not ready, answer while it waits for the cluster.
            token = config.admin.token(self._environ)
            routes = (lambda app: serve_api(app, lambda: self._api, self.not_ready)) if config.api.enabled else None
            admin = AdminServer(self._admin_listen, self.metrics, self.not_ready, lambda: self._operator, token, routes)
            await admin.start()
            stack.push_async_callback(admin.stop)
            startup = functools.partial(self._startup, admin=admin)
            where = config.kafka.bootstrap_servers
            components = await until_connected(startup, stack, self._stop, where, self._set_status)
            if components is None:
                log.info("stopped before start-up was complete")
                return
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

    async def _startup(self, stack: contextlib.AsyncExitStack, admin: AdminServer) -> Components:
        """One attempt at everything that needs the cluster. Every client's close is pushed on ``stack`` before it
        starts, so an attempt that fails or is cancelled half way leaves nothing open."""
        config, environ, metrics = self._config, self._environ, self.metrics
        kafka, retry, api = config.kafka, config.retry, config.api
        client_options = kafka_client_options(kafka, environ)
        self._set_status(f"connecting to Kafka at {kafka.bootstrap_servers}")
        await check_credentials(kafka, environ)  # KafkaRefused names the setting (not 'Unable to bootstrap')
        producer = RouterProducer(kafka, environ, linger_ms=kafka.linger_ms, max_batch_size=256 * 1024)
        stack.push_async_callback(self._close, "the producer", producer.stop)
        await producer.start()

        index_topic = retry.index_topic if api.enabled and api.delivery_index else None  # the delivery index's
        results = ResultsWriter(producer, kafka.results_topic, metrics, index_topic)
        results.start()
        stack.push_async_callback(results.stop)

        self._set_status("checking the router's topics")
        on = config.operational.enabled
        written, min_insync = await ready_topics(client_options, producer, kafka, retry, api.enabled,
                                                 index_topic is not None, on)  # fmt: skip
        # Every broker asked for metadata each second over the probe's own connections (never behind the producer's
        # writes): whether the cluster answers, which brokers do not, the written partitions; else if it refuses.
        probe = ClusterProbe(kafka, environ, written)
        contact = Contact(probe, kafka.bootstrap_servers, kafka.contact_timeout_s, self._noise, metrics,
                          _notify_systemd, refused=functools.partial(refused, kafka, environ))  # fmt: skip
        stack.push_async_callback(contact.stop)
        await contact.start()
        writes = WriteWatch.of(probe, min_insync).started()
        stack.push_async_callback(writes.stop)
        operational = Operational(results if on else None, retry.operational_topic, config.operational)

        health = Health(results, retry.health_topic, metrics, operational)
        health_reader = HealthReader(retry.health_topic, client_options, health)
        stack.push_async_callback(self._close, "the health reader", health_reader.stop)
        self._set_status(f"reading {retry.health_topic} to its end")
        restored = await health_reader.start()
        if restored:
            log.info("endpoint health restored from %d records", restored)

        delivery, resolver = config.delivery, self._resolver
        api_client = client_for(delivery, resolver, api.allowed_networks)  # tenants' endpoints: a guard of their own
        sender = Sender(metrics, client_for(delivery, resolver), start_tracing(config.tracing), api_client)
        stack.push_async_callback(sender.close)

        routing = await asyncio.to_thread(Routing, config, environ)  # 100,000 endpoints: seconds, off the loop
        read_back = functools.partial(read_one, Readers(client_options))  # a consumer for each read, closed after
        schemas = self._schemas = loader_for(config.schema_registry, environ, routing.schemas, metrics)
        if schemas is not None:  # the writer schemas of the topics in the wire format
            stack.push_async_callback(schemas.close)
            await schemas.start()
        load = schemas.load if schemas is not None else None
        settlement = Settlement(results, retry, metrics, health, sender, routing, read_back, load, operational)
        stack.push_async_callback(settlement.cancel)
        stack.callback(settlement.cancel_timers)
        follow_config_pauses(health, None, routing)
        count_routing(metrics, routing)
        metrics.mark_endpoints(config.metrics.endpoints)
        settlement.expose(metrics)

        drain_s = config.delivery.drain_timeout_s
        source = Source(
            operational.topics(kafka), environ, metrics, settlement.dispatch, drain_s, prepare=settlement.prepare
        )
        tiers = Source(settlement.tiers_consumer(kafka), environ, metrics, settlement.take, drain_s, "retries")
        operator = Operator(settlement, health, client_options, (source, tiers), results, retry)
        stack.push_async_callback(self._close, "the read-back consumers and the delivery index", operator.stop)
        on_demand = self._index_on_demand or api.delivery_index_copy == "on_demand"  # else: in the background
        await operator.start(index_topic, on_demand, metrics)  # until it has read its topic, lookups scan

        if api.enabled:  # every endpoint of the topic is applied before the first event is read
            keyring = keyring_from(environ, api)
            feed = EndpointsFeed(settlement, keyring, api.tenant_field)
            store = Store(retry.endpoints_topic, client_options, producer, feed, keyring, metrics,
                          api.accept_unauthenticated_records)  # fmt: skip
            stack.push_async_callback(self._close, "the endpoints reader", store.stop)
            self._set_status(f"reading {retry.endpoints_topic} to its end")
            started = time.monotonic()
            read = await store.start()
            log.info("%d endpoints managed at run time, from %d records in %.1f s", len(store.directory.endpoints),
                     read, time.monotonic() - started)  # fmt: skip
            self._api = Api(
                store=store, settlement=settlement, health=health, operator=operator, keyring=keyring,
                admin_token=config.admin.token(environ), environ=environ, rotation_grace_s=api.rotation_grace_s,
            )  # fmt: skip

        self._set_status(f"joining consumer group {kafka.group_id}")
        stack.push_async_callback(self._close, "the events consumer", source.stop)
        await source.start()
        stack.push_async_callback(self._close, "the retry tiers' consumer", tiers.stop)
        await tiers.start()

        self._operator = operator
        self.components = Components(results, health, settlement, source, tiers, admin, contact, operator, writes)
        self._set_status("running")
        _notify_systemd("READY=1")
        log.info("webhook-router running: topics %s, %d endpoints, %d subscriptions", ", ".join(kafka.topics),
                 len(routing.endpoints), routing.subscriptions)  # fmt: skip
        return self.components

    async def _close(self, what: str, stop: Callable[[], Awaitable[None]]) -> None:
        """Close a Kafka client, within the shutdown's deadline (``_CLOSE_S`` after a failed start-up attempt): a
        cluster that does not answer must not hold the exit up. What is left open goes with the process."""
        within = _CLOSE_S if self._deadline is None else max(0.2, self._deadline - time.monotonic())
        try:
            await asyncio.wait_for(stop(), within)
        except TimeoutError:
            log.warning("closing %s: no answer from Kafka within %.1f s, left to the exit", what, within)
        except Exception as exc:  # one client that fails to close must not keep the others open
            log.warning("closing %s failed (%s: %s)", what, type(exc).__name__, exc)

    def _set_status(self, status: str) -> None:
        self._status = status
        _notify_systemd(f"STATUS={status}")

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

    def not_ready(self) -> str | None:
        """Why the daemon is not ready (``/readyz``), or None: started, in contact, writing, committing, joined."""
        if self._stop.is_set():
            return "shutting down"
        c = self.components
        if c is None:
            return self._status
        for problem in (c.contact.problem, c.writes.problem, c.results.problem, c.source.problem, c.tiers.problem):
            if (why := problem()) is not None:  # and the brokers that do not answer: what writes may wait for
                return f"{why} ({silent})" if (silent := c.contact.unanswered()) else why
        if not c.source.joined:
            return f"not a member of consumer group {self._config.kafka.group_id} (joining, or a rebalance)"
        lagging = self._api.lagging() if self._api is not None else None
        if lagging is None and self._schemas is not None:
            return self._schemas.problem()
        return lagging

    def ready(self) -> bool:
        return self.not_ready() is None

    async def _shutdown(self, c: Components) -> None:
        """Stop fetching, drain under the deadline, cancel the rest, flush results, commit; everything after (closing
        the clients) keeps to the same deadline, so that a cluster that is gone cannot hold the exit up."""
        _notify_systemd("STOPPING=1")
        started = time.monotonic()
        budget = self._config.delivery.drain_timeout_s
        deadline = self._deadline = started + budget
        c.source.stopping = c.tiers.stopping = True
        c.settlement.cancel_timers()  # their tier records stay uncommitted: read again after a restart
        stats = c.settlement.stats

        def stuck() -> bool:
            # Without the cluster, no event can be settled: the drain is over once no delivery is under way or queued.
            return not c.contact.answering and stats.busy + stats.queued == 0

        drained = await c.source.drain(max(0.0, budget * 0.8), stuck=stuck)
        drained = await c.tiers.drain(max(0.0, budget * 0.8 - (time.monotonic() - started)), stuck=stuck) and drained
        abandoned = 0
        if not drained:
            abandoned = await c.settlement.cancel()
        flushed = await c.results.flush(max(0.2, deadline - time.monotonic()))  # the cluster may be back in time
        for source in (c.source, c.tiers):
            if not c.contact.answering:
                log.warning("final offset commit skipped: no contact with Kafka")
                break
            try:
                await asyncio.wait_for(source.commit(), max(0.2, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("final offset commit timed out: those events will be read again")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        uncommitted = [*c.source.uncommitted(), *c.tiers.uncommitted()]
        if uncommitted:
            log.warning(
                "not committed, so read and delivered again after a restart (at least once): %s",
                ", ".join(uncommitted[:20]) + (f" and {len(uncommitted) - 20} more" if len(uncommitted) > 20 else ""),
            )
        unfinished = c.source.offsets.in_flight + c.tiers.offsets.in_flight
        log.info("shutdown in %.1f s: drained=%s, deliveries abandoned=%d, results unacknowledged=%d, events "
                 "unfinished (will be read again)=%d", time.monotonic() - started, drained, abandoned,
                 0 if flushed else c.results.outstanding, unfinished)  # fmt: skip

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
            old_routing = c.settlement.routing
            new, routing = await reloaded(self._config_path, self._environ, self._config, old_routing)
        except ConfigError as exc:
            self._refused(exc.errors)
            return
        except Exception as exc:  # validation should have caught it; never let a reload take the daemon down
            self._refused([f"{type(exc).__name__}: {exc}"])
            return
        finally:
            _notify_systemd("READY=1")
        old = self._config
        restart_needed = at_restart(old, new)
        if restart_needed:
            log.warning("config reload: changes to %s take effect only after a restart", ", ".join(restart_needed))
        c.settlement.use(routing)
        self._config = new
        apply_logs(new.log)
        self.metrics.mark_endpoints(new.metrics.endpoints)
        follow_config_pauses(c.health, old_routing, routing)
        count_routing(self.metrics, routing)
        if new.kafka.topics != old.kafka.topics:
            c.source.subscribe(new.kafka.topics)
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded: %d endpoints, %d subscriptions", len(routing.endpoints), routing.subscriptions)
        self._spawn(let_go([old_routing]), "let-go-of-the-old-routing")

    def _refused(self, errors: list[str]) -> None:
        self.metrics.config_reloads.labels("error").inc()
        log.error("config reload refused, keeping the running config: %d error(s)", len(errors))
        for line in errors:
            log.error("  %s", line)
