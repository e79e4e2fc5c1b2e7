"""``webhook-router tail`` and ``stats``: the results topic read live, or summarised over a window.

Both read the results topic directly, without a consumer group (nothing is committed, nothing is taken from the
daemons), with the Kafka settings of a config (``--config``: the same connection and security as the daemon) or
a bare ``--bootstrap-servers`` and ``--results-topic``. ``tail`` starts at the end of every partition (``--since``:
that far back) and prints each record that passes the filters as it arrives: an aligned line, or the record's
JSON with ``--json``; ``--count N`` or ``--for SECONDS`` end it, else Ctrl-C. ``stats`` reads the records of the
last ``--window`` and prints per endpoint: attempts, delivered, failed, dead letters, skipped, the failure ratio
and the latency of the attempts (p50, p95, max). Filters: ``--endpoint`` (repeatable), ``--outcome`` (a
record's status, repeatable) and ``--tenant`` (its endpoints, asked of the endpoints API of the instance that
``--url`` or the config's ``admin.listen`` names, with the operator token, and asked again every 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from daemon.core.config import KafkaConfig
from daemon.kafka.clients import close_consumer, kafka_client_options, partitions_of, reader, refused
from daemon.kafka.readback import read_range
from daemon.kafka.readers import Readers
from daemon.tools.common import DEFAULT_TOKEN_ENV, UsageError, admin_url, config_at
from daemon.tools.remote import table

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_TENANT_REFRESH_S = 30.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The columns of tail's lines: (field, heading, width); the error takes the rest of the line.
_LINE = (("timestamp", "TIME", 24), ("status", "STATUS", 17), ("endpoint_id", "ENDPOINT", 16),
         ("event_type", "EVENT", 22), ("http_status", "HTTP", 4), ("duration_ms", "MS", 8), ("attempt", "TRY", 3),
         ("delivery_id", "DELIVERY", 36))  # fmt: skip
_SKIPPED = ("skipped_paused", "skipped_bulk_item", "skipped_unsupported")


def add_commands(sub: Any) -> None:
    """Add ``tail`` and ``stats`` to the ``webhook-router`` parser."""
    tail = sub.add_parser("tail", help="follow the results topic live: each attempt as it is recorded")
    _options(tail)
    tail.add_argument("--since", help="start this far back (30s, 10m, 2h, 1d) instead of at the end")
    tail.add_argument("--count", type=int, help="stop after this many records (that pass the filters)")
    tail.add_argument("--for", dest="for_s", type=float, help="stop after this many seconds")
    stats = sub.add_parser("stats", help="outcomes per endpoint over a window of the results topic")
    _options(stats)
    stats.add_argument("--window", default="1h", help="how far back: 30s, 10m, 2h, 1d (default 1h)")


def _options(op: argparse.ArgumentParser) -> None:
    op.add_argument("--config", help="a config: its [kafka] connection and results topic (and admin.listen)")
    op.add_argument("--bootstrap-servers", help="or the cluster, without a config (PLAINTEXT)")
    op.add_argument("--results-topic", help="with --bootstrap-servers (default webhook-results)")
    op.add_argument("--endpoint", action="append", default=[], help="only this endpoint id (repeatable)")
    op.add_argument("--outcome", action="append", default=[], help="only this status, e.g. failed (repeatable)")
    op.add_argument("--tenant", help="only this tenant's endpoints (asked of the endpoints API)")
    op.add_argument("--url", help="the endpoints API for --tenant: any instance's admin address")
    op.add_argument("--token-env", help=f"the variable holding the operator token (default {DEFAULT_TOKEN_ENV})")
    op.add_argument("--json", action="store_true", help="JSON: one record per line (tail), an object (stats)")


def run(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    """Run ``tail`` or ``stats``; the exit code."""
    try:
        kafka, api, token = _target(args, environ)
        window_s = parse_duration(args.window) if args.command == "stats" else None
        since_s = parse_duration(args.since) if args.command == "tail" and args.since else None
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    filters = Filters(set(args.endpoint), set(args.outcome), args.tenant, api, token)
    options = kafka_client_options(kafka, environ)
    options["client_id"] = "webhook-router-watch"
    where = f"cannot read {kafka.results_topic} from {kafka.bootstrap_servers}"
    # Asked first, by a handshake of our own: aiokafka takes a refused OAUTHBEARER token for an accepted one.
    if (why := asyncio.run(refused(kafka, environ))) is not None:
        print(f"{where}: {why}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "tail":
            return asyncio.run(tail(options, kafka.results_topic, filters, out, args.json, since_s, args.count,
                                    args.for_s))  # fmt: skip
        return asyncio.run(stats(options, kafka.results_topic, filters, out, args.json, window_s or 3600.0))
    except (KafkaError, OSError) as exc:
        print(f"{where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d`` as seconds."""
    m = _DURATION.match(text.strip())
    if not m or float(m[1]) <= 0:
        raise UsageError(f"not a duration: {text!r} (e.g. 30s, 10m, 2h, 1d)")
    return float(m[1]) * _UNITS[m[2]]


