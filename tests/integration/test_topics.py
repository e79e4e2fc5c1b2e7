"""The topics the router writes, on the real broker: the settings it creates them with, read back with
DescribeConfigs; an existing topic whose settings would lose data refused at start-up (a warning where the operator
owns the topics); a pause that survives a restart when its topic holds only what compaction leaves.

Tansu (memory storage) keeps every record whatever the topic's settings: it neither compacts nor deletes by
retention (50 records of one key on a topic with ``cleanup.policy=compact``, ``segment.ms=100`` and
``retention.ms=1000`` were all still there 10 s later). So the restart test builds the health topic as compaction
leaves it (the last record of each key) rather than waiting for a compaction that never comes; against an outside
cluster (WEBHOOK_ROUTER_TEST_BOOTSTRAP) every test here runs as it is. test_compaction.py lets Kafka's cleaner do it."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from daemon.core.validate import load_config
from daemon.kafka.clients import admin_client
from daemon.kafka.topics import TIER_RETENTION_MARGIN_S, topic_specs
from tests.helpers import SECRET, DaemonProcess, Receiver, client_options, produce, read_topic, unique
from tests.integration.conftest import Setup, parts, receiver, running, spawn

DAY_S = 86_400


async def describe(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = admin_client(client_options(bootstrap))
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    return {r[3]: {e[0]: e[1] for e in r[4]} for response in responses for r in response.resources}


async def create_with(bootstrap: str, topics: dict[str, dict[str, str]], partitions: int = 1) -> None:
    """Create topics with these configs, as an operator would (replication: the cluster's default)."""
    admin = admin_client(client_options(bootstrap))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, partitions, -1, replica_assignments={}, topic_configs=c) for n, c in topics.items()]
        )
    finally:
        await admin.close()


