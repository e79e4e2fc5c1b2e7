"""Delivery profiles: each platform's webhook contract as declared data, compiled once. Pure.

A profile says how a body is built from the event as it arrived on Kafka (a small field mapping,
not code per customer), which headers go with it, how it is signed, which event types exist, and the
contract's limits. The mapping language, used by ``Template``:

- ``"$type"``: the event type; ``"$secret"``: the endpoint's (current) secret;
- ``"$time.iso"`` / ``"$time.ms"``: the Kafka record's time as ``2026-06-12T20:00:00Z`` / unix ms;
- ``"$event"``: the whole event; ``"$rest"``: the event without the field its type was read from and
  without the top-level fields this template names elsewhere; ``"$rest:a,b"``: without that field and
  ``a`` and ``b`` only;
- ``"a.b"``: the event's field at that path (``null`` when absent);
- ``"x|y|z"``: the first of these that is present;
- a nested table builds a nested object; the key ``"..."`` spreads an object's fields in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from daemon.retry import Policy

Json = Any
_MISSING: Final = object()

# What a getter reads: the decoded event, its type, the record time (ms), the endpoint's secret, and the
# top-level field the type was read from (None: a nested or configured field).
Context = tuple[dict[str, Json], str, int, str, str | None]
Getter = Callable[[Context], Json]


def iso_seconds(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


class TemplateError(ValueError):
    pass


class Template:
    """A compiled body mapping. ``render`` builds the body object for one event."""

    def __init__(self, spec: Mapping[str, Json]) -> None:
        self._named = frozenset(_top_fields(spec))
        self._build = self._compile_object(spec, "")

    def render(
        self, event: dict[str, Json], event_type: str, time_ms: int, secret: str, type_field: str | None = "event"
    ) -> dict[str, Json]:
        out: dict[str, Json] = self._build((event, event_type, time_ms, secret, type_field))
        return out

    def _compile_object(self, spec: Mapping[str, Json], path: str) -> Getter:
        parts: list[tuple[str | None, Getter]] = []
        for key, value in spec.items():
            where = f"{path}.{key}" if path else key
            getter = self._compile_object(value, where) if isinstance(value, Mapping) else self._compile(value, where)
            parts.append((None if key == "..." else key, getter))

        def build(ctx: Context) -> dict[str, Json]:
            out: dict[str, Json] = {}
            for key, getter in parts:
                value = getter(ctx)
                if key is not None:
                    out[key] = None if value is _MISSING else value
                elif isinstance(value, dict):
                    out.update(value)
            return out

        return build

    def _compile(self, source: Json, where: str) -> Getter:
        if not isinstance(source, str) or not source:
            raise TemplateError(f"{where}: a source must be a non-empty string or a table")
        getters = [self._compile_one(alt.strip(), where) for alt in source.split("|")]
        if len(getters) == 1:
            return getters[0]

        def first(ctx: Context) -> Json:
            for getter in getters:
                value = getter(ctx)
                if value is not _MISSING and value is not None:
                    return value
            return _MISSING

        return first

    def _compile_one(self, source: str, where: str) -> Getter:
        if source == "$type":
            return lambda ctx: ctx[1]
        if source == "$secret":
            return lambda ctx: ctx[3]
        if source == "$time.iso":
            return lambda ctx: iso_seconds(ctx[2])
        if source == "$time.ms":
            return lambda ctx: ctx[2]
        if source == "$event":
            return lambda ctx: ctx[0]
        if source == "$rest" or source.startswith("$rest:"):
            drop = self._named if source == "$rest" else frozenset(f.strip() for f in source[6:].split(","))
            return lambda ctx: {k: v for k, v in ctx[0].items() if k not in drop and k != ctx[4]}
        if source.startswith("$"):
            raise TemplateError(f"{where}: unknown source {source!r}")
        steps = tuple(source.split("."))
        if not all(steps):
            raise TemplateError(f"{where}: bad field path {source!r}")

        def at_path(ctx: Context) -> Json:
            value: Json = ctx[0]
            for step in steps:
                if not isinstance(value, dict):
                    return _MISSING
                value = value.get(step, _MISSING)
                if value is _MISSING:
                    return _MISSING
            return value

        return at_path


def _top_fields(spec: Mapping[str, Json]) -> set[str]:
    """Top-level event fields a template names (so ``$rest`` leaves them out)."""
    named: set[str] = set()
    for key, value in spec.items():
        if key != "...":
            named.add(key)
        sources = _top_fields(value) if isinstance(value, Mapping) else set()
        if isinstance(value, str):
            for alt in value.split("|"):
                alt = alt.strip()
                if alt and not alt.startswith("$"):
                    named.add(alt.split(".", 1)[0])
        named |= sources
    return named


Signing = Literal["standard-webhooks", "agora", "none"]
KeySource = Literal["whsec", "text", "optional"]


@dataclass(frozen=True)
class Skip:
    """Events a profile never delivers: ``types`` whose field at ``path`` is one of ``values``."""

    status: str
    types: frozenset[str] | None
    path: str
    values: frozenset[Json] | None  # None: any present, non-null value
    reason: str


SVIX_SCHEDULE: Final = Policy("schedule", delays_s=(5, 300, 1800, 7200, 18000, 36000, 36000))


@dataclass(frozen=True)
class Profile:
    name: str
    template: Template | None  # None: the body exactly as it arrived
    signing: Signing
    key_source: KeySource
    standard_headers: bool = True  # Content-Type, User-Agent and the endpoint's custom headers
    timeout_s: float = 10.0  # default
    max_timeout_s: float = 120.0
    catalogue: frozenset[str] | None = None  # event types the platform has; None: any
    https_only: bool = False
    needs_events: bool = False  # an endpoint must subscribe to at least one event
    test_event: Mapping[str, Json] = field(default_factory=dict)
    skips: tuple[Skip, ...] = ()
    injects_secret: bool = False  # the body depends on the endpoint's secret
    retry: Policy = SVIX_SCHEDULE
    pause_after_failures: int | None = None  # consecutive failed deliveries that pause the endpoint


_AGORA_EVENTS = frozenset(
    {"lead.created", "leads.bulk_created", "lead.status_changed", "lead.converted", "call.started"}
    | {"call.completed", "form.submitted", "ping"}
)
_LEADTERRA_EVENTS = frozenset({"campaign.started", "message.sent", "message.bounced", "reply.received"})
_CONVOCORE_EVENTS = frozenset(
    {"message_received", "chat_delegated", "bug_reported", "agent_created", "agent_updated", "agent_deleted"}
    | {"webhook_test", "lead_captured", "form_submitted", "organisation_created", "organisation_updated"}
    | {"organisation_deleted", "client_created", "client_updated", "client_deleted"}
)
_CAMPAIGN_EVENTS = frozenset(
    {"lead.delivered", "lead.disqualified", "lead.failed", "lead.queued", "lead.first_submission_action"}
    | {"lead.processed"}
)
_CRM_EVENTS = frozenset(
    {"lead.create", "lead.update", "lead.delete", "lead.status.update", "lead.list.update", "lead.tags.update"}
    | {"lead.track", "lead.task.create", "lead.task.update", "lead.task.delete", "lead.note.create"}
    | {"lead.note.update", "lead.note.delete", "campaign.create", "campaign.update", "campaign.delete"}
    | {"list.create", "list.update", "list.delete", "status.create", "status.update", "status.delete"}
    | {"tag.create", "tag.update", "tag.delete"}
)

PROFILES: Final[dict[str, Profile]] = {
    p.name: p
    for p in (
        Profile(
            name="standard-webhooks",
            template=None,
            signing="standard-webhooks",
            key_source="whsec",
            test_event={"type": "webhook.test", "data": {"message": "test delivery from webhook-router"}},
        ),
        Profile(
            name="raw",
            template=None,
            signing="standard-webhooks",
            key_source="whsec",
            standard_headers=False,
            test_event={"type": "webhook.test", "data": {"message": "test delivery from webhook-router"}},
        ),
        # 000: flat body; X-Agora-* headers; 10 s; bulk batches fire once, never beside their per-lead events.
        Profile(
            name="agora",
            template=Template({"event": "$type", "...": "$rest", "timestamp": "timestamp|$time.iso"}),
            signing="agora",
            key_source="text",
            timeout_s=10.0,
            max_timeout_s=10.0,
            catalogue=_AGORA_EVENTS,
            test_event={"event": "ping"},
            retry=Policy("once", delays_s=(60,), live_only=True),
            skips=(
                Skip(
                    status="skipped_bulk_item",
                    types=frozenset({"lead.created"}),
                    path="batch_id",
                    values=None,
                    reason="part of a bulk batch: delivered once as leads.bulk_created",
                ),
            ),
        ),
        # 001: {event, timestamp, data}; https only; known event types only; 10 s.
        Profile(
            name="leadterra",
            template=Template({"event": "$type", "timestamp": "timestamp|$time.iso", "data": "data|$rest"}),
            signing="none",
            key_source="optional",
            timeout_s=10.0,
            max_timeout_s=10.0,
            catalogue=_LEADTERRA_EVENTS,
            https_only=True,
            needs_events=True,
            retry=Policy("schedule", delays_s=(30, 300, 1800, 7200, 28800)),
            test_event={"event": "ping", "data": {"message": "test delivery from webhook-router"}},
        ),
        # 002: {type, payload: {..., createdAt (ms), workspaceSecret}}; 60 s; Convocore-only events never from VF.
        Profile(
            name="convocore",
            template=Template(
                {
                    "type": "$type",
                    "payload": {
                        "...": "payload|$rest",
                        "createdAt": "payload.createdAt|createdAt|$time.ms",
                        "workspaceSecret": "$secret",
                    },
                }
            ),
            signing="none",
            key_source="text",
            timeout_s=60.0,
            max_timeout_s=60.0,
            catalogue=_CONVOCORE_EVENTS,
            test_event={"type": "webhook_test", "payload": {"message": "This is a test event"}},
            retry=Policy("none"),
            skips=(
                Skip(
                    status="skipped_unsupported",
                    types=frozenset({"lead_captured", "form_submitted"}),
                    path="payload.agentPlatform|agentPlatform",
                    values=frozenset({"vf"}),
                    reason="Convocore-only event from a VoiceFlow (vf) agent",
                ),
            ),
            injects_secret=True,
        ),
        # 003: {event, leadId, submissionId, campaignId, status, timestamp, data}; organisation/campaign settings.
        Profile(
            name="campaign",
            template=Template(
                {
                    "event": "$type",
                    "leadId": "leadId",
                    "submissionId": "submissionId",
                    "campaignId": "campaignId",
                    "status": "status",
                    "timestamp": "timestamp|$time.iso",
                    "data": "data|$rest",
                }
            ),
            signing="none",
            key_source="optional",
            timeout_s=10.0,
            catalogue=_CAMPAIGN_EVENTS,
            test_event={"event": "ping", "status": "test", "data": {}},
            retry=Policy("exponential", attempts=4, base_s=30, max_s=7200, jitter=0.2),
        ),
        # 004: {id_space, event, secret, payload}.
        Profile(
            name="crm",
            template=Template(
                {
                    "id_space": "id_space|payload.id_space",
                    "event": "$type",
                    "secret": "$secret",
                    "payload": "payload|$rest:secret",
                }
            ),
            signing="none",
            key_source="text",
            timeout_s=10.0,
            catalogue=_CRM_EVENTS,
            test_event={"event": "ping", "payload": {}},
            injects_secret=True,
            retry=Policy("none"),
            pause_after_failures=10,
        ),
    )
}

ProfileName = Literal["standard-webhooks", "raw", "agora", "leadterra", "convocore", "campaign", "crm"]


def first_present(event: dict[str, Json], path: str) -> Json:
    """The value at the first of ``a.b|c`` that is present and not null, else None."""
    for alt in path.split("|"):
        value: Json = event
        for step in alt.strip().split("."):
            value = value.get(step) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


def skip_for(profile: Profile, event: dict[str, Json] | None, event_type: str) -> Skip | None:
    """The rule under which this profile never delivers this event, if any."""
    for rule in profile.skips:
        if rule.types is not None and event_type not in rule.types:
            continue
        value = first_present(event, rule.path) if event is not None else None
        if value is None:
            continue
        if rule.values is None or (isinstance(value, (str, int, float)) and value in rule.values):
            return rule
    return None


def pattern_matches(pattern: str, event_type: str) -> bool:
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type
