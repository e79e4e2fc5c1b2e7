"""The latency the router adds, fanned out (issue 21): ``--rate`` events/s (default 5,000), each to 8 endpoints.

On one broker, a bare aiokafka consumer reads the events topic beside the router (same ``fetch_max_wait_ms``) and
notes when it had each event; the recording receiver notes when each delivery arrived (by the event's id). The
router's share of a delivery's latency is its arrival minus the bare consumer's time for the same event: what the
router adds to what Kafka takes anyway. End to end (produce -> arrival) is shown too; with ``--broker kafka`` it is
the figure on a real Kafka node (Tansu's fetches slow down as its memory store fills, so its runs are short).

The limit column is the floor of the same fan-out without the router: the bare aiohttp sender (``bench.limit
--fanout 8``, its own process, as many connections a URL as the router may open) posting each event, at the same
rate, to the same eight URLs of the same receiver, timed from the moment it had the event: what eight requests an
event through one receiver process cost on this machine before any router.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from bench.harness import IN_FLIGHT_CAP, Bench, verdict
from bench.router import Router, results_written, track, wait_ready
from bench.servers import Receiver, start_python
from bench.workload import BareConsumer, endpoint, labelled_config, labelled_topics, produce_paced


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


async def _arrivals(bench: Bench, receiver: Receiver) -> list[tuple[int, float]]:
    """Every delivery the receiver recorded since it was last asked: (event id, produce -> arrival ms)."""
    wait = aiohttp.ClientTimeout(total=120)  # 40,000 deliveries a second make a large answer
    async with bench.session.get(receiver.url("/__stats?reset=1"), timeout=wait) as resp:
        stats = json.loads(await resp.read())
    return list(zip(stats["ids"], stats["latencies_ms"], strict=True))


Round = tuple[list[float], list[float], list[float]]


def _urls(receiver: Receiver) -> list[str]:
    return [receiver.url(f"/hook/{i}") for i in range(8)]


_WARMUP_S = 1.0  # of events delivered before the measured ones: the group joined, lanes and connections made


async def _round(bench: Bench, receiver: Receiver, rate: float, seconds: float) -> Round:
    """One run: the router's added latencies, end to end, and the bare consumer's (after a warm-up stream)."""
    fetch_wait, label = bench.options.fetch_wait_ms, bench.label("fanout")
    async with bench.broker(label) as broker:
        topic, _ = await labelled_topics(broker, label)
        eps = [endpoint(f"ep-{i}", url, bench.options.concurrency, queue_size=IN_FLIGHT_CAP)
               for i, url in enumerate(_urls(receiver))]  # fmt: skip
        config = labelled_config(broker.bootstrap, label, eps, fetch_max_wait_ms=fetch_wait)
        router = await Router(f"{label}-router", bench.workdir, config).start()
        bare = BareConsumer(broker.bootstrap, topic, fetch_wait)
        try:
            await wait_ready(bench.session, [router], within_s=60)
            warm = await produce_paced(broker.bootstrap, topic, rate, _WARMUP_S, bench.options.size)
            await track(bench.session, [router], results_written, warm * 8, within_s=120)
            await bare.start(from_end=True)
            await _arrivals(bench, receiver)
            total = int(rate * seconds)
            reading = asyncio.create_task(bare.read(total))
            sent = await produce_paced(broker.bootstrap, topic, rate, seconds, bench.options.size)
            await asyncio.wait_for(reading, 60)
            samples = await track(bench.session, [router], results_written, (warm + sent) * 8, within_s=120)
            if samples[-1][1] < (warm + sent) * 8:
                raise TimeoutError(f"fan-out latency: {samples[-1][1]:.0f} of {(warm + sent) * 8} deliveries recorded")
            arrivals = await _arrivals(bench, receiver)
        finally:
            await bare.stop()
            await router.stop()
    consumed = bare.latencies
    added = sorted(ms - consumed[ident] for ident, ms in arrivals if ident in consumed)
    return added, sorted(ms for _, ms in arrivals), sorted(consumed.values())


async def latency_fanout(bench: Bench) -> None:
    rate = bench.options.rate or 5_000.0
    seconds = 1.0 if bench.options.quick else 5.0
    receiver = await start_python(bench.workdir, record=True)
    rounds: list[Round] = []
    try:
        for _ in range(1 if bench.options.quick else 3):
            rounds.append(await _round(bench, receiver, rate, seconds))
        urls = _urls(receiver)
        await bench.limit(urls, bench.options.concurrency * len(urls), "--rate", str(rate), "--duration",
                          str(seconds), "--fanout", str(len(urls)), "--warmup", str(_WARMUP_S))  # fmt: skip
        floor = sorted(ms for _, ms in await _arrivals(bench, receiver))
    finally:
        await receiver.stop()
    added, routed, bare = sorted(rounds, key=lambda r: percentile(r[0], 0.5))[len(rounds) // 2]
    where = f"{rate:,.0f} events/s for {seconds:.0f} s, 1 -> 8, on {bench.broker_kind}"
    p50, p99 = percentile(added, 0.5), percentile(added, 0.99)
    f50, f99 = percentile(floor, 0.5), percentile(floor, 0.99)
    bench.row("latency-fanout", f"router-added p50, ms (arrival minus a bare consumer on the same broker; {where}); "
              "limit: a bare aiohttp sender's own fan-out, no Kafka", f"{p50:.2f} ms", f"{f50:.2f} ms",
              target="< 0.5 ms", met=verdict(p50 < 0.5))  # fmt: skip
    bench.row("latency-fanout", "router-added p99, ms", f"{p99:.2f} ms", f"{f99:.2f} ms", target="< 2 ms",
              met=verdict(p99 < 2))  # fmt: skip
    bench.row("latency-fanout", "end to end (produce -> arrival) p50 / p99, ms; a bare consumer's",
              f"{percentile(routed, 0.5):.2f} / {percentile(routed, 0.99):.2f} ms",
              f"{percentile(bare, 0.5):.2f} / {percentile(bare, 0.99):.2f} ms")  # fmt: skip
    each = "; ".join(
        f"added {percentile(a, 0.5):.2f} / {percentile(a, 0.99):.2f}, end to end {percentile(r, 0.5):.2f} / "
        f"{percentile(r, 0.99):.2f}, bare consumer {percentile(b, 0.5):.2f} / {percentile(b, 0.99):.2f} ms"
        for a, r, b in rounds
    )
    bench.note(
        f"latency-fanout: {len(rounds)} rounds, the one with the median added p50 shown (p50 / p99: {each}); "
        f"fetch_max_wait_ms={bench.options.fetch_wait_ms} for the router and the bare consumer; 8 endpoints on one "
        f"recording receiver (bench.receiver); each round measured after {_WARMUP_S:g} s of events at the same rate "
        "were delivered (the group joined, the lanes, connections and masks made). The limit: the bare aiohttp sender "
        f"(bench.limit --fanout 8) at the same rate to the same URLs, after the same warm-up ({len(floor):,} requests "
        "timed)."
    )
