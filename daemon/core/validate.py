"""Loading and validating a config: every fault found and reported with the path of its field.

``load_config`` never returns a half-valid config: it returns a ``Config`` or raises ``ConfigError``
listing every fault (``endpoints[2].timeout_s: must be <= 120``). Two passes: the structure, walked
from the schema's own type information (``msgspec.inspect``: types, bounds, lengths, patterns, choices)
so that every fault is reported at once and in our words; then the meaning (references, uniqueness,
URLs, secrets, each profile's contract), which a profile's own config (organisations) joins through
``Checks``.
"""

from __future__ import annotations

import operator
import os
import re
import ssl
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgspec
import msgspec.inspect as mi
from cryptography import x509
from yarl import URL

from daemon.core.catalogue import check_entries
from daemon.core.config import Config, EndpointConfig, KafkaConfig, SubscriptionConfig, resolve_secrets
from daemon.core.errors import ConfigError
from daemon.core.netguard import NetGuard, host_form_problem, network
from daemon.core.profiles import EXPANSIONS, PROFILES, Profile, hop_by_hop, pattern_matches
from daemon.core.secretbox import SecretError, key_from
from daemon.core.sign import decode_whsec

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 (tab included), DEL, C1
# An endpoint's custom headers: each value is a secret its mask looks for in every response (daemon.core.mask), and
# every request carries them. Sizes in UTF-8 bytes; the total counts names and values.
MAX_HEADERS = 20
MAX_HEADER_VALUE_BYTES = 1024
MAX_HEADERS_BYTES = 8192
# A CSP source expression of frame-ancestors: 'self' or 'none', a scheme, or a host source (no path needed).
_FRAME_SOURCE = re.compile(
    r"'self'|'none'|[a-z][a-z0-9+.-]*:|(?:[a-z][a-z0-9+.-]*://)?(?:\*\.)?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::(?:\d{1,5}|\*))?/?"
)
_SCHEMA = mi.type_info(Config)
# [kafka] tables keyed by topic: each key must be one of kafka.topics.
_PER_TOPIC = ("event_type_fields", "event_id_fields", "event_type_headers", "event_id_headers", "value_formats")
_ENDPOINT = mi.type_info(EndpointConfig)
_SUBSCRIPTION = mi.type_info(SubscriptionConfig)


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> Config:
    """Read, decode and validate the TOML file at ``path``; raise ``ConfigError`` naming every fault."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: not valid TOML: nested too deeply"]) from None
    return parse_config(raw, os.environ if environ is None else environ)


def parse_config(raw: dict[str, Any], environ: Any) -> Config:
    """Validate a decoded TOML document. Collects every fault before raising."""
    errors: list[str] = []
    _check(_SCHEMA, raw, "", errors)
    if errors:
        raise ConfigError(errors)
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:  # a rule the structural pass does not know: still a config error
        raise ConfigError([f"<config>: {exc}"]) from None
    _Checks(config, environ, errors).run()
    if errors:
        raise ConfigError(errors)
    return config


def check_endpoint(
    config: Config, environ: Any, endpoint: dict[str, Any], subscription: dict[str, Any]
) -> tuple[EndpointConfig | None, SubscriptionConfig | None, list[str], list[str]]:
    """An endpoint and its subscription given at run time (the endpoints API), checked by the same code as
    a config file's, against the running config: (endpoint, subscription, faults, unknown event types).
    Paths name the request's fields (``url: ...``, ``events[1]: ...``); on any fault the first two are None.
    A tenant's bound applies too: at most ``api.max_events_per_endpoint`` patterns, each kept once."""
    errors: list[str] = []
    events, most = subscription.get("events"), config.api.max_events_per_endpoint
    if isinstance(events, list) and len(events) > most:  # before each is read: there may be very many
        return None, None, [f"events: at most {most} patterns (api.max_events_per_endpoint), {len(events)} given"], []
    _check(_ENDPOINT, endpoint, "", errors)
    _check(_SUBSCRIPTION, subscription, "", errors)
    if errors:
        return None, None, errors, []
    parsed = msgspec.convert(endpoint, EndpointConfig)
    sub = msgspec.convert(subscription, SubscriptionConfig)
    unknown: list[str] = []
    checks = _Checks(config, environ, errors, api=True)
    checks.endpoint(parsed, "")
    checks.topics(sub.topics, "")
    if sub.where is not None and (sub.where.one_of is None) == (sub.where.none_of is None):
        checks.fault(".where", "exactly one of one_of, none_of is required")
    _Checks(config, environ, unknown).events(sub.events, PROFILES.get(parsed.profile), ".events")
    strip = [line.removeprefix(".") for line in errors if not line.startswith(".id:")]
    sub = msgspec.structs.replace(sub, events=list(dict.fromkeys(sub.events)))  # each pattern once, in order
    return parsed, sub, strip, [line.removeprefix(".") for line in unknown]


