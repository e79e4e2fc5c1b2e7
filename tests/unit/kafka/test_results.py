"""daemon.kafka.results.ResultsWriter at its seam: records reach the producer in batches, one batch per partition at a
time and in order, acks run only once Kafka acknowledged, a failed send is sent again before anything after it and never
dropped, a partition that waits holds none of the others, a fenced producer is renewed once, records that wait are a
problem for /readyz naming their partitions.

The producer is an in-memory stand-in with aiokafka's shape (``create_batch``, ``send_batch``, ``send``,
``partitions_for``): the test decides when each send is acknowledged or fails, and can hold the hand-over of a
partition's batches (aiokafka's ``send_batch`` waits while a batch of that partition is queued in it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    OutOfOrderSequenceNumber,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner

import daemon.kafka.results
from daemon.core.model import Indexed, decode_index
from daemon.kafka.results import ResultsWriter
from daemon.observe.metrics import Metrics
from tests.helpers import eventually
from tests.unit.standins import settle_down


class Batch:
    def __init__(self, room: int) -> None:
        self.room = room
        self.records: list[tuple[bytes | None, bytes]] = []
        self.closed = False

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= self.room or self.closed:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class Producer:
    """Stand-in for AIOKafkaProducer: keeps each send's future for the test to resolve."""

    def __init__(self, partitions: int = 3, batch_room: int = 1000) -> None:
        self.partitions = partitions
        self.batch_room = batch_room
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]], asyncio.Future[Any]]] = []
        self.batches: list[Batch] = []
        self.held: dict[int, asyncio.Event] = {}  # partition -> set once its batches may be handed over
        self.unknown: dict[str, int] = {}  # topic -> how many more times asking for its partitions fails

    async def partitions_for(self, topic: str) -> set[int]:
        if self.unknown.get(topic):
            self.unknown[topic] -= 1
            raise UnknownTopicOrPartitionError()
        return set(range(self.partitions))

    def create_batch(self) -> Batch:
        return Batch(self.batch_room)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        if partition in self.held:
            await self.held[partition].wait()
        self.batches.append(batch)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, batch.records, future))
        return future

    async def send(self, topic: str, value: bytes, *, key: bytes | None, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, [(key, value)], future))
        return future

    def acknowledge_all(self) -> None:
        for *_, future in self.sent:
            if not future.done():
                future.set_result(None)


@asynccontextmanager
async def writer(producer: Producer) -> AsyncIterator[ResultsWriter]:
    w = ResultsWriter(producer, "results", Metrics())
    w.start()
    try:
        yield w
    finally:
        await w.stop()


async def test_acks_run_once_kafka_acknowledged_and_not_before() -> None:
    producer, acked = Producer(), []

    def ack_of(n: int) -> Any:
        return lambda: acked.append(n)

    async with writer(producer) as w:
        for n in range(5):
            w.submit(b"ep", b"r%d" % n, ack_of(n))
        w.submit(b"ep", b"health", None)  # owed to nothing: no ack
        await settle_down()
        assert len(producer.sent) == 1  # one batch: one key, one partition
        assert acked == [] and w.outstanding == 6
        producer.acknowledge_all()
        await settle_down()
        assert acked == [0, 1, 2, 3, 4] and w.outstanding == 0
        assert await w.flush(1)


async def test_records_go_to_the_partition_kafkas_default_partitioner_picks_per_key() -> None:
    producer = Producer(partitions=3)
    keys = [b"a", b"b", b"c", b"d", b"e"]
    async with writer(producer) as w:
        for key in keys:
            w.submit(key, key, None, topic="other")
        await settle_down()
    parts = [0, 1, 2]
    expected = {key: DefaultPartitioner()(key, parts, parts) for key in keys}
    got = {key: partition for topic, partition, records, _ in producer.sent for key, _ in records if key is not None}
    assert got == expected
    assert {topic for topic, *_ in producer.sent} == {"other"}


