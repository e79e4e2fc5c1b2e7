"""The config's schema: frozen msgspec Structs, the types and bounds of every field. Pure.

Loading and validating a config file is ``daemon.core.validate``; resolving organisations and campaigns
into endpoints is the campaign profile's (``daemon.core.resolve`` collects it). A ``Config`` that exists
has passed both.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

_FROZEN: dict[str, Any] = {"frozen": True, "kw_only": True, "forbid_unknown_fields": True}

Name = Annotated[str, Meta(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+\Z")]
EndpointId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*\Z")]
EventPattern = Annotated[str, Meta(min_length=1, max_length=255)]
ProfileName = Annotated[str, Meta(min_length=1, max_length=64)]  # one of daemon.core.profiles.PROFILES


class KafkaConfig(msgspec.Struct, **_FROZEN):
    bootstrap_servers: Annotated[str, Meta(min_length=1)]
    group_id: Name
    topics: Annotated[list[Name], Meta(min_length=1)]
    results_topic: Name
    client_id: Name = "webhook-router"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # topic -> field holding the event type (dotted for nested: "meta.kind"); default `event`, then `type`.
    event_type_fields: dict[str, Annotated[str, Meta(min_length=1)]] = {}
    # topic -> field holding the event's own id (dotted for nested): webhook ids derive from it. CloudEvents' id
    # and source are used without it; without either, the record's coordinates and timestamp.
    event_id_fields: dict[str, Annotated[str, Meta(min_length=1)]] = {}
    # topic -> record header holding the event type, or the event's own id; read before any field of the value.
    event_type_headers: dict[str, Annotated[str, Meta(min_length=1)]] = {}
    event_id_headers: dict[str, Annotated[str, Meta(min_length=1)]] = {}
    # topic -> how its values are written: "json" (the default), "schema-registry" (Confluent's wire format, decoded
    # with the writer's schema from [schema_registry]), or "auto" (the wire format when the first byte is 0, else JSON).
    value_formats: dict[str, Literal["json", "schema-registry", "auto"]] = {}
    # A larger event is recorded invalid_event ("too large") and not delivered.
    max_event_bytes: Annotated[int, Meta(ge=1024, le=100 * 1024 * 1024)] = 1024 * 1024
    max_in_flight_events: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    # The bytes of the events read and not finished (their values); at the cap fetching pauses. The default
    # keeps a pod's memory under 512 MiB with the rest of the process.
    max_in_flight_bytes: Annotated[int, Meta(ge=1024 * 1024, le=64 * 1024**3)] = 128 * 1024 * 1024
    max_poll_records: Annotated[int, Meta(ge=1, le=100_000)] = 1_000
    fetch_max_wait_ms: Annotated[int, Meta(ge=0, le=10_000)] = 20
    commit_interval_ms: Annotated[int, Meta(ge=10, le=60_000)] = 500
    session_timeout_ms: Annotated[int, Meta(ge=1_000, le=300_000)] = 10_000
    heartbeat_interval_ms: Annotated[int, Meta(ge=100, le=60_000)] = 3_000
    max_poll_interval_ms: Annotated[int, Meta(ge=1_000, le=3_600_000)] = 300_000
    results_acks: Literal["all", "leader"] = "all"
    # The producer of results, retries and dead letters: idempotent (no record written twice by a retried send) with
    # "auto" when the cluster grants a producer id and results_acks is "all", else plain (logged once); true: the
    # cluster must grant it (start-up stops, naming this setting, if not); false: never.
    enable_idempotence: bool | Literal["auto"] = "auto"
    linger_ms: Annotated[int, Meta(ge=0, le=1_000)] = 5
    # How long the producer of results, retries and dead letters waits for a broker's answer to a write (asked of the
    # broker as the produce request's timeout, too): then the write is sent again, after the partition's leader is
    # asked for again. A leader that stopped answering holds its partitions' writes this long.
    produce_timeout_ms: Annotated[int, Meta(ge=1_000, le=300_000)] = 10_000
    # After this long without an answer from any broker, contact is lost: logged once, /readyz answers 503.
    contact_timeout_s: Annotated[float, Meta(ge=1, le=600)] = 15.0
    # Connection security; which combinations are complete is checked in daemon.core.validate.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: Annotated[str, Meta(min_length=1)] | None = None  # PLAIN, SCRAM-*
    sasl_password_env: Annotated[str, Meta(min_length=1)] | None = None  # PLAIN, SCRAM-*: the variable holding it
    sasl_oauth_token_file: Annotated[str, Meta(min_length=1)] | None = None  # OAUTHBEARER: re-read for each login
    ssl_cafile: Annotated[str, Meta(min_length=1)] | None = None  # default: the system's trust store
    ssl_certfile: Annotated[str, Meta(min_length=1)] | None = None  # client certificate (mTLS), PEM
    ssl_keyfile: Annotated[str, Meta(min_length=1)] | None = None  # its private key, PEM (default: in ssl_certfile)
    ssl_key_password_env: Annotated[str, Meta(min_length=1)] | None = None  # the variable holding the key's password


class SchemaRegistryConfig(msgspec.Struct, **_FROZEN):
    """The Schema Registry (Confluent's REST API, which Karapace and Apicurio serve too) that the writers' schemas of
    the ``schema-registry`` and ``auto`` topics are fetched from, by id, each once (then cached)."""

    url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None  # http(s)://host:port[/path]
    # TLS (https): the CA that signed the registry's certificate (default: the system's), a client certificate (mTLS).
    ca_file: Annotated[str, Meta(min_length=1)] | None = None
    cert_file: Annotated[str, Meta(min_length=1)] | None = None
    key_file: Annotated[str, Meta(min_length=1)] | None = None  # default: in cert_file
    key_password_env: Annotated[str, Meta(min_length=1)] | None = None
    # Basic auth (a username and the variable holding its password), or a bearer token (from a variable, or a file
    # re-read for each request: a mounted token that is rotated).
    username: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    password_env: Annotated[str, Meta(min_length=1)] | None = None
    token_env: Annotated[str, Meta(min_length=1)] | None = None
    token_file: Annotated[str, Meta(min_length=1)] | None = None
    timeout_s: Annotated[float, Meta(gt=0, le=120)] = 10.0  # one request, from connecting to the last byte
    connect_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 5.0
    # While the registry cannot answer, a partition waits for it, asking again after 0.5 s, doubling up to this.
    retry_backoff_max_s: Annotated[float, Meta(ge=1, le=600)] = 30.0
    cache_size: Annotated[int, Meta(ge=100, le=1_000_000)] = 10_000  # schema ids kept (most recently used)
    # A schema's full name -> the event type of the values written with it (before any field of the value).
    event_types: dict[
        Annotated[str, Meta(min_length=1, max_length=512)],
        Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+\Z")],
    ] = {}
    # Protobuf to JSON (proto3's JSON mapping): the .proto's field names unless json_names; fields at their default
    # value written unless include_defaults = false.
    protobuf_json_names: bool = False
    protobuf_include_defaults: bool = True

    def __repr__(self) -> str:  # the URL may carry credentials
        return f"SchemaRegistryConfig(url={'<redacted>' if self.url else None})"


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
    # Networks (CIDR) the config file's endpoints may reach although the SSRF guard refuses them (loopback, private,
    # link-local...); the endpoints of the API have their own, api.allowed_networks.
    allowed_networks: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=256)] = []
    # An egress proxy (http://host:port, credentials allowed) that every delivery goes through instead of connecting
    # itself; the proxy then decides which addresses are reachable (Stripe's smokescreen, Squid).
    proxy_url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None

    def __repr__(self) -> str:  # the proxy URL may carry credentials
        proxy = "<redacted>" if self.proxy_url else None
        return f"DeliveryConfig(allowed_networks={self.allowed_networks!r}, proxy_url={proxy})"


class LogConfig(msgspec.Struct, **_FROZEN):
    """The daemon's log: level (re-read on SIGHUP), text or JSON lines, and how many delivery lines are shown."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    # One line per attempt is logged at DEBUG; this fraction of them (0..1) also at INFO.
    delivery_sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.0


class MetricsConfig(msgspec.Struct, **_FROZEN):
    """Per-endpoint series (endpoint_attempts_total, endpoint_duration_seconds) for these endpoint ids only, so
    that one failing endpoint can be alerted on while cardinality stays bounded by the config."""

    endpoints: Annotated[list[EndpointId], Meta(max_length=200)] = []


class TracingConfig(msgspec.Struct, **_FROZEN):
    """OpenTelemetry tracing (the ``tracing`` extra): a span per delivery attempt, a child of the event's
    ``traceparent`` when it carried one. Off by default."""

    enabled: bool = False
    exporter: Literal["otlp", "console"] = "otlp"
    # OTLP over HTTP, e.g. "http://otel-collector:4318/v1/traces"; default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    # OTEL_EXPORTER_OTLP_ENDPOINT from the environment, else http://localhost:4318/v1/traces.
    endpoint: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    service_name: Annotated[str, Meta(min_length=1, max_length=200)] = "webhook-router"
    # The fraction of traces started here that are kept; an event's traceparent decides for its own trace.
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 1.0


class RetryConfig(msgspec.Struct, **_FROZEN):
    """Delay tiers and topics for durable retries, dead letters and endpoint health."""

    # Retries wait in one Kafka topic per tier, `{topic_prefix}.retry.{tier}s`; ascending, in seconds.
    tiers_s: Annotated[list[Annotated[float, Meta(gt=0, le=604_800)]], Meta(min_length=1, max_length=20)] = (
        msgspec.field(default_factory=lambda: [1, 5, 30, 60, 300, 1800, 3600, 7200, 28800])
    )
    topic_prefix: Name = "webhook-router"
    # The topics the router creates (results, tiers, dead letters, health): partitions, replication (default: the
    # broker's default.replication.factor), min.insync.replicas (default: the broker's).
    partitions: Annotated[int, Meta(ge=1, le=1000)] = 3
    replication_factor: Annotated[int, Meta(ge=1, le=32_767)] | None = None
    min_insync_replicas: Annotated[int, Meta(ge=1, le=32_767)] | None = None
    # How long dead letters are kept (retention.ms of the dead-letter topic it creates); -1: forever.
    dead_letter_retention_s: Annotated[int, Meta(ge=-1, le=315_360_000)] = 30 * 86_400
    create_topics: bool = True
    retry_after_max_s: Annotated[float, Meta(ge=0, le=86_400)] = 3600.0
    # A retry or dead-letter record larger than this keeps the event's coordinates instead of its body (the
    # event is read back from its topic when due). Keep it under the topics' max.message.bytes (Kafka's
    # default: 1048588).
    max_record_bytes: Annotated[int, Meta(ge=10_000, le=100 * 1024 * 1024)] = 1_000_000
    # How long a paused endpoint with while_paused = "hold" holds its deliveries, from its pause on: each comes back
    # to look once a minute (a resume finds it), and after this long it is recorded skipped_paused and dead-lettered,
    # as a skipping endpoint's is at once. No contract promises a delivery to a paused endpoint (crm's has no retry
    # policy at all), so a hold is bounded like a retry schedule.
    max_hold_s: Annotated[float, Meta(ge=1, le=2_592_000)] = 86_400.0

    def tier_topic(self, tier_s: float) -> str:
        return f"{self.topic_prefix}.retry.{tier_s:g}s"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letter"

    @property
    def operational_topic(self) -> str:
        return f"{self.topic_prefix}.operational"

    @property
    def health_topic(self) -> str:
        return f"{self.topic_prefix}.health"

    @property
    def endpoints_topic(self) -> str:
        return f"{self.topic_prefix}.endpoints"

    @property
    def index_topic(self) -> str:
        return f"{self.topic_prefix}.delivery-index"


class EndpointRetryConfig(msgspec.Struct, **_FROZEN):
    """An endpoint's retry policy; without one, its profile's."""

    policy: Literal["none", "once", "schedule", "exponential"]
    delays_s: Annotated[list[Annotated[float, Meta(gt=0, le=604_800)]], Meta(min_length=1, max_length=20)] | None = None
    retries: Annotated[int, Meta(ge=1, le=10)] | None = None  # exponential
    base_s: Annotated[float, Meta(gt=0, le=86_400)] = 30.0
    max_s: Annotated[float, Meta(gt=0, le=604_800)] = 7200.0
    jitter: Annotated[float, Meta(ge=0, le=0.5)] = 0.2
    # Overrides of the profile's status rules: answers also retried, answers never retried, answers that
    # pause the endpoint (replacing the profile's set; [] pauses on none).
    retry_statuses: list[Annotated[int, Meta(ge=300, le=599)]] = []
    final_statuses: list[Annotated[int, Meta(ge=300, le=599)]] = []
    pause_statuses: list[Annotated[int, Meta(ge=300, le=599)]] | None = None


class RateLimitConfig(msgspec.Struct, omit_defaults=True, **_FROZEN):
    """At most ``per_second`` requests a second to an endpoint, ``burst`` of them at once after a quiet spell (a token
    bucket per instance: ``daemon.core.rate``). Deliveries over it wait; none is dropped or counted failed."""

    per_second: Annotated[float, Meta(gt=0, le=100_000)]
    burst: Annotated[int, Meta(ge=1, le=100_000)] | None = None  # default: one second's worth, at least 1


class CircuitBreakerConfig(msgspec.Struct, omit_defaults=True, **_FROZEN):
    """After ``failures`` consecutive failed attempts the endpoint's circuit opens: nothing is attempted for
    ``cooldown_s``, then one delivery probes it (half open): delivered, it closes; failed, it opens again for twice as
    long, up to ``max_cooldown_s`` (``daemon.core.breaker``). Deliveries wait meanwhile; none is dropped."""

    failures: Annotated[int, Meta(ge=1, le=1_000_000)] = 5
    cooldown_s: Annotated[float, Meta(ge=0.1, le=86_400)] = 30.0
    max_cooldown_s: Annotated[float, Meta(ge=0.1, le=86_400)] = 600.0


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
    rate_limit: RateLimitConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    # "key": the deliveries of one Kafka key one at a time, in offset order, retries included (daemon.core.ordering);
    # a key whose delivery ends undelivered dead-letters what waits behind it, or releases it.
    ordering: Literal["none", "key"] = "none"
    when_key_fails: Literal["dead_letter", "release"] = "dead_letter"

    def __repr__(self) -> str:  # never print the secret
        return f"EndpointConfig(id={self.id!r}, profile={self.profile!r}, url=<redacted>)"


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
    # A second condition, which must hold too: the daemon sets it on every endpoint of the API to its tenant's
    # events (``api.tenant_field``); no caller of the API can set or lift it.
    scope: WhereConfig | None = None


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
    # The tenant (of the endpoints API) whose portal shows this organisation and its campaigns, read-only.
    tenant: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")] | None = None

    def __repr__(self) -> str:
        return f"OrganizationConfig(id={self.id!r}, campaigns={len(self.campaigns)})"


EventTypeName = Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[^\s*]+\Z")]  # a type, never a pattern


class EventTypeConfig(msgspec.Struct, **_FROZEN):
    """One event type of the catalogue (``[[event_types]]``): what a platform's customers pick from when they
    subscribe (``GET /v1/event-types``, the portal). Its schema is compiled once per config (``daemon.core.catalogue``);
    with ``validate``, an event of this type that does not match it is never delivered (``invalid_payload``)."""

    name: EventTypeName
    description: Annotated[str, Meta(max_length=2000)] = ""
    group: Annotated[str, Meta(min_length=1, max_length=100)] | None = None  # a heading to list it under
    schema: dict[str, Any] | None = None  # a JSON Schema (draft 2020-12 unless its "$schema" names another)
    example: dict[str, Any] | None = None  # an event of this type; check-config holds it to the schema
    validate: bool = False


class ApiConfig(msgspec.Struct, **_FROZEN):
    """The endpoints API (``/v1`` on the admin server): endpoints managed at run time, kept in the compacted topic
    ``{retry.topic_prefix}.endpoints`` that every instance shares. Needs ``admin.token_env``."""

    enabled: bool = False
    # The 32-byte AES key (base64) that seals the secrets, URLs and headers kept on the topic: from this environment
    # variable, or this file. Every instance needs the same key.
    secrets_key_env: str | None = None
    secrets_key_file: str | None = None
    # Older keys (variables or files, base64 like the current one): what was written under them is still read, and
    # each instance rewrites it under the current key once it has read the topic at start-up. A rotation: list the
    # new key here on every instance, then make it current and the old one previous, then drop the old one once
    # endpoints_records_under_old_keys is 0 everywhere.
    previous_secrets_key_envs: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=8)] = []
    previous_secrets_key_files: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=8)] = []
    # Records of the endpoints topic without a MAC (written by a version before records were signed) are refused; true
    # reads those that come before the first signed record, for the one start-up that rewrites them signed (a
    # migration window: set it back to false after).
    accept_unauthenticated_records: bool = False
    # After a rotation, the old secret keeps signing this long (Standard Webhooks receivers verify with either).
    rotation_grace_s: Annotated[float, Meta(ge=0, le=30 * 86_400)] = 86_400.0
    # The event field (dotted path) that names the tenant an event belongs to. Set, every endpoint of the API receives
    # only its own tenant's events (an event without the field reaches none of them), and tenant tokens can be
    # issued; unset, an endpoint receives whatever its subscription matches, and only the admin token may call.
    tenant_field: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    # Past this many seconds since an instance had last applied everything the endpoints topic held, it may hold a
    # tenant token deleted elsewhere: it answers tenant tokens 503 (the admin token still works) and /readyz says so.
    max_token_lag_s: Annotated[float, Meta(ge=1, le=3600)] = 10.0
    # How many results records an attempts query or a redelivery by id reads per partition, at most (where the
    # delivery index cannot answer: switched off, still being read at start-up, or missing the delivery).
    max_scan_records: Annotated[int, Meta(ge=1_000, le=100_000_000)] = 1_000_000
    # The delivery index (``{retry.topic_prefix}.delivery-index``): every results record of a delivery is indexed
    # there by its delivery id, after it is written, and the process that answers lookups reads the index, so that a
    # delivery still in the results topic's retention is found exactly, by its id or by endpoint, outcome, event type
    # and time.
    delivery_index: bool = True
    # Where this instance keeps its copy of the index (reading it costs every delivery of the deployment): "always",
    # from its start (its worker 0 with process.workers); "on_demand", only from the first lookup or search it
    # answers (the scan answering meanwhile) until none has come for 15 minutes: an instance whose admin address the
    # platform does not call. Other workers than worker 0 are on demand whatever this says.
    delivery_index_copy: Literal["always", "on_demand"] = "always"
    # What one tenant may hold (the endpoints of the config file are the platform's: neither applies to them): its
    # endpoints of the API, and the event patterns of one endpoint (each at most 255 characters; repeats are dropped).
    max_endpoints_per_tenant: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    max_events_per_endpoint: Annotated[int, Meta(ge=1, le=10_000)] = 100
    # Networks (CIDR) the endpoints of the API may reach although the SSRF guard refuses them. Not
    # delivery.allowed_networks, which is for the config file's endpoints (the platform's own): a tenant's URL must
    # not reach the internal services those ranges hold. Default: none.
    allowed_networks: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=256)] = []
    # Scans of Kafka under way at once (attempts queries, redeliveries by id, replays): per tenant, and on this instance
    # in all (the platform's own included). Over either: a 429 with Retry-After, never a queue.
    max_scans_per_tenant: Annotated[int, Meta(ge=1, le=64)] = 2
    max_scans: Annotated[int, Meta(ge=1, le=256)] = 8
    # A replay: at most this many events (an offset range of more offsets is a 400; a time range stops there), over
    # at most this long a time range (from_time to to_time, or to now; longer is a 400).
    # The fastest rate_limit a tenant's token may give an endpoint (per_second, and a burst of at most one second's
    # worth of it); an endpoint a tenant's token creates without one gets this one. Unset: a tenant sets any, or none.
    max_rate_limit_per_second: Annotated[float, Meta(gt=0, le=100_000)] | None = None
    # With tenant_field: the deliveries one tenant may have queued and under way on an instance (each worker), over
    # all its endpoints; past it, its deliveries wait on the retry tiers (no attempt used up), so that one tenant's
    # backlog never fills kafka.max_in_flight_events in front of the others'. Default: a quarter of that cap.
    max_in_flight_per_tenant: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    # With tenant_field: the requests a second one tenant's endpoints may be sent in all, per instance (each worker).
    max_per_second_per_tenant: Annotated[float, Meta(gt=0, le=100_000)] | None = None
    replay_max_events: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    replay_max_span_s: Annotated[float, Meta(ge=60, le=90 * 86_400)] = 86_400.0


