"""``python -m bench.endpoints``: the daemon with 100,000 endpoints, in the config file and in the endpoints topic.

Measured, each on a fresh broker with the daemon as a real process:
- one change applied to a routing of 100,000 endpoints (in process: ``Settlement.put`` of a changed endpoint);
- start-up (command to ``/readyz`` 200) and peak RSS with the endpoints in the config file, and in the topic;
- a SIGHUP that changes every endpoint of the config file: how long until it is applied, and the slowest
  ``/healthz`` answer meanwhile (polled every 100 ms; the shipped liveness probe allows 3 s);
- SIGTERM to exit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
import uvloop
from aiokafka import AIOKafkaProducer

from bench.procs import Child
from daemon.core.registry import endpoint_key, sealed_record, signed
from daemon.core.secretbox import Keyring
from daemon.tools.embedded import EmbeddedBroker, free_port

SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()
MiB = 1024 * 1024


def _endpoints(n: int, version: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    endpoints = [{"id": f"ep-{i}", "url": f"https://h{i % 997}.example.com/hooks/{i}?v={version}", "secret": SECRET}
                 for i in range(n)]  # fmt: skip
    subscriptions = [{"endpoint": f"ep-{i}", "events": [f"lead.{i % 50}", "call.*"]} for i in range(n)]
    return endpoints, subscriptions


def daemon_config(bootstrap: str, port: int, prefix: str, n_static: int, api: bool, version: int = 1) -> dict[str, Any]:
    endpoints, subscriptions = _endpoints(n_static, version)
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"g-{prefix}", "topics": [f"{prefix}-events"],
                  "results_topic": f"{prefix}-results", "session_timeout_ms": 3000, "heartbeat_interval_ms": 300},
        "admin": {"listen": f"127.0.0.1:{port}", "token_env": "BENCH_ADMIN_TOKEN"},
        "retry": {"topic_prefix": prefix},
        "endpoints": endpoints,
        "subscriptions": subscriptions,
    }  # fmt: skip
    if api:
        doc["api"] = {"enabled": True, "secrets_key_env": "BENCH_SECRETS_KEY"}
    return doc


def _rss(child: Child, field: str) -> str:
    return f"{child.status_kb(field) * 1024 / MiB:.0f} MiB"


async def get(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def start(
    workdir: Path, name: str, config: dict[str, Any], session: aiohttp.ClientSession
) -> tuple[Child, float, float]:
    """The daemon started: it, seconds to ``/readyz`` 200, and the slowest ``/healthz`` answer once the admin
    server first answered (polled every 100 ms, beside ``/readyz``)."""
    path = workdir / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    child = Child(name, [sys.executable, "-m", "daemon", "run", "--config", str(path)], workdir / f"{name}.log")
    started = time.perf_counter()
    await child.start()
    port = config["admin"]["listen"].rsplit(":", 1)[1]
    slowest, listening = 0.0, False
    while await get(session, f"http://127.0.0.1:{port}/readyz") != 200:
        child.check_alive()
        before = time.perf_counter()
        answered = await get(session, f"http://127.0.0.1:{port}/healthz") is not None
        if listening or answered:
            slowest = max(slowest, time.perf_counter() - before)
            listening = True
        await asyncio.sleep(0.1)
    return child, time.perf_counter() - started, slowest


async def compacted_topic(bootstrap: str, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()


def topic_record(keyring: Keyring, i: int, tenants: int = 1, version: int = 1) -> tuple[bytes, bytes]:
    """Endpoint ``api-{i}`` of tenant ``t-{i % tenants}`` as the endpoints topic keeps it: its value and key."""
    record = sealed_record(
        keyring, endpoint_id=f"api-{i}", tenant=f"t-{i % tenants}", version=version, created_at=None,
        url=f"https://h{i % 997}.example.com/in/{i}?v={version}", headers={}, secrets=[(SECRET, None)],
        events=[f"lead.{i % 50}", "call.*"], topics=None, where=None, description=None, settings={},
    )  # fmt: skip
    return signed(record, keyring), endpoint_key(record.id).encode()


CACHE = Path.home() / ".cache" / "webhook-router" / "bench-endpoints"
_LENGTH = struct.Struct(">II")


def sealed_records(n: int, tenants: int, cache: Path = CACHE) -> tuple[bytes, Path]:
    """The secrets key and a file of ``n`` sealed endpoint records (``topic_record``: the daemon's own sealing and
    signing), each its key's and value's lengths then both. Written once per count, tenants and bench version, then
    read again by the next run (a million records take a minute or more to seal on this machine); the key beside
    them is the bench's own, random when first written."""
    folder = cache / f"{n}x{tenants}-v1"
    path, key_path = folder / "records", folder / "key"
    if path.exists() and key_path.exists():
        return base64.b64decode(key_path.read_text()), path
    folder.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    keyring = Keyring(key)
    partial = folder / f"records.{os.getpid()}"
    with partial.open("wb") as out:
        for i in range(n):
            value, record_key = topic_record(keyring, i, tenants)
            out.write(_LENGTH.pack(len(record_key), len(value)) + record_key + value)
    key_path.write_text(base64.b64encode(key).decode())
    partial.rename(path)
    return key, path