async def test_a_record_larger_than_a_batch_goes_alone() -> None:
    producer = Producer(batch_room=0)
    async with writer(producer) as w:
        w.submit(b"k", b"big", None)
        await settle_down()
    assert [records for _, _, records, _ in producer.sent] == [[(b"k", b"big")]]


async def test_a_failed_send_is_sent_again_never_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.kafka.results, "_RETRY_BACKOFF_S", 0.01)
    producer, acked = Producer(), []
    async with writer(producer) as w:
        w.submit(b"k", b"v", lambda: acked.append(1))
        await settle_down()
        producer.sent[0][3].set_exception(ConnectionError("broker gone"))
        await eventually(lambda: len(producer.sent) >= 2, 10)
        assert len(producer.sent) == 2 and acked == []
        assert not await w.flush(0.01)
        producer.acknowledge_all()
        await settle_down()
        assert acked == [1] and w.outstanding == 0


async def test_stop_leaves_unacknowledged_records_unacknowledged() -> None:
    producer, acked = Producer(), []
    async with writer(producer) as w:
        w.submit(b"k", b"v", lambda: acked.append(1))
        await settle_down()
    assert acked == [] and w.outstanding == 1


class Landed(NamedTuple):
    """What aiokafka's send future gives: where the first record of the send landed."""

    partition: int
    offset: int


def entry(delivery_id: str) -> Indexed:
    return (delivery_id, "ep", "t", "delivered", 1, "live", 1, 200, 2.5)


async def test_index_entries_follow_their_results_records_once_acknowledged_in_one_record_with_where_each_landed() -> (
    None
):
    producer = Producer(partitions=3)
    w = ResultsWriter(producer, "results", Metrics(), index_topic="index")
    w.start()
    try:
        for n in range(3):
            w.submit(b"ep", b"r%d" % n, None, index=entry(f"msg_{n}"))
        w.submit(b"ep", b"pause", None)  # a record of no delivery: no entry
        await settle_down()
        ((topic, partition, records, future),) = producer.sent
        assert topic == "results" and len(records) == 4
        assert w.outstanding == 4  # nothing of the index before the results records are acknowledged
        future.set_result(Landed(partition, 40))
        await settle_down()
        ((index_topic, index_partition, written, _),) = producer.sent[1:]
        assert (index_topic, index_partition) == ("index", partition % 3)  # the index partition of the same number
        ((key, value),) = written  # one record for the write's entries
        assert key is None
        assert decode_index(value) == [(partition, 40 + n, f"msg_{n}", "ep", "t", "delivered", 1, "live", 1, 200, 2.5)
                                       for n in range(3)]  # fmt: skip
        assert w.outstanding == 1 and not await w.flush(0.01)  # a shutdown's flush waits for the entries too
        producer.acknowledge_all()
        await settle_down()
        assert w.outstanding == 0
    finally:
        await w.stop()


async def test_without_an_index_no_entry_is_written() -> None:
    producer = Producer()
    async with writer(producer) as w:
        assert not w.indexing
        w.submit(b"ep", b"r", None, index=entry("msg_0"))
        await settle_down()
        producer.sent[0][3].set_result(Landed(0, 0))
        await settle_down()
    assert [topic for topic, *_ in producer.sent] == ["results"]


class RenewableProducer(Producer):
    """A stand-in for RouterProducer: ``renew`` counts the renewals (each one a new producer id) and can fail."""

    def __init__(self, renew_failures: int = 0) -> None:
        super().__init__()
        self.renewals = 0
        self.renew_failures = renew_failures
        self.renewed = asyncio.Event()

    async def renew(self) -> None:
        if self.renew_failures:
            self.renew_failures -= 1
            raise KafkaConnectionError("the cluster is away")
        self.renewals += 1
        self.renewed.set()


