"""Config: TOML decoded into frozen msgspec Structs, every fault reported with the path of its field.

``load_config`` never returns a half-valid config: it either returns a ``Config`` or raises
``ConfigError`` listing every fault it found (``endpoints[2].timeout_s: must be <= 120``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tomllib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from msgspec import Meta
from yarl import URL

from daemon.errors import ConfigError
from daemon.profiles import PROFILES, ProfileName, pattern_matches
from daemon.retry import Policy

_FROZEN: dict[str, Any] = {"frozen": True, "kw_only": True, "forbid_unknown_fields": True}

Name = Annotated[str, Meta(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+\Z")]
EndpointId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*\Z")]
EventPattern = Annotated[str, Meta(min_length=1, max_length=255)]

# Headers the router owns: an endpoint may not override them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "webhook-id"}
    | {"webhook-timestamp", "webhook-signature", "x-agora-signature-256", "x-agora-event", "x-agora-delivery"}
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class KafkaConfig(msgspec.Struct, **_FROZEN):
    bootstrap_servers: Annotated[str, Meta(min_length=1)]
    group_id: Name
    topics: Annotated[list[Name], Meta(min_length=1)]
    results_topic: Name
    client_id: Name = "webhook-router"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # topic -> field holding the event type (dotted for nested: "meta.kind"); default `event`, then `type`.
    event_type_fields: dict[str, Annotated[str, Meta(min_length=1)]] = {}
    max_in_flight_events: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    max_poll_records: Annotated[int, Meta(ge=1, le=100_000)] = 1_000
    fetch_max_wait_ms: Annotated[int, Meta(ge=0, le=10_000)] = 20
    commit_interval_ms: Annotated[int, Meta(ge=10, le=60_000)] = 500
    session_timeout_ms: Annotated[int, Meta(ge=1_000, le=300_000)] = 10_000
    heartbeat_interval_ms: Annotated[int, Meta(ge=100, le=60_000)] = 3_000
    max_poll_interval_ms: Annotated[int, Meta(ge=1_000, le=3_600_000)] = 300_000
    results_acks: Literal["all", "leader"] = "all"
    enable_idempotence: bool = False
    linger_ms: Annotated[int, Meta(ge=0, le=1_000)] = 5
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    ssl_cafile: str | None = None


class AdminConfig(msgspec.Struct, **_FROZEN):
    listen: Annotated[str, Meta(pattern=r"^[^\s:]+:\d{1,5}\Z")] = "127.0.0.1:9464"
    # Operator actions (ping, redeliver, replay, pause, resume, GET /endpoints) need this bearer token;
    # without one configured they are refused.
    token_env: str | None = None

    def token(self, environ: Any) -> str | None:
        return str(environ[self.token_env]) if self.token_env and self.token_env in environ else None


class DeliveryConfig(msgspec.Struct, **_FROZEN):
    user_agent: Annotated[str, Meta(min_length=1, max_length=200)] = "webhook-router/0.1"
    # Kubernetes waits 30 s between SIGTERM and SIGKILL: the drain must end well before.
    drain_timeout_s: Annotated[float, Meta(gt=0, le=25)] = 20.0


class RetryConfig(msgspec.Struct, **_FROZEN):
    """Delay tiers and topics for durable retries, dead letters and endpoint health."""

    # Retries wait in one Kafka topic per tier, `{topic_prefix}.retry.{tier}s`; ascending, in seconds.
    tiers_s: Annotated[list[Annotated[float, Meta(gt=0, le=604_800)]], Meta(min_length=1, max_length=20)] = (
        msgspec.field(default_factory=lambda: [1, 5, 30, 60, 300, 1800, 3600, 7200, 28800])
    )
    topic_prefix: Name = "webhook-router"
    partitions: Annotated[int, Meta(ge=1, le=1000)] = 3  # for the topics the router creates
    create_topics: bool = True
    retry_after_max_s: Annotated[float, Meta(ge=0, le=86_400)] = 3600.0

    def tier_topic(self, tier_s: float) -> str:
        return f"{self.topic_prefix}.retry.{tier_s:g}s"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letter"

    @property
    def health_topic(self) -> str:
        return f"{self.topic_prefix}.health"


class EndpointRetryConfig(msgspec.Struct, **_FROZEN):
    """An endpoint's retry policy; without one, its profile's."""

    policy: Literal["none", "once", "schedule", "exponential"]
    delays_s: Annotated[list[Annotated[float, Meta(gt=0, le=604_800)]], Meta(min_length=1, max_length=20)] | None = None
    retries: Annotated[int, Meta(ge=1, le=10)] | None = None  # exponential
    base_s: Annotated[float, Meta(gt=0, le=86_400)] = 30.0
    max_s: Annotated[float, Meta(gt=0, le=604_800)] = 7200.0
    jitter: Annotated[float, Meta(ge=0, le=0.5)] = 0.2
    retry_statuses: list[Annotated[int, Meta(ge=400, le=499)]] = []  # 4xx to retry beside 408/425/429

    def policy_value(self, live_only: bool) -> Policy:
        if self.policy == "exponential":
            attempts = 1 + (self.retries or 3)
            return Policy("exponential", attempts=attempts, base_s=self.base_s, max_s=self.max_s, jitter=self.jitter)
        return Policy(self.policy, delays_s=tuple(self.delays_s or ()), live_only=live_only)


class EndpointConfig(msgspec.Struct, **_FROZEN):
    id: EndpointId
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    profile: ProfileName = "standard-webhooks"
    # One of: secret, secret_env, secrets (a rotation: the first is current, every one signs).
    secret: str | None = None
    secret_env: str | None = None
    secrets: Annotated[list[str], Meta(min_length=1, max_length=8)] | None = None
    timeout_s: Annotated[float, Meta(ge=1, le=120)] | None = None  # default: the profile's
    max_concurrency: Annotated[int, Meta(ge=1, le=1024)] = 8
    headers: dict[str, str] = {}
    allow_http: bool = False  # for profiles whose contract is https only
    retry: EndpointRetryConfig | None = None
    queue_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000  # waiting deliveries; past it, defer to retry tiers
    pause_after_failures: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None  # default: the profile's
    while_paused: Literal["skip", "hold"] = "skip"
    paused: bool = False

    def __repr__(self) -> str:  # never print the secret
        return f"EndpointConfig(id={self.id!r}, profile={self.profile!r}, url=<redacted>)"

    @property
    def effective_timeout_s(self) -> float:
        return self.timeout_s if self.timeout_s is not None else PROFILES[self.profile].timeout_s

    @property
    def policy(self) -> Policy:
        profile = PROFILES[self.profile]
        return self.retry.policy_value(profile.retry.live_only) if self.retry is not None else profile.retry

    @property
    def pause_threshold(self) -> int | None:
        if self.pause_after_failures is not None:
            return self.pause_after_failures
        return PROFILES[self.profile].pause_after_failures


class WhereConfig(msgspec.Struct, **_FROZEN):
    """Only events whose field (dotted path) is, or is not, one of these values."""

    field: Annotated[str, Meta(min_length=1)]
    one_of: list[str] | None = None
    none_of: list[str] | None = None


class SubscriptionConfig(msgspec.Struct, **_FROZEN):
    endpoint: EndpointId
    events: Annotated[list[EventPattern], Meta(min_length=1)]
    topics: Annotated[list[Name], Meta(min_length=1)] | None = None
    where: WhereConfig | None = None


CampaignId = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+\Z")]


class CampaignConfig(msgspec.Struct, **_FROZEN):
    """A campaign's overrides of its organisation's settings; what it leaves out it inherits."""

    id: CampaignId
    enabled: bool | None = None
    url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    events: Annotated[list[EventPattern], Meta(min_length=1)] | None = None
    headers: dict[str, str] | None = None
    retry_attempts: Annotated[int, Meta(ge=1, le=10)] | None = None
    timeout_s: Annotated[float, Meta(ge=1, le=120)] | None = None


class OrganizationConfig(msgspec.Struct, **_FROZEN):
    """Organisation-level webhook settings (campaign profile), inherited by each of its campaigns."""

    id: EndpointId
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    events: Annotated[list[EventPattern], Meta(min_length=1)]
    enabled: bool = True
    headers: dict[str, str] = {}
    retry_attempts: Annotated[int, Meta(ge=1, le=10)] = 3
    retry_base_s: Annotated[float, Meta(gt=0, le=86_400)] = 30.0  # exponential back-off: base * 2^n
    retry_max_s: Annotated[float, Meta(gt=0, le=604_800)] = 7200.0
    timeout_s: Annotated[float, Meta(ge=1, le=120)] = 10.0
    max_concurrency: Annotated[int, Meta(ge=1, le=1024)] = 8
    topics: Annotated[list[Name], Meta(min_length=1)] | None = None
    campaign_field: Annotated[str, Meta(min_length=1)] = "campaignId"
    allow_http: bool = True
    campaigns: list[CampaignConfig] = []

    def __repr__(self) -> str:
        return f"OrganizationConfig(id={self.id!r}, campaigns={len(self.campaigns)})"


class Config(msgspec.Struct, **_FROZEN):
    kafka: KafkaConfig
    admin: AdminConfig = AdminConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    retry: RetryConfig = RetryConfig()
    endpoints: list[EndpointConfig] = []
    subscriptions: list[SubscriptionConfig] = []
    organizations: list[OrganizationConfig] = []

    def __repr__(self) -> str:
        return f"Config(topics={self.kafka.topics!r}, endpoints={len(self.endpoints)})"


class Resolved(msgspec.Struct, frozen=True):
    """Endpoints and subscriptions with organisations and campaigns expanded into them."""

    endpoints: list[EndpointConfig]
    subscriptions: list[SubscriptionConfig]


def resolve(config: Config) -> Resolved:
    """Expand organisations into endpoints and subscriptions, once per config.

    Per campaign: a disabled campaign gets nothing; a campaign's own endpoint (its URL, headers and
    limits, each inherited where it sets none) gets the events it configures (or inherits); the
    organisation's endpoint gets the rest of the organisation's events for that campaign. An event
    both configure goes to the campaign's URL only.
    """
    endpoints = list(config.endpoints)
    subscriptions = list(config.subscriptions)
    for org in config.organizations:
        endpoints.append(_org_endpoint(org))
        # Each event type the organisation asks for -> the campaigns that take it away from the organisation's
        # endpoint (patterns are expanded over the campaign catalogue, so a wildcard is claimed type by type).
        org_types = _expand(org.events)
        claimed: dict[str, list[str]] = {t: [] for t in org_types}
        for camp in org.campaigns:
            enabled = org.enabled if camp.enabled is None else camp.enabled
            own_events = camp.events if camp.events is not None else org.events
            own_types = _expand(own_events)
            for event_type in org_types:
                if not enabled or event_type in own_types:
                    claimed[event_type].append(camp.id)
            if not enabled:
                continue
            camp_id = f"{org.id}:{camp.id}"
            endpoints.append(
                EndpointConfig(
                    id=camp_id,
                    url=camp.url or org.url,
                    profile="campaign",
                    timeout_s=camp.timeout_s or org.timeout_s,
                    max_concurrency=org.max_concurrency,
                    headers=camp.headers if camp.headers is not None else org.headers,
                    allow_http=org.allow_http,
                    retry=_campaign_retry(camp.retry_attempts or org.retry_attempts, org),
                )
            )
            subscriptions.append(
                SubscriptionConfig(
                    endpoint=camp_id,
                    events=list(own_events),
                    topics=org.topics,
                    where=WhereConfig(field=org.campaign_field, one_of=[camp.id]),
                )
            )
        if not org.enabled:
            continue
        for event_type in sorted(claimed):
            campaigns = claimed[event_type]
            subscriptions.append(
                SubscriptionConfig(
                    endpoint=org.id,
                    events=[event_type],
                    topics=org.topics,
                    where=WhereConfig(field=org.campaign_field, none_of=campaigns) if campaigns else None,
                )
            )
    return Resolved(endpoints, subscriptions)


def _org_endpoint(org: OrganizationConfig) -> EndpointConfig:
    return EndpointConfig(
        id=org.id,
        url=org.url,
        profile="campaign",
        timeout_s=org.timeout_s,
        max_concurrency=org.max_concurrency,
        headers=org.headers,
        allow_http=org.allow_http,
        retry=_campaign_retry(org.retry_attempts, org),
    )


def _campaign_retry(retries: int, org: OrganizationConfig) -> EndpointRetryConfig:
    return EndpointRetryConfig(policy="exponential", retries=retries, base_s=org.retry_base_s, max_s=org.retry_max_s)


def _expand(patterns: list[str]) -> set[str]:
    """The campaign catalogue's event types that any of ``patterns`` matches."""
    catalogue = PROFILES["campaign"].catalogue or frozenset()
    return {t for t in catalogue if any(pattern_matches(p, t) for p in patterns)}


