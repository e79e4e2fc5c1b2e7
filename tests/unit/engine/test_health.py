"""daemon.engine.health.Health at its seam: counts failures, pauses and resumes, persists and announces each change.

The writer is an in-memory stand-in (tests/unit/standins.py): the test reads what Health submitted.
"""

from __future__ import annotations

from typing import Any, cast

from daemon.core.model import HealthState, decode_health
from daemon.engine.health import Health
from daemon.observe.metrics import Metrics
from tests.unit.standins import Writer

TOPIC = "wr.health"


def health() -> tuple[Health, Writer, Metrics]:
    writer, metrics = Writer(), Metrics()
    return Health(cast(Any, writer), TOPIC, metrics), writer, metrics


def paused_gauge(metrics: Metrics, reason: str) -> float:
    value: float = metrics.endpoints_paused.labels(reason)._value.get()
    return value


def test_consecutive_failures_pause_at_the_threshold_and_a_success_resets_them() -> None:
    h, _, metrics = health()
    for _ in range(2):
        h.observe("a", ok=False, gone=None, threshold=3)
    h.observe("a", ok=True, gone=None, threshold=3)
    assert h.failures("a") == 0
    for _ in range(3):
        h.observe("a", ok=False, gone=None, threshold=3)
    assert h.is_paused("a") and h.failures("a") == 3
    assert h.states["a"].reason == "failures: 3 consecutive failed deliveries"
    assert paused_gauge(metrics, "failures") == 1


def test_no_threshold_never_pauses_on_failures_but_410_does() -> None:
    h, _, metrics = health()
    for _ in range(50):
        h.observe("a", ok=False, gone=None, threshold=None)
    assert not h.is_paused("a")
    h.observe("a", ok=False, gone=410, threshold=None)
    assert h.is_paused("a") and h.states["a"].reason == "gone: the endpoint answered 410 Gone"
    assert paused_gauge(metrics, "gone") == 1


def test_each_change_is_persisted_on_the_topic_and_announced_owed_to_nothing() -> None:
    h, writer, _ = health()
    assert h.pause("a", "operator", "by a test")
    assert not h.pause("a", "operator", "again")  # already paused: nothing written
    assert h.resume("a")
    assert not h.resume("a")
    persisted = [decode_health(r.value) for r in writer.on(TOPIC)]
    announced = [r.json()["status"] for r in writer.on(None)]
    assert [(s.endpoint_id, s.paused) for s in persisted] == [("a", True), ("a", False)]
    assert announced == ["endpoint_paused", "endpoint_resumed"]
    assert all(r.ack is None and r.key == b"a" for r in writer.records)


def test_another_status_a_contract_pauses_on_names_itself() -> None:
    h, _, _ = health()
    h.observe("a", ok=False, gone=404, threshold=None)
    assert h.states["a"].reason == "gone: HTTP 404"


def test_states_read_back_from_the_topic_apply_without_writing() -> None:
    h, writer, metrics = health()
    h.apply(HealthState(endpoint_id="a", paused=True, reason="operator: elsewhere", since="t"))
    h.apply(HealthState(endpoint_id="b", paused=True, reason="config: paused = true in the config"))
    assert h.is_paused("a") and h.is_paused("b")
    assert paused_gauge(metrics, "operator") == 1 and paused_gauge(metrics, "config") == 1
    h.apply(HealthState(endpoint_id="a", paused=False))
    assert not h.is_paused("a") and h.failures("a") == 0
    assert writer.records == []


def test_the_config_pauses_and_resumes() -> None:
    h, _, _ = health()
    h.follow_config("a", paused=True, was_paused=False)
    assert h.is_paused("a") and h.states["a"].reason == "config: paused = true in the config"
    h.follow_config("a", paused=False, was_paused=True)
    assert not h.is_paused("a")
    h.follow_config("b", paused=False, was_paused=False)
    assert "b" not in h.states
