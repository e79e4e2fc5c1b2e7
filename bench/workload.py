"""What the benchmarks feed the router: event bodies of a fixed size, the signing secret, configs, producers."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from daemon.tools.embedded import free_port

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


class Broker(Protocol):
    """What the scenarios use of a broker: Tansu's ``EmbeddedBroker`` or tests/kafka's ``KafkaCluster``."""

    @property
    def bootstrap(self) -> str: ...

    async def create_topics(self, names: list[str], partitions: int = 1) -> None: ...


async def labelled_topics(broker: Broker, label: str, partitions: int = 1) -> tuple[str, str]:
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


async def produce_backlog(bootstrap: str, topic: str, count: int, size: int, keys: int = 0) -> float:
    """Produce ``count`` events as fast as the client goes: no send awaited one by one, one flush; with ``keys``, each
    record keyed by one of that many keys in turn (the ordering scenarios).

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
            key = f"k{n % keys}".encode() if keys else None
            future = await producer.send(topic, bodies[n % len(bodies)], key=key)
            if n % 1024 == 0:
                future.add_done_callback(check)
        await producer.flush()
    finally:
        await producer.stop()
    if failures:
        raise RuntimeError(f"producing to {topic} failed: {failures[0]!r}")
    return time.perf_counter() - started


def _lead(n: int) -> str:
    return EVENT_TYPES[n % len(EVENT_TYPES)]


async def produce_paced(
    bootstrap: str,
    topic: str,
    rate: float,
    duration_s: float,
    size: int,
    type_of: Callable[[int], str] = _lead,
    linger_ms: int = 0,
) -> int:
    """Produce ``rate`` events a second for ``duration_s``, each carrying its number and send time, event n of type
    ``type_of(n)``. Returns the count."""
    producer = _producer(bootstrap, linger_ms=linger_ms)
    await producer.start()
    total = int(rate * duration_s)
    sent = 0
    try:
        started = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                await producer.send(topic, event_body(type_of(sent), sent, size, time.time()))
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


class BareConsumer:
    """A bare aiokafka consumer of one partition, reading from its start beside whatever else reads it: when each
    event (by its ``"id"``) was consumed, as produce -> consumed in ms (``sent_at``)."""

    def __init__(self, bootstrap: str, topic: str, fetch_wait_ms: int) -> None:
        from aiokafka import AIOKafkaConsumer

        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_wait_ms,
        )
        self.latencies: dict[int, float] = {}

    async def start(self, from_end: bool = False) -> None:
        """Assigned the partition, read from its start (or from its end: only what is produced after)."""
        from aiokafka import TopicPartition

        await self._consumer.start()
        partition = TopicPartition(self._topic, 0)
        self._consumer.assign([partition])
        if from_end:
            await self._consumer.seek_to_end(partition)

    async def read(self, total: int) -> None:
        """Read until ``total`` events carrying a send time were consumed."""
        latencies = self.latencies
        while len(latencies) < total:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batches.values():
                for record in records:
                    sent = sent_at(record.value)
                    if sent is not None:
                        latencies[id_of(record.value)] = (now - sent) * 1000

    async def stop(self) -> None:
        await self._consumer.stop()


def id_of(body: bytes) -> int:
    """The ``"id"`` a body carries (see ``event_body``); -1 without one."""
    at = body.find(b'"id":')
    end = body.find(b",", at)
    try:
        return int(body[at + 5 : end]) if at >= 0 else -1
    except ValueError:
        return -1


async def kafka_latency(
    bootstrap: str, topic: str, rate: float, duration_s: float, size: int, fetch_wait_ms: int
) -> list[float]:
    """Kafka alone: the paced producer and a bare consumer (same fetch wait); produce -> consumed, in ms."""
    consumer = BareConsumer(bootstrap, topic, fetch_wait_ms)
    await consumer.start()
    try:
        reader = asyncio.create_task(consumer.read(int(rate * duration_s)))
        await produce_paced(bootstrap, topic, rate, duration_s, size)
        await asyncio.wait_for(reader, 30)
    finally:
        await consumer.stop()
    return list(consumer.latencies.values())
