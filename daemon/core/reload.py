"""What a reload (SIGHUP) may change: one rule for what it refuses and what it takes only after a restart.

A reload is refused (the running config kept) when it changes what the running daemon must not pretend to have taken:
the network guards' allowances (the config file's endpoints' and the API's) and the egress proxy (the HTTP clients
were built with them; a reload that took them would validate URLs that the running clients then block), and the tenant
field (the endpoints of the API were scoped by the old one). It is taken, with a warning, when it changes what the
Kafka clients, the endpoints store (its keys) or the admin server were built with: those changes wait for a restart.
"""

from __future__ import annotations

from daemon.core.config import Config

# (section, field) pairs a reload may not change: refused, the running config kept.
REFUSED: tuple[tuple[str, str], ...] = (
    ("delivery", "allowed_networks"),
    ("delivery", "proxy_url"),
    ("api", "tenant_field"),
    ("api", "allowed_networks"),
)
# [kafka] fields the clients were built with: taken only after a restart.
KAFKA_AT_RESTART: tuple[str, ...] = (
    "bootstrap_servers", "group_id", "results_topic", "client_id", "contact_timeout_s", "produce_timeout_ms",
    "security_protocol",
    "sasl_mechanism", "sasl_username", "sasl_password_env", "sasl_oauth_token_file", "ssl_cafile", "ssl_certfile",
    "ssl_keyfile", "ssl_key_password_env",
)  # fmt: skip
# [api] fields the endpoints store was built with (its keys, what it reads): taken only after a restart.
API_AT_RESTART: tuple[str, ...] = (
    "enabled", "secrets_key_env", "secrets_key_file", "previous_secrets_key_envs", "previous_secrets_key_files",
    "accept_unauthenticated_records", "delivery_index", "delivery_index_copy",
)  # fmt: skip
# [schema_registry] fields its client and cache were built with: taken only after a restart (event_types at once).
SCHEMA_REGISTRY_AT_RESTART: tuple[str, ...] = (
    "url", "ca_file", "cert_file", "key_file", "key_password_env", "username", "password_env", "token_env",
    "token_file", "timeout_s", "connect_timeout_s", "retry_backoff_max_s", "cache_size", "protobuf_json_names",
    "protobuf_include_defaults",
)  # fmt: skip
# Whole sections taken only after a restart.
SECTIONS_AT_RESTART: tuple[str, ...] = ("admin", "tracing", "process")


def refused(old: Config, new: Config) -> list[str]:
    """One ``path: why`` line per change a reload refuses (empty: the reload may go ahead). A topic read in the Schema
    Registry wire format is refused too when the running daemon has no registry client (it started without
    ``schema_registry.url``): its records would wait for schemas nobody fetches."""
    refusals = [
        f"{section}.{name}: changed, which needs a restart (the running config is kept)"
        for section, name in REFUSED
        if getattr(getattr(old, section), name) != getattr(getattr(new, section), name)
    ]
    framed = sorted(t for t, f in new.kafka.value_formats.items() if f != "json")
    if framed and old.schema_registry.url is None:
        refusals.append(f"kafka.value_formats.{framed[0]}: the running daemon started without schema_registry.url, "
                        "so it has no registry client to fetch schemas with: restart to take it")  # fmt: skip
    return refusals


def at_restart(old: Config, new: Config) -> list[str]:
    """The changed settings that take effect only after a restart (the reload takes the rest)."""
    changed = [f"kafka.{name}" for name in KAFKA_AT_RESTART if getattr(old.kafka, name) != getattr(new.kafka, name)]
    changed += [f"api.{name}" for name in API_AT_RESTART if getattr(old.api, name) != getattr(new.api, name)]
    registry = old.schema_registry, new.schema_registry
    changed += [f"schema_registry.{name}" for name in SCHEMA_REGISTRY_AT_RESTART
                if getattr(registry[0], name) != getattr(registry[1], name)]  # fmt: skip
    return changed + [name for name in SECTIONS_AT_RESTART if getattr(old, name) != getattr(new, name)]