PortalFeature = Literal["manage", "secrets", "ping", "deliveries", "redeliver", "replay"]
PORTAL_FEATURES: tuple[PortalFeature, ...] = ("manage", "secrets", "ping", "deliveries", "redeliver", "replay")


class PortalConfig(msgspec.Struct, **_FROZEN):
    """The portal: pages a platform's customers manage their own endpoints on (one tenant each), served by the admin
    server under ``/portal/``, opened by a signed, expiring link the platform mints with its admin token
    (``POST /v1/tenants/{tenant}/portal-links``). Needs ``api.enabled`` and ``api.tenant_field``. Taken at a reload."""

    enabled: bool = False
    # Where customers' browsers reach the admin server (e.g. "https://hooks.example.com", behind a proxy that
    # terminates TLS): the links' base. Default: the address the link was asked for at.
    public_url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    # The pages that may embed the portal in a frame: CSP frame-ancestors sources ("https://app.example.com",
    # "https://*.example.com", "'self'"). Empty: none may (frame-ancestors 'none').
    frame_ancestors: Annotated[list[Annotated[str, Meta(min_length=1, max_length=256)]], Meta(max_length=32)] = []
    link_ttl_s: Annotated[int, Meta(ge=60, le=86_400)] = 3600  # a link's life when its request names none
    max_link_ttl_s: Annotated[int, Meta(ge=60, le=86_400)] = 86_400  # the longest a request may ask for
    title: Annotated[str, Meta(min_length=1, max_length=100)] = "Webhooks"  # the pages' heading
    attempts_shown: Annotated[int, Meta(ge=1, le=200)] = 100  # an endpoint's newest attempts its page reads


