"""Compaction for real, on a Kafka node of this module's own: the health and endpoints topics made with segments that
roll every 200 ms, a cleaner that takes any dirt and tombstones kept 2 s (``delete.retention.ms``); after Kafka's
cleaner has dropped every superseded record (and the tombstone of a deleted endpoint), a restarted instance and a
second one restore every pause and every run-time endpoint exactly as the first had them, and the deleted endpoint
stays deleted.

Kafka only: Tansu neither compacts nor deletes (test_topics.py's restart builds a health topic as compaction would
leave it instead)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.core.registry import endpoint_key
from daemon.tools.embedded import free_port
from tests.helpers import ADMIN_TOKEN, SECRET, DaemonProcess, Receiver, env_with, produce, unique
from tests.integration.conftest import KafkaBroker, Setup, kafka_of_its_own, receiver
from tests.integration.test_topics import create_with

TOMBSTONE_KEPT_MS = 2000
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": "200",  # the next record after 200 ms starts a new segment: the old one can be cleaned
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": str(TOMBSTONE_KEPT_MS),
}
KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="module")
async def kafka(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KafkaBroker]:
    async with kafka_of_its_own(tmp_path_factory.mktemp("kafka-compaction"), "needs Kafka's log cleaner") as b:
        yield b


async def records(bootstrap: str, topic: str) -> list[tuple[int, str, bytes | None]]:
    """Every record the topic holds now: (offset, key, value), a tombstone's value None."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[int, str, bytes | None]] = []
        while await consumer.position(tp) < end:
            for rec in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                out.append((rec.offset, (rec.key or b"").decode(), rec.value))
        return out
    finally:
        await consumer.stop()


class Admin:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session, self.base = session, f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as resp:
            text = await resp.text()
            assert resp.status == expect, (method, path, resp.status, text)
            return json.loads(text) if text else None

    async def state(self) -> dict[str, Any]:
        """What a restart must restore: every endpoint's pause, every run-time endpoint and tenant."""
        listed = (await self.call("GET", "/endpoints"))["endpoints"]
        pauses = {e["id"]: (e["paused"], e["reason"], e["paused_by"], e["since"]) for e in listed}
        endpoints = (await self.call("GET", "/v1/endpoints?limit=100"))["data"]
        return {"pauses": pauses, "endpoints": endpoints, "tenant": await self.call("GET", "/v1/tenants/acme")}