def _read_records(path: Path) -> Iterator[tuple[bytes, bytes]]:
    with path.open("rb", buffering=1 << 20) as records:
        while head := records.read(_LENGTH.size):
            key_len, value_len = _LENGTH.unpack(head)
            yield records.read(key_len), records.read(value_len)


async def produce_file(bootstrap: str, topic: str, path: Path) -> int:
    """Every record of ``path`` (``sealed_records``) produced to partition 0 of ``topic`` in batches of up to 1 MiB,
    a few in flight at once; returns how many."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, max_batch_size=1 << 20,
                                request_timeout_ms=120_000)  # fmt: skip
    await producer.start()
    count = 0
    try:
        in_flight: list[asyncio.Future[Any]] = []
        batch = producer.create_batch()
        for key, value in _read_records(path):
            if batch.append(key=key, value=value, timestamp=None) is None:
                in_flight.append(await producer.send_batch(batch, topic, partition=0))
                if len(in_flight) >= 4:
                    await in_flight.pop(0)
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        if batch.record_count():
            in_flight.append(await producer.send_batch(batch, topic, partition=0))
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
    return count


async def topic_records(bootstrap: str, topic: str, n: int, tenants: int = 1, cache: Path = CACHE) -> bytes:
    """``n`` sealed endpoint records of ``tenants`` tenants written to ``topic`` (from the cache when it has them);
    returns the secrets key they are sealed and signed under."""
    key, path = await asyncio.to_thread(sealed_records, n, tenants, cache)
    await produce_file(bootstrap, topic, path)
    return key


def one_change(n: int, tenants: int | None = None) -> float:
    """Seconds to apply one changed endpoint to a routing of ``n`` (the median of 200 changes); with ``tenants``, each
    endpoint scoped to its tenant's events, as ``api.tenant_field`` scopes the endpoints of the API."""
    from daemon.core.config import EndpointConfig, SubscriptionConfig, WhereConfig
    from daemon.core.validate import parse_config
    from daemon.engine.routing import Routing

    def scope(i: int) -> WhereConfig | None:
        return WhereConfig(field="tenant", one_of=[f"t-{i % tenants}"]) if tenants else None

    raw = {"kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"}}
    routing = Routing(parse_config(raw, {}), {})
    for i in range(n):
        routing.put(EndpointConfig(id=f"api-{i}", url=f"https://h{i % 997}.example.com/in/{i}", secret=SECRET),
                    SubscriptionConfig(endpoint=f"api-{i}", events=[f"lead.{i % 50}", "call.*"],
                                       scope=scope(i)))  # fmt: skip
    timings = []
    for k in range(200):
        i = (k * 7919) % n
        config = EndpointConfig(id=f"api-{i}", url=f"https://changed.example.com/{k}", secret=SECRET)
        sub = SubscriptionConfig(endpoint=f"api-{i}", events=["lead.7"], scope=scope(i))
        started = time.perf_counter()
        routing.put(config, sub)
        routing.table.match("t", "lead.7")  # the first match after a change resolves the type again
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def idle_bytes(n: int) -> tuple[float, float]:
    """Bytes of live objects per idle endpoint of the config file (traced by ``tracemalloc``): its parsed
    config, then what the routing adds (its routes; no ``Endpoint`` is prepared before it has work)."""
    from daemon.core.validate import parse_config
    from daemon.engine.routing import Routing

    doc = daemon_config("k:9092", 1, "cfg", n, False)
    environ = dict(os.environ)
    gc.collect()
    tracemalloc.start()
    try:
        config = parse_config(doc, environ)
        gc.collect()
        parsed = tracemalloc.get_traced_memory()[0]
        routing = Routing(config, environ)
        gc.collect()
        routed = tracemalloc.get_traced_memory()[0] - parsed
    finally:
        tracemalloc.stop()
    assert routing.endpoints.built == 0
    return parsed / n, routed / n


