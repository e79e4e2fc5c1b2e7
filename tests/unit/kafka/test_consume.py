"""daemon.kafka.consume.Source at its seam: the group consumer is an in-memory stand-in (no broker).

Its commits: a commit that fails (``commit`` fails as told), however it fails, is counted, said and made again at the
next interval: the commit loop never ends, and nothing is marked committed that was not. Its fetch loop: a stop asked
for while a fetch is under way (``getmany``) dispatches none of the records that fetch returns. The shutdown's drain
may already be over then (nothing was in flight), and its final commit made: whatever were dispatched after it would
be delivered, uncommitted, and delivered again by the next owner (seen: 54 events delivered twice by one instance of
a rolling restart)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError

from daemon.core.offsets import PartitionOffsets
from daemon.core.validate import parse_config
from daemon.kafka.consume import Source, Stuck
from daemon.observe.metrics import Metrics
from tests.unit.core.test_config import doc


class Consumer:
    """Stand-in for AIOKafkaConsumer's ``commit``: raises each of ``failures`` in turn, then takes the commits."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.committed: list[dict[TopicPartition, Any]] = []

    async def commit(self, marks: dict[TopicPartition, Any]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.committed.append(marks)


async def test_a_commit_failing_outside_kafkas_errors_is_counted_said_and_made_again_the_commit_loop_going_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka on uvloop was seen (a group coordinator killed, three brokers) to raise RuntimeError from a commit whose
    connection closed under it: it ended the commit loop, and nothing was committed again until a restart."""
    metrics = Metrics()
    source = Source(parse_config(doc(), {}).kafka, {}, metrics, lambda record, part: None, 1.0)
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
    real, consumer = source._consumer, Consumer([closed])
    source._consumer = consumer
    tp = TopicPartition("leads", 0)
    part = source.offsets.assign(tp)
    part.add(0, 0)  # read and settled at once: committable
    loop = asyncio.create_task(source.commit_every(0.01))
    try:
        while not consumer.committed:
            await asyncio.sleep(0.01)
            assert not loop.done(), loop
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await real.stop()  # never started: closes nothing but says so
    assert [{t: mark[0] for t, mark in marks.items()} for marks in consumer.committed] == [{tp: 1}]
    assert metrics.commits.labels("error")._value.get() == 1 and source.problem() is None
    (failed,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert failed.getMessage().startswith("offset commit failed (RuntimeError: unable to perform operation")
    assert failed.exc_info is not None  # not a Kafka error: shown with its traceback


class StoppedWhileFetching:
    """Stand-in for AIOKafkaConsumer's fetch: answers the first with three records of ``tp``, the stop having been
    asked for while it waited."""

    _closed = False
    _coordinator = _fetcher = None  # what ``consumer_broken`` looks at: aiokafka's, before its start

    def __init__(self, source: Source, tp: TopicPartition) -> None:
        self._source, self._tp = source, tp

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(0)
        self._source.stopping = True  # SIGTERM, handled while the fetch waited for records
        return {self._tp: [Record(0), Record(1), Record(2)]}

    def assignment(self) -> set[TopicPartition]:
        return {self._tp}

    def highwater(self, tp: TopicPartition) -> int:
        return 3


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


async def test_a_stop_asked_for_during_a_fetch_dispatches_none_of_its_records() -> None:
    dispatched: list[int] = []

    def dispatch(record: Record, part: PartitionOffsets) -> None:
        part.add(record.offset, 1)
        dispatched.append(record.offset)

    source = Source(parse_config(doc(), {}).kafka, {}, Metrics(), dispatch, 1.0)
    tp = TopicPartition("leads", 0)
    real = source._consumer
    source._consumer = StoppedWhileFetching(source, tp)
    source.offsets.assign(tp)
    try:
        await asyncio.wait_for(source.run(), 5)
    finally:
        await real.stop()  # never started: closes nothing but says so
    assert dispatched == []
    assert source.offsets.in_flight == 0
    assert source.uncommitted() == []  # nothing read: the next owner reads them from the last commit


class EmptyAnswers:
    """Stand-in for AIOKafkaConsumer's fetch against a broker that cannot read a partition's records within the
    fetch's wait (Tansu's memory store once it holds some 300,000 records: at ``fetch_max_wait_ms`` 20 every answer
    came back empty, at 500 full): after a first answer of ten records, answers with nothing, its high watermark
    ``ahead`` records past the position, until the fetcher's wait reaches ``reads_at_ms``."""

    class Fetcher:
        def __init__(self, wait_ms: int) -> None:
            self._fetch_max_wait_ms = wait_ms  # aiokafka's Fetcher keeps it there and reads it for each request

    _closed = False
    _coordinator = None  # what ``consumer_broken`` looks at: aiokafka's, before its start (nothing broken)

    def __init__(self, tp: TopicPartition, wait_ms: int, reads_at_ms: int, ahead: int = 1_000, start: int = 0) -> None:
        self.tp, self.reads_at_ms, self.ahead = tp, reads_at_ms, ahead
        self._fetcher = self.Fetcher(wait_ms)
        self.offset = start  # above 0: the group's committed offset, fetched from (a restart), answered with nothing

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(0.01)
        if self.offset and self._fetcher._fetch_max_wait_ms < self.reads_at_ms:  # the first answered: mid-stream
            return {}
        records = [Record(self.offset + i) for i in range(min(max_records, 10))]
        self.offset += len(records)
        return {self.tp: records}

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def highwater(self, tp: TopicPartition) -> int:
        return self.offset + self.ahead

    def pause(self, *tps: TopicPartition) -> None:
        pass

    def resume(self, *tps: TopicPartition) -> None:
        pass