async def test_after_the_cleaner_ran_a_restart_and_a_second_instance_restore_every_pause_and_endpoint_exactly(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap
    s = Setup(kafka, unique("events"), unique("results"), unique("group"), tmp_path / "router.toml")
    await kafka.create_topics([s.topic, s.results])
    health, endpoints_topic = f"{s.prefix}.health", f"{s.prefix}.endpoints"
    await create_with(bootstrap, {health: COMPACTED, endpoints_topic: COMPACTED})
    receivers: list[Receiver] = []
    r = await receiver(receivers)
    static = [{"id": name, "url": r.url, "secret": SECRET} for name in ("static-a", "static-b", "filler")]
    subscriptions = [{"endpoint": name, "events": ["lead.*"]} for name in ("static-a", "static-b")]
    doc = s.config(static, [*subscriptions, {"endpoint": "filler", "events": ["fill.*"]}])
    doc["admin"]["token_env"] = "WR_ADMIN_TOKEN"
    doc["api"] = {"enabled": True, "secrets_key_env": "WR_SECRETS_KEY", "allowed_networks": ["127.0.0.0/8"]}
    doc["retry"]["partitions"] = 1
    env = env_with(WR_ADMIN_TOKEN=ADMIN_TOKEN, WR_SECRETS_KEY=KEY)
    daemons: list[DaemonProcess] = []

    async def start(name: str) -> tuple[DaemonProcess, int]:
        port = free_port()
        doc["admin"]["listen"] = f"127.0.0.1:{port}"
        d = DaemonProcess(s.write(doc, tmp_path / f"{name}.toml"), port, tmp_path / f"{name}.log", env)
        daemons.append(d)
        await d.start()
        return d, port

    try:
        first, port = await start("first")
        async with aiohttp.ClientSession() as session:
            op = Admin(session, port)
            await op.call("POST", "/v1/tenants", {"id": "acme"}, expect=201)
            made = {}
            for name in ("kept", "edited", "deleted", "filler"):
                body = {"tenant": "acme", "url": r.url, "events": ["lead.*"], "allow_http": True}
                made[name] = (await op.call("POST", "/v1/endpoints", body, expect=201))["id"]
            for n in range(3):  # versions 2, 3, 4: compaction keeps the last
                await op.call("PATCH", f"/v1/endpoints/{made['edited']}", {"events": [f"lead.v{n}"]})
            deleted_at = time.monotonic()
            await op.call("DELETE", f"/v1/endpoints/{made['deleted']}", expect=204)
            # static-a: paused, resumed, paused again; static-b: paused, resumed; a run-time endpoint paused.
            for path in ("static-a/pause", "static-a/resume", "static-a/pause", "static-b/pause", "static-b/resume",
                         f"{made['kept']}/pause"):  # fmt: skip
                await op.call("POST", f"/endpoints/{path}")

            superseded_health = [off for off, key, _ in await records(bootstrap, health) if key == "static-a"][:-1]
            gone = endpoint_key(made["deleted"])
            assert [value is None for _, key, value in await records(bootstrap, endpoints_topic) if key == gone] == [
                False,
                False,
                True,
            ]  # created, its versioned delete marker, its tombstone

            async def cleaned() -> bool:
                health_now = {off for off, _, _ in await records(bootstrap, health)}
                endpoints_now = await records(bootstrap, endpoints_topic)
                edited = [key for _, key, _ in endpoints_now if key == endpoint_key(made["edited"])]
                return (
                    not health_now & set(superseded_health)
                    and len(edited) == 1
                    and not any(key == gone for _, key, _ in endpoints_now)  # marker and tombstone both gone
                )

            # The active segment is never cleaned: writes of the filler endpoint roll the segments and make dirt.
            deadline = time.monotonic() + 90
            n = 0
            while not await cleaned():
                assert time.monotonic() < deadline, "Kafka's cleaner did not drop the superseded records in 90 s"
                n += 1
                await op.call("POST", f"/endpoints/filler/{'pause' if n % 2 else 'resume'}")
                await op.call("PATCH", f"/v1/endpoints/{made['filler']}", {"events": [f"fill.{n}"]})
                await asyncio.sleep(0.5)
            assert time.monotonic() - deleted_at >= TOMBSTONE_KEPT_MS / 1000  # the tombstone was kept that long
            before = await op.state()
            assert before["pauses"]["static-a"][0] and not before["pauses"]["static-b"][0]
            assert before["pauses"][made["kept"]][0]
            run_time = {e["id"] for e in before["endpoints"]} - {"static-a", "static-b", "filler"}
            assert run_time == {made["kept"], made["edited"], made["filler"]}

        first.signal(signal.SIGTERM)
        assert await first.wait() == 0
        second, second_port = await start("second")
        restarted, restarted_port = await start("restarted")
        async with aiohttp.ClientSession() as session:
            for port in (restarted_port, second_port):
                op = Admin(session, port)
                assert await op.state() == before
                await op.call("GET", f"/v1/endpoints/{made['deleted']}", expect=404)
        # The deleted endpoint gets nothing; the one kept, paused, gets nothing either; static-b does.
        await produce(bootstrap, s.topic, [json.dumps({"event": "lead.created", "tenant": "acme"}).encode()])
        await r.wait_for(1)
        await asyncio.sleep(1)
        assert len(r.requests) == 1 and second.alive() and restarted.alive()
    finally:
        for d in daemons:
            await d.kill()
        for rec in receivers:
            await rec.stop()
