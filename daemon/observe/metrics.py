"""The registry and every metric, nothing else.

Cardinality stays bounded: only the ``endpoint_*`` series carry an endpoint id, and only for the endpoints the
config marks (``[metrics] endpoints``); per-partition series exist only for the partitions an instance is assigned.

prometheus_client's insides this module relies on: a labelled metric's ``_metrics`` (its children by label values),
read to drop the series of endpoints no longer marked; tests/unit/tools/test_operator_tools.py
(``test_per_endpoint_series_exist_only_for_marked_endpoints_and_go_when_unmarked``); a histogram child's
``_upper_bounds``, ``_buckets`` and ``_sum`` (and the parent's ``_upper_bounds``), which ``Attempts`` tallies by and
folds into; tests/unit/observe/test_metrics.py
(``test_attempts_tallied_read_as_if_each_had_been_observed``).
"""

from __future__ import annotations

import asyncio
import bisect
import platform
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

from daemon import __version__
from daemon.core.netguard import REASONS

# Latency buckets reach the longest allowed timeout (120 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class FunctionCounter:
    """A counter whose value a function reads, like a ``Gauge``'s ``set_function``: for a count kept by a pure module
    on its hot path (an increment of an int there, nothing per event here)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._read: Callable[[], float] = lambda: 0.0
        registry.register(self)

    def set_function(self, read: Callable[[], float]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation)


def _tasks() -> float:
    """The running event loop's tasks, read by a scrape (which runs on it); 0 when read outside a loop."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0.0


