"""``python -m bench.tenants``: what a hostile tenant costs another (issue 19), the daemon as a real process.

Two tenants on one daemon (``api.tenant_field``), a fresh broker, receivers in this process:
- the other tenant's delivery time: 200 of its events produced at once, until the 200th is received (the median of
  five rounds), with no hostile endpoint, after the issue's request (one endpoint with ``"*"`` 50,000 times) and
  with the hostile tenant at the most it may hold (100 endpoints of 100 patterns, 14 of which match the other
  tenant's type);
- the event loop while the hostile tenant pings: 20 pings at once of an endpoint whose receiver echoes 5,000 bytes of
  its custom header values, the issue's (140 of 4,100 characters) and the most it may set (20 of 400), and the
  slowest ``/healthz`` answer meanwhile (polled every 10 ms).
A request the daemon refuses is shown with its status, and what it would have measured is left out. In process,
the cost of matching one of the other tenant's events, alone and beside the issue's endpoint (no cap applies there).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
import uvloop
from aiohttp import web
from aiokafka import AIOKafkaProducer

from bench.procs import Child
from daemon.tools.embedded import EmbeddedBroker, free_port

ADMIN = "bench-admin-" + base64.b16encode(os.urandom(8)).decode()
VICTIM_EVENTS = 200
# Patterns matching "lead.created": '*', its prefixes with '*', itself; and 86 that do not.
MATCHING = ["*", "lead.created", *(f"{'lead.created'[:k]}*" for k in range(1, 13))]
AT_MOST = MATCHING + [f"other.{i}.*" for i in range(100 - len(MATCHING))]


class Receivers:
    """The victim's receiver (counts what arrives) and an echo of custom header values (the hostile one's)."""

    def __init__(self) -> None:
        self.arrived = 0
        self.changed = asyncio.Event()

    async def victim(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived += 1
        self.changed.set()
        return web.Response(text="ok")

    async def echo(self, request: web.Request) -> web.Response:
        await request.read()
        values = "".join(v for k, v in request.headers.items() if k.lower().startswith("x-key"))
        return web.Response(text=(values * 5)[:5_000] or "ok")

    async def until(self, count: int, within_s: float = 300) -> None:
        deadline = time.monotonic() + within_s
        while self.arrived < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.1, deadline - time.monotonic()))


class Api:
    def __init__(self, session: aiohttp.ClientSession, port: int, token: str = ADMIN) -> None:
        self.session, self.base, self.token = session, f"http://127.0.0.1:{port}", token

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)


async def _victim_time(producer: AIOKafkaProducer, topic: str, receivers: Receivers) -> float:
    """Seconds from producing ``VICTIM_EVENTS`` of the victim's events to receiving the last (median of five)."""
    timings = []
    for _ in range(5):
        target = receivers.arrived + VICTIM_EVENTS
        started = time.perf_counter()
        for n in range(VICTIM_EVENTS):
            await producer.send(topic, json.dumps({"event": "lead.created", "tenant": "victim", "n": n}).encode())
        await producer.flush()
        await receivers.until(target)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


async def _ping_storm(api: Api, endpoint_id: str) -> float:
    """The slowest /healthz answer while 20 pings of ``endpoint_id`` are under way."""
    answers = asyncio.gather(*(api.call("POST", f"/v1/endpoints/{endpoint_id}/ping") for _ in range(20)))
    slowest = 0.0
    while not answers.done():
        started = time.perf_counter()
        async with api.session.get(f"{api.base}/healthz") as resp:
            await resp.read()
        slowest = max(slowest, time.perf_counter() - started)
        await asyncio.sleep(0.01)
    for status, outcome in await answers:
        assert status == 200 and outcome["http_status"] == 200, outcome  # the receiver answered its 5,000 bytes
    return slowest


def matching_us(hostile: list[str] | None) -> float:
    """Microseconds to match one of the victim's events (its decoding included), in process, beside a hostile
    endpoint with ``hostile`` patterns (None: none)."""
    import orjson

    from daemon.core.config import SubscriptionConfig, WhereConfig
    from daemon.core.match import RoutingTable

    def scoped(endpoint: str, tenant: str, events: list[str]) -> SubscriptionConfig:
        return SubscriptionConfig(endpoint=endpoint, events=events, scope=WhereConfig(field="tenant", one_of=[tenant]))

    subscriptions = [scoped("victim-1", "victim", ["lead.*"])]
    if hostile is not None:
        subscriptions.append(scoped("hostile-1", "hostile", hostile))
    table = RoutingTable(subscriptions)
    value = json.dumps({"event": "lead.created", "tenant": "victim"}).encode()
    table.match("events", "lead.created").select(lambda: orjson.loads(value))
    n = 2_000
    started = time.perf_counter()
    for _ in range(n):
        table.match("events", "lead.created").select(lambda: orjson.loads(value))
    return (time.perf_counter() - started) / n * 1e6


