"""Contact with the cluster at its seam: a scripted probe stands in for the cluster's metadata answer (a small
in-memory stand-in, no broker), real loggers, real time. What a user sees of an outage: one line when contact is
lost (never before the timeout), one when it is back, aiokafka's flood held back and counted."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError

import daemon.kafka.contact
from daemon.kafka.contact import Contact, KafkaLogFilter, Throttle, held_note, unretrieved_kafka_errors_quiet
from daemon.observe.metrics import Metrics


async def test_a_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    throttle = Throttle(0.2)
    assert throttle.ready() == 0
    assert [throttle.ready() for _ in range(5)] == [None] * 5
    await asyncio.sleep(0.25)
    assert throttle.ready() == 5
    assert throttle.ready() is None
    assert held_note(0) == "" and held_note(5) == " (5 more like it held back)"


def flood(count: int, level: int = logging.ERROR) -> None:
    for i in range(count):
        logging.getLogger("aiokafka.consumer.fetcher").log(level, "Failed fetch messages from %d", i)
        logging.getLogger("aiokafka").log(level, "Unable connect to node %d", i)


def test_aiokafka_floods_are_held_back_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    noise = KafkaLogFilter(metrics)
    noise.install()
    try:
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="aiokafka"):
            flood(95)  # 190 lines: a second of a broker down
            flood(3, logging.DEBUG)  # below WARNING: untouched (--log-level DEBUG shows everything)
        shown = [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno >= logging.WARNING]
        assert [r.getMessage() for r in shown] == ["Failed fetch messages from 0"]
        assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 6
        assert noise.suppressed == 189
        assert metrics.kafka_log_suppressed._value.get() == 189
        noise.quiet = True  # contact lost: nothing at all
        caplog.clear()
        flood(1)
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        noise.remove()
    caplog.clear()
    flood(1)
    assert len(caplog.records) == 2  # removed: aiokafka logs as it did


async def test_the_line_that_goes_through_says_how_many_were_held(caplog: pytest.LogCaptureFixture) -> None:
    noise = KafkaLogFilter(Metrics(), interval_s=0.1)
    noise.install()
    try:
        flood(3)
        await asyncio.sleep(0.15)
        caplog.clear()
        flood(1)
        (line,) = [r.getMessage() for r in caplog.records]
        assert line == "Failed fetch messages from 0 (5 more like it held back)"
    finally:
        noise.remove()


class Cluster:
    """Stand-in for the probe (``contact.Probe``) of a cluster: answers, refuses, or hangs (a suspended broker)."""

    def __init__(self) -> None:
        self.state = "up"
        self.closed = False

    async def __call__(self) -> bool:
        if self.state == "hung":
            await asyncio.sleep(3600)
        return self.state == "up"

    def silent(self, min_s: float) -> list[tuple[str, float]]:
        return []

    async def close(self) -> None:
        self.closed = True


async def test_contact_is_lost_once_after_the_timeout_and_back_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cluster, metrics, notes = Cluster(), Metrics(), list[str]()
    noise = KafkaLogFilter(metrics)
    contact = Contact(cluster, "kafka-1:9092", 1.0, noise, metrics, notes.append, interval_s=0.05)
    await contact.start()
    try:
        await asyncio.sleep(0.2)
        assert contact.answering and not contact.lost
        cluster.state = "hung"
        gone = time.monotonic()
        answered = gone - contact.silent_s  # its last answer: a probe interval ago, or more on a busy machine
        while contact.answering:
            await asyncio.sleep(0.01)
        assert time.monotonic() - answered >= 1.0  # never early: a whole timeout after the cluster last answered
        assert time.monotonic() - gone < 5.0  # nor late, with room for a busy machine
        while not contact.lost:
            await asyncio.sleep(0.01)
        assert noise.quiet and metrics.kafka_contact._value.get() == 0
        noise.suppressed += 7  # as if aiokafka had logged meanwhile
        await asyncio.sleep(0.3)
        cluster.state = "up"
        while contact.lost:
            await asyncio.sleep(0.01)
        assert contact.answering and not noise.quiet and metrics.kafka_contact._value.get() == 1
    finally:
        await contact.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "daemon.kafka.contact"]
    assert len(lines) == 2, lines
    lost = re.match(r"lost contact with Kafka at kafka-1:9092: no answer for (\d+) s\.", lines[0])
    assert lost and int(lost[1]) >= 1, lines  # the silence measured: 1 s, or more on a busy machine
    assert lines[1].startswith("contact with Kafka at kafka-1:9092 is back after ")
    assert lines[1].endswith("(7 Kafka client log lines held back meanwhile)")
    assert notes == ["STATUS=no contact with Kafka at kafka-1:9092 for 1 s, waiting for it", "STATUS=running"]


async def test_a_short_blip_is_not_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cluster, metrics = Cluster(), Metrics()
    contact = Contact(cluster, "k:9092", 1.0, KafkaLogFilter(metrics), metrics, lambda _: None, interval_s=0.05)
    await contact.start()
    try:
        cluster.state = "down"
        await asyncio.sleep(0.3)
        cluster.state = "up"
        await asyncio.sleep(0.3)
        assert contact.answering and not contact.lost
    finally:
        await contact.stop()
    assert [r for r in caplog.records if r.name == "daemon.kafka.contact"] == []


async def test_credentials_refused_while_running_are_said_once_with_the_setting_until_an_answer_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A probe without an answer has ``refused`` asked (a stand-in for the router's own handshake), at most every
    ``_REFUSED_CHECK_S`` (here 0.1 s); its reason is /readyz's and one warning's, until the cluster answers again."""
    caplog.set_level(logging.INFO)
    cluster, metrics, notes, asked = Cluster(), Metrics(), list[str](), list[float]()
    why = "kafka.sasl_oauth_token_file (/run/token): the cluster refused the token (invalid_token)"

    async def refused() -> str | None:
        asked.append(time.monotonic())
        return why if cluster.state == "down" else None

    contact = Contact(cluster, "k:9092", 30.0, KafkaLogFilter(metrics), metrics, notes.append, interval_s=0.02,
                      refused=refused)  # fmt: skip
    refused_gauge = metrics.kafka_refused.labels("credentials")
    await contact.start()
    try:
        await asyncio.sleep(0.1)
        assert asked == [] and contact.problem() is None  # answered: never asked
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(daemon.kafka.contact, "_REFUSED_CHECK_S", 0.1)
            cluster.state = "down"
            while contact.refusal is None:
                await asyncio.sleep(0.01)
            assert contact.problem() == f"the cluster refuses the router's credentials: {why}"
            assert refused_gauge._value.get() == 1
            await asyncio.sleep(0.5)
            # asked again while probes go unanswered (every 0.02 s), but never more often than every 0.1 s
            assert 2 <= len(asked) <= 2 + (asked[-1] - asked[0]) / 0.1, asked
            cluster.state = "up"
            while contact.refusal is not None:
                await asyncio.sleep(0.01)
        assert contact.problem() is None and refused_gauge._value.get() == 0
    finally:
        await contact.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "daemon.kafka.contact"]
    assert len(lines) == 2 and lines[0].startswith(f"the cluster refuses the router's credentials: {why}. ")
    assert lines[1].startswith("the cluster takes the router's credentials again after ")
    assert notes == [f"STATUS=the cluster refuses the router's credentials: {why}", "STATUS=running"]