def _target(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[KafkaConfig, str | None, str | None]:
    """The Kafka settings, and the endpoints API's address and token (for ``--tenant`` only)."""
    api = args.url.rstrip("/") if args.url else None
    token_env = args.token_env or DEFAULT_TOKEN_ENV
    if args.config:
        config = config_at(args.config, environ)
        kafka = config.kafka
        if api is None:
            api = admin_url(config)
        token_env = args.token_env or config.admin.token_env or DEFAULT_TOKEN_ENV
    elif args.bootstrap_servers:
        topic = args.results_topic or "webhook-results"
        raw = {"bootstrap_servers": args.bootstrap_servers, "group_id": "webhook-router-watch", "topics": ["-"],
               "results_topic": topic}  # fmt: skip
        try:
            kafka = msgspec.convert(raw, KafkaConfig)
        except msgspec.ValidationError as exc:
            raise UsageError(f"--results-topic: {exc}") from None
    else:
        raise UsageError("give --config (a config's Kafka settings) or --bootstrap-servers")
    token = None
    if args.tenant:
        if api is None:
            raise UsageError("--tenant needs the endpoints API: give --url (or --config)")
        token = environ.get(token_env)
        if not token:
            raise UsageError(f"--tenant needs the operator token: set {token_env} (or name it with --token-env)")
    return kafka, api, token


class Filters:
    """Which records pass: by endpoint id, status, and a tenant's endpoints (asked of the API, kept 30 s)."""

    def __init__(
        self, endpoints: set[str], outcomes: set[str], tenant: str | None, api: str | None, token: str | None
    ) -> None:
        self.endpoints = endpoints
        self.outcomes = outcomes
        self.tenant = tenant
        self._api = api
        self._token = token
        self._tenant_endpoints: set[str] = set()
        self._asked = -_TENANT_REFRESH_S

    async def refresh(self) -> None:
        """Ask the endpoints API for the tenant's endpoints when the last answer is older than 30 s."""
        if self.tenant is None or time.monotonic() - self._asked < _TENANT_REFRESH_S:
            return
        self._tenant_endpoints = await tenant_endpoints(str(self._api), str(self._token), self.tenant)
        self._asked = time.monotonic()

    def passes(self, record: Mapping[str, Any]) -> bool:
        endpoint = record.get("endpoint_id")
        if self.endpoints and endpoint not in self.endpoints:
            return False
        if self.outcomes and record.get("status") not in self.outcomes:
            return False
        return self.tenant is None or endpoint in self._tenant_endpoints


async def tenant_endpoints(api: str, token: str, tenant: str) -> set[str]:
    """Every endpoint id of ``tenant``, page after page, from ``GET /v1/endpoints?tenant=``."""
    found: set[str] = set()
    after: str | None = None
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while True:
            params = {"tenant": tenant, **({"after": after} if after else {})}
            try:
                async with session.get(f"{api}/v1/endpoints", params=params, headers=headers) as resp:
                    if resp.status != 200:
                        raise UsageError(f"the endpoints API at {api} answered {resp.status}: {await resp.text()}")
                    page = await resp.json()
            except aiohttp.ClientError as exc:
                raise UsageError(f"cannot reach the endpoints API at {api}: {type(exc).__name__}") from None
            found.update(str(e["id"]) for e in page.get("data", ()))
            after = page.get("next_after")
            if not after:
                return found


# --- tail ---


async def tail(
    client_options: Mapping[str, Any],
    topic: str,
    filters: Filters,
    out: TextIO,
    as_json: bool,
    since_s: float | None = None,
    count: int | None = None,
    for_s: float | None = None,
) -> int:
    """Print the records of ``topic`` that pass ``filters`` as they arrive, until ``count`` records, ``for_s``
    seconds, SIGINT or SIGTERM. Says on stderr once it is positioned (from then on, nothing written is missed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    consumer = reader(client_options, auto_offset_reset="latest")
    await consumer.start()
    shown = 0
    try:
        tps = await _assign(consumer, topic)
        if since_s is not None:
            await _seek_to_time(consumer, tps, int((time.time() - since_s) * 1000))
        else:
            await consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the end now: records written from here on are all shown
                await consumer.position(tp)
        await filters.refresh()
        print(f"following {topic} ({len(tps)} partitions){'' if since_s is None else f', from {since_s:g} s ago'}",
              file=sys.stderr, flush=True)  # fmt: skip
        if not as_json:
            print(_heading(), file=out, flush=True)
        deadline = None if for_s is None else time.monotonic() + for_s
        while not stop.is_set() and (count is None or shown < count):
            wait_ms = 500 if deadline is None else int(min(0.5, deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                break
            batch = await consumer.getmany(timeout_ms=wait_ms)
            await filters.refresh()
            for records in batch.values():
                for rec in records:
                    record = _decode(rec.value)
                    if record is None or not filters.passes(record):
                        continue
                    print(json.dumps(record) if as_json else _line(record), file=out, flush=True)
                    shown += 1
                    if count is not None and shown >= count:
                        break
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await close_consumer(consumer)
    return EXIT_OK


async def _assign(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = await partitions_of(consumer, topic)
    if not partitions:
        raise UsageError(f"no topic {topic} on the cluster")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    return tps


async def _seek_to_time(consumer: AIOKafkaConsumer, tps: list[TopicPartition], since_ms: int) -> None:
    found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
    for tp in tps:
        at = found.get(tp)
        if at is None:  # nothing that recent: from the end
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, at.offset)


def _decode(value: bytes | None) -> dict[str, Any] | None:
    try:
        record = json.loads(value or b"")
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _heading() -> str:
    return " ".join(h.ljust(w) for _, h, w in _LINE) + " ERROR"


def _line(record: Mapping[str, Any]) -> str:
    cells = []
    for key, _, width in _LINE:
        value = record.get(key)
        text = "-" if value is None else str(value)
        cells.append(text[:width].ljust(width) if key != "delivery_id" else text.ljust(width))
    return (" ".join(cells) + " " + (record.get("error") or "")).rstrip()


# --- stats ---


async def stats(
    client_options: Mapping[str, Any], topic: str, filters: Filters, out: TextIO, as_json: bool, window_s: float
) -> int:
    """Summarise the records of the last ``window_s`` seconds per endpoint."""
    await filters.refresh()
    since_ms = int((time.time() - window_s) * 1000)
    per: dict[str, Summary] = {}
    async for rec in read_range(Readers(client_options), [topic], since_ms=since_ms):
        record = _decode(rec.value)
        if record is None or not filters.passes(record):
            continue
        endpoint = record.get("endpoint_id") or "-"
        per.setdefault(endpoint, Summary()).add(record)
    rows = [{"endpoint": endpoint, **s.row()} for endpoint, s in sorted(per.items())]
    if as_json:
        print(json.dumps({"window_s": window_s, "topic": topic, "endpoints": rows}), file=out)
    elif not rows:
        print(f"no records on {topic} in the last {window_s:g} s", file=out)
    else:
        print(table(rows, tuple(rows[0])), file=out)
    return EXIT_OK


class Summary:
    """One endpoint's records over the window."""

    def __init__(self) -> None:
        self.by_status: dict[str, int] = {}
        self.durations: list[float] = []
        self.last: str | None = None

    def add(self, record: Mapping[str, Any]) -> None:
        status = str(record.get("status"))
        self.by_status[status] = self.by_status.get(status, 0) + 1
        duration = record.get("duration_ms")
        if status in ("delivered", "failed") and isinstance(duration, (int, float)):
            self.durations.append(float(duration))
        stamp = record.get("timestamp")
        if isinstance(stamp, str) and (self.last is None or stamp > self.last):
            self.last = stamp

    def row(self) -> dict[str, Any]:
        def count(*names: str) -> int:
            return sum(self.by_status.get(n, 0) for n in names)

        delivered, failed = count("delivered"), count("failed")
        attempts = delivered + failed
        return {
            "attempts": attempts,
            "delivered": delivered,
            "failed": failed,
            "dead_lettered": count("dead_lettered"),
            "skipped": count(*_SKIPPED),
            "other": sum(self.by_status.values()) - attempts - count("dead_lettered", *_SKIPPED),
            "failure_ratio": round(failed / attempts, 3) if attempts else None,
            "p50_ms": _quantile(self.durations, 0.5),
            "p95_ms": _quantile(self.durations, 0.95),
            "max_ms": round(max(self.durations), 1) if self.durations else None,
            "last": self.last,
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)
