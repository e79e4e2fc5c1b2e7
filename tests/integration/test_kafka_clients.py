"""daemon.kafka.clients, the one door to aiokafka's insides, against the real broker: each function that reaches past
aiokafka's public API does what the daemon relies on (an aiokafka upgrade that breaks one fails here)."""

from __future__ import annotations

import pytest

from daemon.kafka.clients import close_consumer, fetch_raw, partitions_of, reader, refresh_metadata
from daemon.kafka.rawbatch import batches
from tests.helpers import client_options, produce, unique
from tests.integration.conftest import Broker


async def test_partitions_of_a_topic_created_after_the_consumer_started_are_asked_for(broker: Broker) -> None:
    consumer = reader(client_options(broker.bootstrap))
    await consumer.start()
    try:
        topic = unique("door")
        await broker.create_topics([topic], partitions=3)
        assert await refresh_metadata(consumer)
        assert await partitions_of(consumer, topic) == {0, 1, 2}
        assert await partitions_of(consumer, unique("missing")) == set()
    finally:
        await close_consumer(consumer)


async def test_a_raw_fetch_answers_the_batches_as_the_broker_keeps_them(broker: Broker) -> None:
    topic = unique("door")
    await broker.create_topics([topic])
    await produce(broker.bootstrap, topic, [b'{"n": 1}', b'{"n": 2}'], partition=0)
    await produce(broker.bootstrap, topic, [b'{"n": 3}'], partition=0)
    consumer = reader(client_options(broker.bootstrap))
    await consumer.start()
    try:
        found = batches(await fetch_raw(consumer, topic, 0, 0, 1024 * 1024))
        assert found and found[0].base == 0
        assert found[-1].next_offset == 3
        assert all(b"n" in batch.raw for batch in found)
        with pytest.raises(LookupError, match="no leader"):
            await fetch_raw(consumer, topic, 7, 0, 1024)
    finally:
        await close_consumer(consumer)


async def test_closing_a_consumer_twice_is_safe(broker: Broker) -> None:
    consumer = reader(client_options(broker.bootstrap))
    await consumer.start()
    await close_consumer(consumer)
    await close_consumer(consumer)