def dump_toml(doc: dict[str, Any]) -> str:
    """A config document as TOML: top-level tables and arrays of tables, inline tables and arrays below them."""
    lines: list[str] = []
    for name, section in doc.items():
        items = section if isinstance(section, list) else [section]
        for item in items:
            lines.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items()]
            lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> Config:
    """Read, decode and validate the TOML file at ``path``; raise ``ConfigError`` naming every fault."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(raw, os.environ if environ is None else environ)


def parse_config(raw: dict[str, Any], environ: Any) -> Config:
    """Validate a decoded TOML document. Collects every fault before raising."""
    errors: list[str] = []
    _check_struct(Config, raw, "", errors)
    if errors:
        raise ConfigError(errors)
    config = msgspec.convert(raw, Config)
    _check_semantics(config, environ, errors)
    if errors:
        raise ConfigError(errors)
    return config


def resolve_secrets(endpoint: EndpointConfig, environ: Any) -> list[str]:
    """The endpoint's signing secrets, current first: from the file or the environment variable it names."""
    if endpoint.secrets is not None:
        return list(endpoint.secrets)
    if endpoint.secret is not None:
        return [endpoint.secret]
    if endpoint.secret_env is not None:
        return [str(environ[endpoint.secret_env])]
    return []


def decode_whsec(secret: str) -> bytes:
    """Key bytes of a Standard Webhooks secret (``whsec_`` + base64). Raises ValueError."""
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64, optionally after 'whsec_'") from None
    if not key:
        raise ValueError("must not be empty")
    return key


