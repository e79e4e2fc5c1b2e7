"""The topics the router writes: the settings each role needs, created where missing, checked where they exist.

Every topic the router writes has a role, and the role decides what Kafka must keep:

- ``health``: compacted (``cleanup.policy=compact``), so the last state of every endpoint is kept however old it
  is; a pause written a year ago still holds after a restart;
- ``dead-letter``: kept ``retry.dead_letter_retention_s`` (30 days unless configured; -1: forever);
- ``retry tier``: kept its wait plus ``TIER_RETENTION_MARGIN_S`` (a week), so a retry outlives a router that is
  stopped or behind for that long;
- ``endpoints`` (with the endpoints API): compacted, one partition, like Kafka Connect's config topic;
- ``results``: the broker's defaults (it is the platform's record of outcomes, usually its own topic);
- ``delivery index`` (with the endpoints API's ``api.delivery_index``): one record per write of results records,
  holding an entry per results record of a delivery, deleted by time like the results topic (never compacted: a
  delivery's attempts are each an entry of their own) and created with the results topic's ``retention.ms`` where it
  sets one, so that every delivery still in the results topic has its entries.

Created topics get ``replication_factor=-1`` (the broker's ``default.replication.factor``) unless
``retry.replication_factor`` is set, and ``min.insync.replicas`` when ``retry.min_insync_replicas`` is. Topics that
already exist are described (DescribeConfigs) and checked against their role: a health topic that is not
compacted, a tier or dead-letter topic that is (keyed by endpoint id, compaction would keep one record per
endpoint), or a tier whose retention is not longer than its wait, is a ``TopicError`` naming the topic and the
setting; where ``retry.create_topics = false`` says an operator owns the topics, it is a warning instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from daemon.core.config import KafkaConfig, RetryConfig
from daemon.core.errors import TopicError
from daemon.kafka.clients import admin_client, await_topics, not_authorized

log = logging.getLogger(__name__)

RESULTS = "results"
TIER = "retry tier"
DEAD_LETTER = "dead letters"
HEALTH = "health"
ENDPOINTS = "endpoints"
INDEX = "delivery index"
OPERATIONAL = "operational events"

# How long past its wait a retry tier keeps a record: a router stopped (or behind) for up to this long loses none.
TIER_RETENTION_MARGIN_S = 7 * 86_400

_TOPIC_ALREADY_EXISTS = 36  # CreateTopics error code: another instance created it first
TOPICS_KNOWN_WAIT_S = 10.0  # how long a start waits for every broker to have the topics it created


class TopicSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One topic the router writes: its role, and the configs a topic it creates gets."""

    name: str
    role: str
    configs: dict[str, str]
    wait_s: float | None = None  # a retry tier's wait
    partitions: int | None = None  # None: retry.partitions


def topic_specs(
    kafka: KafkaConfig, retry: RetryConfig, api: bool = False, index: bool = False, operational: bool = False
) -> list[TopicSpec]:
    """Every topic the router writes, with the configs its role needs (the endpoints topic when ``api`` is on, the
    delivery index when ``index`` is, the operational events' when ``operational`` is)."""
    common = {"min.insync.replicas": str(retry.min_insync_replicas)} if retry.min_insync_replicas else {}
    dead_ms = retry.dead_letter_retention_s * 1000 if retry.dead_letter_retention_s >= 0 else -1
    specs = [
        TopicSpec(name=kafka.results_topic, role=RESULTS, configs=common),
        TopicSpec(name=retry.dead_letter_topic, role=DEAD_LETTER, configs={**common, "retention.ms": str(dead_ms)}),
        TopicSpec(name=retry.health_topic, role=HEALTH, configs={**common, "cleanup.policy": "compact"}),
    ]
    if api:  # one partition: one order in which every instance applies the changes (Kafka Connect's config topic)
        compacted = {**common, "cleanup.policy": "compact"}
        specs.append(TopicSpec(name=retry.endpoints_topic, role=ENDPOINTS, configs=compacted, partitions=1))
    if index:
        specs.append(TopicSpec(name=retry.index_topic, role=INDEX, configs={**common, "cleanup.policy": "delete"}))
    if operational:
        specs.append(TopicSpec(name=retry.operational_topic, role=OPERATIONAL, configs=common))
    for tier in retry.tiers_s:
        retention_ms = int((tier + TIER_RETENTION_MARGIN_S) * 1000)
        specs.append(
            TopicSpec(name=retry.tier_topic(tier), role=TIER, configs={**common, "retention.ms": str(retention_ms)},
                      wait_s=tier)
        )  # fmt: skip
    return specs