async def test_a_fenced_producer_is_renewed_once_and_what_it_held_is_sent_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon.kafka.results, "_RETRY_BACKOFF_S", 0.01)
    caplog.set_level(logging.INFO, "daemon.kafka.results")
    producer, acked = RenewableProducer(renew_failures=1), list[int]()
    async with writer(producer) as w:
        for n in range(3):
            w.submit(str(n).encode(), b"v", functools.partial(acked.append, n))
        await settle_down()
        for *_, future in producer.sent:  # every batch refused: the broker no longer takes this producer id
            future.set_exception(OutOfOrderSequenceNumber())
        await settle_down()
        assert w.problem() == "the producer of results was fenced (OutOfOrderSequenceNumber): a new one is starting"
        await asyncio.wait_for(producer.renewed.wait(), 5)
        await eventually(lambda: sum(len(r) for *_, r, f in producer.sent if not f.done()) == 3, 10)
        producer.acknowledge_all()
        await settle_down()
        assert sorted(acked) == [0, 1, 2] and w.outstanding == 0
        assert producer.renewals == 1  # three failed batches, one renewal (the first attempt at it failed)
        assert w.problem() is None
    fenced = [r for r in caplog.records if "fenced" in r.getMessage()]
    assert len(fenced) == 1 and fenced[0].levelname == "WARNING"
    assert any("a new producer of results took over" in r.getMessage() for r in caplog.records)


async def test_records_waiting_without_an_acknowledgement_are_a_problem_until_one_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon.kafka.results, "STALLED_S", 0.2)
    producer = Producer()
    async with writer(producer) as w:
        assert w.problem() is None  # nothing waits
        w.submit(b"k", b"v", None)
        await settle_down()
        assert w.problem() is None  # never early
        await asyncio.sleep(0.25)
        partition = producer.sent[0][1]
        waiting = rf"1 records for results\[{partition}\] waiting \d+ s for Kafka's acknowledgement"
        assert re.fullmatch(waiting, w.problem() or ""), w.problem()
        producer.acknowledge_all()
        await settle_down()
        assert w.problem() is None


async def test_a_topic_refused_is_said_once_naming_its_setting_and_a_problem_until_a_record_of_it_is_acknowledged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL taken away (TOPIC_AUTHORIZATION_FAILED): the records wait and are sent again, never dropped."""
    monkeypatch.setattr(daemon.kafka.results, "_RETRY_BACKOFF_S", 0.01)
    caplog.set_level(logging.INFO, "daemon.kafka.results")
    producer, acked, metrics = Producer(partitions=1), list[int](), Metrics()
    w = ResultsWriter(producer, "results", metrics)
    w.start()
    refused = ("topic results (kafka.results_topic): this principal may not write it (TOPIC_AUTHORIZATION_FAILED): "
               "grant it Write")  # fmt: skip
    try:
        for n in range(2):
            w.submit(str(n).encode(), b"v", functools.partial(acked.append, n))
        for _ in range(3):  # refused again and again: said once
            await settle_down()
            for *_, future in producer.sent:
                if not future.done():
                    future.set_exception(TopicAuthorizationFailedError("results"))
            await asyncio.sleep(0.03)
        problem = w.problem()
        assert problem is not None and problem.startswith(f"{refused}; its records wait, for "), problem
        assert metrics.kafka_refused.labels("write")._value.get() == 1
        await settle_down()
        producer.acknowledge_all()
        await settle_down()
        assert sorted(acked) == [0, 1] and w.problem() is None
        assert metrics.kafka_refused.labels("write")._value.get() == 0
    finally:
        await w.stop()
    lines = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "not written" not in r.getMessage()
    ]
    assert len(lines) == 2 and lines[0].startswith(f"{refused}: its records wait"), lines
    assert lines[1].startswith("writes to results go on after ")


def key_in(partition: int, partitions: int = 3) -> bytes:
    """A key Kafka's default partitioner puts in ``partition``."""
    parts = list(range(partitions))
    return next(k for n in range(1000) if DefaultPartitioner()(k := b"k%d" % n, parts, parts) == partition)


