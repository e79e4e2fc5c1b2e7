"""``python -m bench``: run the scenarios of issue 5 on 127.0.0.1 and print (and record) the table."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench import report
from bench.harness import Bench, Options, Row
from bench.profile import find_py_spy
from bench.scenarios import ON_REQUEST, SCENARIOS
from bench.servers import certificate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help=f"run only this one (repeatable; default: all but {', '.join(sorted(ON_REQUEST))})",
    )
    parser.add_argument("--quick", action="store_true", help="small workloads: a smoke run, not a measurement")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of the workers scenario, routers of instances"
    )
    parser.add_argument("--receiver", choices=["auto", "nginx", "python"], default="auto")
    parser.add_argument("--concurrency", type=int, default=8, help="max_concurrency of each endpoint")
    parser.add_argument("--size", type=int, default=512, help="event body bytes")
    parser.add_argument(
        "--fetch-max-wait-ms", type=int, default=5, help="kafka.fetch_max_wait_ms of the latency scenario"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds of the soak (default 3600, --quick 20)")
    parser.add_argument(
        "--rate", type=float, default=None, help="events/s of the latency-fanout scenario (default 5,000)"
    )
    parser.add_argument(
        "--count", type=int, default=None, help="endpoints of the control-plane scenario (default 1,000,000)"
    )
    parser.add_argument("--tls", action="store_true", help="the throughput receiver (nginx) over https, TLS 1.3")
    parser.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="Tansu (embedded, in memory) or one Apache Kafka node (tests/kafka: java, the jars cached)",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy profile of a 1 -> 1 run (default: on without --quick, when py-spy is installed)",
    )
    parser.add_argument(
        "--results", type=Path, default=None, help=f"where to record the run (default {report.RESULTS})"
    )
    parser.add_argument(
        "--delivery-index",
        choices=["on", "off"],
        default=None,
        help="the endpoints API on, with the delivery index on or off (default: the API off)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not record the run (default with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, profiles)")
    return parser


async def _main(args: argparse.Namespace, workdir: Path) -> tuple[int, Bench, float]:
    if args.tls:  # the router and the bare loops (child processes) trust the receiver's certificate
        os.environ["SSL_CERT_FILE"] = str(certificate(workdir))
    profile = args.profile if args.profile is not None else (not args.quick and find_py_spy() is not None)
    options = Options(
        quick=args.quick,
        receiver=args.receiver,
        workers=args.workers,
        profile=profile,
        size=args.size,
        concurrency=args.concurrency,
        fetch_wait_ms=args.fetch_max_wait_ms,
        delivery_index=None if args.delivery_index is None else args.delivery_index == "on",
        duration=args.duration,
        rate=args.rate,
        broker=args.broker,
        count=args.count,
        tls=args.tls,
    )
    names = args.scenario or [name for name in SCENARIOS if name not in ON_REQUEST]
    failed = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        bench = Bench(options, workdir, session)
        for name in names:
            print(f"{name} ...", flush=True)
            began = time.perf_counter()
            try:
                await SCENARIOS[name](bench)
            except Exception as exc:
                failed += 1
                traceback.print_exc()
                bench.rows.append(Row(name, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:200]))
            print(f"{name}: {time.perf_counter() - began:.1f} s", flush=True)
    return (1 if failed else 0), bench, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-router-bench-"))
    load_before = report.load_average()
    code = 1
    try:
        import uvloop

        code, bench, seconds = uvloop.run(_main(args, workdir))
        print()
        print(report.table(bench.rows))
        print()
        for note in bench.notes:
            print(f"- {note}")
        if not args.no_results and (args.results is not None or not args.quick):
            date = subprocess.run(["date"], capture_output=True, text=True, check=False).stdout.strip()
            path = args.results or report.RESULTS
            load = f"{load_before} before the run, {report.load_average()} after it"
            report.write(path, report.section(bench, report.command_line(), date, seconds, load))
            print(f"\nrecorded in {path}")
    finally:
        if args.keep or code != 0:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code
