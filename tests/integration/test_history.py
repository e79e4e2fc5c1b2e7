"""daemon.kafka.history against the real broker: a delivery looked for among some endpoints' records reads only the
partitions their keys land on, and only their records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.kafka.history import _partition_of, find_delivery
from daemon.kafka.readers import Readers
from tests.helpers import client_options, produce, unique
from tests.integration.conftest import Broker


class Watched(Readers):
    """Readers that note every partition their consumers are assigned."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.assigned: list[TopicPartition] = []

    @asynccontextmanager
    async def lent_one(self) -> AsyncIterator[AIOKafkaConsumer]:
        async with super().lent_one() as consumer:
            assign = consumer.assign

            def noted(partitions: list[TopicPartition]) -> None:
                self.assigned.extend(partitions)
                assign(partitions)

            consumer.assign = noted
            yield consumer


def record(delivery_id: str, endpoint_id: str) -> bytes:
    return f'{{"delivery_id":"{delivery_id}","endpoint_id":"{endpoint_id}"}}'.encode()


async def test_a_lookup_among_some_endpoints_reads_their_partitions_and_records_only(broker: Broker) -> None:
    topic = unique("results")
    await broker.create_topics([topic], partitions=4)
    mine, theirs = "ep_mine", "ep_theirs"
    parts = [0, 1, 2, 3]
    while _partition_of(theirs.encode(), parts) == _partition_of(mine.encode(), parts):
        theirs += "x"
    shared = "msg_" + "1" * 32  # the same delivery id under both (only the platform could tell them apart)
    for endpoint_id in (mine, theirs):  # keyed as the results writer keys them: the partitioner places each
        await produce(broker.bootstrap, topic, [record(shared, endpoint_id)], key=endpoint_id.encode())
    await produce(broker.bootstrap, topic, [record("msg_" + "2" * 32, theirs)], key=theirs.encode())

    readers = Watched(client_options(broker.bootstrap))
    found = await find_delivery(readers, topic, shared, 1_000_000, [mine])
    assert found == [record(shared, mine)]
    assert {tp.partition for tp in readers.assigned} == {_partition_of(mine.encode(), parts)}
    readers.assigned.clear()
    assert await find_delivery(readers, topic, "msg_" + "2" * 32, 1_000_000, [mine]) == []
    assert await find_delivery(readers, topic, shared, 1_000_000, []) == []
    assert {tp.partition for tp in readers.assigned} == {_partition_of(mine.encode(), parts)}
    assert await find_delivery(readers, topic, "msg_" + "2" * 32, 1_000_000) == [record("msg_" + "2" * 32, theirs)]
