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
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
from yarl import URL

from daemon.config import Config, EndpointConfig, SubscriptionConfig, resolve_secrets
from daemon.errors import ConfigError
from daemon.profiles import EXPANSIONS, PROFILES, Profile, pattern_matches
from daemon.sign import decode_whsec

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SCHEMA = mi.type_info(Config)
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
    Paths name the request's fields (``url: ...``, ``events[1]: ...``); on any fault the first two are None."""
    errors: list[str] = []
    _check(_ENDPOINT, endpoint, "", errors)
    _check(_SUBSCRIPTION, subscription, "", errors)
    if errors:
        return None, None, errors, []
    parsed = msgspec.convert(endpoint, EndpointConfig)
    sub = msgspec.convert(subscription, SubscriptionConfig)
    unknown: list[str] = []
    checks = _Checks(config, environ, errors)
    checks._endpoint(parsed, "")
    checks.topics(sub.topics, "")
    if sub.where is not None and (sub.where.one_of is None) == (sub.where.none_of is None):
        checks.fault(".where", "exactly one of one_of, none_of is required")
    _Checks(config, environ, unknown).events(sub.events, PROFILES.get(parsed.profile), ".events")
    strip = [line.removeprefix(".") for line in errors if not line.startswith(".id:")]
    return parsed, sub, strip, [line.removeprefix(".") for line in unknown]


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
    return _NAMES.get(type(info), type(info).__name__)


def _name_of(value: Any) -> str:
    return _VALUE_NAMES.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- the meaning: references, uniqueness, formats, each profile's contract ---


class _Checks:
    """The semantic checks; also what a profile's own config is checked with (``daemon.profiles.base.Checks``)."""

    def __init__(self, config: Config, environ: Any, errors: list[str]) -> None:
        self._config = config
        self._environ = environ
        self._errors = errors
        self._known: dict[str, EndpointConfig] = {}
        self._topics = set(config.kafka.topics)

    def fault(self, path: str, message: str) -> None:
        self._errors.append(f"{path}: {message}")

    def run(self) -> None:
        config, environ = self._config, self._environ
        kafka = config.kafka
        if kafka.results_topic in self._topics:
            self.fault("kafka.results_topic", "must not be one of kafka.topics")
        for fields in ("event_type_fields", "event_id_fields"):
            for topic in getattr(kafka, fields):
                if topic not in self._topics:
                    self.fault(f"kafka.{fields}.{topic}", "not one of kafka.topics")
        if kafka.sasl_mechanism and kafka.sasl_password_env and kafka.sasl_password_env not in environ:
            self.fault("kafka.sasl_password_env", f"environment variable {kafka.sasl_password_env} is not set")
        tiers = config.retry.tiers_s
        if sorted(set(tiers)) != tiers:
            self.fault("retry.tiers_s", "must be ascending, without repeats")
        if config.admin.token_env and config.admin.token_env not in environ:
            self.fault("admin.token_env", f"environment variable {config.admin.token_env} is not set")
        if int(config.admin.listen.rsplit(":", 1)[1]) > 65535:
            self.fault("admin.listen", "port must be <= 65535")
        for i, endpoint in enumerate(config.endpoints):
            self._endpoint(endpoint, f"endpoints[{i}]")
        for expansion in EXPANSIONS:
            expansion.check(config, self)
        subscribed = self._subscriptions()
        for i, endpoint in enumerate(config.endpoints):
            profile = PROFILES.get(endpoint.profile)
            if profile is not None and profile.needs_events and endpoint.id not in subscribed:
                self.fault(f"endpoints[{i}]", f"the {endpoint.profile} contract needs at least one subscribed event")

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
            if sub.where is not None and (sub.where.one_of is None) == (sub.where.none_of is None):
                self.fault(f"{path}.where", "exactly one of one_of, none_of is required")
        return subscribed

    # --- the checks a profile's own config uses too ---

    def endpoint_id(self, endpoint: EndpointConfig, path: str) -> None:
        if endpoint.id in self._known:
            self.fault(path, f"duplicate endpoint id {endpoint.id!r}")
        self._known[endpoint.id] = endpoint

    def url(self, url: str, allow_http: bool, https_only: bool, path: str) -> None:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest or rest[0] in "/?#" or not _parses(url):
            self.fault(path, "must be an absolute http:// or https:// URL")
        elif https_only and scheme.lower() != "https" and not allow_http:
            self.fault(path, "must use https:// (or set allow_http = true on the endpoint)")

    def headers(self, headers: dict[str, str], profile: Profile, path: str) -> None:
        reserved = profile.reserved_headers
        for name in headers:
            if not _TOKEN.fullmatch(name):
                self.fault(f"{path}.{name}", "not a valid header name")
            elif name.lower() in reserved:
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

    # --- endpoints ---

    def _endpoint(self, endpoint: EndpointConfig, path: str) -> None:
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


def _parses(url: str) -> bool:
    """True when the HTTP client accepts the URL (host present, port in range, brackets closed)."""
    try:
        parsed = URL(url)
        return bool(parsed.host) and parsed.port is not None
    except ValueError:
        return False