def _taking(taken: list[int]) -> Callable[[Record, PartitionOffsets], None]:
    """A dispatch that settles nothing, noting each offset it is handed."""

    def dispatch(record: Record, part: PartitionOffsets) -> None:
        part.add(record.offset, 0)
        taken.append(record.offset)

    return dispatch


async def _run_until(source: Source, real: Any, enough: Callable[[], bool]) -> None:
    """Run ``source`` until ``enough()`` (at most 20 s), then stop it and the real consumer its stand-in replaced."""
    run = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(20):
            while not enough():
                await asyncio.sleep(0.01)
                assert not run.done(), run
    finally:
        source.stopping = True
        await asyncio.wait_for(run, 5)
        await real.stop()  # never started: closes nothing but says so


async def test_a_broker_answering_nothing_while_records_wait_gets_a_longer_fetch_wait_and_it_is_said(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A soak on Tansu (2,000 events/s) stopped consuming for good 300,000 records in: every fetch answered empty at the
    router's 20 ms wait, the lag climbing, nothing said. A partition that may be fetched, with records ahead and none
    returned for three looks at the lag in a row, doubles the wait (up to 1 s): one line and a gauge say so."""
    monkeypatch.setattr("daemon.kafka.consume._LAG_INTERVAL_S", 0.05)
    caplog.set_level(logging.INFO)
    metrics = Metrics()
    taken: list[int] = []
    dispatch = _taking(taken)
    kafka = parse_config(doc(), {}).kafka
    source = Source(kafka, {}, metrics, dispatch, 1.0)
    tp = TopicPartition("leads", 0)
    real, consumer = source._consumer, EmptyAnswers(tp, kafka.fetch_max_wait_ms, reads_at_ms=160)
    source._consumer = consumer
    source.offsets.assign(tp)
    await _run_until(source, real, lambda: len(taken) >= 100)
    assert consumer._fetcher._fetch_max_wait_ms == 160  # 20 -> 40 -> 80 -> 160, not past what was needed
    assert metrics.registry.get_sample_value("webhook_router_fetch_max_wait_seconds", {"consumer": "events"}) == 0.16
    said = [r.getMessage() for r in caplog.records if "fetch" in r.getMessage() and "wait" in r.getMessage()]
    assert len(said) == 3, said
    assert said[0].startswith(
        "events: fetches answered with no records for 3 looks in a row (one a second) while "
        "1000 records are ahead (leads[0])"
    )
    assert "kafka.fetch_max_wait_ms" in said[0] and "40 ms" in said[0]


async def test_a_restart_against_a_broker_already_answering_nothing_gets_a_longer_fetch_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started again where the group committed (5,000) with the broker already answering every fetch with nothing: no
    record of the partition was read, so its position is the committed offset the assignment found, not unknown (the
    watch once skipped such a partition, and the router fetched nothing for good)."""
    monkeypatch.setattr("daemon.kafka.consume._LAG_INTERVAL_S", 0.05)
    taken: list[int] = []
    dispatch = _taking(taken)
    kafka = parse_config(doc(), {}).kafka
    source = Source(kafka, {}, Metrics(), dispatch, 1.0)
    tp = TopicPartition("leads", 0)
    real, consumer = source._consumer, EmptyAnswers(tp, kafka.fetch_max_wait_ms, reads_at_ms=80, start=5_000)
    source._consumer = consumer
    source.offsets.assign(tp).committed = 5_000  # as on_assigned sets it from the group's last commit
    await _run_until(source, real, lambda: bool(taken))
    assert taken[0] == 5_000 and consumer._fetcher._fetch_max_wait_ms == 80


async def test_a_partition_caught_up_or_paused_never_raises_the_fetch_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing ahead (the high watermark at the position), or fetching paused at the in-flight cap: empty answers are
    what they should be, and the wait stays as configured."""
    monkeypatch.setattr("daemon.kafka.consume._LAG_INTERVAL_S", 0.02)
    kafka = parse_config(doc(), {}).kafka
    for ahead, paused in ((0, False), (1_000, True)):
        source = Source(kafka, {}, Metrics(), lambda record, part: None, 1.0)
        tp = TopicPartition("leads", 0)
        real, consumer = source._consumer, EmptyAnswers(tp, kafka.fetch_max_wait_ms, reads_at_ms=10**6, ahead=ahead)
        source._consumer = consumer
        source.offsets.assign(tp)
        if paused:
            source._pause()
        run = asyncio.create_task(source.run())
        await asyncio.sleep(0.5)
        source.stopping = True
        await asyncio.wait_for(run, 5)
        await real.stop()
        assert consumer._fetcher._fetch_max_wait_ms == kafka.fetch_max_wait_ms, (ahead, paused)


def test_aiokafkas_fetcher_reads_its_wait_for_each_request_it_builds() -> None:
    """What ``set_fetch_wait_ms`` relies on (daemon/kafka/clients.py names it): the wait is an attribute of the fetcher
    read when each Fetch request is built, not a value copied into something built once."""
    from aiokafka.consumer.fetcher import Fetcher

    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in inspect.getsource(Fetcher.__init__)
    assert "self._fetch_max_wait_ms," in inspect.getsource(Fetcher._get_actions_per_node)


async def test_fetching_paused_and_resumed_or_records_of_another_partition_never_raise_the_fetch_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first version raised it to 1 s on Kafka in an hour's soak: the in-flight cap paused and resumed fetching
    every few seconds, and a fetch limited to the cap's room returned one partition's records while the others waited.
    Neither is a broker answering with nothing."""
    monkeypatch.setattr("daemon.kafka.consume._LAG_INTERVAL_S", 0.02)
    kafka = parse_config(doc(), {}).kafka
    for case in ("cap toggling", "another partition fed"):
        source = Source(kafka, {}, Metrics(), lambda record, part: part.add(record.offset, 0), 1.0)
        tp, other = TopicPartition("leads", 0), TopicPartition("leads", 1)
        real, consumer = source._consumer, EmptyAnswers(tp, kafka.fetch_max_wait_ms, reads_at_ms=10**6)
        source._consumer = consumer
        source.offsets.assign(tp)
        source.offsets.assign(other)
        run = asyncio.create_task(source.run())
        for n in range(40):  # 0.8 s: 40 looks
            await asyncio.sleep(0.02)
            if case == "cap toggling":
                source._pause()
                source._paused = False  # resumed at once, as _on_done does below the low water
            else:
                source._take(other, [Record(n)])
        source.stopping = True
        await asyncio.wait_for(run, 5)
        await real.stop()
        assert consumer._fetcher._fetch_max_wait_ms == kafka.fetch_max_wait_ms, case


class FailingWithEveryPartitionHeld:
    """Stand-in for AIOKafkaConsumer's fetch whose every ``getmany`` raises what is not Kafka's, its one partition
    already held as at a batch that cannot be decoded; counts the fetches."""

    _closed = False
    _coordinator = _fetcher = None  # not broken, as ``consumer_broken`` sees it

    def __init__(self, tp: TopicPartition) -> None:
        self.tp, self.fetches = tp, 0

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self.fetches += 1
        await asyncio.sleep(0)
        raise ValueError("a batch that cannot be decoded")

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def highwater(self, tp: TopicPartition) -> int:
        return 3


async def test_a_fetch_failing_while_every_partition_is_held_already_is_tried_again_a_second_later() -> None:
    """Seen with a consumer whose coordination task had ended (every fetch raising its error, every partition held in
    turn): the fetch loop then failed and found no partition to hold, millions of times a minute, on one core."""
    source = Source(parse_config(doc(), {}).kafka, {}, Metrics(), lambda record, part: None, 1.0)
    tp = TopicPartition("leads", 0)
    real, consumer = source._consumer, FailingWithEveryPartitionHeld(tp)
    source._consumer = consumer
    source.offsets.assign(tp)
    source.stuck[tp] = Stuck(topic="leads", partition=0, offset=0, error="ValueError", since="now")
    run = asyncio.create_task(source.run())
    await asyncio.sleep(0.5)
    source.stopping = True
    await asyncio.wait_for(run, 5)
    await real.stop()
    assert consumer.fetches == 1  # the next waits _FAILED_FETCH_WAIT_S (1 s): never early


class CommitNeverAnswered:
    """Stand-in for AIOKafkaConsumer's ``commit`` through a consumer whose coordinator never answers (aiokafka's
    commit then tries again for good, also once the consumer is closed)."""

    async def commit(self, marks: dict[TopicPartition, Any]) -> None:
        await asyncio.Event().wait()


async def test_a_commit_waiting_on_a_consumer_being_replaced_is_abandoned_and_the_commits_go_on() -> None:
    """The replacement of a broken consumer cancels a commit still waiting on it (``Source._replace``): otherwise
    that commit held the commit lock for good, and the new consumer never committed."""
    source = Source(parse_config(doc(), {}).kafka, {}, Metrics(), lambda record, part: None, 1.0)
    real, old, new = source._consumer, CommitNeverAnswered(), Consumer([])
    source._consumer = old
    tp = TopicPartition("leads", 0)
    source.offsets.assign(tp).add(0, 0)
    loop = asyncio.create_task(source.commit_every(0.01))
    try:
        while source._commit_under_way is None:
            await asyncio.sleep(0.01)
        consumer, under_way = source._commit_under_way
        assert consumer is old
        source._consumer = new
        under_way.cancel()  # what _replace does to a commit under way on the consumer it replaces
        while not new.committed:
            await asyncio.sleep(0.01)
            assert not loop.done(), loop  # the commit loop goes on: the cancellation was not its own
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await real.stop()
    assert new.committed == [{tp: (1, "")}]


class RefusedGroup:
    """Stand-in for AIOKafkaConsumer whose group is refused (GROUP_AUTHORIZATION_FAILED): every ``getmany`` raises
    the refusal. ``heartbeat_ended``: the refusal had ended aiokafka's heartbeat task (a member refused while joined),
    which ``consumer_broken`` reads as this consumer's ``_coordinator._heartbeat_task``; else it was refused joining,
    by a coordination that goes on (a new member's). Its tasks are real ones."""

    class Fetcher:
        def __init__(self) -> None:
            self._closed = False
            self._fetch_max_wait_ms = 20
            self._pending_tasks: set[asyncio.Task[None]] = set()
            self._fetch_task = asyncio.create_task(asyncio.Event().wait())

    class Coordinator:
        def __init__(self, heartbeat: asyncio.Task[None] | None) -> None:
            self._closing = asyncio.get_running_loop().create_future()
            self._coordination_task = asyncio.create_task(asyncio.Event().wait())
            self._heartbeat_task = heartbeat
            self._commit_refresh_task = None

    class Client:
        async def close(self) -> None:
            pass

    def __init__(self, tp: TopicPartition, heartbeat_ended: bool) -> None:
        self.tp, self._closed, self.fetches, self.subscribed = tp, False, 0, False
        heartbeat = None
        if heartbeat_ended:
            heartbeat = asyncio.create_task(self._refused())
        self._coordinator = self.Coordinator(heartbeat)
        self._fetcher = self.Fetcher()
        self._client = self.Client()

    async def _refused(self) -> None:
        raise GroupAuthorizationFailedError("group-1")

    async def start(self) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.subscribed = True

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self.fetches += 1
        await asyncio.sleep(0)
        raise GroupAuthorizationFailedError("group-1")

    async def commit(self, marks: dict[TopicPartition, Any]) -> None:
        raise GroupAuthorizationFailedError("group-1")

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def highwater(self, tp: TopicPartition) -> int:
        return 0

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._coordinator._coordination_task, self._fetcher._fetch_task):
            task.cancel()
        self._coordinator._closing.set_result(None)