async def test_a_first_start_that_creates_the_topics_logs_no_error(
    setup: Setup, receivers: list[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka's brokers learn of a topic just after its controller answers its creation. Asked at once, a broker may
    not have it yet: aiokafka logs "Topic ... not found in cluster metadata" as an error (the producer's first look
    at the dead-letter topic, with three brokers), so the start waits until every broker has the topics it created.
    Or a broker has it without leading its partitions yet: NOT_LEADER_OR_FOLLOWER, which aiokafka logs as an error
    when it resets a position (the health topic, read from its start), so the follower asks for the first offsets
    itself. Tansu has no such moment."""
    r = await receiver(receivers)
    config = setup.config([{"id": "a", "url": r.url, "secret": SECRET}], [{"endpoint": "a", "events": ["*"]}])
    config["retry"]["partitions"] = 6  # more partitions, more chances
    setup.write(config)
    with caplog.at_level(logging.INFO):
        async with running(setup.path) as app:
            assert app.ready()
    assert "created topics: " in caplog.text
    logged = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert logged == []


async def test_created_topics_carry_the_settings_their_role_needs(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    config = setup.config([{"id": "a", "url": r.url, "secret": SECRET}], [{"endpoint": "a", "events": ["*"]}])
    config["retry"].update(min_insync_replicas=1, dead_letter_retention_s=3 * DAY_S)
    setup.write(config)
    async with running(setup.path):
        pass
    prefix, tiers = setup.prefix, config["retry"]["tiers_s"]
    tier_topics = {f"{prefix}.retry.{t:g}s": t for t in tiers}
    described = await describe(setup.broker.bootstrap, [f"{prefix}.health", f"{prefix}.dead-letter", *tier_topics])
    assert described[f"{prefix}.health"]["cleanup.policy"] == "compact"
    assert described[f"{prefix}.dead-letter"]["retention.ms"] == str(3 * DAY_S * 1000)
    for name, wait_s in tier_topics.items():
        assert int(described[name]["retention.ms"]) == int((wait_s + TIER_RETENTION_MARGIN_S) * 1000), name
        assert described[name].get("cleanup.policy", "delete") == "delete", name
    assert {d["min.insync.replicas"] for d in described.values()} == {"1"}


async def test_an_existing_topic_that_would_lose_data_is_refused_at_start_up(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers)
    config = setup.config([{"id": "a", "url": r.url, "secret": SECRET}], [{"endpoint": "a", "events": ["*"]}])
    setup.write(config)
    prefix, bootstrap = setup.prefix, setup.broker.bootstrap
    # An operator made the health topic without compaction, and the 2 s tier keeping its records for 1 s.
    await create_with(bootstrap, {f"{prefix}.health": {}, f"{prefix}.retry.2s": {"retention.ms": "1000"}})

    d = await spawn(daemons, setup, wait_ready=False)
    assert await d.wait(60) == 2
    log = d.log()
    assert f"topic {prefix}.health (health): cleanup.policy is delete, must be compact" in log
    assert f"topic {prefix}.retry.2s (retry tier): retention.ms=1000 is not longer than the tier's wait (2 s)" in log
    assert "Traceback" not in log

    # Where the operator owns the topics (every one of them there), the same settings are warnings only.
    loaded = load_config(setup.path)
    made = (f"{prefix}.health", f"{prefix}.retry.2s")
    rest = {s.name: s.configs for s in topic_specs(loaded.kafka, loaded.retry) if s.name not in made}
    await create_with(bootstrap, rest)
    config["retry"]["create_topics"] = False
    setup.write(config)
    d = await spawn(daemons, setup)
    log = d.log()
    assert f"topic {prefix}.health (health): cleanup.policy is delete, must be compact" in log
    assert "(retry.create_topics = false: left as it is)" in log
    d.signal(signal.SIGTERM)
    assert await d.wait(30) == 0


async def test_a_topic_missing_where_the_router_may_not_create_it_is_refused(
    setup: Setup, daemons: list[DaemonProcess]
) -> None:
    config = setup.config([], [])
    config["retry"]["create_topics"] = False
    setup.write(config)
    d = await spawn(daemons, setup, wait_ready=False)
    assert await d.wait(60) == 2
    assert f"topic {setup.prefix}.health (health): does not exist, and retry.create_topics = false" in d.log()


async def health_records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record on a one-partition topic, in order."""
    consumer = AIOKafkaConsumer(**client_options(bootstrap), auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [(rec.key, rec.value) for rec in records]
    finally:
        await consumer.stop()
    return out


async def test_a_pause_survives_a_restart_after_compaction(
    setup: Setup, receivers: list[Receiver], tmp_path: Path
) -> None:
    a, b = await receiver(receivers), await receiver(receivers)
    endpoints = [{"id": "a", "url": a.url, "secret": SECRET}, {"id": "b", "url": b.url, "secret": SECRET}]
    config = setup.config(endpoints, [{"endpoint": "a", "events": ["*"]}, {"endpoint": "b", "events": ["*"]}])
    config["retry"]["partitions"] = 1
    setup.write(config)
    bootstrap, first_prefix = setup.broker.bootstrap, setup.prefix
    async with running(setup.path) as app:
        health = parts(app).health
        # a: paused, resumed, paused again; b: paused then resumed. Four records compaction will drop.
        for endpoint_id, actions in (("a", "prp"), ("b", "pr")):
            for action in actions:
                if action == "p":
                    health.pause(endpoint_id, "operator", "by the test")
                else:
                    health.resume(endpoint_id)
        await parts(app).results.flush(10)

    written = await health_records(bootstrap, f"{first_prefix}.health")
    assert [k for k, _ in written] == [b"a", b"a", b"a", b"b", b"b"]
    compacted = {key: value for key, value in written}  # what compaction keeps: the last record of each key
    assert len(compacted) == 2

    # The restart reads a health topic holding only that (a fresh prefix: its own health, tiers, dead letters).
    config["retry"]["topic_prefix"] = second_prefix = unique("wr")
    setup.write(config)
    health_topic = f"{second_prefix}.health"
    await create_with(bootstrap, {health_topic: {"cleanup.policy": "compact"}})
    producer = AIOKafkaProducer(**client_options(bootstrap), enable_idempotence=False)
    await producer.start()
    try:
        for key, value in compacted.items():
            await producer.send_and_wait(health_topic, value, key=key)
    finally:
        await producer.stop()

    async with running(setup.path) as app:
        health = parts(app).health
        assert health.is_paused("a") and not health.is_paused("b")  # read to the end before the daemon was ready
        await produce(bootstrap, setup.topic, [json.dumps({"event": "lead.created"}).encode()])
        await b.wait_for(1)

        def settled(records: list[dict[str, Any]]) -> bool:
            return {rec.get("endpoint_id") for rec in records if rec.get("source_offset") == 0} >= {"a", "b"}

        records = await read_topic(bootstrap, setup.results, settled)
        (skipped,) = [rec for rec in records if rec.get("endpoint_id") == "a" and rec.get("source_offset") == 0]
        assert skipped["status"] == "skipped_paused"
        assert a.requests == []