# --- structural checks: every field of every struct, so that all faults are reported at once ---


def _check_struct(cls: type[msgspec.Struct], data: Any, path: str, errors: list[str]) -> None:
    if not isinstance(data, dict):
        errors.append(f"{path or '<root>'}: must be a table")
        return
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    for key in data:
        if key not in fields:
            errors.append(f"{_join(path, key)}: unknown field")
    for name, field in fields.items():
        sub = _join(path, name)
        if name not in data:
            if field.required:
                errors.append(f"{sub}: required field is missing")
            continue
        _check_value(field.type, data[name], sub, errors)


def _check_value(tp: Any, value: Any, path: str, errors: list[str]) -> None:
    options = [t for t in get_args(tp) if t is not type(None)] if get_origin(tp) in (Union, UnionType) else []
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], msgspec.Struct):
        tp = options[0]  # an optional table: check what is there field by field
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        _check_struct(tp, value, path, errors)
        return
    bare, metas = (get_args(tp)[0], get_args(tp)[1:]) if get_origin(tp) is Annotated else (tp, ())
    if get_origin(bare) is list:
        (item_tp,) = get_args(bare)
        if not isinstance(value, list):
            tables = isinstance(item_tp, type) and issubclass(item_tp, msgspec.Struct)
            errors.append(f"{path}: must be an array{' of tables' if tables else ''}")
            return
        if _report(Annotated[list[Any], *metas] if metas else list[Any], value, path, errors):
            for i, item in enumerate(value):
                _check_value(item_tp, item, f"{path}[{i}]", errors)
        return
    if get_origin(bare) is dict and isinstance(value, dict):
        _, item_tp = get_args(bare)
        for key, item in value.items():
            _check_value(item_tp, item, f"{path}.{key}", errors)
        return
    _report(tp, value, path, errors)