async def test_a_refusal_that_ended_the_heartbeat_replaces_the_consumer_once_and_the_refusal_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Read on the group taken away from a member: aiokafka's heartbeat task ends with the refusal and aiokafka never
    joins again, even once granted. The consumer is replaced at once (a warning: the refusal is the operator's, said
    once, and what /readyz names); the new member, refused joining, ends no task: never replaced again."""
    tp = TopicPartition("leads", 0)
    old = RefusedGroup(tp, heartbeat_ended=True)
    built: list[RefusedGroup] = []

    def new_consumer(*args: Any) -> RefusedGroup:
        built.append(RefusedGroup(tp, heartbeat_ended=False))
        return built[-1]

    metrics = Metrics()
    source = Source(parse_config(doc(), {}).kafka, {}, metrics, lambda record, part: None, 1.0)
    monkeypatch.setattr("daemon.kafka.consume.group_consumer", new_consumer)  # what _replace builds
    real, source._consumer = source._consumer, old
    ended = old._coordinator._heartbeat_task
    assert ended is not None
    await asyncio.gather(ended, return_exceptions=True)
    source.offsets.assign(tp)
    caplog.set_level(logging.INFO, logger="daemon.kafka.consume")
    run = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(10):
            while not built or built[0].fetches < 3:  # the new one refused, fetched again each second
                await asyncio.sleep(0.01)
                assert not run.done(), run
        assert "consumer group" in (source.problem() or "") and "GROUP_AUTHORIZATION_FAILED" in (source.problem() or "")
    finally:
        source.stopping = True
        await asyncio.wait_for(run, 5)
        await real.stop()
        for each in (old, *built):
            await each.stop()
    assert len(built) == 1 and built[0].subscribed and source._consumer is built[0]
    assert old._closed  # closed whole
    assert metrics.registry.get_sample_value("webhook_router_consumer_rebuilds_total", {"consumer": "events"}) == 1
    replaced = [
        rec for rec in caplog.records if "a new consumer" in rec.getMessage() and "replaces it" in rec.getMessage()
    ]
    assert len(replaced) == 1 and replaced[0].levelno == logging.WARNING
    assert not [rec for rec in caplog.records if "Replacing it with a new one" in rec.getMessage()]
    refused = [rec for rec in caplog.records if "GROUP_AUTHORIZATION_FAILED" in rec.getMessage()]
    assert len(refused) == 1, [rec.getMessage() for rec in refused]
