"""What the benchmarks feed the router: event bodies of a fixed size, the signing secret, configs, producers."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from daemon.tools.embedded import EmbeddedBroker, free_port

SECRET_KEY = bytes(range(1, 33))
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()
USER_AGENT = "webhook-router/0.1"  # the router's default, so that the limit sends the same headers

EVENT_TYPES = ("lead.created", "lead.updated", "lead.qualified", "lead.deleted")


def event_body(event_type: str, n: int, size: int, sent: float = 0.0) -> bytes:
    """A JSON event of exactly ``size`` bytes: type, number, send time (unix seconds) and padding."""
    head = f'{{"event":"{event_type}","id":{n},"sent":{sent:.6f},"pad":"'
    pad = size - len(head) - 2
    if pad < 0:
        raise ValueError(f"an event needs at least {len(head) + 2} bytes")
    return (head + "x" * pad + '"}').encode()


# --- config ---


def supports(field: str) -> bool:
    """True when the router's endpoint config has ``field`` (the config grows; the harness keeps up)."""
    import msgspec

    from daemon.core.config import EndpointConfig

    return any(f.name == field for f in msgspec.structs.fields(EndpointConfig))


def endpoint(
    ep_id: str, url: str, max_concurrency: int, timeout_s: float = 10.0, queue_size: int | None = None
) -> dict[str, Any]:
    """An endpoint; ``queue_size`` (waiting deliveries before the router defers them) when the router has it."""
    config: dict[str, Any] = {
        "id": ep_id,
        "url": url,
        "secret": SECRET,
        "timeout_s": timeout_s,
        "max_concurrency": max_concurrency,
    }
    if queue_size is not None and supports("queue_size"):
        config["queue_size"] = queue_size
    return config


def router_config(
    *,
    bootstrap: str,
    group: str,
    topic: str,
    results: str,
    admin_port: int,
    endpoints: list[dict[str, Any]],
    events: list[str] | None = None,
    **kafka: Any,
) -> dict[str, Any]:
    """A config whose every endpoint subscribes to ``events`` (default ``lead.*``) on ``topic``."""
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "topics": [topic],
            "results_topic": results,
            # Tansu forms a group in about half the session timeout.
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 300,
            **kafka,
        },
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "delivery": {"drain_timeout_s": 5, "allowed_networks": ["127.0.0.0/8"]},  # the receivers are on 127.0.0.1
        "endpoints": endpoints,
        "subscriptions": [{"endpoint": ep["id"], "events": events or ["lead.*"]} for ep in endpoints],
    }


async def labelled_topics(broker: EmbeddedBroker, label: str, partitions: int = 1) -> tuple[str, str]:
    """Create a run's events topic and results topic, named after its label; returns both names."""
    topic, results = f"events-{label}", f"results-{label}"
    await broker.create_topics([topic], partitions)
    await broker.create_topics([results], 1)
    return topic, results


_API_ENV = {"BENCH_ADMIN_TOKEN": "bench-admin-token-" + "0" * 32,
            "BENCH_SECRETS_KEY": base64.b64encode(bytes(range(32))).decode()}  # fmt: skip


def with_api(config: dict[str, Any], delivery_index: bool) -> None:
    """Turn the endpoints API on in ``config`` (no endpoint of its own: only what it costs the hot path), with the
    delivery index or without; its token and key go to this process's environment, which the routers inherit."""
    os.environ.update(_API_ENV)
    config["admin"]["token_env"] = "BENCH_ADMIN_TOKEN"  # noqa: S105 - the variable's name
    config["api"] = {"enabled": True, "secrets_key_env": "BENCH_SECRETS_KEY", "delivery_index": delivery_index}


def labelled_config(bootstrap: str, label: str, endpoints: list[dict[str, Any]], **kafka: Any) -> dict[str, Any]:
    """``router_config`` for a run's topics (``labelled_topics``), its own group and a free admin port."""
    return router_config(
        bootstrap=bootstrap,
        group=f"group-{label}",
        topic=f"events-{label}",
        results=f"results-{label}",
        admin_port=free_port(),
        endpoints=endpoints,
        **kafka,
    )


# --- producers ---


def _producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        enable_idempotence=False,
        linger_ms=linger_ms,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
    )


async def produce_backlog(bootstrap: str, topic: str, count: int, size: int) -> float:
    """Produce ``count`` events as fast as the client goes: no send awaited one by one, one flush.

    Returns the seconds it took. Raises if any send failed.
    """
    producer = _producer(bootstrap, linger_ms=20)
    await producer.start()
    failures: list[BaseException] = []

    def check(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None and len(failures) < 5:
            failures.append(future.exception())  # type: ignore[arg-type]

    started = time.perf_counter()
    try:
        bodies = [event_body(t, 0, size) for t in EVENT_TYPES]
        for n in range(count):
            future = await producer.send(topic, bodies[n % len(bodies)])
            if n % 1024 == 0:
                future.add_done_callback(check)
        await producer.flush()
    finally:
        await producer.stop()
    if failures:
        raise RuntimeError(f"producing to {topic} failed: {failures[0]!r}")
    return time.perf_counter() - started


async def produce_paced(bootstrap: str, topic: str, rate: float, duration_s: float, size: int) -> int:
    """Produce ``rate`` events a second for ``duration_s``, each carrying its send time. Returns the count."""
    producer = _producer(bootstrap, linger_ms=0)
    await producer.start()
    total = int(rate * duration_s)
    sent = 0
    try:
        started = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                await producer.send(topic, event_body(EVENT_TYPES[sent % len(EVENT_TYPES)], sent, size, time.time()))
                sent += 1
            await asyncio.sleep(0.0005)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def sent_at(body: bytes) -> float | None:
    """The ``"sent"`` time a body carries (see ``event_body``)."""
    at = body.find(b'"sent":')
    if at < 0:
        return None
    end = body.find(b",", at)
    try:
        return float(body[at + 7 : end])
    except ValueError:
        return None


async def kafka_latency(
    bootstrap: str, topic: str, rate: float, duration_s: float, size: int, fetch_wait_ms: int
) -> list[float]:
    """Kafka alone: the paced producer and a bare consumer (same fetch wait); produce -> consumed, in ms."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_wait_ms,
    )
    await consumer.start()
    latencies: list[float] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        total = int(rate * duration_s)

        async def consume() -> None:
            while len(latencies) < total:
                batches = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        sent = sent_at(record.value)
                        if sent is not None:
                            latencies.append((now - sent) * 1000)

        reader = asyncio.create_task(consume())
        await produce_paced(bootstrap, topic, rate, duration_s, size)
        await asyncio.wait_for(reader, 30)
    finally:
        await consumer.stop()
    return latencies