def _report(tp: Any, value: Any, path: str, errors: list[str]) -> bool:
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        errors.append(f"{path}{_locate(str(exc))}: {_humanize(str(exc))}")
        return False
    return True


_AT = re.compile(r" - at `\$(.*)`$")
_BOUND = re.compile(r"^Expected `\w+` (<=|>=|<|>) (\S+)$")
_LENGTH = re.compile(r"^Expected `(?:str|array)` of length (<=|>=) (\d+)$")


def _locate(message: str) -> str:
    match = _AT.search(message)
    return match.group(1).replace("[...]", "") if match else ""


def _humanize(message: str) -> str:
    message = _AT.sub("", message).replace(" | null`", "`")  # TOML has no null: never suggest it
    if m := _BOUND.match(message):
        bound = m.group(2).removesuffix(".0")
        return f"must be {m.group(1)} {bound}"
    if m := _LENGTH.match(message):
        return f"length must be {m.group(1)} {m.group(2)}"
    if message.startswith("Expected `str` matching regex"):
        return "has characters that are not allowed"
    return message[0].lower() + message[1:]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- semantic checks: references, uniqueness, formats ---


def _check_semantics(config: Config, environ: Any, errors: list[str]) -> None:
    kafka = config.kafka
    topics = set(kafka.topics)
    if kafka.results_topic in topics:
        errors.append("kafka.results_topic: must not be one of kafka.topics")
    for topic in kafka.event_type_fields:
        if topic not in topics:
            errors.append(f"kafka.event_type_fields.{topic}: not one of kafka.topics")
    if kafka.sasl_mechanism and kafka.sasl_password_env and kafka.sasl_password_env not in environ:
        errors.append(f"kafka.sasl_password_env: environment variable {kafka.sasl_password_env} is not set")
    tiers = config.retry.tiers_s
    if sorted(set(tiers)) != tiers:
        errors.append("retry.tiers_s: must be ascending, without repeats")
    if config.admin.token_env and config.admin.token_env not in environ:
        errors.append(f"admin.token_env: environment variable {config.admin.token_env} is not set")
    port = int(config.admin.listen.rsplit(":", 1)[1])
    if port > 65535:
        errors.append("admin.listen: port must be <= 65535")

    seen: dict[str, EndpointConfig] = {}
    for i, endpoint in enumerate(config.endpoints):
        _check_endpoint(endpoint, f"endpoints[{i}]", seen, environ, errors)
    for i, org in enumerate(config.organizations):
        _check_organization(org, f"organizations[{i}]", seen, topics, errors)

    subscribed: set[str] = set()
    for i, sub in enumerate(config.subscriptions):
        path = f"subscriptions[{i}]"
        target = seen.get(sub.endpoint)
        if target is None:
            errors.append(f"{path}.endpoint: no endpoint with id {sub.endpoint!r}")
        else:
            subscribed.add(sub.endpoint)
        catalogue = PROFILES[target.profile].catalogue if target is not None else None
        _check_events(sub.events, f"{path}.events", catalogue, target.profile if target else "", errors)
        for j, topic in enumerate(sub.topics or ()):
            if topic not in topics:
                errors.append(f"{path}.topics[{j}]: {topic!r} is not one of kafka.topics")
        if sub.where is not None and (sub.where.one_of is None) == (sub.where.none_of is None):
            errors.append(f"{path}.where: exactly one of one_of, none_of is required")

    for i, endpoint in enumerate(config.endpoints):
        if PROFILES[endpoint.profile].needs_events and endpoint.id not in subscribed:
            errors.append(f"endpoints[{i}]: the {endpoint.profile} contract needs at least one subscribed event")


