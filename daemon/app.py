"""Lifecycle and wiring: start-up, the routing snapshot, reloads, signals, staged shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from daemon.actions import ping_job
from daemon.admin import AdminServer
from daemon.config import Config, Resolved, load_config, resolve
from daemon.consume import Source, kafka_client_options
from daemon.deliver import Endpoint, Job, Lane, LaneStats, Sender, outcome_for
from daemon.deliver import delivery_id as delivery_id_of
from daemon.errors import BadRequest, ConfigError, NotFound
from daemon.health import REASON_CONFIG, REASON_OPERATOR, Health, HealthReader
from daemon.match import RoutingTable
from daemon.metrics import Metrics
from daemon.model import (
    ENDPOINT_PAUSED,
    ENDPOINT_RESUMED,
    INVALID_EVENT,
    REDELIVERY,
    REPLAY,
    Event,
    InvalidEvent,
    Outcome,
    TypeReader,
    encode_outcome,
    utc_now_iso,
)
from daemon.offsets import PartitionOffsets
from daemon.profiles import PROFILES, skip_for
from daemon.readback import read_one, read_range
from daemon.results import ResultsWriter
from daemon.retries import Retries

log = logging.getLogger(__name__)

_DEFAULT_READER = TypeReader()


class Routing:
    """One config's routing: table, lanes and type readers. Swapped whole, by one assignment."""

    __slots__ = ("config", "lanes", "readers", "table")

    def __init__(self, config: Config, resolved: Resolved, lanes: dict[str, Lane]) -> None:
        self.config = config
        catalogues = {e.id: PROFILES[e.profile].catalogue for e in resolved.endpoints}
        self.table = RoutingTable(resolved.subscriptions, catalogues)
        self.lanes = lanes
        self.readers = {topic: TypeReader(field) for topic, field in config.kafka.event_type_fields.items()}


