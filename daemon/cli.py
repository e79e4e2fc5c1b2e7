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
from daemon.config import Config
from daemon.errors import ConfigError, NotFound
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
    if args.command in _OPERATOR_COMMANDS:
        return _operate(args)
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
    for name, text in _OPERATOR_COMMANDS.items():
        op = sub.add_parser(name, help=text + " (through the running daemon's admin API)")
        op.add_argument("--config", required=True, help="the daemon's config: admin.listen and admin.token_env")
        if name != "endpoints":
            op.add_argument("target", help="delivery id" if name == "redeliver" else "endpoint id")
        if name == "redeliver":
            op.add_argument("--endpoint", required=True, help="endpoint_id of the results record")
            op.add_argument("--topic", required=True, help="source_topic of the results record")
            op.add_argument("--partition", type=int, required=True, help="source_partition of the results record")
            op.add_argument("--offset", type=int, required=True, help="source_offset of the results record")
            op.add_argument("--attempt", help="attempt_id of the results record (the new one's redelivery_of_id)")
        if name == "replay":
            op.add_argument("--from-time", help="ISO 8601, e.g. 2026-11-23T10:00:00Z")
            op.add_argument("--to-time", help="ISO 8601")
            op.add_argument("--topic")
            op.add_argument("--partition", type=int)
            op.add_argument("--from-offset", type=int)
            op.add_argument("--to-offset", type=int)
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
    from daemon.operate import ping

    try:
        outcome = run_coroutine(ping(config, endpoint_id, os.environ))
    except NotFound as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    status = outcome.http_status if outcome.http_status is not None else "-"
    print(f"{outcome.status} {status} in {outcome.duration_ms} ms" + (f": {outcome.error}" if outcome.error else ""))
    print(outcome.response_body or "")
    return EXIT_OK if outcome.status == "delivered" else EXIT_FAILURE


_OPERATOR_COMMANDS = {
    "endpoints": "list endpoints with their health and in-flight figures",
    "pause": "pause an endpoint",
    "resume": "resume an endpoint",
    "redeliver": "deliver a past delivery once more (one attempt)",
    "replay": "deliver every matching event of a time or offset range to an endpoint again",
}


def _operate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    token = config.admin.token(os.environ)
    if token is None:
        print("admin.token_env is not set in the config, or its variable is not in the environment", file=sys.stderr)
        return EXIT_CONFIG
    host, _, port = config.admin.listen.rpartition(":")
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104 - a client, not a bind
    method, path, body = "POST", "", None
    if args.command == "endpoints":
        method, path = "GET", "/endpoints"
    elif args.command in ("pause", "resume"):
        path = f"/endpoints/{args.target}/{args.command}"
    elif args.command == "redeliver":
        path = f"/deliveries/{args.target}/redeliver"
        body = {"endpoint_id": args.endpoint, "source_topic": args.topic, "source_partition": args.partition,
                "source_offset": args.offset, "attempt_id": args.attempt}  # fmt: skip
    else:
        path = f"/endpoints/{args.target}/replay"
        spec = {"from_time": args.from_time, "to_time": args.to_time, "topic": args.topic,
                "partition": args.partition, "from_offset": args.from_offset, "to_offset": args.to_offset}  # fmt: skip
        body = {k: v for k, v in spec.items() if v is not None}
    status, text = run_coroutine(_call(method, base + path, token, body))
    print(text)
    return EXIT_OK if 200 <= status < 300 else EXIT_FAILURE


async def _call(method: str, url: str, token: str, body: dict[str, Any] | None) -> tuple[int, str]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=600)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.request(method, url, json=body, headers=headers) as resp:
                return resp.status, await resp.text()
        except aiohttp.ClientError as exc:
            return 0, f"cannot reach the daemon at {url}: {type(exc).__name__}"


def _run(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    from daemon.app import App

    app = App(config, config_path=path)
    run_coroutine(app.serve())
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