def topic_idle_bytes(n: int, tenants: int) -> dict[str, float]:
    """Bytes of live objects per idle endpoint of the endpoints topic (``tracemalloc``), by where they are held: the
    records as the ``Directory`` keeps them, then what routing them adds (each ``routed``, scoped to its tenant, and
    put into a ``Routing``: its subscription and routes, its record kept sealed), ``n`` records of ``tenants``
    tenants."""
    from daemon.core.registry import Directory, Sealed, routed
    from daemon.core.validate import parse_config
    from daemon.engine.routing import Routing

    key, path = sealed_records(n, tenants)
    keyring = Keyring(key)
    raw = {"kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"}}
    routing = Routing(parse_config(raw, {}), {})
    directory = Directory(keyring)
    gc.collect()
    tracemalloc.start()
    try:
        for record_key, value in _read_records(path):
            directory.apply(record_key.decode(), value)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        for record in directory.endpoints.values():  # as daemon.engine.feed puts them
            config, subscription = routed(record, keyring, "tenant")
            routing.put(config, subscription, Sealed(record, keyring))
        gc.collect()
        routed_bytes = tracemalloc.get_traced_memory()[0] - held
    finally:
        tracemalloc.stop()
    assert len(routing.endpoints) == n and routing.endpoints.built == 0
    return {"directory": held / n, "routing": routed_bytes / n}