class OperationalConfig(msgspec.Struct, **_FROZEN):
    """Operational webhooks: the router's own events (``daemon.engine.operational``) on the topic
    ``{retry.topic_prefix}.operational``, delivered to these endpoints of the config file (the platform's). Turning it
    on or off takes a restart; the endpoints and events are taken at a reload."""

    enabled: bool = False
    endpoints: Annotated[list[EndpointId], Meta(max_length=16)] = []
    # Which of its events (patterns, as a subscription's): endpoint.paused, endpoint.resumed, endpoint.circuit_opened,
    # endpoint.circuit_closed, endpoint.created, endpoint.updated, endpoint.deleted, secret.rotated,
    # delivery.dead_lettered.
    events: Annotated[list[EventPattern], Meta(min_length=1, max_length=64)] = msgspec.field(
        default_factory=lambda: ["*"]
    )


class ProcessConfig(msgspec.Struct, **_FROZEN):
    """How many processes run this instance. ``workers = 1``: one process, as ever. More, or ``"auto"`` (the CPUs this
    process may use: its affinity and its cgroup's CPU quota), and ``run`` starts a supervisor that runs that many
    worker processes in the instance's consumer group behind one admin port (``daemon.app.supervisor``); ``"auto"``
    that comes to 1 runs the one process. Taken only at a restart."""

    workers: Annotated[int, Meta(ge=1, le=256)] | Literal["auto"] = 1


class Config(msgspec.Struct, **_FROZEN):
    kafka: KafkaConfig
    admin: AdminConfig = AdminConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    retry: RetryConfig = RetryConfig()
    api: ApiConfig = ApiConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    schema_registry: SchemaRegistryConfig = SchemaRegistryConfig()
    process: ProcessConfig = ProcessConfig()
    endpoints: list[EndpointConfig] = []
    subscriptions: list[SubscriptionConfig] = []
    organizations: list[OrganizationConfig] = []
    event_types: Annotated[list[EventTypeConfig], Meta(max_length=10_000)] = []
    portal: PortalConfig = PortalConfig()
    operational: OperationalConfig = OperationalConfig()

    def __repr__(self) -> str:
        return f"Config(topics={self.kafka.topics!r}, endpoints={len(self.endpoints)})"


def resolve_secrets(endpoint: EndpointConfig, environ: Any) -> list[str]:
    """The endpoint's signing secrets, current first: from the file or the environment variable it names."""
    if endpoint.secrets is not None:
        return list(endpoint.secrets)
    if endpoint.secret is not None:
        return [endpoint.secret]
    if endpoint.secret_env is not None:
        return [str(environ[endpoint.secret_env])]
    return []