async def run(workdir: Path) -> dict[str, str]:
    os.environ["BENCH_ADMIN_TOKEN"] = ADMIN
    os.environ["BENCH_SECRETS_KEY"] = base64.b64encode(os.urandom(32)).decode()
    out: dict[str, str] = {
        "matching one victim event, in process": f"{matching_us(None):.1f} us",
        "the same beside the issue's endpoint (in process: no cap applies)": f"{matching_us(['*'] * 50_000):.1f} us",
    }
    receivers = Receivers()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/victim", receivers.victim)
    app.router.add_post("/echo", receivers.echo)
    runner = web.AppRunner(app, access_log=None, max_headers=1024)  # the issue's 140 headers
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
            await broker.create_topics(["events"])
            port = free_port()
            config = {
                "kafka": {"bootstrap_servers": broker.bootstrap, "group_id": "g", "topics": ["events"],
                          "results_topic": "results", "session_timeout_ms": 3000, "heartbeat_interval_ms": 300},
                "admin": {"listen": f"127.0.0.1:{port}", "token_env": "BENCH_ADMIN_TOKEN"},
                "delivery": {"allowed_networks": ["127.0.0.0/8"]},
                "api": {"enabled": True, "secrets_key_env": "BENCH_SECRETS_KEY", "tenant_field": "tenant"},
            }  # fmt: skip
            path = workdir / "router.toml"
            path.write_text(tomli_w.dumps(config))
            child = Child("daemon", [sys.executable, "-m", "daemon", "run", "--config", str(path)],
                          workdir / "daemon.log")  # fmt: skip
            await child.start()
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False, linger_ms=5)
            await producer.start()
            async with aiohttp.ClientSession() as session:
                admin = Api(session, port)
                while True:
                    child.check_alive()
                    try:
                        async with session.get(f"{admin.base}/readyz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
                for tenant in ("victim", "hostile"):
                    await admin.call("POST", "/v1/tenants", {"id": tenant})
                _, token = await admin.call("POST", "/v1/tenants/hostile/tokens")
                hostile = Api(session, port, token["token"])
                status, _ = await admin.call(
                    "POST",
                    "/v1/endpoints",
                    {"tenant": "victim", "url": f"{base}/victim", "events": ["lead.*"], "allow_http": True},
                )
                assert status == 201
                await receivers.until(0)
                took = await _victim_time(producer, "events", receivers)
                out["victim: 200 events, no hostile endpoint"] = f"{took:.2f} s"
                body = {"url": f"{base}/hostile", "events": ["*"] * 50_000}
                status, issue = await hostile.call("POST", "/v1/endpoints", body)
                name = "victim: 200 events, after the issue's endpoint ('*' x 50,000)"
                if status == 201:
                    out[name] = f"{await _victim_time(producer, 'events', receivers):.2f} s"
                    await hostile.call("DELETE", f"/v1/endpoints/{issue['id']}")
                else:
                    out[name] = f"refused: {status} {issue['error'][:70]}"
                created: list[str] = []
                for _ in range(100):
                    body = {"url": f"{base}/hostile", "events": AT_MOST}
                    status, answer = await hostile.call("POST", "/v1/endpoints", body)
                    if status == 201:
                        created.append(answer["id"])
                took = await _victim_time(producer, "events", receivers)
                out[f"victim: 200 events, hostile at {len(created)} endpoints x 100 patterns"] = f"{took:.2f} s"
                for endpoint_id in created:
                    await hostile.call("DELETE", f"/v1/endpoints/{endpoint_id}")
                took = await _victim_time(producer, "events", receivers)
                out["victim: 200 events, the hostile endpoints deleted (noise)"] = f"{took:.2f} s"
                for label, headers in (
                    ("140 headers of 4,100 characters", {f"X-Key-{i:03d}": f"{i:03d}" + "k/=+" * 1024 + "v"
                                                         for i in range(140)}),
                    ("20 headers of 400 characters", {f"X-Key-{i:02d}": f"{i:02d}" + "k/=+" * 99 + "vv"
                                                      for i in range(20)}),
                ):  # fmt: skip
                    status, echo = await hostile.call("POST", "/v1/endpoints", {"url": f"{base}/echo",
                                                      "events": ["none"], "headers": headers})  # fmt: skip
                    name = f"slowest /healthz during 20 pings, {label}"
                    if status == 201:
                        out[name] = f"{await _ping_storm(hostile, echo['id']) * 1000:.0f} ms"
                    else:
                        out[name] = f"refused: {status} {echo['error'][:70]}"
            await producer.stop()
            await child.stop(within_s=30)
    finally:
        await runner.cleanup()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__)
    parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-router-tenants-"))
    result = uvloop.run(run(workdir))
    width = max(len(k) for k in result)
    for name, value in result.items():
        print(f"{name:<{width}}  {value}")
    print(f"logs: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
