"""The settings each of the router's topics is created with, and what an existing topic's described settings are
judged by (pure: no broker; the integration tests read them back from one)."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.core.config import Config
from daemon.core.validate import parse_config
from daemon.kafka.topics import (
    DEAD_LETTER,
    HEALTH,
    INDEX,
    RESULTS,
    TIER,
    TIER_RETENTION_MARGIN_S,
    TopicSpec,
    _as_long_as_results,
    check_topic,
    index_retention_notes,
    topic_specs,
)
from tests.unit.core.test_config import doc, errors_of

DAY_MS = 86_400_000
WEEK_S = 7 * 86_400


def config(**retry: Any) -> Config:
    return parse_config(doc(retry={"topic_prefix": "wr", "tiers_s": [1, 60], **retry}), {})


def test_every_written_topic_has_a_role_and_its_configs() -> None:
    specs = {spec.name: spec for spec in topic_specs(config().kafka, config().retry)}
    assert {name: spec.role for name, spec in specs.items()} == {
        "webhook-results": RESULTS,
        "wr.dead-letter": DEAD_LETTER,
        "wr.health": HEALTH,
        "wr.retry.1s": TIER,
        "wr.retry.60s": TIER,
    }
    assert specs["webhook-results"].configs == {}
    assert specs["wr.health"].configs == {"cleanup.policy": "compact"}
    assert specs["wr.dead-letter"].configs == {"retention.ms": str(30 * DAY_MS)}
    assert specs["wr.retry.1s"].configs == {"retention.ms": str((1 + WEEK_S) * 1000)}
    assert specs["wr.retry.60s"].configs == {"retention.ms": str((60 + WEEK_S) * 1000)}
    assert specs["wr.retry.60s"].wait_s == 60


def test_min_insync_replicas_and_dead_letter_retention_are_configured() -> None:
    c = config(min_insync_replicas=2, replication_factor=3, dead_letter_retention_s=-1)
    specs = {spec.name: spec for spec in topic_specs(c.kafka, c.retry)}
    assert {spec.configs["min.insync.replicas"] for spec in specs.values()} == {"2"}
    assert specs["wr.dead-letter"].configs["retention.ms"] == "-1"


def test_retry_topic_settings_are_checked_by_check_config() -> None:
    assert errors_of(doc(retry={"min_insync_replicas": 3, "replication_factor": 2})) == [
        "retry.min_insync_replicas: must be <= retry.replication_factor (or no write could succeed)"
    ]
    assert errors_of(doc(retry={"dead_letter_retention_s": 60})) == [
        "retry.dead_letter_retention_s: must be -1 (forever) or >= 3600"
    ]
    assert errors_of(doc(retry={"replication_factor": 0})) == ["retry.replication_factor: must be >= 1"]
    assert errors_of(doc(retry={"dead_letter_retention_s": -2})) == ["retry.dead_letter_retention_s: must be >= -1"]


def judged(name: str, described: dict[str, str], **retry: Any) -> tuple[list[str], list[str]]:
    c = config(**retry)
    (spec,) = [spec for spec in topic_specs(c.kafka, c.retry) if spec.name == name]
    return check_topic(spec, described, c.retry)


@pytest.mark.parametrize(
    ("described", "problem"),
    [
        ({}, "cleanup.policy is delete, must be compact"),  # not described: Kafka's default
        ({"cleanup.policy": "delete"}, "cleanup.policy is delete, must be compact"),
        ({"cleanup.policy": "compact,delete", "retention.ms": "604800000"},
         "cleanup.policy is compact,delete with retention.ms=604800000"),
        ({"cleanup.policy": "compact"}, None),
        ({"cleanup.policy": "compact, delete", "retention.ms": "-1"}, None),
        ({"cleanup.policy": "compact,delete"}, None),  # retention not described: not judged
    ],
)  # fmt: skip
def test_the_health_topic_must_keep_every_endpoints_last_state(described: dict[str, str], problem: str | None) -> None:
    problems, notes = judged("wr.health", described)
    assert notes == []
    if problem is None:
        assert problems == []
    else:
        (found,) = problems
        assert found.startswith(f"topic wr.health (health): {problem}"), found


@pytest.mark.parametrize(
    ("name", "described", "problem"),
    [
        ("wr.retry.60s", {"retention.ms": "60000"}, "retention.ms=60000 is not longer than the tier's wait (60 s)"),
        ("wr.retry.60s", {"retention.ms": "30000"}, "retention.ms=30000 is not longer than the tier's wait (60 s)"),
        ("wr.retry.60s", {"retention.ms": "60001"}, None),
        ("wr.retry.60s", {"retention.ms": "-1"}, None),
        ("wr.retry.60s", {}, None),
        ("wr.retry.1s", {"cleanup.policy": "compact"}, "cleanup.policy includes compact"),
        ("wr.dead-letter", {"cleanup.policy": "delete,compact"}, "cleanup.policy includes compact"),
        ("webhook-results", {"cleanup.policy": "compact", "retention.ms": "1"}, None),  # the platform's own topic
    ],
)
def test_tiers_and_dead_letters_keep_their_records_long_enough(
    name: str, described: dict[str, str], problem: str | None
) -> None:
    problems, _ = judged(name, described)
    if problem is None:
        assert problems == []
    else:
        (found,) = problems
        assert found.startswith(f"topic {name} (") and problem in found, found


def test_a_tier_problem_names_the_retention_it_should_have() -> None:
    (found,), _ = judged("wr.retry.60s", {"retention.ms": "1000"})
    assert f"at least {(60 + TIER_RETENTION_MARGIN_S) * 1000} is recommended" in found


def test_dead_letters_kept_shorter_than_configured_is_a_note_not_a_problem() -> None:
    assert judged("wr.dead-letter", {"retention.ms": str(DAY_MS)}) == (
        [],
        [f"topic wr.dead-letter (dead letters): retention.ms={DAY_MS} is shorter than retry.dead_letter_retention_s "
         f"asks ({30 * DAY_MS}): dead letters expire sooner"],
    )  # fmt: skip
    assert judged("wr.dead-letter", {"retention.ms": str(DAY_MS)}, dead_letter_retention_s=-1)[1] != []
    assert judged("wr.dead-letter", {"retention.ms": "-1"}, dead_letter_retention_s=-1) == ([], [])
    assert judged("wr.dead-letter", {"retention.ms": str(40 * DAY_MS)}) == ([], [])


def index_spec() -> TopicSpec:
    c = config()
    (spec,) = [spec for spec in topic_specs(c.kafka, c.retry, api=True, index=True) if spec.role == INDEX]
    return spec


def test_the_delivery_index_is_deleted_by_time_never_compacted_and_kept_as_long_as_the_results_topic() -> None:
    spec = index_spec()
    assert (spec.name, spec.configs) == ("wr.delivery-index", {"cleanup.policy": "delete"})
    assert not [s for s in topic_specs(config().kafka, config().retry, api=True) if s.role == INDEX]
    (problem,), _ = check_topic(spec, {"cleanup.policy": "compact"}, config().retry)
    assert "its records have no key (each holds the entries of many deliveries)" in problem
    assert check_topic(spec, {"cleanup.policy": "delete", "retention.ms": "1"}, config().retry) == ([], [])
    assert _as_long_as_results(spec, {"retention.ms": str(30 * DAY_MS)}).configs["retention.ms"] == str(30 * DAY_MS)
    assert _as_long_as_results(spec, None) == spec


@pytest.mark.parametrize(
    ("index", "results", "short"),
    [
        ("86400000", "604800000", True),
        ("86400000", "-1", True),  # the results kept forever
        ("604800000", "604800000", False),
        ("-1", "604800000", False),
        ("604800000", "86400000", False),
    ],
)
def test_an_index_kept_less_long_than_the_results_topic_is_said(index: str, results: str, short: bool) -> None:
    notes = index_retention_notes(index_spec(), {"retention.ms": index}, {"retention.ms": results})
    assert bool(notes) == short
    assert all("older deliveries are found only by the bounded scan" in note for note in notes)
