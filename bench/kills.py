"""``python -m bench.kills``: SIGKILL the daemon again and again under load; count what is lost and what twice.

A real broker (Tansu, or with ``--kafka N`` an Apache Kafka cluster of N brokers from ``tests.kafka``), a receiver
in this process that counts every ``webhook-id`` it is sent, and the daemon as a real process. Events are produced
at a steady rate for as long as the kills last (``--kills`` at ``--every`` second intervals), so that every kill comes
under load; the daemon is restarted each time, then left to finish. Lost: events never
delivered. Duplicates: deliveries beyond the first of an event (at least once: a kill re-delivers what was
not committed yet); per kill, about what was settled since the last commit and what was under way when the kill
came (what the last commit's note said was settled above its offset is not delivered again: on Kafka; Tansu keeps no
commit metadata). ``settled_skipped`` is what the restarted daemons skipped so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from bench.router import Router, wait_ready
from bench.workload import endpoint, labelled_config, labelled_topics, produce_paced
from daemon.tools.embedded import EmbeddedBroker


class Counter:
    """A receiver that answers 200 and counts each webhook-id (the daemon is not running while it restarts)."""

    def __init__(self, expected: int, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.expected = expected
        self.all_seen = asyncio.Event()
        self.seen: collections.Counter[str] = collections.Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Counter:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.seen[request.headers["webhook-id"]] += 1
        if len(self.seen) >= self.expected:
            self.all_seen.set()
        return web.Response(text="ok")

    @property
    def deliveries(self) -> int:
        return sum(self.seen.values())

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def broker_of(kafka: int, workdir: Path) -> Any:
    """Tansu, or a Kafka cluster of ``kafka`` brokers (one combined node, or brokers and three controllers)."""
    if not kafka:
        return EmbeddedBroker(log_path=workdir / "tansu.log")
    from tests.kafka import KafkaCluster

    return KafkaCluster(workdir / "kafka", brokers=kafka)


async def run(
    events: int, kills: int, every: float, commit_ms: int | None, delay_s: float, workdir: Path, kafka_brokers: int = 0
) -> dict[str, float]:
    async with broker_of(kafka_brokers, workdir) as broker:
        topic, _ = await labelled_topics(broker, "kills", partitions=3)
        receiver = await Counter(events, delay_s).start()
        ep = endpoint("x", f"http://127.0.0.1:{receiver.port}/hook", max_concurrency=8, queue_size=100_000)
        kafka = {"commit_interval_ms": commit_ms} if commit_ms is not None else {}
        config = labelled_config(broker.bootstrap, "kills", [ep], **kafka)
        per_kill: list[int] = []
        skipped = 0.0
        async with aiohttp.ClientSession() as session:
            router = await Router("router-0", workdir, config).start()
            await wait_ready(session, [router])
            duration = max(1.0, kills * every)
            producing = asyncio.create_task(produce_paced(broker.bootstrap, topic, events / duration, duration, 512))
            for n in range(kills):
                await asyncio.sleep(every)
                before = receiver.deliveries
                skipped += await settled_skipped(session, router)
                await router.stop(kill=True)
                router = await Router(f"router-{n + 1}", workdir, config).start()
                await wait_ready(session, [router])
                per_kill.append(before)
            await producing
            with contextlib.suppress(TimeoutError):  # what is missing then is reported as lost
                await asyncio.wait_for(receiver.all_seen.wait(), 120)
            await asyncio.sleep(1.0)  # anything still arriving twice
            skipped += await settled_skipped(session, router)
            await router.stop()
        await receiver.stop()
    duplicates = receiver.deliveries - len(receiver.seen)
    return {
        "events": events,
        "kills": kills,
        "delivered": len(receiver.seen),
        "lost": events - len(receiver.seen),
        "deliveries": receiver.deliveries,
        "duplicates": duplicates,
        "duplicates_per_kill": duplicates / kills if kills else 0.0,
        "delivered_before_last_kill": per_kill[-1] if per_kill else 0,
        "settled_skipped": skipped,
    }


async def settled_skipped(session: aiohttp.ClientSession, router: Router) -> float:
    """What ``router`` did not deliver again since it started: settled by the last commit's note."""
    return (await router.metrics(session)).get('webhook_router_settled_skipped_total{consumer="events"}', 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kills", description=__doc__)
    parser.add_argument("--events", type=int, default=15_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--every", type=float, default=1.0, help="seconds of delivery between kills")
    parser.add_argument("--commit-interval-ms", type=int, default=None, help="default: the daemon's")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the receiver's time per request")
    parser.add_argument("--kafka", type=int, default=0, choices=(0, 1, 3), help="brokers of an Apache Kafka cluster "
                        "(tests.kafka: Java and Maven) instead of Tansu")  # fmt: skip
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-router-kills-"))
    result = uvloop.run(
        run(args.events, args.kills, args.every, args.commit_interval_ms, args.delay_ms / 1000, workdir, args.kafka)
    )
    for name, value in result.items():
        print(f"{name}: {value:g}")
    print(f"logs: {workdir}")
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