async def run(n: int, workdir: Path) -> dict[str, str]:
    os.environ["BENCH_ADMIN_TOKEN"] = os.urandom(32).hex()
    out: dict[str, str] = {"one change among endpoints (routing, median of 200)": f"{one_change(n) * 1000:.2f} ms"}
    parsed, routed = idle_bytes(n)
    out["live objects per idle endpoint: its config + its routes"] = f"{parsed:.0f} + {routed:.0f} bytes"
    async with aiohttp.ClientSession() as session:
        # The config file.
        async with EmbeddedBroker(log_path=workdir / "tansu-config.log") as broker:
            await broker.create_topics(["cfg-events"])
            port = free_port()
            child, took, slowest = await start(
                workdir, "config", daemon_config(broker.bootstrap, port, "cfg", n, False), session
            )
            out["start-up, endpoints in the config file"] = f"{took:.1f} s"
            out["slowest /healthz answer during start-up, config file"] = f"{slowest * 1000:.0f} ms"
            started = time.perf_counter()
            checked = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "daemon", "check-config", str(workdir / "config.toml")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert checked.returncode == 0, checked.stdout + checked.stderr
            out["check-config, endpoints in the config file"] = f"{time.perf_counter() - started:.1f} s"
            out["RSS once ready, endpoints in the config file"] = _rss(child, "VmRSS")
            out["peak RSS, endpoints in the config file"] = _rss(child, "VmHWM")
            changed = daemon_config(broker.bootstrap, port, "cfg", n, False, version=2)
            (workdir / "config.toml").write_text(tomli_w.dumps(changed))
            took, slowest = await sighup(session, port, child.pid, poll_s=0.1)
            out["SIGHUP changing every endpoint: applied after"] = f"{took:.1f} s"
            out["slowest /healthz answer during it"] = f"{slowest * 1000:.0f} ms"
            out["RSS after the reload"] = _rss(child, "VmRSS")
            out["peak RSS after the reload"] = _rss(child, "VmHWM")
            started = time.perf_counter()
            await child.stop(within_s=60)
            out["SIGTERM to exit, endpoints in the config file"] = f"{time.perf_counter() - started:.1f} s"
        # The endpoints topic.
        async with EmbeddedBroker(log_path=workdir / "tansu-topic.log") as broker:
            await broker.create_topics(["api-events"])
            await compacted_topic(broker.bootstrap, "api.endpoints")
            started = time.perf_counter()
            key = await topic_records(broker.bootstrap, "api.endpoints", n)
            os.environ["BENCH_SECRETS_KEY"] = base64.b64encode(key).decode()
            took = time.perf_counter() - started
            out["writing the endpoints topic (sealing included when not cached)"] = f"{took:.1f} s"
            port = free_port()
            child, took, slowest = await start(
                workdir, "topic", daemon_config(broker.bootstrap, port, "api", 0, True), session
            )
            out["start-up, endpoints in the topic"] = f"{took:.1f} s"
            out["slowest /healthz answer during start-up, topic"] = f"{slowest * 1000:.0f} ms"
            out["RSS once ready, endpoints in the topic"] = _rss(child, "VmRSS")
            out["peak RSS, endpoints in the topic"] = _rss(child, "VmHWM")
            started = time.perf_counter()
            await child.stop(within_s=60)
            out["SIGTERM to exit, endpoints in the topic"] = f"{time.perf_counter() - started:.1f} s"
    return out


async def sighup(
    session: aiohttp.ClientSession, port: int, pid: int, poll_s: float, after_s: float = 0.0
) -> tuple[float, float]:
    """SIGHUP to ``pid``: seconds until ``config_reloads_total{result="ok"}`` moves, and the slowest ``/healthz``
    answer, polled every ``poll_s`` from the signal until ``after_s`` after that (the routing swapped out is let go of
    then). TimeoutError when it is not applied within 300 s."""
    before = await reloads(session, port)
    began = time.perf_counter()
    os.kill(pid, signal.SIGHUP)
    applied: float | None = None
    slowest = 0.0
    while applied is None or time.perf_counter() - began < applied + after_s:
        asked = time.perf_counter()
        await get(session, f"http://127.0.0.1:{port}/healthz")
        slowest = max(slowest, time.perf_counter() - asked)
        if applied is None and await reloads(session, port) != before:
            applied = time.perf_counter() - began
        if time.perf_counter() - began > 300:
            raise TimeoutError("a SIGHUP not applied within 300 s")
        await asyncio.sleep(poll_s)
    assert applied is not None
    return applied, slowest


async def reloads(session: aiohttp.ClientSession, port: int) -> float:
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return -1.0
    for line in text.splitlines():
        if line.startswith('webhook_router_config_reloads_total{result="ok"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.endpoints", description=__doc__)
    parser.add_argument("--endpoints", type=int, default=100_000)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-router-endpoints-"))
    result = uvloop.run(run(args.endpoints, workdir))
    width = max(len(k) for k in result)
    for name, value in result.items():
        print(f"{name:<{width}}  {value}")
    print(f"logs: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