MIN_TOKEN_CHARS = 32
MIN_TOKEN_DISTINCT = 10


def token_weakness(token: str) -> str | None:
    """What makes a bearer token too easy to guess, or None: fewer than ``MIN_TOKEN_CHARS`` characters, fewer than
    ``MIN_TOKEN_DISTINCT`` different ones, or one shorter string repeated. Never quotes the token."""
    advice = "(generate one: `openssl rand -hex 32`)"
    if len(token) < MIN_TOKEN_CHARS:
        return f"{len(token)} character(s) long, at least {MIN_TOKEN_CHARS} are required {advice}"
    if len(set(token)) < MIN_TOKEN_DISTINCT:
        return f"{len(set(token))} different character(s), at least {MIN_TOKEN_DISTINCT} are required {advice}"
    if token in (token + token)[1:-1]:  # true exactly when the token is one shorter string repeated
        return f"one shorter string repeated {advice}"
    return None


def _schema_registry_missing() -> str | None:
    """The first module of the schema-registry extra that is not installed (None: all are)."""
    import importlib.util

    for module in ("fastavro", "google.protobuf"):
        try:
            if importlib.util.find_spec(module) is None:
                return module.split(".")[0] if module != "google.protobuf" else "protobuf"
        except ModuleNotFoundError:
            return "protobuf"
    return None


def _tracing_installed() -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("opentelemetry.sdk", "opentelemetry.exporter"))
    except ModuleNotFoundError:  # no opentelemetry package at all
        return False


# --- the structure, from the schema's type information ---


def _check(info: mi.Type, value: Any, path: str, errors: list[str]) -> bool:
    """Report what is wrong with ``value`` as ``info``; True when nothing is."""
    where = path or "<root>"
    if isinstance(info, mi.UnionType):  # an optional field (TOML has no null: the other type is the one asked for)
        options = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if value is None and len(options) < len(info.types):
            return True
        if len(options) == 1:
            return _check(options[0], value, path, errors)
        if any(_check(t, value, path, []) for t in options):
            return True
        kin = [t for t in options if _kin(t, value)]
        if len(kin) == 1:  # a value of one option's kind (an int out of its bounds): that option's own words
            return _check(kin[0], value, path, errors)
        errors.append(f"{where}: expected one of {', '.join(_name(t) for t in options)}")
        return False
    if isinstance(info, mi.StructType):
        if not isinstance(value, dict):
            errors.append(f"{where}: must be a table")
            return False
        before = len(errors)
        fields = {f.encode_name: f for f in info.fields}
        errors.extend(f"{_join(path, key)}: unknown field" for key in value if key not in fields)
        for name, field in fields.items():
            if name in value:
                _check(field.type, value[name], _join(path, name), errors)
            elif field.required:
                errors.append(f"{_join(path, name)}: required field is missing")
        return len(errors) == before
    if isinstance(info, (mi.ListType, mi.FrozenSetType)):
        if not isinstance(value, list):
            tables = isinstance(info.item_type, mi.StructType)
            errors.append(f"{where}: must be an array{' of tables' if tables else ''}")
            return False
        if not _length(info, len(value), where, errors):
            return False
        results = [_check(info.item_type, item, f"{path}[{i}]", errors) for i, item in enumerate(value)]
        return all(results)
    if isinstance(info, mi.DictType):
        if not isinstance(value, dict):
            errors.append(f"{where}: must be a table")
            return False
        results = [_check(info.value_type, item, f"{path}.{key}", errors) for key, item in value.items()]
        return all(results)
    if isinstance(info, mi.AnyType):
        return True
    if isinstance(info, mi.LiteralType):
        if value in info.values and type(value) in (str, int):
            return True
        errors.append(f"{where}: must be one of {', '.join(repr(v) for v in info.values)}")
        return False
    if not _is(info, value):
        errors.append(f"{where}: expected `{_name(info)}`, got `{_name_of(value)}`")
        return False
    if isinstance(info, mi.StrType):
        if not _length(info, len(value), where, errors):
            return False
        if info.pattern is not None and not re.search(info.pattern, value):
            errors.append(f"{where}: has characters that are not allowed")
            return False
        return True
    if isinstance(info, (mi.IntType, mi.FloatType)):
        for op, bound in ((">=", info.ge), (">", info.gt), ("<=", info.le), ("<", info.lt)):
            if bound is not None and not _OPS[op](value, bound):
                errors.append(f"{where}: must be {op} {bound:g}")
                return False
    return True


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _is(info: mi.Type, value: Any) -> bool:
    if isinstance(info, mi.BoolType):
        return isinstance(value, bool)
    if isinstance(info, mi.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(info, mi.FloatType):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(info, mi.StrType):
        return isinstance(value, str)
    return False  # a type the schema does not use


def _kin(info: mi.Type, value: Any) -> bool:
    """Whether ``value`` is of the kind ``info`` asks for, bounds and choices aside."""
    if isinstance(info, mi.LiteralType):
        return any(type(value) is type(v) for v in info.values)
    return _is(info, value)


def _length(info: Any, length: int, where: str, errors: list[str]) -> bool:
    if info.min_length is not None and length < info.min_length:
        errors.append(f"{where}: length must be >= {info.min_length}")
        return False
    if info.max_length is not None and length > info.max_length:
        errors.append(f"{where}: length must be <= {info.max_length}")
        return False
    return True


_NAMES = {mi.BoolType: "bool", mi.IntType: "int", mi.FloatType: "float", mi.StrType: "str"}
_VALUE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "array", dict: "object"}


