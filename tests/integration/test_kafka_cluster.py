"""tests/kafka's real Apache Kafka cluster (KRaft) works: three brokers survive the loss of a partition leader and
of the active controller with acks=all, a single combined node restarts on its own storage.

Each test starts its own cluster (the jars come from Maven Central the first time: Java and Maven are needed).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.kafka import KafkaCluster, missing_tools

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")


async def consume(bootstrap: str, topic: str, count: int, within_s: float = 30) -> list[bytes]:
    """The first ``count`` values of partition 0, read from the beginning (no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + within_s
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(tp, timeout_ms=500)
            values += [r.value for r in batches.get(tp, []) if r.value is not None]
        return values
    finally:
        await consumer.stop()


async def produce(producer: AIOKafkaProducer, topic: str, values: list[bytes], within_s: float = 30) -> None:
    async with asyncio.timeout(within_s):
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)


@pytest.mark.timeout(300)  # the first run fetches the jars and makes the class-data archive
async def test_three_brokers_survive_the_leader_and_the_controller(tmp_path: Path) -> None:
    async with KafkaCluster(tmp_path / "kafka", brokers=3) as cluster:
        assert cluster.broker_ids == [1, 2, 3]
        assert cluster.controller_ids == [101, 102, 103]
        assert await cluster.live_brokers() == {1, 2, 3}
        assert all(n.running and n.pid for n in cluster.nodes.values())

        topic = "replicated"
        await cluster.create_topics([topic], partitions=1, replication_factor=3)
        state = await cluster.partition(topic, 0)
        assert sorted(state.replicas) == [1, 2, 3] and sorted(state.isr) == [1, 2, 3]

        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await produce(producer, topic, [b"a1", b"a2", b"a3"])

            leader = await cluster.leader(topic, 0)
            old_pid = cluster.node(leader).pid
            await cluster.kill(leader)
            assert not cluster.node(leader).running
            new_leader = await cluster.leader(topic, 0, exclude={leader})
            assert new_leader in {1, 2, 3} - {leader}
            state = await cluster.partition(topic, 0)
            assert leader not in state.isr and len(state.isr) == 2  # min.insync.replicas=2: acks=all still works
            assert await cluster.live_brokers() == {1, 2, 3} - {leader}

            await produce(producer, topic, [b"b1", b"b2", b"b3"])

            controller = await cluster.active_controller()
            assert controller in cluster.controller_ids
            assert (await cluster.describe_quorum())["LeaderId"] == str(controller)  # kafka-metadata-quorum agrees
            await cluster.kill(controller)
            assert await cluster.active_controller(exclude={controller}) in set(cluster.controller_ids) - {controller}
            await produce(producer, topic, [b"c1", b"c2"])

            await cluster.start(controller)
            await cluster.start(leader)  # same id, port and storage: it catches up and rejoins the ISR
            assert cluster.node(leader).pid not in (None, old_pid)
            state = await cluster.wait_in_sync(topic, 0)
            assert sorted(state.isr) == [1, 2, 3]
            assert await cluster.live_brokers() == {1, 2, 3}
            await produce(producer, topic, [b"d1"])
        finally:
            await producer.stop()

        expected = [b"a1", b"a2", b"a3", b"b1", b"b2", b"b3", b"c1", b"c2", b"d1"]
        assert await consume(cluster.bootstrap, topic, len(expected)) == expected
        rss = cluster.rss()
        assert all(0 < rss[n] < 1024 * 2**20 for n in cluster.nodes), rss

    assert not any(n.running for n in cluster.nodes.values())


@pytest.mark.timeout(300)
async def test_one_combined_node_restarts_on_its_storage(tmp_path: Path) -> None:
    async with KafkaCluster(tmp_path / "kafka", brokers=1) as cluster:
        assert list(cluster.nodes) == [1]
        assert cluster.nodes[1].roles == ("broker", "controller")
        assert cluster.bootstrap == f"127.0.0.1:{cluster.nodes[1].port}"
        assert (cluster.replication_factor, cluster.min_insync) == (1, 1)

        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
        await producer.start()
        try:  # topics are auto-created (the broker's default, kept)
            await produce(producer, "auto-created", [b"1", b"2", b"3"])
        finally:
            await producer.stop()
        assert await cluster.active_controller() == 1

        await cluster.stop(1)  # graceful
        assert not cluster.nodes[1].running
        await cluster.start(1)
        assert await cluster.leader("auto-created", 0) == 1
        assert await consume(cluster.bootstrap, "auto-created", 3) == [b"1", b"2", b"3"]

    assert not cluster.nodes[1].running
