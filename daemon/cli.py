"""The ``webhook-router`` command: arguments, logging, config loading, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from daemon import __version__
from daemon.core.config import Config
from daemon.core.errors import ConfigError, KafkaRefused, KafkaUnavailable, NotFound, TopicError
from daemon.core.match import RoutingTable, Where
from daemon.core.profiles import PROFILES
from daemon.core.resolve import resolve
from daemon.core.validate import load_config
from daemon.observe.logs import apply as apply_logs
from daemon.observe.logs import setup as setup_logs
from daemon.tools.remote import TOP_LEVEL, add_commands, run_command, table
from daemon.tools.watch import add_commands as add_watch_commands
from daemon.tools.watch import run as watch

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("daemon")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logs(args.log_level)
    if args.command == "check-config":
        return _check_config(args.path, args.routes)
    if args.command == "run":
        if args.worker is not None:
            return _run(args.config, worker=(args.worker, args.admin_socket, args.supervisor))
        return _run(args.config, log_level=args.log_level)
    if args.command == "ping":
        return _ping(args.config, args.endpoint)
    if args.command == "index-rebuild":
        return _index_rebuild(args.config, args.since)
    if args.command in TOP_LEVEL:
        return run_command(args, os.environ)
    if args.command in ("tail", "stats"):
        return watch(args, os.environ)
    if args.command == "demo":
        from daemon.tools.demo import run_demo

        return run_coroutine(run_demo(events=args.events, rate=args.rate))
    parser.print_help()
    return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webhook-router", description=__doc__)
    parser.add_argument("--version", action="version", version=f"webhook-router {__version__}")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: the config's log.level, or INFO"
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, help="path of the TOML config")
    # A worker of process.workers, as its supervisor starts it (daemon.app.supervisor).
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--admin-socket", help=argparse.SUPPRESS)
    run.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    check = sub.add_parser("check-config", help="validate a config: exit 0, or 2 listing every error")
    check.add_argument("path")
    check.add_argument("--routes", action="store_true", help="also print which endpoints each event type reaches")
    ping = sub.add_parser("ping", help="send an endpoint its profile's test event once; record the outcome")
    ping.add_argument("--config", required=True, help="path of the TOML config")
    ping.add_argument("endpoint", help="endpoint id")
    rebuild = sub.add_parser(
        "index-rebuild", help="write the delivery index's entries of the results topic's records (all, or since a time)"
    )
    rebuild.add_argument("--config", required=True, help="path of the TOML config")
    rebuild.add_argument("--since", help="RFC 3339 (default: the topic's start)")
    add_commands(sub)
    add_watch_commands(sub)
    demo = sub.add_parser("demo", help="embedded broker, sample receiver, sample events: deliveries shown")
    demo.add_argument("--events", type=int, default=0, help="stop after this many events (0: run until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=2.0, help="sample events per second")
    return parser


def _check_config(path: str, routes: bool = False) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    resolved = resolve(config)  # organisations and campaigns count as the endpoints they become
    print(f"{path}: ok ({len(resolved.endpoints)} endpoints, {len(resolved.subscriptions)} subscriptions)")
    if routes:
        print(routes_table(config))
    return EXIT_OK


def routes_table(config: Config) -> str:
    """Which endpoints each event type reaches on each topic, as the daemon's own routing table answers: organisations
    and campaigns expanded (a campaign's own settings over its organisation's), contracts' catalogues applied. Rows:
    every type a subscription names, every type a subscribed contract's catalogue has, and for each wildcard
    ``prefix.<other>`` (any other type it covers) and ``<other>``. A conditional route shows its condition."""
    resolved = resolve(config)
    catalogues = {e.id: PROFILES[e.profile].catalogue for e in resolved.endpoints}
    routing = RoutingTable(resolved.subscriptions, catalogues)
    types: set[str] = set()
    for sub in resolved.subscriptions:
        for pattern in sub.events:
            types.add(pattern[:-1] + "<other>" if pattern.endswith("*") else pattern)
        types.update(catalogues.get(sub.endpoint) or ())
    rows = []
    for topic in config.kafka.topics:
        for event_type in sorted(types):
            found = routing.match(topic, event_type)
            reached = list(found.endpoints)
            for endpoint_id, where in found.conditional:
                reached.append(f"{endpoint_id} (if {_condition(where)})")
            for endpoint_id, field, value, own in routing.scoped_routes(topic, event_type):
                also = f" and {_condition(own)}" if own is not None else ""
                reached.append(f"{endpoint_id} (if {field} one of {value}{also})")
            rows.append({"topic": topic, "event_type": event_type, "endpoints": ", ".join(reached) or "-"})
    return table(rows, ("topic", "event_type", "endpoints"))


def _condition(where: Where) -> str:
    test = "none of" if where.negate else "one of"
    text = f"{'.'.join(where.path)} {test} {','.join(sorted(where.values))}"
    return text if where.also is None else f"{text} and {_condition(where.also)}"


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            log.error("config: %s", line)
        return None


def _ping(path: str, endpoint_id: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    from daemon.admin.operate import ping, record
    from daemon.kafka.clients import check_credentials

    try:  # before the ping: its outcome could not be recorded
        run_coroutine(check_credentials(config.kafka, os.environ))
        outcome = run_coroutine(ping(config, endpoint_id, os.environ))
    except KafkaRefused as exc:
        print(f"not pinged: its outcome could not be recorded on {config.kafka.results_topic}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NotFound as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    status = outcome.http_status if outcome.http_status is not None else "-"
    print(f"{outcome.status} {status} in {outcome.duration_ms} ms" + (f": {outcome.error}" if outcome.error else ""))
    print(outcome.response_body or "")
    try:
        run_coroutine(record(config, outcome, os.environ))
    except KafkaUnavailable as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if outcome.status == "delivered" else EXIT_FAILURE


def _index_rebuild(path: str, since: str | None) -> int:
    """The delivery index's entries of the results topic's records since ``since`` (RFC 3339; None: all of them)."""
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    from datetime import datetime

    from daemon.kafka.clients import kafka_client_options
    from daemon.kafka.index import rebuild

    try:
        since_ms = int(datetime.fromisoformat(since).timestamp() * 1000) if since else 0
    except ValueError:
        log.error("--since: not an RFC 3339 time with its offset (e.g. 2026-12-01T00:00:00Z)")
        return EXIT_CONFIG
    options = kafka_client_options(config.kafka, os.environ)
    kafka, topic = config.kafka, config.retry.index_topic
    written = run_coroutine(rebuild(options, kafka.results_topic, topic, since_ms))
    print(f"{written} entries written to {topic} from {kafka.results_topic}")
    return EXIT_OK


def _run(path: str, log_level: str | None = None, worker: tuple[int, str, int] | None = None) -> int:
    """The daemon: one process, or a supervisor of ``process.workers`` processes; ``worker`` (its number, its admin
    socket, its supervisor's pid) when this process is one of them."""
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    apply_logs(config.log)
    from daemon.app import App

    admin_listen, on_demand = None, False
    if worker is None:
        from daemon.app.supervisor import Supervisor, workers_of

        count = workers_of(config)
        if count > 1:
            return run_coroutine(Supervisor(config, path, count, log_level=log_level).serve())
    else:
        from daemon.app.worker import become

        index, socket, supervisor = worker
        if not become(index, supervisor):
            return EXIT_FAILURE
        admin_listen, on_demand = f"unix:{socket}", index != 0  # worker 0 answers the instance's lookups
    app = App(config, config_path=path, admin_listen=admin_listen, index_on_demand=on_demand)
    try:
        run_coroutine(app.serve())
    except TopicError as exc:
        log.error("cannot start: the router's topics would lose data, are missing or refused (%d):", len(exc.errors))
        for line in exc.errors:
            log.error("  %s", line)
        return EXIT_CONFIG
    except ConfigError as exc:  # what the cluster refuses of the config (kafka.enable_idempotence = true)
        for line in exc.errors:
            log.error("cannot start: %s", line)
        return EXIT_CONFIG
    return EXIT_OK


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(coro)
    return result