def _name(info: mi.Type) -> str:
    if isinstance(info, mi.StructType):
        return "table"
    if isinstance(info, (mi.ListType, mi.FrozenSetType)):
        return "array"
    if isinstance(info, mi.LiteralType):
        return ", ".join(repr(v) for v in info.values)
    return _NAMES.get(type(info), type(info).__name__)


def _name_of(value: Any) -> str:
    return _VALUE_NAMES.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- the meaning: references, uniqueness, formats, each profile's contract ---


class _Checks:
    """The semantic checks; also what a profile's own config is checked with (``daemon.core.profiles.base.Checks``).

    ``api``: the endpoints checked are the API's (a tenant's), whose URLs the SSRF guard judges by
    ``api.allowed_networks``; the config file's are judged by ``delivery.allowed_networks``."""

    def __init__(self, config: Config, environ: Any, errors: list[str], api: bool = False) -> None:
        self._config = config
        self._environ = environ
        self._errors = errors
        self._known: dict[str, EndpointConfig] = {}
        self._topics = set(config.kafka.topics)
        allowed = config.api.allowed_networks if api else config.delivery.allowed_networks
        self._guard = NetGuard(n for n in allowed if _network_problem(n) is None)
        self._allowed_field = "api.allowed_networks" if api else "delivery.allowed_networks"

    def fault(self, path: str, message: str) -> None:
        self._errors.append(f"{path}: {message}")

    def run(self) -> None:
        config, environ = self._config, self._environ
        kafka = config.kafka
        if kafka.results_topic in self._topics:
            self.fault("kafka.results_topic", "must not be one of kafka.topics")
        for fields in _PER_TOPIC:
            for topic in getattr(kafka, fields):
                if topic not in self._topics:
                    self.fault(f"kafka.{fields}.{topic}", "not one of kafka.topics")
        if kafka.enable_idempotence is True and kafka.results_acks != "all":
            self.fault("kafka.enable_idempotence", 'needs results_acks = "all" (an idempotent producer waits for every '
                       'in-sync replica)')  # fmt: skip
        self._security(kafka)
        self._schema_registry()
        retry = config.retry
        if sorted(set(retry.tiers_s)) != retry.tiers_s:
            self.fault("retry.tiers_s", "must be ascending, without repeats")
        factor, insync = retry.replication_factor, retry.min_insync_replicas
        if factor and insync and insync > factor:
            self.fault("retry.min_insync_replicas", "must be <= retry.replication_factor (or no write could succeed)")
        if 0 <= retry.dead_letter_retention_s < 3600:
            self.fault("retry.dead_letter_retention_s", "must be -1 (forever) or >= 3600")
        if config.admin.token_env and config.admin.token_env not in environ:
            self.fault("admin.token_env", f"environment variable {config.admin.token_env} is not set")
        elif config.admin.token_env:
            weak = token_weakness(str(environ[config.admin.token_env]))
            if weak is not None:
                self.fault("admin.token_env", f"the token in {config.admin.token_env} is too weak: {weak}")
        api = config.api
        if api.enabled:
            if not config.admin.token_env:
                self.fault("api.enabled", "the endpoints API needs admin.token_env (the platform's token)")
            if (api.secrets_key_env is None) == (api.secrets_key_file is None):
                self.fault("api", "exactly one of secrets_key_env, secrets_key_file is required")
            else:
                try:
                    key_from(environ, api.secrets_key_env, api.secrets_key_file)
                except SecretError as exc:
                    field = "secrets_key_env" if api.secrets_key_env else "secrets_key_file"
                    self.fault(f"api.{field}", str(exc))
            for field in ("previous_secrets_key_envs", "previous_secrets_key_files"):
                for i, where in enumerate(getattr(api, field)):
                    try:
                        key_from(environ, *((where, None) if field.endswith("envs") else (None, where)))
                    except SecretError as exc:
                        self.fault(f"api.{field}[{i}]", str(exc))
        if int(config.admin.listen.rsplit(":", 1)[1]) > 65535:
            self.fault("admin.listen", "port must be <= 65535")
        self._delivery()
        check_entries(config.event_types, self.fault)
        self._portal()
        if config.tracing.enabled and not _tracing_installed():
            self.fault("tracing.enabled", "needs the tracing extra: pip install 'kafka-webhook-router[tracing]'")
        for i, endpoint in enumerate(config.endpoints):
            self.endpoint(endpoint, f"endpoints[{i}]")
        for expansion in EXPANSIONS:
            expansion.check(config, self)
        for i, endpoint_id in enumerate(config.operational.endpoints):
            if endpoint_id not in self._known:
                self.fault(f"operational.endpoints[{i}]", f"no endpoint {endpoint_id!r} in the config file")
        subscribed = self._subscriptions()
        for i, endpoint in enumerate(config.endpoints):
            profile = PROFILES.get(endpoint.profile)
            if profile is not None and profile.needs_events and endpoint.id not in subscribed:
                self.fault(f"endpoints[{i}]", f"the {endpoint.profile} contract needs at least one subscribed event")

    def _portal(self) -> None:
        portal, api = self._config.portal, self._config.api
        if portal.enabled and not (api.enabled and api.tenant_field):
            self.fault("portal.enabled", "the portal needs the endpoints API with api.tenant_field (it shows one "
                       "tenant's endpoints)")  # fmt: skip
        if portal.link_ttl_s > portal.max_link_ttl_s:
            self.fault("portal.link_ttl_s", f"must be <= portal.max_link_ttl_s ({portal.max_link_ttl_s})")
        if portal.public_url is not None:
            url = _parsed(portal.public_url)
            if url is None or url.scheme not in ("http", "https") or not url.host or url.user or url.password:
                self.fault("portal.public_url", "must be an http(s) URL without credentials")
            elif url.query_string or url.fragment or url.path not in ("", "/"):
                self.fault(
                    "portal.public_url", "must be a scheme and host (and port) only: the pages are under /portal/"
                )
        for i, source in enumerate(portal.frame_ancestors):
            if not _FRAME_SOURCE.fullmatch(source):
                self.fault(f"portal.frame_ancestors[{i}]", "must be a CSP source: 'self', a scheme (https:) or "
                           "[scheme://]host[:port] (a leading *. allowed), without spaces, ';' or ','")  # fmt: skip
            elif source == "'none'" and len(portal.frame_ancestors) > 1:
                self.fault(f"portal.frame_ancestors[{i}]", "'none' cannot stand beside other sources")

    def _security(self, kafka: KafkaConfig) -> None:
        """Every incomplete or contradictory combination of the Kafka connection's security settings."""
        protocol, mechanism = kafka.security_protocol, kafka.sasl_mechanism
        sasl, tls = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")
        if sasl and mechanism is None:
            self.fault("kafka.sasl_mechanism", f"required with security_protocol {protocol}")
        elif not sasl and mechanism is not None:
            self.fault("kafka.sasl_mechanism", f"needs security_protocol SASL_SSL or SASL_PLAINTEXT (not {protocol})")
        password_based = mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
        for name in ("sasl_username", "sasl_password_env"):
            given = getattr(kafka, name) is not None
            if password_based and sasl and not given:
                self.fault(f"kafka.{name}", f"required with sasl_mechanism {mechanism}")
            elif given and not password_based:
                self.fault(f"kafka.{name}", "only for sasl_mechanism PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        if password_based and kafka.sasl_password_env and kafka.sasl_password_env not in self._environ:
            self.fault("kafka.sasl_password_env", f"environment variable {kafka.sasl_password_env} is not set")
        token_file = kafka.sasl_oauth_token_file
        if mechanism == "OAUTHBEARER" and sasl and token_file is None:
            self.fault("kafka.sasl_oauth_token_file", "required with sasl_mechanism OAUTHBEARER")
        elif token_file is not None and mechanism != "OAUTHBEARER":
            self.fault("kafka.sasl_oauth_token_file", "only for sasl_mechanism OAUTHBEARER")
        elif token_file is not None:
            self._readable("kafka.sasl_oauth_token_file", token_file)
        files = {name: getattr(kafka, name) for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")}
        files["ssl_key_password_env"] = kafka.ssl_key_password_env
        for name, value in files.items():
            if value is not None and not tls:
                self.fault(f"kafka.{name}", f"only with security_protocol SSL or SASL_SSL (not {protocol})")
        if not tls:
            return
        if kafka.ssl_keyfile is not None and kafka.ssl_certfile is None:
            self.fault("kafka.ssl_keyfile", "needs ssl_certfile (the client certificate it belongs to)")
        if kafka.ssl_key_password_env is not None and kafka.ssl_certfile is None:
            self.fault("kafka.ssl_key_password_env", "needs ssl_certfile and its key")
        password = None
        if kafka.ssl_key_password_env is not None:
            variable = kafka.ssl_key_password_env
            password = self._environ.get(variable)
            if password is None:
                self.fault("kafka.ssl_key_password_env", f"environment variable {variable} is not set")
        readable = {name: self._readable(f"kafka.{name}", path) for name, path in files.items()
                    if path is not None and name != "ssl_key_password_env"}  # fmt: skip
        if not all(readable.values()):
            return
        context = ssl.create_default_context()
        if kafka.ssl_cafile is not None:
            try:
                context.load_verify_locations(cafile=kafka.ssl_cafile)
            except (ssl.SSLError, ValueError) as exc:
                self.fault("kafka.ssl_cafile", f"not a PEM file of CA certificates ({_ssl_reason(exc)})")
        if kafka.ssl_certfile is not None and (kafka.ssl_key_password_env is None or password is not None):
            try:  # an empty password rather than none: OpenSSL would prompt on a terminal for an encrypted key
                context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile, password=password or "")
            except (ssl.SSLError, ValueError) as exc:
                where = "kafka.ssl_keyfile" if kafka.ssl_keyfile else "kafka.ssl_certfile"
                hint = "" if kafka.ssl_key_password_env else "; an encrypted key needs kafka.ssl_key_password_env"
                self.fault(where, f"the client certificate and its key do not load ({_ssl_reason(exc)}{hint})")
            else:
                self._valid_now("kafka.ssl_certfile", kafka.ssl_certfile)

    def _schema_registry(self) -> None:
        """[schema_registry]: needed (a URL) once a topic's values may be in the wire format; its TLS files readable
        and loadable, one way to authenticate and its secret there; the extra that decodes installed."""
        config, environ = self._config, self._environ
        registry = config.schema_registry
        framed = sorted(t for t, f in config.kafka.value_formats.items() if f != "json")
        if not framed:
            return
        where = f"kafka.value_formats.{framed[0]}"
        if registry.url is None:
            self.fault("schema_registry.url", f"required: {where} reads values in the Schema Registry wire format")
            return
        missing = _schema_registry_missing()
        if missing:
            self.fault(where, f"needs the schema-registry extra ({missing} is not installed): pip install "
                       "'kafka-webhook-router[schema-registry]'")  # fmt: skip
        url = registry.url
        https = url.lower().startswith("https://")
        if not (https or url.lower().startswith("http://")) or not _parses(url) or _URL_CONTROL.search(url):
            self.fault("schema_registry.url", "must be an absolute http:// or https:// URL of the registry")
            return
        if URL(url).raw_query_string or URL(url).raw_fragment:
            self.fault("schema_registry.url", "must be the registry's base URL, without a query or fragment")
        if URL(url).user is not None:
            self.fault("schema_registry.url", "must not carry credentials: use username and password_env")
        files = {name: getattr(registry, name) for name in ("ca_file", "cert_file", "key_file")}
        for name, value in files.items():
            if value is not None and not https:
                self.fault(f"schema_registry.{name}", "only with an https:// url")
        if registry.key_file is not None and registry.cert_file is None:
            self.fault("schema_registry.key_file", "needs cert_file (the client certificate it belongs to)")
        if registry.key_password_env is not None and registry.cert_file is None:
            self.fault("schema_registry.key_password_env", "needs cert_file and its key")
        basic = registry.username is not None or registry.password_env is not None
        bearer = [n for n in ("token_env", "token_file") if getattr(registry, n) is not None]
        if registry.username is not None and registry.password_env is None:
            self.fault("schema_registry.password_env", "required with username (the variable holding the password)")
        elif registry.password_env is not None and registry.username is None:
            self.fault("schema_registry.username", "required with password_env")
        if len(bearer) > 1:
            self.fault("schema_registry", "at most one of token_env, token_file")
        if basic and bearer:
            self.fault(f"schema_registry.{bearer[0]}", "basic auth (username) or a bearer token, not both")
        for name in ("password_env", "token_env", "key_password_env"):
            variable = getattr(registry, name)
            if variable is not None and variable not in environ:
                self.fault(f"schema_registry.{name}", f"environment variable {variable} is not set")
        if registry.token_file is not None:
            self._readable("schema_registry.token_file", registry.token_file)
        if https:
            password = environ.get(registry.key_password_env) if registry.key_password_env else None
            self._tls("schema_registry", registry.ca_file, registry.cert_file, registry.key_file, password)

    def _tls(self, section: str, cafile: str | None, certfile: str | None, keyfile: str | None,
             password: str | None) -> None:  # fmt: skip
        """The TLS files of a client, each readable and loadable (a CA bundle; a certificate and its key)."""
        named = {"ca_file": cafile, "cert_file": certfile, "key_file": keyfile}
        readable = [self._readable(f"{section}.{name}", path) for name, path in named.items() if path is not None]
        if not all(readable):
            return
        context = ssl.create_default_context()
        if cafile is not None:
            try:
                context.load_verify_locations(cafile=cafile)
            except (ssl.SSLError, ValueError) as exc:
                self.fault(f"{section}.ca_file", f"not a PEM file of CA certificates ({_ssl_reason(exc)})")
        if certfile is not None:
            try:
                context.load_cert_chain(certfile, keyfile, password=password or "")
            except (ssl.SSLError, ValueError) as exc:
                where = f"{section}.key_file" if keyfile else f"{section}.cert_file"
                self.fault(where, f"the client certificate and its key do not load ({_ssl_reason(exc)})")
            else:
                self._valid_now(f"{section}.cert_file", certfile)

    def _valid_now(self, field: str, certfile: str) -> None:
        """A client certificate (the first of the file) out of its validity: the server would refuse the handshake
        with a bare 'certificate unknown' that names nothing."""
        try:
            cert = x509.load_pem_x509_certificate(Path(certfile).read_bytes())
        except (OSError, ValueError):  # loaded by OpenSSL already: a form this reader does not take
            return
        now = datetime.now(UTC)
        if cert.not_valid_after_utc < now:
            self.fault(field, f"the client certificate expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: the "
                       "server refuses it; renew it")  # fmt: skip
        elif cert.not_valid_before_utc > now:
            self.fault(field, f"the client certificate is valid only from "
                       f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} (is this machine's clock right?)")  # fmt: skip

    def _readable(self, field: str, file: str) -> bool:
        try:
            with open(file, "rb"):
                return True
        except OSError as exc:
            self.fault(field, f"cannot read {file}: {exc.strerror or exc}")
            return False

    def _subscriptions(self) -> set[str]:
        subscribed: set[str] = set()
        for i, sub in enumerate(self._config.subscriptions):
            path = f"subscriptions[{i}]"
            target = self._known.get(sub.endpoint)
            if target is None:
                self.fault(f"{path}.endpoint", f"no endpoint with id {sub.endpoint!r}")
            else:
                subscribed.add(sub.endpoint)
            self.events(sub.events, PROFILES.get(target.profile) if target is not None else None, f"{path}.events")
            self.topics(sub.topics, path)
            for name, where in (("where", sub.where), ("scope", sub.scope)):
                if where is not None and (where.one_of is None) == (where.none_of is None):
                    self.fault(f"{path}.{name}", "exactly one of one_of, none_of is required")
        return subscribed

    # --- the checks a profile's own config uses too ---

    def endpoint_id(self, endpoint: EndpointConfig, path: str) -> None:
        if endpoint.id in self._known:
            self.fault(path, f"duplicate endpoint id {endpoint.id!r}")
        self._known[endpoint.id] = endpoint

    def url(self, url: str, allow_http: bool, https_only: bool, path: str) -> None:
        """An endpoint URL: absolute http(s), without control characters, sent as written (``_sent_as_written``), its
        host a plain name or a canonical address that the SSRF guard does not refuse (``delivery.allowed_networks``
        can allow it for the config file's endpoints, ``api.allowed_networks`` for the API's)."""
        if _URL_CONTROL.search(url):
            self.fault(path, "must not contain control characters (CR, LF, tab, NUL...): percent-encode one that "
                       "belongs in it")  # fmt: skip
            return
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest or rest[0] in "/?#" or not _parses(url):
            self.fault(path, "must be an absolute http:// or https:// URL")
            return
        if not _sent_as_written(url):
            self.fault(path, "would not be sent as written (the HTTP client removes dot segments such as /../ and an "
                       "empty ? or #): write it as it is to be sent")  # fmt: skip
            return
        if https_only and scheme.lower() != "https" and not allow_http:
            self.fault(path, "must use https:// (or set allow_http = true on the endpoint)")
        host = URL(url).raw_host or ""
        problem = host_form_problem(host)
        if problem is not None:
            self.fault(path, f"the host is written in a form that is refused: {problem}")
            return
        refusal = self._guard.host_refusal(host)
        if refusal is not None:
            self.fault(path, f"the host is refused: {refusal.text} (unless {self._allowed_field} allows its range)")

    def headers(self, headers: dict[str, str], profile: Profile, path: str) -> None:
        """Names that are tokens and not the router's own (its profile's signature headers, ``Host``, ``Content-*``...)
        nor, whatever the profile, a hop-by-hop or ``Proxy-*`` header; values without control characters; no more
        than ``MAX_HEADERS`` of them, ``MAX_HEADER_VALUE_BYTES`` a value, ``MAX_HEADERS_BYTES`` in all."""
        if len(headers) > MAX_HEADERS:
            self.fault(path, f"at most {MAX_HEADERS} custom headers ({len(headers)} given)")
        total = sum(len(name.encode()) + len(value.encode(errors="replace")) for name, value in headers.items())
        if total > MAX_HEADERS_BYTES:
            self.fault(path, f"names and values must total at most {MAX_HEADERS_BYTES} bytes ({total} given)")
        for name, value in headers.items():
            size = len(value.encode(errors="replace"))
            if size > MAX_HEADER_VALUE_BYTES:
                self.fault(f"{path}.{name}", f"value must be at most {MAX_HEADER_VALUE_BYTES} bytes ({size} given)")
        for name in headers:
            if not _TOKEN.fullmatch(name):
                self.fault(f"{path}.{name}", "not a valid header name")
            elif hop_by_hop(name):
                self.fault(f"{path}.{name}", "a hop-by-hop or proxy header (it speaks to the connection or the egress "
                           "proxy, not the receiver)")  # fmt: skip
            elif profile.reserves(name):
                self.fault(f"{path}.{name}", "set by the router, cannot be overridden")
        for name, value in headers.items():
            if _CONTROL.search(value):
                self.fault(f"{path}.{name}", "value must not contain control characters")

    def events(self, patterns: list[str], profile: Profile | None, path: str) -> None:
        catalogue = profile.catalogue if profile is not None else None
        for j, pattern in enumerate(patterns):
            star = pattern.find("*")
            if star != -1 and star != len(pattern) - 1:
                self.fault(f"{path}[{j}]", "'*' may only end a pattern ('lead.*' or '*')")
            elif (
                profile is not None
                and catalogue is not None
                and not any(pattern_matches(pattern, known) for known in catalogue)
            ):
                self.fault(f"{path}[{j}]", f"{pattern!r} is not one of the {profile.name} event types")

    def topics(self, topics: list[str] | None, path: str) -> None:
        for j, topic in enumerate(topics or ()):
            if topic not in self._topics:
                self.fault(f"{path}.topics[{j}]", f"{topic!r} is not one of kafka.topics")

    # --- delivery ---

    def _delivery(self) -> None:
        delivery = self._config.delivery
        for section, networks in (("delivery", delivery.allowed_networks), ("api", self._config.api.allowed_networks)):
            for i, text in enumerate(networks):
                problem = _network_problem(text)
                if problem is not None:
                    self.fault(f"{section}.allowed_networks[{i}]", problem)
        if delivery.proxy_url is not None:
            proxy = delivery.proxy_url
            if not proxy.lower().startswith("http://") or not _parses(proxy):
                self.fault("delivery.proxy_url", "must be an http:// URL of the proxy (http://host:port)")
            elif URL(proxy).raw_path not in ("", "/") or URL(proxy).raw_query_string or URL(proxy).raw_fragment:
                self.fault("delivery.proxy_url", "must be the proxy's address only (http://host:port), no path")

    # --- endpoints ---

    def endpoint(self, endpoint: EndpointConfig, path: str) -> None:
        self.endpoint_id(endpoint, f"{path}.id")
        profile = PROFILES.get(endpoint.profile)
        if profile is None:
            self.fault(f"{path}.profile", f"unknown profile {endpoint.profile!r} (one of: {', '.join(PROFILES)})")
            return
        self.url(endpoint.url, endpoint.allow_http, profile.https_only, f"{path}.url")
        if endpoint.timeout_s is not None and endpoint.timeout_s > profile.max_timeout_s:
            self.fault(f"{path}.timeout_s", f"the {profile.name} contract allows at most {profile.max_timeout_s:g} s")
        self._secrets(endpoint, profile, path)
        self.headers(endpoint.headers, profile, f"{path}.headers")
        if endpoint.ordering == "key" and endpoint.while_paused == "hold":
            self.fault(f"{path}.while_paused", 'ordering = "key" cannot hold while paused (a held delivery waits on '
                       "the retry tiers, where the next of its key would overtake it): use skip")  # fmt: skip
        retry = endpoint.retry
        if retry is not None:
            needs_delays = retry.policy in ("once", "schedule")
            if needs_delays and retry.delays_s is None:
                self.fault(f"{path}.retry.delays_s", f"required for the {retry.policy} policy")
            elif retry.policy == "once" and retry.delays_s is not None and len(retry.delays_s) != 1:
                self.fault(f"{path}.retry.delays_s", "the once policy takes exactly one delay")
            elif not needs_delays and retry.delays_s is not None:
                self.fault(f"{path}.retry.delays_s", "only for the once and schedule policies")
            if retry.retries is not None and retry.policy != "exponential":
                self.fault(f"{path}.retry.retries", "only for the exponential policy")
            both = sorted(set(retry.retry_statuses) & set(retry.final_statuses))
            if both:
                self.fault(f"{path}.retry.final_statuses", f"{both} also in retry_statuses: retried or final?")

    def _secrets(self, endpoint: EndpointConfig, profile: Profile, path: str) -> None:
        given = [name for name in ("secret", "secret_env", "secrets") if getattr(endpoint, name) is not None]
        if profile.key_source == "optional":
            if given:
                self.fault(f"{path}.{given[0]}", f"the {endpoint.profile} contract carries no secret")
            return
        if len(given) != 1:
            self.fault(path, "exactly one of secret, secret_env, secrets is required")
            return
        if endpoint.secret_env is not None and endpoint.secret_env not in self._environ:
            self.fault(f"{path}.secret_env", f"environment variable {endpoint.secret_env} is not set")
            return
        for j, secret in enumerate(resolve_secrets(endpoint, self._environ)):
            where = f"{path}.{given[0]}" + (f"[{j}]" if endpoint.secrets is not None else "")
            if profile.key_source == "whsec":
                try:
                    decode_whsec(secret)
                except ValueError as exc:
                    self.fault(where, str(exc))
            elif not secret:
                self.fault(where, "must not be empty")


def _ssl_reason(exc: Exception) -> str:
    """OpenSSL's words without the source line (``[SSL] PEM lib``, ``[X509: ...] no certificate or crl found``)."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc.args[-1] if exc.args else exc))


def _network_problem(text: str) -> str | None:
    try:
        network(text)
    except ValueError:
        return "must be a network in CIDR form with no host bits set (e.g. 10.0.0.0/8, fd00::/8 or 127.0.0.1/32)"
    return None


def _sent_as_written(url: str) -> bool:
    """True when the path, query and fragment of ``url`` are those the sender's ``URL(url, encoded=False)`` keeps, up
    to percent-encoding (an escape's case, a character it must encode: the same once decoded). Not so when it drops a
    character (tab, CR, LF), removes dot segments (``/a/../b`` is sent as ``/b``) or an empty ``?`` or ``#``. The
    scheme and host may differ in case and a default port be dropped: the host is checked on its own."""
    sent = str(URL(url, encoded=False))
    return unquote(_tail(url)) == unquote(_tail(sent))


def _tail(url: str) -> str:
    """What follows the authority of an absolute URL (``/`` for nothing: a request's target is never empty)."""
    rest = url.partition("://")[2]
    tail = rest[min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest)) :]
    return tail if tail.startswith("/") else "/" + tail


def _parsed(url: str) -> URL | None:
    try:
        return URL(url)
    except ValueError:
        return None


def _parses(url: str) -> bool:
    """True when the HTTP client accepts the URL (host present, port in range, brackets closed)."""
    try:
        parsed = URL(url)
        return bool(parsed.host) and parsed.port is not None
    except ValueError:
        return False
