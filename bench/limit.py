"""The limit: a bare aiohttp POST loop, in its own process, against the same receiver as the router.

One shared ClientSession (the router's connector settings), uvloop, ``concurrency`` long-lived workers,
the router's headers and the same Standard Webhooks signature per request, the same body size.
``--client router`` runs the same loop over the router's own HTTP client (``daemon.delivery.http.Client``:
aiohttp's connector and response parser, the request head serialised once) instead of
``ClientSession.post``: the floor of the router's own HTTP path, for comparison. Two modes:

- ``--requests N``: as fast as it goes; prints the rate over the middle 80 % of the requests.
- ``--rate R --duration S``: paced; each body carries the time its event was due (the recording receiver
  measures). With ``--fanout K`` each event is posted to K URLs (the K ``--url``s, one copy each), all copies
  carrying the event's time: a bare sender's fan-out, as the router's 1 -> K is. ``--warmup W`` sends W seconds of
  events first whose bodies carry no time (the receiver does not time them): connections made, as the router's are
  before its latency is measured.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp
from yarl import URL

from bench.workload import EVENT_TYPES, SECRET_KEY, USER_AGENT, event_body
from daemon.core.netguard import NetGuard
from daemon.core.sign import standard_webhooks_signature
from daemon.delivery.http import Client, Route

_KEYS = (SECRET_KEY,)


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("Accept",))


_BASE = {"Content-Type": "application/json", "User-Agent": USER_AGENT}


def _signed(n: int, body: bytes) -> dict[str, str]:
    ts = int(time.time())
    msg_id = f"msg_{n:032x}"
    sig = standard_webhooks_signature(_KEYS, msg_id, ts, body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


class _Poster:
    """One POST as a plain aiohttp loop makes it (``ClientSession.post``), or over the router's client."""

    def __init__(self, kind: str, urls: list[URL]) -> None:
        self._urls = urls
        self._session: aiohttp.ClientSession | None = None
        self._client: Client | None = None
        self._routes: list[Route] = []
        if kind == "router":
            # The receiver is on 127.0.0.1, as the router's config allows.
            self._client = Client(NetGuard(["127.0.0.0/8"]))
            self._routes = [self._client.route(url, _BASE) for url in urls]
        else:
            self._session = _session()
        self._deadline = aiohttp.ClientTimeout(total=10)

    async def post(self, n: int, body: bytes) -> bool:
        if self._client is not None:
            reply = await self._client.post(self._routes[n % len(self._routes)], _signed(n, body), body, 4096, 10)
            return 200 <= reply.status < 300
        assert self._session is not None
        url, headers = self._urls[n % len(self._urls)], {**_BASE, **_signed(n, body)}
        post = self._session.post(url, data=body, headers=headers, timeout=self._deadline, allow_redirects=False)
        async with post as resp:
            await resp.read()
            return 200 <= resp.status < 300

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._session is not None:
            await self._session.close()


async def run_fixed(poster: _Poster, concurrency: int, requests: int, size: int) -> dict[str, Any]:
    body = event_body(EVENT_TYPES[0], 0, size)
    counter = itertools.count()
    lo, hi = requests // 10, requests - requests // 10
    marks: dict[int, tuple[float, float]] = {}
    done = errors = 0

    async def worker() -> None:
        nonlocal done, errors
        for n in counter:
            if n >= requests:
                return
            try:
                ok = await poster.post(n, body)
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
            errors += not ok
            done += 1
            if done in (lo, hi):
                marks[done] = (time.perf_counter(), time.process_time())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    (t_lo, cpu_lo), (t_hi, cpu_hi) = marks.get(lo, (0.0, 0.0)), marks.get(hi, (0.0, 0.0))
    rate = (hi - lo) / (t_hi - t_lo) if t_hi > t_lo else requests / elapsed
    cpu_us = (cpu_hi - cpu_lo) * 1e6 / (hi - lo) if hi > lo else 0.0
    return {
        "requests": requests,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rate": round(rate, 1),
        "cpu_us": round(cpu_us, 1),
    }


async def run_paced(
    poster: _Poster,
    concurrency: int,
    rate: float,
    duration_s: float,
    size: int,
    fanout: int = 1,
    warmup_s: float = 0.0,
) -> dict[str, Any]:
    """``rate`` events a second for ``warmup_s`` (untimed; every one answered before the timed ones start, as the
    router's rounds wait for their warm-up's deliveries) then ``duration_s``; each event is ``fanout`` requests
    (request ``n`` goes to URL ``n % len(urls)``: with as many URLs as copies, copy ``i`` to URL ``i``). An event's
    time is when it was due: a wait for a free worker counts, as an event's wait in the router does."""
    warm = int(rate * warmup_s)
    total = warm + int(rate * duration_s)
    queue: asyncio.Queue[tuple[int, int, float] | None] = asyncio.Queue()
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while (item := await queue.get()) is not None:
            n, event, at = item
            body = event_body(EVENT_TYPES[event % len(EVENT_TYPES)], event, size, at)
            try:
                ok = await poster.post(n, body)
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
            finally:
                queue.task_done()
            errors += not ok

    async def pace(first: int, last: int, timed: bool) -> None:
        began = time.perf_counter()
        queued = first
        while queued < last:
            due = min(last, first + int((time.perf_counter() - began) * rate) + 1)
            while queued < due:
                at = time.time() if timed else 0.0  # 0: not timed (bench.receiver)
                for copy in range(fanout):
                    queue.put_nowait((queued * fanout + copy, queued, at))
                queued += 1
            await asyncio.sleep(0.0005)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    started = time.perf_counter()
    if warm:
        await pace(0, warm, timed=False)
        await queue.join()
    await pace(warm, total, timed=True)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return {"requests": total * fanout, "errors": errors, "seconds": round(time.perf_counter() - started, 3)}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    poster = _Poster(args.client, [URL(u) for u in args.url])
    try:
        if args.rate > 0:
            return await run_paced(
                poster, args.concurrency, args.rate, args.duration, args.size, args.fanout, args.warmup
            )
        return await run_fixed(poster, args.concurrency, args.requests, args.size)
    finally:
        await poster.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limit", description=__doc__)
    parser.add_argument("--url", action="append", required=True, help="target URL (repeat: requests go round-robin)")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--size", type=int, required=True, help="body size in bytes")
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--fanout", type=int, default=1, help="with --rate: requests an event (one to each URL)")
    parser.add_argument("--warmup", type=float, default=0.0, help="with --rate: seconds of untimed events first")
    parser.add_argument("--client", choices=("aiohttp", "router"), default="aiohttp")
    args = parser.parse_args()
    if args.fanout < 1 or (args.fanout > 1 and args.fanout != len(args.url)):
        parser.error("--fanout: at least 1, and as many as the --url given (one copy of each event to each)")
    import uvloop

    print(json.dumps(uvloop.run(_run(args))), flush=True)


if __name__ == "__main__":
    main()