class Brokers(Cluster):
    """Stand-in for the probe of a cluster of several brokers: when each last answered (``hung`` ones stop)."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.answered = dict.fromkeys(names, time.monotonic())
        self.hung: set[str] = set()

    async def __call__(self) -> bool:
        now = time.monotonic()
        for name in self.answered.keys() - self.hung:
            self.answered[name] = now
        return len(self.hung) < len(self.answered)

    def silent(self, min_s: float) -> list[tuple[str, float]]:
        now = time.monotonic()
        return [(name, now - at) for name, at in sorted(self.answered.items()) if now - at >= min_s]


async def test_one_broker_silent_while_the_others_answer_is_named_not_a_lost_contact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    brokers, metrics = Brokers("broker 1", "broker 2", "broker 3"), Metrics()
    contact = Contact(brokers, "k:9092", 1.0, KafkaLogFilter(metrics), metrics, lambda _: None, interval_s=0.05)
    await contact.start()
    try:
        await asyncio.sleep(0.2)
        assert contact.unanswered() is None
        brokers.hung.add("broker 2")
        hung, answered = time.monotonic(), brokers.answered["broker 2"]  # its last answer
        while contact.unanswered() is None:
            await asyncio.sleep(0.01)
        assert time.monotonic() - answered >= 0.5 + 0.05  # never early: a whole probe's time (0.5 s) and an interval
        assert time.monotonic() - hung < 5.0  # nor late, with room for a busy machine
        assert re.fullmatch(r"broker 2 has not answered for \d+ s", contact.unanswered() or ""), contact.unanswered()
        await asyncio.sleep(1.2)  # past the contact timeout: contact is not lost, two brokers of three answer
        assert contact.answering and not contact.lost
        brokers.hung.clear()
        await asyncio.sleep(0.2)
        assert contact.unanswered() is None
    finally:
        await contact.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "daemon.kafka.contact"]
    assert len(lines) == 2, lines
    assert re.match(
        r"broker 2 has not answered for \d+ s \(the others answer\): writes to the partitions it leads", lines[0]
    )
    assert lines[1] == "broker 2 answers again"


async def test_a_first_probe_unanswered_fails_the_start_and_stop_closes_the_probe() -> None:
    cluster, metrics = Cluster(), Metrics()
    cluster.state = "down"
    contact = Contact(cluster, "k:9092", 1.0, KafkaLogFilter(metrics), metrics, lambda _: None, interval_s=0.05)
    with pytest.raises(KafkaConnectionError, match="no broker of k:9092 answers"):
        await contact.start()
    await contact.stop()
    assert cluster.closed


class Fetcher:
    """Named as aiokafka's: its ``_update_fetch_positions`` fails as aiokafka 0.14's does when left running."""

    async def _update_fetch_positions(self) -> None:
        raise AssertionError("<FetchError error=NoOffsetForPartitionError(TopicPartition(topic='t', partition=1))>")

    async def _other(self) -> None:
        raise AssertionError("a real fault")


async def test_unretrieved_kafka_errors_and_aiokafkas_known_race_are_one_line_anything_else_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    caplog.set_level(logging.DEBUG)
    for coro in (Fetcher()._update_fetch_positions(), Fetcher()._other()):
        task = asyncio.ensure_future(coro)
        await asyncio.gather(task, return_exceptions=True)
        context = {"message": "Task exception was never retrieved", "exception": task.exception(), "future": task}
        unretrieved_kafka_errors_quiet(loop, context)
    unretrieved_kafka_errors_quiet(loop, {"message": "Task exception was never retrieved", "exception": KafkaError()})
    race, fault = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert race.levelname == "WARNING" and race.exc_info is None
    assert race.getMessage().startswith("aiokafka's Fetcher._update_fetch_positions, left running by its fetcher")
    assert fault.levelname == "ERROR" and fault.exc_info is not None  # asyncio's handler: the traceback shown
    assert any(r.getMessage().startswith("a Kafka request nobody waited for") for r in caplog.records)