def _check_events(
    patterns: list[str], path: str, catalogue: frozenset[str] | None, profile: str, errors: list[str]
) -> None:
    for j, pattern in enumerate(patterns):
        star = pattern.find("*")
        if star != -1 and star != len(pattern) - 1:
            errors.append(f"{path}[{j}]: '*' may only end a pattern ('lead.*' or '*')")
        elif catalogue is not None and not any(pattern_matches(pattern, known) for known in catalogue):
            errors.append(f"{path}[{j}]: {pattern!r} is not one of the {profile} event types")


def _check_organization(
    org: OrganizationConfig, path: str, seen: dict[str, EndpointConfig], topics: set[str], errors: list[str]
) -> None:
    catalogue = PROFILES["campaign"].catalogue
    if org.id in seen:
        errors.append(f"{path}.id: duplicate endpoint id {org.id!r}")
    seen[org.id] = _org_endpoint(org)
    _check_url(org.url, org.allow_http, False, f"{path}.url", errors)
    _check_headers(org.headers, f"{path}.headers", errors)
    _check_events(org.events, f"{path}.events", catalogue, "campaign", errors)
    for j, topic in enumerate(org.topics or ()):
        if topic not in topics:
            errors.append(f"{path}.topics[{j}]: {topic!r} is not one of kafka.topics")
    campaign_ids: set[str] = set()
    for j, camp in enumerate(org.campaigns):
        where = f"{path}.campaigns[{j}]"
        endpoint_id = f"{org.id}:{camp.id}"
        if camp.id in campaign_ids:
            errors.append(f"{where}.id: duplicate campaign id {camp.id!r}")
        elif endpoint_id in seen:
            errors.append(f"{where}.id: its endpoint id {endpoint_id!r} is taken by another endpoint")
        campaign_ids.add(camp.id)
        seen[endpoint_id] = _org_endpoint(org)
        if camp.url is not None:
            _check_url(camp.url, org.allow_http, False, f"{where}.url", errors)
        if camp.headers is not None:
            _check_headers(camp.headers, f"{where}.headers", errors)
        if camp.events is not None:
            _check_events(camp.events, f"{where}.events", catalogue, "campaign", errors)


