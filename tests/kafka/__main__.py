"""``python -m tests.kafka fetch | up | status | down``: a real Kafka cluster from the command line.

``up`` prints the bootstrap alone on stdout (``BOOTSTRAP=$(python -m tests.kafka up --detach)``), the rest on
stderr. More in ``tests/kafka/cluster.py``'s docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.kafka.cluster import KAFKA_VERSION, STATE_FILE, KafkaCluster, KafkaSetupError, fetch, missing_tools
from tests.kafka.security import USERS, Security

_OURS = {STATE_FILE, "cluster.tmp", "log4j2.properties", "tools-log4j2.properties", "tools.properties", "tls"}


def default_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"webhook-router-kafka-{os.getuid()}"


def _err(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _describe(cluster: KafkaCluster) -> None:
    for node in cluster.nodes.values():
        state = f"pid {node.pid}, {node.rss() / 2**20:.0f} MiB RSS" if node.running else "not running"
        _err(f"  node {node.node_id:>3} {'+'.join(node.roles):<17} {node.address:<16} {state}  {node.log}")


def _prepare_dir(work: Path) -> None:
    """An empty folder, or one a previous ``up`` left (its nodes all stopped): cleared. Anything else: refused."""
    if (work / STATE_FILE).exists():
        old = KafkaCluster.attach(work)
        if running := [n.node_id for n in old.nodes.values() if n.running]:
            raise SystemExit(f"a cluster is already up in {work} (nodes {running}, {old.bootstrap}): run `down` first")
    if work.exists():
        strangers = [p.name for p in work.iterdir() if p.name not in _OURS and not p.name.startswith("node-")]
        if strangers:
            raise SystemExit(f"{work} holds files that are not a cluster's ({', '.join(sorted(strangers)[:5])})")
        shutil.rmtree(work)


async def _up(args: argparse.Namespace) -> int:
    work = Path(args.dir).absolute()
    _prepare_dir(work)
    security = Security(work / "tls") if args.security else None
    cluster = KafkaCluster(
        work, brokers=args.brokers, controllers=args.controllers, die_with_parent=not args.detach, security=security
    )
    started = time.monotonic()
    try:
        await cluster.start(timeout=args.timeout)
    except BaseException:
        await cluster.stop(timeout=5)
        raise
    cluster.save_state()
    _err(f"Kafka {cluster.version} up in {time.monotonic() - started:.1f} s, cluster id {cluster.cluster_id}:")
    _describe(cluster)
    if security is not None:
        _err(f"  SSL (client certificates required): {cluster.bootstrap_of('SSL')}; SASL_SSL (PLAIN, SCRAM-SHA-256 "
             f"and -512, OAUTHBEARER): {cluster.bootstrap_of('SASL_SSL')}; SASL_PLAINTEXT (the same): "
             f"{cluster.bootstrap_of('SASL_PLAINTEXT')}; users {USERS}; CA and client certificates in "
             f"{security.folder}")  # fmt: skip
    print(cluster.bootstrap, flush=True)
    if args.detach:
        _err(f"left running; `python -m tests.kafka down --dir {work}` stops it")
        return 0
    _err("Ctrl-C stops it")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    _err("stopping")
    await cluster.stop()
    (work / STATE_FILE).unlink(missing_ok=True)
    return 0


async def _down(args: argparse.Namespace) -> int:
    work = Path(args.dir).absolute()
    if not (work / STATE_FILE).exists():
        _err(f"no {STATE_FILE} in {work}: nothing to stop")
        return 0
    cluster = KafkaCluster.attach(work)
    running = [n.node_id for n in cluster.nodes.values() if n.running]
    started = time.monotonic()
    await cluster.stop(timeout=args.timeout)
    (work / STATE_FILE).unlink(missing_ok=True)
    _err(f"stopped nodes {running} in {time.monotonic() - started:.1f} s (their files stay in {work})")
    return 0


async def _status(args: argparse.Namespace) -> int:
    work = Path(args.dir).absolute()
    if not (work / STATE_FILE).exists():
        _err(f"no {STATE_FILE} in {work}: no cluster")
        return 1
    cluster = KafkaCluster.attach(work)
    print(cluster.bootstrap, flush=True)
    _describe(cluster)
    if any(n.running for n in cluster.nodes.values()):
        try:
            _err(f"  active controller: {await cluster.active_controller(timeout=10)}")
            _err(f"  brokers in the metadata: {sorted(await cluster.live_brokers())}")
        except (KafkaSetupError, TimeoutError) as exc:
            _err(f"  no answer: {exc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kafka", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch the jars into the cache (nothing when they are there)")
    p_fetch.add_argument("--version", default=KAFKA_VERSION)
    p_up = sub.add_parser("up", help="start a cluster and print its bootstrap")
    p_up.add_argument("--brokers", type=int, default=3)
    p_up.add_argument("--controllers", type=int, default=None, help="dedicated controllers; 0: combined nodes")
    p_up.add_argument("--detach", action="store_true", help="return once it is up, leaving it running")
    p_up.add_argument("--timeout", type=float, default=180)
    p_up.add_argument(
        "--security", action="store_true", help="also SSL (mTLS), SASL_SSL and SASL_PLAINTEXT listeners, with ACLs"
    )
    p_down = sub.add_parser("down", help="stop the cluster DIR/cluster.json names")
    p_down.add_argument("--timeout", type=float, default=20)
    p_status = sub.add_parser("status", help="the nodes of DIR/cluster.json, their pids and RSS")
    for p in (p_up, p_down, p_status):
        p.add_argument("--dir", default=str(default_dir()), help="work folder (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its reconnect warnings while nodes start or stop

    if args.command == "fetch":
        started = time.monotonic()
        try:
            libs = fetch(args.version, verbose=True)
        except KafkaSetupError as exc:
            _err(exc)
            return 1
        _err(f"Kafka {args.version}'s jars in {libs} ({time.monotonic() - started:.1f} s)")
        return 0
    if args.command == "up" and (reason := missing_tools()) is not None:
        _err(reason)
        return 1
    handler = {"up": _up, "down": _down, "status": _status}[args.command]
    try:
        return asyncio.run(handler(args))
    except KafkaSetupError as exc:
        _err(exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