async def test_a_partition_whose_batches_wait_holds_only_its_own_records_and_readyz_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon.kafka.results, "STALLED_S", 0.2)
    producer, acked = Producer(partitions=3), list[int]()
    producer.held[0] = asyncio.Event()  # partition 0's leader does not answer: its hand-over waits
    async with writer(producer) as w:
        for n, partition in enumerate([0, 1, 2, 0, 1, 2]):  # partition 0's first: it used to hold the others
            w.submit(key_in(partition), b"r%d" % n, functools.partial(acked.append, n))
        await settle_down()
        assert sorted(partition for _, partition, *_ in producer.sent) == [1, 2]
        producer.acknowledge_all()
        await settle_down()
        assert sorted(acked) == [1, 2, 4, 5] and w.outstanding == 2
        w.submit(key_in(1), b"later", functools.partial(acked.append, 6))  # partition 1 goes on meanwhile
        await settle_down()
        producer.acknowledge_all()
        await settle_down()
        assert 6 in acked
        assert w.problem() is None  # never early
        await asyncio.sleep(0.25)
        waiting = r"2 records for results\[0\] waiting \d+ s for Kafka's acknowledgement"
        assert re.fullmatch(waiting, w.problem() or ""), w.problem()
        producer.held.pop(0).set()
        await settle_down()
        producer.acknowledge_all()
        await settle_down()
        assert sorted(acked) == [0, 1, 2, 3, 4, 5, 6] and w.outstanding == 0
        assert w.problem() is None


async def test_a_partition_has_one_batch_out_at_a_time_and_a_failed_one_is_sent_again_before_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon.kafka.results, "_RETRY_BACKOFF_S", 0.01)
    producer, acked = Producer(), list[int]()
    async with writer(producer) as w:
        for n in range(3):
            w.submit(b"k", b"r%d" % n, functools.partial(acked.append, n))
        await settle_down()
        for n in range(3, 5):  # while the first batch is out: they wait behind it
            w.submit(b"k", b"r%d" % n, functools.partial(acked.append, n))
        await settle_down()
        assert [len(records) for _, _, records, _ in producer.sent] == [3]
        assert not producer.batches[0].closed  # fresh records: the producer's linger_ms may fill the batch
        producer.sent[0][3].set_exception(ConnectionError("broker gone"))
        await eventually(lambda: len(producer.sent) >= 2, 10)
        ((*_, records, future),) = producer.sent[1:]
        assert [value for _, value in records] == [b"r0", b"r1", b"r2", b"r3", b"r4"]  # the failed ones first
        assert producer.batches[1].closed  # records that waited: sent without lingering again
        w.submit(b"k", b"r5", functools.partial(acked.append, 5))
        await settle_down()
        assert len(producer.sent) == 2
        future.set_result(None)
        await settle_down()
        assert acked == [0, 1, 2, 3, 4]
        assert [value for _, value in producer.sent[2][2]] == [b"r5"]
        producer.acknowledge_all()
        await settle_down()
        assert acked == [0, 1, 2, 3, 4, 5] and w.outstanding == 0


async def test_a_topic_whose_partitions_are_not_known_holds_its_own_records_in_order_and_no_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon.kafka.results, "_RETRY_BACKOFF_S", 0.05)
    producer = Producer(partitions=1)
    producer.unknown["dead-letters"] = 2  # the cluster does not know it yet: asked again until it does
    async with writer(producer) as w:
        w.submit(b"k", b"d0", None, topic="dead-letters")
        w.submit(b"k", b"r0", None)
        w.submit(b"k", b"d1", None, topic="dead-letters")
        await settle_down()
        assert [(topic, [v for _, v in records]) for topic, _, records, _ in producer.sent] == [("results", [b"r0"])]
        await eventually(lambda: len(producer.sent) >= 2, 10)
        assert [(topic, [v for _, v in records]) for topic, _, records, _ in producer.sent][1:] == [
            ("dead-letters", [b"d0", b"d1"])
        ]
        producer.acknowledge_all()
        await settle_down()
        assert w.outstanding == 0