def _parses(url: str) -> bool:
    """True when the HTTP client accepts the URL (host present, port in range, brackets closed)."""
    try:
        parsed = URL(url)
        return bool(parsed.host) and parsed.port is not None
    except ValueError:
        return False


def _check_url(url: str, allow_http: bool, https_only: bool, path: str, errors: list[str]) -> None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or rest[0] in "/?#" or not _parses(url):
        errors.append(f"{path}: must be an absolute http:// or https:// URL")
    elif https_only and scheme.lower() != "https" and not allow_http:
        errors.append(f"{path}: must use https:// (or set allow_http = true on the endpoint)")


def _check_headers(headers: dict[str, str], path: str, errors: list[str]) -> None:
    for name in headers:
        if not _TOKEN.fullmatch(name):
            errors.append(f"{path}.{name}: not a valid header name")
        elif name.lower() in RESERVED_HEADERS:
            errors.append(f"{path}.{name}: set by the router, cannot be overridden")
    for name, value in headers.items():
        if _CONTROL.search(value):
            errors.append(f"{path}.{name}: value must not contain control characters")


def _check_endpoint(
    endpoint: EndpointConfig, path: str, seen: dict[str, EndpointConfig], environ: Any, errors: list[str]
) -> None:
    profile = PROFILES[endpoint.profile]
    if endpoint.id in seen:
        errors.append(f"{path}.id: duplicate endpoint id {endpoint.id!r}")
    seen[endpoint.id] = endpoint
    _check_url(endpoint.url, endpoint.allow_http, profile.https_only, f"{path}.url", errors)
    if endpoint.timeout_s is not None and endpoint.timeout_s > profile.max_timeout_s:
        errors.append(f"{path}.timeout_s: the {profile.name} contract allows at most {profile.max_timeout_s:g} s")
    _check_secrets(endpoint, profile.key_source, path, environ, errors)
    _check_headers(endpoint.headers, f"{path}.headers", errors)
    retry = endpoint.retry
    if retry is not None:
        needs_delays = retry.policy in ("once", "schedule")
        if needs_delays and retry.delays_s is None:
            errors.append(f"{path}.retry.delays_s: required for the {retry.policy} policy")
        elif retry.policy == "once" and retry.delays_s is not None and len(retry.delays_s) != 1:
            errors.append(f"{path}.retry.delays_s: the once policy takes exactly one delay")
        elif not needs_delays and retry.delays_s is not None:
            errors.append(f"{path}.retry.delays_s: only for the once and schedule policies")
        if retry.retries is not None and retry.policy != "exponential":
            errors.append(f"{path}.retry.retries: only for the exponential policy")


def _check_secrets(endpoint: EndpointConfig, kind: str, path: str, environ: Any, errors: list[str]) -> None:
    given = [name for name in ("secret", "secret_env", "secrets") if getattr(endpoint, name) is not None]
    if kind == "optional":
        if given:
            errors.append(f"{path}.{given[0]}: the {endpoint.profile} contract carries no secret")
        return
    if len(given) != 1:
        errors.append(f"{path}: exactly one of secret, secret_env, secrets is required")
        return
    if endpoint.secret_env is not None and endpoint.secret_env not in environ:
        errors.append(f"{path}.secret_env: environment variable {endpoint.secret_env} is not set")
        return
    for j, secret in enumerate(resolve_secrets(endpoint, environ)):
        where = f"{path}.{given[0]}" + (f"[{j}]" if endpoint.secrets is not None else "")
        if kind == "whsec":
            try:
                decode_whsec(secret)
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
        elif not secret:
            errors.append(f"{where}: must not be empty")
