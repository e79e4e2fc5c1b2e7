"""daemon.kafka.readers against the real broker: read-back consumers kept between reads, and closed when a read ends
any other way than in order."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from daemon.core.errors import NotFound
from daemon.kafka import readers as readers_module
from daemon.kafka.readback import read_one
from daemon.kafka.readers import Readers
from tests.helpers import client_options, produce, unique
from tests.integration.conftest import Broker


async def test_a_kept_consumer_reads_its_next_partition_from_where_it_is_told_and_no_more_are_kept(
    broker: Broker,
) -> None:
    topic = unique("readers")
    await broker.create_topics([topic], partitions=2)
    await produce(broker.bootstrap, topic, [b"a0", b"a1", b"a2"], partition=0)
    await produce(broker.bootstrap, topic, [b"b0", b"b1"], partition=1)
    readers = Readers(client_options(broker.bootstrap), keep=1)
    try:
        assert (await read_one(readers, topic, 0, 2)).value == b"a2"
        assert (readers.open, readers.idle, readers.lent) == (1, 1, 0)
        async with readers.lent_one() as first:
            assert readers.lent == 1 and not first.assignment()  # kept unassigned: it fetched nothing meanwhile
            assert (await read_one(readers, topic, 1, 0)).value == b"b0"  # a second one while the first is lent
            assert readers.open == 2
        assert (readers.open, readers.idle) == (1, 1)  # the second kept, the first closed (keep=1)
        async with readers.lent_one() as again:
            assert again is not first and readers.open == 1  # the kept one, not a new one
        assert (await read_one(readers, topic, 1, 1)).value == b"b1"
        with pytest.raises(NotFound):
            await read_one(readers, topic, 7, 0)  # the router's own error: the consumer is in order, kept
        assert (readers.open, readers.idle) == (1, 1)
    finally:
        await readers.stop()
        await readers.stop()
    assert (readers.open, readers.idle) == (0, 0)


async def test_a_read_cancelled_or_failed_closes_its_consumer(broker: Broker) -> None:
    topic = unique("readers")
    await broker.create_topics([topic])
    await produce(broker.bootstrap, topic, [b"x"], partition=0)
    readers = Readers(client_options(broker.bootstrap), keep=4)
    started = asyncio.Event()

    async def endless() -> None:
        async with readers.lent_one() as consumer:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 1)
            started.set()
            while True:
                await consumer.getmany(tp, timeout_ms=200)

    try:
        reading = asyncio.create_task(endless())
        await started.wait()
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert (readers.open, readers.idle, readers.lent) == (0, 0, 0)
        with pytest.raises(RuntimeError):
            async with readers.lent_one():
                raise RuntimeError("a bug")
        assert (readers.open, readers.idle) == (0, 0)
    finally:
        await readers.stop()


async def test_a_consumer_idle_too_long_is_closed_and_none_is_kept_after_stop(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = unique("readers")
    await broker.create_topics([topic])
    await produce(broker.bootstrap, topic, [b"x"], partition=0)
    readers = Readers(client_options(broker.bootstrap), keep=2)
    async with readers.lent_one() as first:
        pass
    monkeypatch.setattr(readers_module, "IDLE_S", 0.0)
    async with readers.lent_one() as second:
        assert second is not first and readers.open == 1  # the idle one was closed, a new one started
    await readers.stop()
    assert (readers.open, readers.idle) == (0, 0)
    async with readers.lent_one():
        assert readers.open == 1
    assert (readers.open, readers.idle) == (0, 0)  # stopped: given back closed
