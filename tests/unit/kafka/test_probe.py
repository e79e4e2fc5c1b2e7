"""daemon.kafka.clients.ClusterProbe at its seam: what it makes of the brokers' metadata answers (aiokafka's protocol
objects, ``to_object()`` as the probe reads them), fed to it as if each broker had answered; no socket. Its asks over
real connections are exercised by the integration tests (test_outages on every broker, test_brokers_lost on three
brokers: a broker hung, killed, two away)."""

from __future__ import annotations

import time
from typing import Any

from aiokafka.protocol.metadata import MetadataResponse_v5

from daemon.core.config import KafkaConfig
from daemon.kafka.clients import ClusterProbe, metadata_brokers


def answer(listed: list[int], leader: int, isr: list[int]) -> dict[str, Any]:
    brokers = [(n, "127.0.0.1", 9090 + n, None) for n in listed]
    topics: list[Any] = [(0, "results", False, [(0, 0, leader, [1, 2, 3], isr, [])])]
    return dict(MetadataResponse_v5(0, brokers, "cluster", 1, topics).to_object())


def learn(p: ClusterProbe, node: int | str, answer: dict[str, Any]) -> None:
    p._learn(node, metadata_brokers(answer), answer)


def probe() -> ClusterProbe:
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:9091", group_id="g", topics=["t"], results_topic="results")
    return ClusterProbe(kafka, {}, ["results"])


def test_a_broker_that_stops_answering_is_named_also_once_the_cluster_no_longer_lists_it() -> None:
    p = probe()
    learn(p, "127.0.0.1:9091", answer([1, 2, 3], 3, [1, 2, 3]))  # the bootstrap server's answer
    assert p.partitions() == [("results", 0, 3, 3, 3)] and p.brokers() == 3
    time.sleep(0.05)
    learn(p, 1, answer([1, 2, 3], 3, [1, 2, 3]))
    learn(p, 2, answer([1, 2, 3], 3, [1, 2, 3]))
    assert [name for name, _ in p.silent(0.05)] == ["broker 3 at 127.0.0.1:9093"]
    learn(p, 1, answer([1, 2], 1, [1, 2]))  # broker 3 fenced: no longer listed, its partition led by broker 1
    assert p.partitions() == [("results", 0, 1, 3, 2)] and p.brokers() == 2
    assert [name for name, s in p.silent(0.05)] == ["broker 3 at 127.0.0.1:9093"]  # still named: still silent


def test_a_broker_that_does_not_list_itself_is_heard_but_its_stale_view_is_not_taken() -> None:
    p = probe()
    learn(p, 1, answer([1, 2, 3], 3, [1, 2, 3]))
    learn(p, 1, answer([1, 2], 1, [1, 2]))
    time.sleep(0.05)
    learn(p, 1, answer([1, 2], 1, [1, 2]))
    learn(p, 3, answer([1, 2], 3, [1, 2, 3]))  # back, not caught up yet: it says it still leads
    assert p.partitions() == [("results", 0, 1, 3, 2)]
    assert [name for name, _ in p.silent(0.05)] == ["broker 2 at 127.0.0.1:9092"]  # broker 3 answered
    learn(p, 1, answer([1, 2], 1, [1, 2]))  # still unlisted, it answered: no longer asked until listed again
    learn(p, 2, answer([1, 2, 3], 1, [1, 2, 3]))  # listed again
    assert p.brokers() == 3 and p.silent(0.05) == []
