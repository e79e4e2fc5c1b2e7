"""daemon.kafka.writes: why writes wait, from the partitions' leaders and in-sync replicas; the start-up notes on
replication; the watch says it once when writes start to wait and once when they go on. The partitions are given as
plain tuples (what ``clients.ClusterProbe`` reads from the cluster's metadata answers); the last test reads them from a
real metadata answer of aiokafka's protocol (``to_object()``, as the probe does)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiokafka.protocol.metadata import MetadataResponse_v5

from daemon.kafka.clients import metadata_brokers, metadata_partitions
from daemon.kafka.writes import Partition, WriteWatch, durability_notes, write_problems


def parts(topic: str, *states: tuple[int, int], replicas: int = 3) -> list[Partition]:
    """Partitions 0.. of ``topic`` with (leader, in-sync replicas) each."""
    return [Partition(topic, n, leader, replicas, isr) for n, (leader, isr) in enumerate(states)]


def test_every_partition_led_with_enough_in_sync_replicas_is_no_problem() -> None:
    assert write_problems(parts("results", (1, 3), (2, 2)), {"results": 2}) == []


def test_a_partition_short_of_min_insync_replicas_waits_for_them() -> None:
    problems = write_problems(parts("results", (1, 1), (2, 3)) + parts("dead", (3, 1)), {"results": 2})
    assert problems == [
        "fewer in-sync replicas than min.insync.replicas (results[0] 1 of 2): writes wait (NOT_ENOUGH_REPLICAS) "
        "until enough replicas are back"
    ]  # dead letters: min.insync.replicas not described, taken as 1


def test_a_partition_without_a_leader_is_a_leader_change_and_many_are_counted() -> None:
    (problem,) = write_problems(parts("t", *[(-1, 0)] * 7), {"t": 2})
    assert problem == "no leader for t[0], t[1], t[2], t[3], t[4] and 2 more (a leader change under way): their " \
        "writes wait"  # fmt: skip


def test_notes_name_the_topics_whose_replication_keeps_less_than_the_cluster_could() -> None:
    state = parts("weak", (1, 3)) + parts("brittle", (1, 2), replicas=2) + parts("single", (1, 1), replicas=1)
    state += parts("fine", (1, 3))
    notes = durability_notes(state, {"weak": 1, "brittle": 2, "fine": 2}, brokers=3)
    assert len(notes) == 3
    assert notes[0].startswith("topics whose writes are acknowledged by a single replica: weak (min.insync.replicas "
                               "1, replication factor 3)")  # fmt: skip
    assert notes[1].startswith("topics whose min.insync.replicas is their replication factor: brittle: one broker")
    assert notes[2].startswith("topics with one replica on a cluster of 3 brokers: single: a broker lost")
    assert durability_notes(parts("single", (1, 1), replicas=1), {}, brokers=1) == []  # one broker: all there is


def test_the_watch_says_once_when_writes_wait_and_once_when_they_go_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "daemon.kafka.writes")
    state = parts("results", (1, 3))
    watch = WriteWatch(lambda: state, lambda: 3, {"results": 2})
    watch.check()
    assert watch.problem() is None
    state = parts("results", (1, 1))
    for _ in range(3):
        watch.check()
    assert watch.problem() is not None and "results[0] 1 of 2" in watch.problem()  # type: ignore[operator]
    state = parts("results", (2, 2))
    watch.check()
    watch.check()
    assert watch.problem() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("writes to Kafka wait: fewer in-sync replicas")
    assert lines[1].startswith("writes to Kafka go on after ")


def test_replicas_and_brokers_are_read_from_a_metadata_answer() -> None:
    brokers = [(1, "127.0.0.1", 1, None), (2, "127.0.0.1", 2, None), (3, "127.0.0.1", 3, None)]
    topics: list[Any] = [
        (0, "results", False, [(0, 0, 1, [1, 2, 3], [1, 3], []), (0, 1, -1, [1, 2, 3], [], [])]),
        (3, "unknown", False, []),  # UNKNOWN_TOPIC_OR_PARTITION: nothing of it
    ]
    answer = MetadataResponse_v5(0, brokers, "cluster", 1, topics).to_object()
    assert sorted(metadata_partitions(answer)) == [("results", 0, 1, 3, 2), ("results", 1, -1, 3, 0)]
    assert metadata_brokers(answer) == {1: ("127.0.0.1", 1), 2: ("127.0.0.1", 2), 3: ("127.0.0.1", 3)}
