"""tests.kafka.KafkaCluster's ports (the test cluster's, not the router's): every listener of every node, security's
included, gets a port of its own, even when the random picks repeat one (a clean-clone CI run once got a SASL listener
on a controller's port, taken by a second pick after the first had let it go: the brokers would not start). Pure: no
JVM is started."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from tests.kafka import KafkaCluster
from tests.kafka.security import Security


@pytest.mark.parametrize(("brokers", "own", "every"), [(1, 2, 5), (3, 6, 15)])
def test_every_listener_of_every_node_has_a_port_of_its_own_when_the_picks_repeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, brokers: int, own: int, every: int
) -> None:
    """The picks give the nodes' own ports, then the same ones again before any other: taken apart, the listeners of
    security would get the nodes' ports (``own``: each node's client and controller ports; ``every``: with the three
    secure listeners of each broker)."""
    base = 20_000 + random.randrange(0, 5_000, 100)  # below the ephemeral range, as the cluster's own picks are
    picks = itertools.chain(range(base, base + own), range(base, base + 100))
    monkeypatch.setattr("tests.kafka.cluster.random.randint", lambda lo, hi: next(picks))
    cluster = KafkaCluster(tmp_path / "kafka", brokers=brokers, security=Security(tmp_path / "tls"))
    ports = [p for n in cluster.nodes.values() for p in (n.port, n.controller_port, *n.secure_ports.values()) if p]
    assert len(ports) == every
    assert len(set(ports)) == every, sorted(ports)
