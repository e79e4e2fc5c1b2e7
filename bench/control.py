"""The control plane at scale (issue 21): ``--count`` endpoints (default 1,000,000) in the endpoints topic, ten per
tenant, and the daemon as a real process reading them.

Measured: start-up (command to ``/readyz`` 200) with the slowest ``/healthz`` answer meanwhile; RSS once ready; a
SIGHUP carrying every endpoint over to a routing built anew, with the slowest ``/healthz`` answer meanwhile; one
change applied, live (a changed endpoint's record produced, then ``GET /v1/endpoints/{id}`` polled every 2 ms
until it shows the change: the follower's fetch included) with the slowest ``/healthz`` during the changes; and in
process, a change applied to a routing of as many endpoints and the live objects an idle endpoint costs
(``bench.endpoints``: ``Routing.put`` and ``tracemalloc``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.endpoints import (
    compacted_topic,
    daemon_config,
    get,
    idle_bytes,
    one_change,
    produce_file,
    sealed_records,
    sighup,
    start,
    topic_idle_bytes,
    topic_record,
)
from bench.harness import Bench, verdict
from daemon.core.secretbox import Keyring
from daemon.tools.embedded import free_port

_CHANGES = 10
_AFTER_S = 3.0  # /healthz still polled this long after a reload was applied


async def _changed(session: aiohttp.ClientSession, port: int, token: str, i: int, url: str) -> bool:
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with session.get(f"http://127.0.0.1:{port}/v1/endpoints/api-{i}", headers=headers) as resp:
            return resp.status == 200 and (await resp.json()).get("url") == url
    except aiohttp.ClientError:
        return False


async def control_plane(bench: Bench) -> None:
    n = bench.options.count or (10_000 if bench.options.quick else 1_000_000)
    tenants = max(1, n // 10)
    token = os.environ["BENCH_ADMIN_TOKEN"] = os.urandom(32).hex()
    label = bench.label("control")
    session = bench.session
    began = time.perf_counter()
    key, records = await asyncio.to_thread(sealed_records, n, tenants)
    sealed = time.perf_counter() - began
    os.environ["BENCH_SECRETS_KEY"] = base64.b64encode(key).decode()
    keyring = Keyring(key)
    async with bench.broker(label) as broker:
        await broker.create_topics(["api-events"])
        await compacted_topic(broker.bootstrap, "api.endpoints")
        began = time.perf_counter()
        await produce_file(broker.bootstrap, "api.endpoints", records)
        written = time.perf_counter() - began
        port = free_port()
        config = daemon_config(broker.bootstrap, port, "api", 0, True)
        config["api"]["tenant_field"] = "tenant"  # each endpoint scoped to its tenant's events, as tenants are
        child, ready_s, slowest_start = await start(bench.workdir, f"{label}-router", config, session)
        try:
            rss_mb = child.status_kb("VmRSS") / 1024
            peak_mb = child.status_kb("VmHWM") / 1024
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False, linger_ms=0)
            await producer.start()
            applied: list[float] = []
            slowest_change = 0.0
            try:
                for k in range(_CHANGES):
                    i = (k * 7919) % n
                    value, record_key = topic_record(keyring, i, tenants, version=2)
                    url = f"https://h{i % 997}.example.com/in/{i}?v=2"
                    began = time.perf_counter()
                    await (await producer.send("api.endpoints", value, key=record_key))
                    while not await _changed(session, port, token, i, url):
                        if time.perf_counter() - began > 30:
                            raise TimeoutError(f"control-plane: a change of api-{i} not applied within 30 s")
                        before = time.perf_counter()
                        await get(session, f"http://127.0.0.1:{port}/healthz")
                        slowest_change = max(slowest_change, time.perf_counter() - before)
                        await asyncio.sleep(0.002)
                    applied.append(time.perf_counter() - began)
            finally:
                await producer.stop()
            reload_s, slowest_reload = await sighup(session, port, child.pid, poll_s=0.01, after_s=_AFTER_S)
            rss_reloaded_mb = child.status_kb("VmRSS") / 1024
        finally:
            await child.stop(within_s=60)
    routing_s = await asyncio.to_thread(one_change, n, tenants)
    parsed, routed = await asyncio.to_thread(idle_bytes, min(n, 100_000))
    held = await asyncio.to_thread(topic_idle_bytes, min(n, 100_000), max(1, min(n, 100_000) // 10))
    where = f"{n:,} endpoints of {tenants:,} tenants in the endpoints topic, on {bench.broker_kind}"
    bench.row("control-plane", f"start-up, command to /readyz 200 ({where})", f"{ready_s:.1f} s",
              target="< 60 s", met=verdict(ready_s < 60))  # fmt: skip
    bench.row("control-plane", "RSS once ready (peak)", f"{rss_mb:,.0f} MiB ({peak_mb:,.0f} MiB)",
              target="< 1.5 GB", met=verdict(rss_mb * 1024 * 1024 < 1.5e9))  # fmt: skip
    live = statistics.median(applied) * 1000
    bench.row("control-plane", f"one change applied, live: record produced -> seen by GET /v1/endpoints/{{id}} "
              f"(median / max of {_CHANGES})", f"{live:.1f} / {max(applied) * 1000:.1f} ms")  # fmt: skip
    bench.row("control-plane", "one change applied to the routing, in process (Routing.put and the first match, "
              "each endpoint scoped to its tenant; median of 200)", f"{routing_s * 1000:.2f} ms", target="< 5 ms",
              met=verdict(routing_s < 0.005))  # fmt: skip
    slowest = max(slowest_start, slowest_change) * 1000
    bench.row("control-plane", "slowest /healthz answer, during start-up / during the changes",
              f"{slowest_start * 1000:.0f} / {slowest_change * 1000:.0f} ms", target="< 50 ms",
              met=verdict(slowest < 50))  # fmt: skip
    bench.row("control-plane", "SIGHUP (the config unchanged): applied after / slowest /healthz answer, from the "
              f"signal to {_AFTER_S:g} s after it was applied / RSS after", f"{reload_s:.1f} s / "
              f"{slowest_reload * 1000:.0f} ms / {rss_reloaded_mb:,.0f} MiB", target="/healthz < 50 ms",
              met=verdict(slowest_reload < 0.05))  # fmt: skip
    bench.row("control-plane", "live objects per idle endpoint of the topic (tracemalloc, ten per tenant): its record "
              "in the directory + its routing (its subscription, its routes, its entries in the maps by id)",
              f"{held['directory']:.0f} + {held['routing']:.0f} bytes")  # fmt: skip
    bench.row("control-plane", "live objects per idle endpoint of the config file (tracemalloc): its config + its "
              "routes", f"{parsed:.0f} + {routed:.0f} bytes")  # fmt: skip
    bench.note(
        f"control-plane: {n:,} sealed endpoint records ({sealed:.1f} s to seal them, or to read them from the bench's "
        f"cache) produced in {written:.1f} s before the daemon started; RSS "
        f"per endpoint once ready {rss_mb * 1024 * 1024 / n:,.0f} bytes (the daemon's own ~60 MB included); the live "
        "change includes the follower's fetch of the new record (fetch_max_wait_ms of the daemon's reader)."
    )
