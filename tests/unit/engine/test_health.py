"""daemon.engine.health.Health at its seam: counts failures, pauses and resumes, persists and announces each change.

The writer is an in-memory stand-in (tests/unit/standins.py): the test reads what Health submitted.
"""

from __future__ import annotations

from typing import Any, cast

from daemon.core.model import HealthState, decode_health, paused_by, tenant_may_lift
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


def test_a_pause_records_who_paused() -> None:
    h, writer, _ = health()
    h.observe("auto", ok=False, gone=None, threshold=1)
    h.observe("gone", ok=False, gone=410, threshold=None)
    h.pause("op", "operator", "paused by an operator")
    h.pause("cfg", "config", "paused = true in the config")
    h.pause("own", "tenant", "paused by its tenant")
    by = {i: h.states[i].paused_by for i in ("auto", "gone", "op", "cfg", "own")}
    assert by == {"auto": "automatic", "gone": "contract", "op": "platform", "cfg": "platform", "own": "tenant"}
    assert {decode_health(r.value).paused_by for r in writer.on(TOPIC)} == set(by.values())  # kept on the topic
    h.resume("own")
    assert h.states["own"].paused_by is None


def test_a_pause_its_tenant_may_not_lift_replaces_one_it_may_and_never_the_other_way_round() -> None:
    """Else the platform pausing an endpoint its tenant (or its failures) had paused would leave a pause the tenant
    lifts, undoing the platform's."""
    h, writer, metrics = health()
    h.pause("a", "tenant", "paused by its tenant")
    since = h.states["a"].since
    assert h.pause("a", "operator", "paused through the API")
    assert (h.states["a"].paused_by, h.states["a"].reason) == ("platform", "operator: paused through the API")
    assert h.states["a"].since == since  # paused since the first pause
    assert not h.pause("a", "tenant", "again") and not h.pause("a", "failures", "10 consecutive failed deliveries")
    assert h.states["a"].paused_by == "platform"
    assert paused_gauge(metrics, "operator") == 1 and paused_gauge(metrics, "tenant") == 0
    h.observe("b", ok=False, gone=None, threshold=1)
    assert h.pause("b", "gone", "the endpoint answered 410 Gone") and h.states["b"].paused_by == "contract"
    assert not h.pause("b", "operator", "paused through the API")  # neither is the tenant's to lift: kept
    assert [decode_health(r.value).paused_by for r in writer.on(TOPIC)] == ["tenant", "platform", "automatic",
                                                                            "contract"]  # fmt: skip


def test_a_tenant_may_lift_its_own_pauses_and_automatic_ones_only() -> None:
    h, _, _ = health()
    for endpoint_id, kind in (("own", "tenant"), ("auto", "failures"), ("gone", "gone"), ("op", "operator"),
                              ("cfg", "config")):  # fmt: skip
        h.pause(endpoint_id, kind, "a test")
    assert {i for i in h.states if tenant_may_lift(h.states[i])} == {"own", "auto"}


def test_a_state_kept_before_paused_by_existed_says_who_paused_by_its_reason() -> None:
    h, _, _ = health()
    for endpoint_id, reason in (("a", "failures: 10 consecutive failed deliveries"), ("b", "gone: HTTP 410"),
                                ("c", "operator: paused through the API"), ("d", "config: paused = true")):  # fmt: skip
        h.apply(decode_health(f'{{"endpoint_id": "{endpoint_id}", "paused": true, "reason": "{reason}"}}'.encode()))
    assert [paused_by(h.states[i]) for i in "abcd"] == ["automatic", "contract", "platform", "platform"]
    assert not tenant_may_lift(h.states["c"])  # an API pause of old may have been the platform's: kept


def read_back(h: Health, writer: Writer, index: int) -> None:
    """Play the health topic's follower reading back the ``index``-th record this Health wrote there."""
    value = writer.on(TOPIC)[index].value
    h.apply(decode_health(value), value)


def test_an_own_change_read_back_after_a_later_own_change_does_not_replace_it() -> None:
    """The tenant's pause then the platform's: the tenant's, read back after the platform's was made here, must not
    make the pause the tenant's again (which the tenant could lift) until the platform's is read back too."""
    h, writer, _ = health()
    assert h.pause("a", "tenant", "by its tenant")
    assert h.pause("a", "operator", "by the platform")
    read_back(h, writer, 0)
    assert paused_by(h.states["a"]) == "platform" and not tenant_may_lift(h.states["a"])
    read_back(h, writer, 1)
    assert paused_by(h.states["a"]) == "platform"


def test_another_instances_change_applies_once_this_ones_are_read_back_and_not_before() -> None:
    """Per key, the topic's order is the follower's: another instance's record read before this one's own change came
    back is older than that change; one read after it is newer, and wins."""
    h, writer, _ = health()
    assert h.pause("a", "operator", "here")
    elsewhere = HealthState(endpoint_id="a", paused=False, since="2026-01-01T00:00:00.000Z")
    h.apply(elsewhere, b"another instance's record")
    assert h.is_paused("a")
    read_back(h, writer, 0)
    assert h.is_paused("a")
    h.apply(elsewhere, b"another instance's record")
    assert not h.is_paused("a")