def check_topic(spec: TopicSpec, described: Mapping[str, str], retry: RetryConfig) -> tuple[list[str], list[str]]:
    """(problems, notes) of an existing topic whose configs are ``described``.

    A config the broker did not describe counts as Kafka's default (``cleanup.policy`` ``delete``); a retention it
    did not describe is not judged.
    """
    problems: list[str] = []
    notes: list[str] = []
    policy = {p.strip() for p in described.get("cleanup.policy", "delete").split(",")}
    retention = _int(described.get("retention.ms"))
    where = f"topic {spec.name} ({spec.role})"
    if spec.role in (HEALTH, ENDPOINTS):
        if "compact" not in policy:
            problems.append(
                f"{where}: cleanup.policy is {','.join(sorted(policy))}, must be compact: state written longer ago "
                "than its retention (pauses, endpoints) would be forgotten"
            )
        elif "delete" in policy and retention is not None and retention >= 0:
            problems.append(
                f"{where}: cleanup.policy is compact,delete with retention.ms={retention}: pauses older than that "
                "would be forgotten (use cleanup.policy=compact, or retention.ms=-1)"
            )
    elif spec.role == INDEX and "compact" in policy:
        problems.append(
            f"{where}: cleanup.policy includes compact: its records have no key (each holds the entries of many "
            "deliveries), which a compacted topic refuses (use cleanup.policy=delete)"
        )
    elif spec.role in (TIER, DEAD_LETTER) and "compact" in policy:
        problems.append(
            f"{where}: cleanup.policy includes compact: its records are keyed by endpoint id, compaction would keep "
            "only the last one of each endpoint (use cleanup.policy=delete)"
        )
    if spec.role == TIER and spec.wait_s is not None and retention is not None and 0 <= retention <= spec.wait_s * 1000:
        problems.append(
            f"{where}: retention.ms={retention} is not longer than the tier's wait ({spec.wait_s:g} s): retries "
            f"would be deleted before they are due (at least {int((spec.wait_s + TIER_RETENTION_MARGIN_S) * 1000)} "
            "is recommended)"
        )
    wanted = retry.dead_letter_retention_s * 1000
    if spec.role == DEAD_LETTER and retention is not None and retention >= 0 and (wanted < 0 or retention < wanted):
        notes.append(
            f"{where}: retention.ms={retention} is shorter than retry.dead_letter_retention_s asks "
            f"({'forever' if wanted < 0 else wanted}): dead letters expire sooner"
        )
    return problems, notes


def index_retention_notes(index: TopicSpec, described: Mapping[str, str], results: Mapping[str, str]) -> list[str]:
    """What an existing delivery index keeps less long than the results topic (whose deliveries it then cannot
    find: they are looked for by the bounded scan)."""
    kept, wanted = _int(described.get("retention.ms")), _int(results.get("retention.ms"))
    if kept is None or kept < 0 or wanted is None or (0 <= wanted <= kept):
        return []
    return [
        f"topic {index.name} ({index.role}): retention.ms={kept} is shorter than the results topic's "
        f"({'forever' if wanted < 0 else wanted}): older deliveries are found only by the bounded scan"
    ]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def ensure_topics(
    client_options: Mapping[str, Any],
    kafka: KafkaConfig,
    retry: RetryConfig,
    api: bool = False,
    index: bool = False,
    operational: bool = False,
) -> dict[str, int]:
    """Check the topics the router writes that already exist, then create the missing ones (unless
    ``retry.create_topics`` is false); returns each one's ``min.insync.replicas`` as the cluster describes it (a
    topic it does not say of is left out: taken as 1). Raises ``TopicError`` listing every problem, before creating
    anything: a topic missing where the router may not create it, settings that would lose data (only logged as
    warnings where the operator owns the topics), a topic Kafka refused to create. Kafka errors worth retrying (a broker
    unreachable, a controller moving) propagate as they are."""
    specs = topic_specs(kafka, retry, api, index, operational)
    admin = admin_client(client_options)
    try:
        await admin.start()
        groups = [kafka.group_id, f"{kafka.group_id}.retry"]
        names = [*kafka.topics, *(s.name for s in specs)]
        hidden, unreadable, hidden_groups = await not_authorized(admin, names, groups, read=list(kafka.topics))
        if hidden or unreadable or hidden_groups:
            raise TopicError(_not_authorized(kafka, specs, hidden, hidden_groups, unreadable))
        existing = set(await admin.list_topics())
        present = [spec for spec in specs if spec.name in existing]
        problems: list[str] = []  # errors where the router owns the topics, warnings where an operator does
        configs: dict[str, dict[str, str]] = {}
        described_all = await _describe(admin, [spec.name for spec in present])
        for spec, described in zip(present, described_all, strict=True):
            if described is not None:
                configs[spec.role] = described
                found, notes = check_topic(spec, described, retry)
                problems += found
                for note in notes:
                    log.warning("%s", note)
        specs = [_as_long_as_results(spec, configs.get(RESULTS)) for spec in specs]
        for spec in specs:
            if spec.role == INDEX and INDEX in configs and RESULTS in configs:
                for note in index_retention_notes(spec, configs[INDEX], configs[RESULTS]):
                    log.warning("%s", note)
        missing = [spec for spec in specs if spec.name not in existing]
        if not retry.create_topics:
            for problem in problems:
                log.warning("%s (retry.create_topics = false: left as it is)", problem)
            problems = [f"topic {spec.name} ({spec.role}): does not exist, and retry.create_topics = false: "
                        "create it (see docs/kafka.md, 'Topics')" for spec in missing]  # fmt: skip
        elif missing and not problems:
            problems = await _create(admin, missing, retry)
        if problems:
            raise TopicError(problems)
        names = [spec.name for spec in specs]
        described_now = await _describe(admin, names) if missing else described_all  # nothing created: the same
    finally:
        await admin.close()
    return {name: int(found["min.insync.replicas"]) for name, found in zip(names, described_now, strict=True)
            if found is not None and found.get("min.insync.replicas", "").isdigit()}  # fmt: skip


