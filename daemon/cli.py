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
from daemon.client import TOP_LEVEL, add_commands, run_command
from daemon.config import Config
from daemon.errors import ConfigError, KafkaUnavailable, NotFound, TopicError
from daemon.resolve import resolve
from daemon.validate import load_config

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("daemon")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "run":
        return _run(args.config)
    if args.command == "ping":
        return _ping(args.config, args.endpoint)
    if args.command in TOP_LEVEL:
        return run_command(args, os.environ)
    if args.command == "demo":
        from daemon.demo import run_demo

        return run_coroutine(run_demo(events=args.events, rate=args.rate))
    parser.print_help()
    return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webhook-router", description=__doc__)
    parser.add_argument("--version", action="version", version=f"webhook-router {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, help="path of the TOML config")
    check = sub.add_parser("check-config", help="validate a config: exit 0, or 2 listing every error")
    check.add_argument("path")
    ping = sub.add_parser("ping", help="send an endpoint its profile's test event once; record the outcome")
    ping.add_argument("--config", required=True, help="path of the TOML config")
    ping.add_argument("endpoint", help="endpoint id")
    add_commands(sub)
    demo = sub.add_parser("demo", help="embedded broker, sample receiver, sample events: deliveries shown")
    demo.add_argument("--events", type=int, default=0, help="stop after this many events (0: run until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=2.0, help="sample events per second")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    resolved = resolve(config)  # organisations and campaigns count as the endpoints they become
    print(f"{path}: ok ({len(resolved.endpoints)} endpoints, {len(resolved.subscriptions)} subscriptions)")
    return EXIT_OK


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
    from daemon.operate import ping, record

    try:
        outcome = run_coroutine(ping(config, endpoint_id, os.environ))
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


def _run(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    from daemon.app import App

    app = App(config, config_path=path)
    try:
        run_coroutine(app.serve())
    except TopicError as exc:
        log.error("cannot start: the router's topics would lose data or are missing (%d):", len(exc.errors))
        for line in exc.errors:
            log.error("  %s", line)
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