class _BeforeRead:
    """A collector that yields nothing: registered first, it runs ``folds`` each time the registry is read, before
    any metric is collected."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.folds: list[Callable[[], None]] = []
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        for fold in self.folds:
            fold()
        return iter(())

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


class Attempts:
    """Delivery attempts counted on the hot path (``deliveries_total`` and ``delivery_duration_seconds``): a tally of
    plain numbers per label set (a dict increment and a bisection, where prometheus_client's ``inc`` and ``observe``
    take a lock each and walk the buckets in Python), folded into the two metrics whenever the registry is read.

    ``__slots__``: added to once per attempt (the hot path)."""

    __slots__ = ("_bounds", "_counts", "_deliveries", "_duration", "_sums", "_tallies")

    def __init__(self, deliveries: Counter, duration: Histogram, before_read: _BeforeRead) -> None:
        self._deliveries = deliveries
        self._duration = duration
        self._bounds: list[float] = list(duration._upper_bounds)
        self._counts: dict[tuple[str, str], int] = {}  # (outcome, status class) -> attempts not folded yet
        self._tallies: dict[str, list[int]] = {}  # outcome -> attempts per bucket (the first bound >= the duration)
        self._sums: dict[str, float] = {}  # outcome -> seconds
        before_read.folds.append(self.fold)

    def add(self, outcome: str, status_class: str, seconds: float) -> None:
        key = (outcome, status_class)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        tally = self._tallies.get(outcome)
        if tally is None:
            tally = self._tallies[outcome] = [0] * len(self._bounds)
            self._sums[outcome] = 0.0
        tally[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sums[outcome] += seconds

    def fold(self) -> None:
        """Add what was tallied since the last fold to the metrics."""
        counts, self._counts = self._counts, {}
        for key, count in counts.items():
            self._deliveries.labels(*key).inc(count)
        for outcome, tally in self._tallies.items():
            if not any(tally):
                continue
            child: Any = self._duration.labels(outcome)
            child._sum.inc(self._sums[outcome])
            for i, count in enumerate(tally):
                if count:
                    child._buckets[i].inc(count)
                    tally[i] = 0
            self._sums[outcome] = 0.0


class Metrics:
    """One instance per daemon, with its own registry (tests run several daemons in one process)."""

    def __init__(self) -> None:
        r = self.registry = _process_registry()
        before_read = self._before_read = _BeforeRead(
            r
        )  # before every metric below: what the hot path tallied is folded in first
        p = "webhook_router_"
        self.events_consumed = Counter(p + "events_consumed", "Events read from Kafka.", ["topic"], registry=r)
        self.events_invalid = Counter(
            p + "events_invalid", "Events that could not be routed (not JSON, no type).", ["topic"], registry=r
        )
        self.events_invalid_payload = Counter(
            p + "events_invalid_payload", "Events that did not match the schema their type's catalogue entry validates "
            "(never delivered, dead-lettered), by event type.", ["event_type"], registry=r,
        )  # fmt: skip
        self.events_unmatched = Counter(
            p + "events_unmatched", "Events no subscription matched.", ["topic"], registry=r
        )
        self.events_in_flight = Gauge(
            p + "events_in_flight", "Events read and not finished (outcomes owed), per consumer (events, retries).",
            ["consumer"], registry=r,
        )  # fmt: skip
        self.events_in_flight_bytes = Gauge(
            p + "events_in_flight_bytes", "Bytes of the events read and not finished, per consumer (events, retries).",
            ["consumer"], registry=r,
        )  # fmt: skip
        self.deliveries = Counter(
            p + "deliveries", "Delivery attempts by outcome and status class.", ["outcome", "status_class"], registry=r
        )
        self.delivery_duration = Histogram(
            p + "delivery_duration_seconds",
            "Time from request start to response (or failure).",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Attempts(self.deliveries, self.delivery_duration, before_read)
        self.requests_in_flight = Gauge(p + "requests_in_flight", "HTTP requests under way.", registry=r)
        self.deliveries_queued = Gauge(
            p + "deliveries_queued", "Deliveries waiting for a free slot of their endpoint.", registry=r
        )
        self.results_written = Counter(p + "results_written", "Outcome records acknowledged by Kafka.", registry=r)
        self.results_errors = Counter(
            p + "results_errors", "Failed sends of outcome records (they are retried).", registry=r
        )
        self.config_reloads = Counter(p + "config_reloads", "Config reloads by result.", ["result"], registry=r)
        self.schema_fetches = Counter(
            p + "schema_fetches", "Writer schemas asked of the Schema Registry, by outcome (ok, unknown: no such id, "
            "unusable: a schema that does not load, error: the registry could not answer).", ["outcome"], registry=r,
        )  # fmt: skip
        self.events_waiting_for_schema = Counter(
            p + "events_waiting_for_schema", "Times a partition was held at a record whose writer schema the Schema "
            "Registry could not give yet.", ["topic"], registry=r,
        )  # fmt: skip
        # Event partitions only: a retry tier's partition is behind on purpose (its records are not due yet).
        self.consumer_lag = Gauge(
            p + "consumer_lag_records", "Records of an assigned event partition not finished yet (high watermark minus "
            "the committable offset).", ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.consumer_offset = Gauge(
            p + "consumer_offset", "The committable offset of an assigned event partition (all before it finished): "
            "a partition whose offset stands still while it has lag is stuck.", ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.retries_due_later = Gauge(
            p + "retries_due_later_records", "Records on an assigned retry tier partition not taken yet: retries "
            "waiting for their time (not lag).", ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.fetch_paused = Gauge(
            p + "fetch_paused",
            "1 while fetching is paused for backpressure, else 0, per consumer (events, retries).",
            ["consumer"],
            registry=r,
        )
        self.fetch_max_wait = Gauge(
            p + "fetch_max_wait_seconds", "How long a fetch waits for records at most, per consumer: "
            "kafka.fetch_max_wait_ms, or longer once the broker answered with none while records were ahead.",
            ["consumer"], registry=r,
        )  # fmt: skip
        self.fetch_errors = Counter(
            p + "fetch_errors", "Fetches or dispatches that failed and were tried again, per consumer.", ["consumer"],
            registry=r,
        )  # fmt: skip
        self.partitions_stuck = Gauge(
            p + "partitions_stuck", "Partitions held at a batch that cannot be decoded, per consumer (until skipped).",
            ["consumer"], registry=r,
        )  # fmt: skip
        self.batches_undecodable = Counter(
            p + "batches_undecodable", "Record batches found that cannot be decoded, per consumer.", ["consumer"],
            registry=r,
        )  # fmt: skip
        self.consumer_rebuilds = Counter(
            p + "consumer_rebuilds", "Kafka consumers replaced by a new one, per consumer: one of aiokafka's "
            "background tasks (the group's coordination, heartbeat or commit refresh, or the fetcher) had ended.",
            ["consumer"], registry=r,
        )  # fmt: skip
        self.offset_resets = Counter(
            p + "offset_resets", "Partitions of a consumer group started where kafka.auto_offset_reset says, per "
            "consumer and reason (deleted: its offset's records were deleted by retention; past_end: its offset is "
            "past the log's end; no_commit: the group had committed none).", ["consumer", "reason"], registry=r,
        )  # fmt: skip
        self.settled_skipped = Counter(
            p + "settled_skipped", "Records not dispatched again after an assignment: settled by its last commit",
            ["consumer"], registry=r,
        )  # fmt: skip
        self.commits = Counter(p + "offset_commits", "Offset commits by result.", ["result"], registry=r)
        self.endpoints = Gauge(p + "endpoints", "Endpoints routed to: the config file's and the API's.", registry=r)
        self.endpoints_paused = Gauge(
            p + "endpoints_paused", "Endpoints paused, by reason (failures, gone, operator, config, tenant).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.endpoints_records_refused = Counter(
            p + "endpoints_records_refused", "Records of the endpoints topic not applied, by reason (unauthenticated, "
            "mac, key, invalid, tombstone).", ["reason"], registry=r,
        )  # fmt: skip
        self.endpoints_records_under_old_keys = Gauge(
            p + "endpoints_records_under_old_keys", "Records held of the endpoints topic written under another secrets "
            "key than the current one, or before records were signed.", registry=r,
        )  # fmt: skip
        self.endpoints_behind_records = Gauge(
            p + "endpoints_behind_records", "Records of the endpoints topic known to exist and not applied yet.",
            registry=r,
        )  # fmt: skip
        self.endpoints_behind_seconds = Gauge(
            p + "endpoints_behind_seconds", "Seconds since this instance had last applied everything the endpoints "
            "topic held (past api.max_token_lag_s, tenant tokens are refused).", registry=r,
        )  # fmt: skip
        self.index_behind_records = Gauge(
            p + "delivery_index_behind_records", "Records of the delivery index topic known to exist and not read into "
            "this process's copy yet (0 where it keeps none).", registry=r,
        )  # fmt: skip
        self.index_behind_seconds = Gauge(
            p + "delivery_index_behind_seconds", "Seconds since this process's copy of the delivery index last held "
            "everything its topic held (+Inf until it first has; 0 where it keeps none).", registry=r,
        )  # fmt: skip
        self.index_entries = Gauge(
            p + "delivery_index_entries", "Entries this process's copy of the delivery index holds.", registry=r
        )
        self.index_bytes = Gauge(
            p + "delivery_index_bytes", "Bytes of this process's copy of the delivery index (its SQLite file).",
            registry=r,
        )  # fmt: skip
        self.retries_scheduled = Counter(p + "retries_scheduled", "Failed attempts given a retry.", registry=r)
        self.deliveries_deferred = Counter(
            p + "deliveries_deferred", "Deliveries moved to a retry tier because their endpoint's queue was full.",
            registry=r,
        )  # fmt: skip
        self.retry_hops = Counter(p + "retry_hops", "Retries moved to a shorter tier on their way to due.", registry=r)
        self.dead_lettered = Counter(p + "dead_lettered", "Deliveries that ended on the dead-letter topic.", registry=r)
        self.deliveries_blocked = Counter(
            p + "deliveries_blocked", "Attempts refused by the network guard (SSRF), by reason.", ["reason"], registry=r
        )
        for reason in REASONS:
            self.deliveries_blocked.labels(reason)
        self.deliveries_skipped = Counter(
            p + "deliveries_skipped", "Matched deliveries not attempted, by status.", ["status"], registry=r
        )
        self.retry_lateness = Histogram(
            p + "retry_lateness_seconds",
            "How long after its due time a retry was handed to its endpoint.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.subscriptions = Gauge(p + "subscriptions", "Subscriptions in the loaded config.", registry=r)
        self.routes_checked = FunctionCounter(
            p + "routes_checked", "Routes whose condition was checked to match an event (with api.tenant_field, an "
            "event is checked against its own tenant's routes only).", r,
        )  # fmt: skip
        self.deliveries_paced = FunctionCounter(
            p + "deliveries_paced", "Deliveries that waited for their endpoint's rate limit (or its pace after a 429) "
            "before their attempt: waiting, never a failure.", r,
        )  # fmt: skip
        self.endpoint_slowdowns = FunctionCounter(
            p + "endpoint_slowdowns", "Answers (429, or a Retry-After) that slowed an endpoint's pace down.", r
        )
        self.circuits_open = Gauge(
            p + "endpoint_circuits_open", "Endpoints whose circuit breaker is open or half open on this instance.",
            registry=r,
        )  # fmt: skip
        self.circuits_opened = Counter(
            p + "endpoint_circuits_opened", "Times an endpoint's circuit breaker opened (its probe failing included).",
            registry=r,
        )  # fmt: skip
        self.routing_cache_bytes = Gauge(
            p + "routing_cache_bytes", "Bytes the routing's cached answers hold, about (at most 32 MiB).", registry=r
        )
        self.results_pending = Gauge(
            p + "results_pending", "Records submitted to Kafka and not acknowledged yet (they wait out an outage).",
            registry=r,
        )  # fmt: skip
        self.event_loop_tasks = Gauge(
            p + "event_loop_tasks", "asyncio tasks of the event loop (flat in a steady state: a leak grows it).",
            registry=r,
        )  # fmt: skip
        self.event_loop_tasks.set_function(_tasks)
        self.kafka_contact = Gauge(
            p + "kafka_contact", "1 while the Kafka cluster answers; 0 once it has not for kafka.contact_timeout_s.",
            registry=r,
        )  # fmt: skip
        self.kafka_refused = Gauge(
            p + "kafka_refused", "What the Kafka cluster refuses this router now, by what: credentials (1 while its "
            "credentials are refused), read (topics it may not read), write (topics it may not write).", ["what"],
            registry=r,
        )  # fmt: skip
        for what in ("credentials", "read", "write"):
            self.kafka_refused.labels(what)
        self.producer_idempotent = Gauge(
            p + "kafka_producer_idempotent",
            "1 while results, retries and dead letters are written by an idempotent producer "
            "(kafka.enable_idempotence).",
            registry=r,
        )
        self.kafka_last_contact = Gauge(
            p + "kafka_last_contact_timestamp_seconds", "Unix time of the Kafka cluster's last answer.", registry=r
        )
        self.kafka_log_suppressed = Counter(
            p + "kafka_log_suppressed", "Kafka client log lines (WARNING and above) held back by the rate limit.",
            registry=r,
        )  # fmt: skip
        # Per endpoint, only for the endpoints the config marks (``[metrics] endpoints``): bounded by the config.
        self.marked_endpoints: frozenset[str] = frozenset()
        self.endpoint_attempts = Counter(
            p + "endpoint_attempts", "Delivery attempts of a marked endpoint, by outcome (delivered, failed).",
            ["endpoint", "outcome"], registry=r,
        )  # fmt: skip
        self.endpoint_duration = Histogram(
            p + "endpoint_duration_seconds", "Time from request start to response (or failure), for a marked endpoint.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
            self.commits.labels(result)

    def exposition(self, names: Collection[str] = ()) -> bytes:
        """The registry in the text format, or only the series ``names`` (``exposition``); what the hot path
        tallied folded in first (a restricted read would not run the fold, which has no name of its own)."""
        if names:
            self._before_read.collect()
        return exposition(self.registry, names)

    def mark_endpoints(self, marked: Iterable[str]) -> None:
        """The endpoints that get ``endpoint_*`` series (``metrics.endpoints`` of the config, at start and on each
        reload); the series of an endpoint no longer marked are dropped."""
        keep = self.marked_endpoints = frozenset(marked)
        for metric in (self.endpoint_attempts, self.endpoint_duration):
            for labels in list(metric._metrics):  # prometheus_client keeps a metric's children by label values
                if labels[0] not in keep:
                    metric.remove(*labels)


class SupervisorMetrics:
    """The supervisor's own, under ``process.workers`` (served beside its workers', ``daemon.observe.aggregate``): its
    process, the reloads it refused or passed on, its workers."""

    def __init__(self, workers: int) -> None:
        r = self.registry = _process_registry()
        p = "webhook_router_"
        self.config_reloads = Counter(
            p + "config_reloads", "Config reloads by result (the supervisor's: refused, or passed to every worker).",
            ["result"], registry=r,
        )  # fmt: skip
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        self.workers = Gauge(p + "workers", "Worker processes this instance runs (process.workers).", registry=r)
        self.workers.set(workers)
        self.workers_ready = Gauge(p + "workers_ready", "Workers running with their start-up complete.", registry=r)
        self.worker_restarts = Counter(
            p + "worker_restarts", "Workers started again after their process ended, by worker.", ["worker"],
            registry=r,
        )  # fmt: skip
        self.worker_scrape_errors = Counter(
            p + "worker_scrape_errors", "Scrapes of a worker's /metrics that failed (its last one was served), by "
            "worker.", ["worker"], registry=r,
        )  # fmt: skip


def exposition(registry: CollectorRegistry, names: Collection[str] = ()) -> bytes:
    """``registry`` in Prometheus's text format; with ``names`` (a scrape's ``name[]`` parameters, as
    prometheus_client's own HTTP server reads them) only the series of those names: a scraper that wants one
    counter does not pay for every family."""
    return generate_latest(registry.restricted_registry(names) if names else registry)


def _process_registry() -> CollectorRegistry:
    """A registry with process_* (CPU, memory, file descriptors) and python_* (GC, version), as a default registry
    has them, and the build info."""
    r = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=r)
    PlatformCollector(registry=r)
    GCCollector(registry=r)
    build = Info("webhook_router_build", "The running version.", registry=r)
    build.info({"version": __version__, "python": platform.python_version()})
    return r


def status_class(http_status: int | None, error: str | None) -> str:
    """A bounded label for a delivery outcome: ``2xx``..``5xx``, ``timeout``, ``blocked`` or ``connection``."""
    if http_status is not None:
        return f"{http_status // 100}xx" if 100 <= http_status < 600 else "other"
    if error and error.startswith("timeout"):
        return "timeout"
    if error and error.startswith("blocked"):
        return "blocked"
    return "connection"