def _as_long_as_results(spec: TopicSpec, results: Mapping[str, str] | None) -> TopicSpec:
    """The delivery index keeps its records as long as the results topic keeps its own, where that one sets it."""
    retention = results.get("retention.ms") if results is not None else None
    if spec.role != INDEX or retention is None:
        return spec
    return msgspec.structs.replace(spec, configs={**spec.configs, "retention.ms": retention})


async def ready_topics(
    client_options: Mapping[str, Any],
    producer: Any,
    kafka: KafkaConfig,
    retry: RetryConfig,
    api: bool,
    index: bool,
    operational: bool = False,
) -> tuple[list[str], dict[str, int]]:
    """``ensure_topics``, then ``producer`` learns every written topic's partitions before its first send: a send that
    has to wait for a new topic's metadata was seen to leave a record of another topic, queued just before, unsent
    until the next send. Returns the written topics and their ``min.insync.replicas`` (``ensure_topics``)."""
    min_insync = await ensure_topics(client_options, kafka, retry, api, index, operational)
    names = [spec.name for spec in topic_specs(kafka, retry, api, index, operational)]
    for name in names:
        await producer.partitions_for(name)
    return names, min_insync


def _not_authorized(
    kafka: KafkaConfig, specs: list[TopicSpec], topics: list[str], groups: list[str], unreadable: list[str]
) -> list[str]:
    """What to grant, for each topic and group the cluster's authorizer hides from this principal, and each events
    topic it may not read."""
    roles = {spec.name: spec.role for spec in specs}
    lines = []
    for name in topics:
        role, grant = (roles[name], "Read, Write, Describe, Create and DescribeConfigs") if name in roles else (
            "kafka.topics", "Read and Describe")  # fmt: skip
        lines.append(f"topic {name} ({role}): this principal may not use it (TOPIC_AUTHORIZATION_FAILED): grant it "
                     f"{grant} (see docs/kafka.md, 'Who may write the router's topics')")  # fmt: skip
    lines += [f"topic {name} (kafka.topics): this principal may describe it but not read it "
              "(TOPIC_AUTHORIZATION_FAILED): grant it Read" for name in unreadable]  # fmt: skip
    for group in groups:
        where = "kafka.group_id" if group == kafka.group_id else "the retry tiers' group"
        lines.append(f"consumer group {group} ({where}): this principal may not use it (GROUP_AUTHORIZATION_FAILED): "
                     "grant it Read on the group")  # fmt: skip
    return lines


async def _create(admin: AIOKafkaAdminClient, specs: list[TopicSpec], retry: RetryConfig) -> list[str]:
    """Create ``specs``; returns the problems of the ones Kafka refused for good, raises the retriable errors."""
    factor = retry.replication_factor or -1
    new = [
        # aiokafka's NewTopic refuses -1 (the broker's default, KIP-464) unless replica_assignments is given: an
        # empty one sends exactly what Kafka expects, no assignment.
        NewTopic(spec.name, spec.partitions or retry.partitions, factor,
                 replica_assignments={} if factor == -1 else None, topic_configs=spec.configs)
        for spec in specs
    ]  # fmt: skip
    response = await admin.create_topics(new)
    problems: list[str] = []
    created: list[str] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        if code in (0, _TOPIC_ALREADY_EXISTS):
            created += [name] if code == 0 else []
            continue
        error = for_code(code)
        if error.retriable:
            raise error(f"creating topic {name}: {message or error.__name__}")
        problems.append(f"topic {name}: cannot be created: {error.__name__}" + (f" ({message})" if message else ""))
    if created:
        log.info(
            "created topics: %s (replication factor %s)",
            ", ".join(created),
            retry.replication_factor or "of the broker's default",
        )
        # Kafka's brokers learn of a topic just after its controller answers: the router's clients ask them next.
        if lacking := await await_topics(admin, created, TOPICS_KNOWN_WAIT_S):
            log.info("not every broker has the topics just created %.0f s later: %s", TOPICS_KNOWN_WAIT_S,
                     ", ".join(lacking))  # fmt: skip
    return problems


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> list[dict[str, str] | None]:
    """The configs of each topic (None where the broker would not say, which is logged)."""
    if not names:
        return []
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    found: dict[str, dict[str, str] | None] = {}
    for response in responses:
        for code, message, _kind, name, entries in response.resources:
            if code:
                reason = f"{for_code(code).__name__} {message or ''}".strip()
                log.warning("cannot check the settings of topic %s: %s", name, reason)
                found[name] = None
            else:
                found[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return [found.get(name) for name in names]