class App:
    """The daemon. ``serve()`` runs until SIGTERM/SIGINT (or ``request_stop()``), then shuts down in stages."""

    def __init__(self, config: Config, config_path: str | Path | None = None, environ: Mapping[str, str] | None = None):
        self._config = config
        self._config_path = config_path
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self.metrics = Metrics()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retired: set[asyncio.Task[None]] = set()
        self._reloading: asyncio.Task[None] | None = None
        self.admin: AdminServer | None = None
        # Set by serve() before anything reads them.
        self.source: Source
        self.tiers: Source  # the retry tiers' consumer
        self.health: Health
        self._health_reader: HealthReader
        self._retries: Retries
        self._results: ResultsWriter
        self._sender: Sender
        self._routing: Routing
        self._sigint_count = 0
        self._lane_stats = LaneStats()  # totals over all lanes, read by two gauges at scrape time
        self.metrics.requests_in_flight.set_function(lambda: self._lane_stats.busy)
        self.metrics.deliveries_queued.set_function(lambda: self._lane_stats.queued)

    # --- lifecycle ---

    async def serve(self, install_signals: bool = True) -> None:
        config = self._config
        kafka = config.kafka
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            if install_signals:  # first: a signal during start-up stops the daemon once it has started
                self._install_signals(loop)
                stack.callback(self._remove_signals, loop)
            producer = AIOKafkaProducer(
                acks="all" if kafka.results_acks == "all" else 1,
                enable_idempotence=kafka.enable_idempotence,
                linger_ms=kafka.linger_ms,
                max_batch_size=256 * 1024,
                **kafka_client_options(kafka, self._environ),
            )
            await producer.start()
            stack.push_async_callback(producer.stop)

            self._results = ResultsWriter(producer, kafka.results_topic, self.metrics)
            self._results.start()
            stack.push_async_callback(self._results.stop)

            retry = config.retry
            if retry.create_topics:
                topics = [kafka.results_topic, retry.dead_letter_topic, retry.health_topic]
                topics += [retry.tier_topic(t) for t in retry.tiers_s]
                await ensure_topics(kafka_client_options(kafka, self._environ), topics, retry.partitions)
            # Learn every written topic's partitions before the first send: a send that has to wait for a new
            # topic's metadata was seen to leave a record of another topic, queued just before, unsent until
            # the next send.
            for topic in [
                kafka.results_topic,
                retry.dead_letter_topic,
                retry.health_topic,
                *map(retry.tier_topic, retry.tiers_s),
            ]:
                await producer.partitions_for(topic)
            self.health = Health(self._results, retry.health_topic, self.metrics, self._announce_health)
            self._health_reader = HealthReader(
                retry.health_topic, kafka_client_options(kafka, self._environ), self.health
            )
            restored = await self._health_reader.start()
            stack.push_async_callback(self._health_reader.stop)
            if restored:
                log.info("endpoint health restored from %d records", restored)
            self._retries = Retries(self._results, retry, self.metrics, self.health, lambda: self._routing.lanes)
            stack.callback(self._retries.cancel_timers)

            self._sender = Sender(self.metrics)
            stack.push_async_callback(self._sender.close)

            self._routing = self._build_routing(config, {})
            stack.push_async_callback(self._close_lanes)

            drain_s = config.delivery.drain_timeout_s
            self.source = Source(kafka, self._environ, self.metrics, self._dispatch, drain_s)
            await self.source.start()
            stack.push_async_callback(self.source.stop)

            # The tiers' consumer polls no faster than a tenth of the shortest tier (at most 500 ms): a tight
            # fetch wait on every tier partition costs the broker and this process CPU for nothing.
            tier_wait = int(min(500, max(kafka.fetch_max_wait_ms, config.retry.tiers_s[0] * 100)))
            tier_kafka = msgspec.structs.replace(
                kafka, group_id=f"{kafka.group_id}.retry", topics=self._retries.tier_topics, fetch_max_wait_ms=tier_wait
            )
            self.tiers = Source(tier_kafka, self._environ, self.metrics, self._retries.take, drain_s, "retries")
            await self.tiers.start()
            stack.push_async_callback(self.tiers.stop)
            self._retries.hold = lambda topic, partition, offset, until_ms: self.tiers.hold(
                TopicPartition(topic, partition), offset, until_ms
            )

            self.admin = AdminServer(
                config.admin.listen, self.metrics, self._ready, self, config.admin.token(self._environ)
            )
            await self.admin.start()
            stack.push_async_callback(self.admin.stop)

            fetch = self._spawn(self.source.run(), "fetch")
            self._spawn(self.tiers.run(), "fetch-retries")
            self._spawn(self.source.commit_every(kafka.commit_interval_ms / 1000), "commit")
            self._spawn(self.tiers.commit_every(kafka.commit_interval_ms / 1000), "commit-retries")
            _notify_systemd("READY=1")
            log.info(
                "webhook-router running: topics %s, %d endpoints, %d subscriptions",
                ", ".join(kafka.topics),
                len(config.endpoints),
                len(config.subscriptions),
            )

            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            crashed = fetch.exception() if fetch in done else None
            if crashed is not None:
                log.error("the fetch loop failed (%s: %s): shutting down", type(crashed).__name__, crashed)
            await self._shutdown()
            if crashed is not None:
                raise crashed

    def request_stop(self) -> None:
        self._stop.set()

    async def _shutdown(self) -> None:
        """Stop fetching, drain under the deadline, cancel the rest, flush results, commit."""
        _notify_systemd("STOPPING=1")
        started = time.monotonic()
        deadline = self._config.delivery.drain_timeout_s
        self.source.stopping = self.tiers.stopping = True
        self._retries.cancel_timers()  # their tier records stay uncommitted: read again after a restart
        drained = await self.source.drain(max(0.0, deadline * 0.8))
        drained = await self.tiers.drain(max(0.0, deadline * 0.8 - (time.monotonic() - started))) and drained
        abandoned = 0
        if not drained:
            abandoned = await self._cancel_lanes()
        flushed = await self._results.flush(max(1.0, deadline - (time.monotonic() - started)))
        for source in (self.source, self.tiers):  # a broker that is gone must not hold the exit up
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
            0 if flushed else self._results.outstanding,
            self.source.offsets.in_flight + self.tiers.offsets.in_flight,
        )

    def _ready(self) -> bool:
        return self.source.joined and not self._stop.is_set()

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
        if not hasattr(self, "_routing"):
            log.warning("SIGHUP during start-up: ignored, the config was just read")
            return
        if self._config_path is None:
            log.warning("reload asked for, but the daemon was not started from a config file")
            return
        _notify_systemd(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = await asyncio.to_thread(load_config, self._config_path, dict(self._environ))
        except ConfigError as exc:
            self.metrics.config_reloads.labels("error").inc()
            log.error("config reload refused, keeping the running config: %d error(s)", len(exc.errors))
            for line in exc.errors:
                log.error("  %s", line)
            return
        finally:
            _notify_systemd("READY=1")
        old = self._config
        restart_needed = [
            name
            for name in ("bootstrap_servers", "group_id", "results_topic", "client_id", "security_protocol")
            if getattr(old.kafka, name) != getattr(new.kafka, name)
        ]
        if old.admin != new.admin:
            restart_needed.append("admin")
        if restart_needed:
            log.warning("config reload: changes to %s take effect only after a restart", ", ".join(restart_needed))
        old_routing = self._routing
        try:
            routing = self._build_routing(new, old_routing.lanes)
        except ValueError as exc:  # validation should have caught it; never let a reload take the daemon down
            self.metrics.config_reloads.labels("error").inc()
            log.error("config reload refused, keeping the running config: %s", exc)
            return
        self._routing = routing
        self._config = new
        if new.kafka.topics != old.kafka.topics:
            self.source.subscribe(new.kafka.topics)
        kept = set(map(id, self._routing.lanes.values()))
        for lane in old_routing.lanes.values():
            if id(lane) not in kept:
                task = asyncio.create_task(lane.close(), name=f"retire-{lane.endpoint.id}")
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded: %d endpoints, %d subscriptions", len(new.endpoints), len(new.subscriptions))

    def _build_routing(self, config: Config, old_lanes: dict[str, Lane]) -> Routing:
        lanes: dict[str, Lane] = {}
        resolved = resolve(config)
        for ep_config in resolved.endpoints:
            endpoint = Endpoint(ep_config, config.delivery, self._environ)
            previous = old_lanes.get(endpoint.id)
            if previous is not None and previous.endpoint.same_as(endpoint):
                lanes[endpoint.id] = previous
            else:
                lanes[endpoint.id] = Lane(
                    endpoint,
                    self._sender,
                    self.metrics,
                    self._retries.report,
                    self._retries.held_back,
                    self._lane_stats,
                )
            was = old_lanes.get(endpoint.id)
            if ep_config.paused:
                self.health.pause(endpoint.id, REASON_CONFIG, "paused = true in the config")
            elif was is not None and was.endpoint.config.paused:
                self.health.resume(endpoint.id)
        self.metrics.endpoints.set(len(resolved.endpoints))
        self.metrics.subscriptions.set(len(resolved.subscriptions))
        return Routing(config, resolved, lanes)

    async def _close_lanes(self) -> None:
        await self._cancel_lanes()

    async def _cancel_lanes(self) -> int:
        lanes = list(self._routing.lanes.values()) if hasattr(self, "_routing") else []
        counts = await asyncio.gather(*(lane.cancel() for lane in lanes))
        for task in self._retired:
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        return sum(counts)

    # --- operator actions (the admin API) ---

    def _lane(self, endpoint_id: str) -> Lane:
        lane = self._routing.lanes.get(endpoint_id)
        if lane is None:
            raise NotFound(f"no endpoint {endpoint_id!r}")
        return lane

    def endpoints_info(self) -> list[dict[str, Any]]:
        out = []
        for endpoint_id, lane in self._routing.lanes.items():
            state = self.health.states.get(endpoint_id)
            paused = state is not None and state.paused
            out.append(
                {
                    "id": endpoint_id,
                    "profile": lane.endpoint.profile.name,
                    "paused": paused,
                    "reason": state.reason if paused and state is not None else None,
                    "since": state.since if state is not None else None,
                    "consecutive_failures": self.health.failures(endpoint_id),
                    "in_flight": lane.busy,
                    "queued": lane.queued,
                    "max_concurrency": lane.endpoint.max_concurrency,
                }
            )
        return out

    def pause_endpoint(self, endpoint_id: str) -> bool:
        self._lane(endpoint_id)
        return self.health.pause(endpoint_id, REASON_OPERATOR, "paused by an operator")

    def resume_endpoint(self, endpoint_id: str) -> bool:
        self._lane(endpoint_id)
        return self.health.resume(endpoint_id)

    async def ping_endpoint(self, endpoint_id: str) -> Outcome:
        endpoint = self._lane(endpoint_id).endpoint
        return await self._one_attempt(endpoint, ping_job(endpoint))

    async def redeliver(self, delivery_id: str, where: dict[str, Any]) -> Outcome:
        """One attempt of a past delivery, its event read back from Kafka by its recorded position."""
        try:
            endpoint_id = str(where["endpoint_id"])
            topic, partition, offset = (
                str(where["source_topic"]),
                int(where["source_partition"]),
                int(where["source_offset"]),
            )
        except (KeyError, TypeError, ValueError):
            raise BadRequest(
                "give endpoint_id, source_topic, source_partition and source_offset, as in the results record"
            ) from None
        if delivery_id_of(topic, partition, offset, endpoint_id) != delivery_id:
            raise NotFound(f"{delivery_id} is not the delivery of {topic}[{partition}]@{offset} to {endpoint_id}")
        endpoint = self._lane(endpoint_id).endpoint
        options = kafka_client_options(self._config.kafka, self._environ)
        record = await read_one(options, topic, partition, offset)
        event = self._event_of(record)
        if event is None:
            raise BadRequest(f"the event at {topic}[{partition}]@{offset} is not a valid event")
        job = Job(
            event=event,
            delivery_id=delivery_id,
            ack=_nothing,
            trigger=REDELIVERY,
            endpoint_id=endpoint_id,
            redelivery_of_id=delivery_id,
        )
        return await self._one_attempt(endpoint, job)

    async def replay(self, endpoint_id: str, spec: dict[str, Any]) -> dict[str, int]:
        """Deliver again, once each, every event of a time or offset range that the endpoint is subscribed to."""
        lane = self._lane(endpoint_id)
        try:
            since = _ms(spec.get("from_time"))
            until = _ms(spec.get("to_time"))
            partition = None if spec.get("partition") is None else int(spec["partition"])
            first = None if spec.get("from_offset") is None else int(spec["from_offset"])
            last = None if spec.get("to_offset") is None else int(spec["to_offset"])
            topics = [str(spec["topic"])] if spec.get("topic") else list(self._config.kafka.topics)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"bad replay range: {exc}") from None
        if since is None and first is None:
            raise BadRequest("give from_time (ISO 8601) or from_offset (with topic and partition)")
        if first is not None and (partition is None or not spec.get("topic")):
            raise BadRequest("an offset range needs topic and partition")
        options = kafka_client_options(self._config.kafka, self._environ)
        scanned = matched = 0
        async for record in read_range(options, topics, since_ms=since, until_ms=until, partition=partition,
                                       from_offset=first, to_offset=last):  # fmt: skip
            scanned += 1
            event = self._event_of(record)
            if event is None:
                continue
            if endpoint_id not in self._routing.table.match(record.topic, event.event_type).select(event.decoded):
                continue
            matched += 1
            job = Job(
                event=event,
                delivery_id=delivery_id_of(record.topic, record.partition, record.offset, endpoint_id),
                ack=_nothing,
                trigger=REPLAY,
                endpoint_id=endpoint_id,
            )
            await lane.put_wait(job)  # a replay waits for room; it never pushes live traffic into the tiers
        return {"scanned": scanned, "matched": matched}

    def _event_of(self, record: Any) -> Event | None:
        reader = self._routing.readers.get(record.topic, _DEFAULT_READER)
        try:
            event_type = reader.read(record.value)
        except InvalidEvent:
            return None
        return Event.from_record(record, event_type)

    async def _one_attempt(self, endpoint: Endpoint, job: Job) -> Outcome:
        outcome = await self._sender.attempt(endpoint, job)
        self._retries.record(outcome, _nothing)
        return outcome

    # --- the hot path ---

    def _dispatch(self, record: Any, part: PartitionOffsets) -> None:
        """Route one consumed record: to each matched endpoint's lane, or to an invalid_event record.

        Nothing a record contains may stop the stream: whatever reading, matching or checking it raises
        makes it an ``invalid_event``, before any of its deliveries is handed out.
        """
        routing = self._routing
        topic, offset = record.topic, record.offset
        try:
            event_type = routing.readers.get(topic, _DEFAULT_READER).read(record.value)
            match = routing.table.match(topic, event_type)
            if not match.endpoints and not match.conditional:
                part.add(offset, 0)
                self.metrics.events_unmatched.labels(topic).inc()
                return
            event = Event.from_record(record, event_type)
            targets = match.select(event.decoded)
            lanes = routing.lanes
            skips = []
            for endpoint_id in targets:
                profile = lanes[endpoint_id].endpoint.profile
                skips.append(skip_for(profile, event.decoded(), event_type) if profile.skips else None)
        except InvalidEvent as exc:
            self._invalid(record, part, str(exc))
            return
        except Exception as exc:  # a record nobody foresaw: recorded, never a stop of the stream
            log.exception("event %s[%d]@%d could not be routed", topic, record.partition, offset)
            self._invalid(record, part, f"could not be routed ({type(exc).__name__})")
            return
        part.add(offset, len(targets))
        if not targets:
            self.metrics.events_unmatched.labels(topic).inc()
            return
        partition = record.partition
        ack = partial(part.done, offset)
        for endpoint_id, rule in zip(targets, skips, strict=True):
            lane = lanes[endpoint_id]
            job = Job(
                event=event,
                delivery_id=delivery_id_of(topic, partition, offset, endpoint_id),
                ack=ack,
                endpoint_id=endpoint_id,
            )
            if rule is not None:
                profile = lane.endpoint.profile
                outcome = outcome_for(endpoint_id, job, rule.status, error=rule.reason, profile=profile.name)
                self._retries.record(outcome, job.ack)
                continue
            self._retries.hand_over(lane, job)

    def _invalid(self, record: Any, part: PartitionOffsets, reason: str) -> None:
        topic, offset = record.topic, record.offset
        self.metrics.events_invalid.labels(topic).inc()
        part.add(offset, 1)
        outcome = Outcome(
            delivery_id=None,
            endpoint_id=None,
            event_type=None,
            attempt=0,
            status=INVALID_EVENT,
            error=reason,
            source_topic=topic,
            source_partition=record.partition,
            source_offset=offset,
            timestamp=utc_now_iso(),
        )
        self._results.submit(None, encode_outcome(outcome), partial(part.done, offset))

    def _announce_health(self, endpoint_id: str, paused: bool, reason: str | None) -> None:
        outcome = Outcome(
            delivery_id=None,
            endpoint_id=endpoint_id,
            event_type=None,
            attempt=0,
            status=ENDPOINT_PAUSED if paused else ENDPOINT_RESUMED,
            error=reason,
            source_topic=None,
            source_partition=None,
            source_offset=None,
            timestamp=utc_now_iso(),
            trigger="health",
        )
        self._results.submit(endpoint_id.encode(), encode_outcome(outcome), lambda: None)


def _nothing() -> None:
    pass


def _ms(value: Any) -> int | None:
    """Unix ms from an ISO 8601 time (``2026-11-23T11:00:00Z``) or a number of ms; None for None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


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
