"""Endpoints and tenants managed at run time, kept in a compacted Kafka topic shared by every instance.

No database: the topic (``{retry.topic_prefix}.endpoints``, one partition, compacted) is the state, keyed
``endpoint/{id}`` and ``tenant/{id}``; every instance reads it to its end before it is ready and follows it,
applying records in the log's order (``Directory``, pure). Writes go to the topic and return once this
instance has applied its own record (read-your-writes); other instances apply it within their next fetch.

Conflicts resolve by version, the same way on every instance because they apply the same log in the same
order: a record is accepted only if its version is above the key's current one (or its grave's, once
deleted). Two instances that accept an update of version 4 to the same endpoint both write version 5; the
first in the log wins, the second is rejected everywhere, and its writer answers 409: nothing is lost
silently. A delete is a versioned marker (then a tombstone, so compaction can drop the key).

Secrets, the URL (it may carry credentials) and the custom headers (they may carry tokens) are sealed
(``daemon.core.secretbox``), each bound to its endpoint and its field: a reader of the topic without the key learns
none of them, and a sealed value moved to another field or record does not open. Every record is signed whole
(``signed``: an HMAC under the secrets key over every other field, and the id of the key it was written under), and
a record is applied only if its MAC verifies and its settings are ones the endpoints API itself can set
(``SETTINGS``): a writer to the topic without the key can change nothing (a tombstone is applied only to a key
already deleted by a signed record). Records written before records were signed (no MAC) are refused unless
the operator accepts them for a migration window, and then only those that precede the first signed record.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import orjson

from daemon.core.clock import utc_now_iso
from daemon.core.config import EndpointConfig, SubscriptionConfig, WhereConfig
from daemon.core.errors import RouterError
from daemon.core.secretbox import Keyring, SecretError
from daemon.core.shards import Shards

log = logging.getLogger(__name__)


class RecordRefused(RouterError):
    """A record of the endpoints topic that is not applied (the state before it is kept). ``reason``: one of
    ``REASONS``, a metric's label."""

    REASONS = ("unauthenticated", "mac", "key", "invalid", "tombstone")

    def __init__(self, reason: str, message: str, version: int | None = None) -> None:
        self.reason = reason
        self.version = version  # the version it claims, when it has one
        super().__init__(message)


# The fields of an endpoint the endpoints API never takes from a caller: the id is generated, a pause is an action,
# secrets change by rotation (and never come from this host's environment).
NOT_BY_API = frozenset({"id", "secret_env", "secrets", "paused"})
# What an endpoint record keeps in the clear in ``settings``: what the API can set, less what is sealed. A record with
# anything else there is refused (``secret_env`` would have the router send a variable of its own environment).
SETTINGS = frozenset(f.name for f in msgspec.structs.fields(EndpointConfig)) - NOT_BY_API - {"url", "headers", "secret"}


class SealedSecret(msgspec.Struct, kw_only=True, frozen=True):
    value: str  # sealed
    expires_at: int | None = None  # unix ms: from then on it no longer signs (the grace of a rotation)


class EndpointRecord(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind", tag="endpoint"):
    """An endpoint as the topic keeps it."""

    id: str
    tenant: str
    version: int
    created_at: str
    updated_at: str
    deleted: bool = False
    url: str = ""  # sealed
    headers: str | None = None  # sealed JSON object
    secrets: list[SealedSecret] = []
    events: list[str] = []
    topics: list[str] | None = None
    where: WhereConfig | None = None
    description: str | None = None
    settings: dict[str, Any] = {}  # the other fields of EndpointConfig, as given: SETTINGS only
    key_id: str | None = None  # the secrets key it was sealed and signed under (None: written before records were)
    mac: str | None = None  # of every other field, under that key (``signed``)


class TokenRecord(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    sha256: str  # of the token; the token itself is shown once and never kept
    created_at: str


class TenantRecord(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind", tag="tenant"):
    id: str
    version: int
    created_at: str
    deleted: bool = False
    tokens: list[TokenRecord] = []
    key_id: str | None = None
    mac: str | None = None


Record = EndpointRecord | TenantRecord


def endpoint_key(endpoint_id: str) -> str:
    return f"endpoint/{endpoint_id}"


def tenant_key(tenant_id: str) -> str:
    return f"tenant/{tenant_id}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _canonical(body: dict[str, Any]) -> bytes:
    """What a record's MAC is computed over: its fields but the MAC, as JSON with every object's keys sorted."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def signed(record: Record, keyring: Keyring) -> bytes:
    """A record as the topic keeps it: under the current key's id, with the MAC of every other field. An endpoint
    record's sealed fields must have been sealed under the current key (``sealed_record``, ``resealed``)."""
    if isinstance(record, EndpointRecord) and record.key_id != keyring.current_id and _sealed_fields(record):
        raise ValueError(f"{record.id}: its fields are sealed under key id {record.key_id!r}, not the current key's")
    body = msgspec.to_builtins(msgspec.structs.replace(record, key_id=keyring.current_id, mac=None))
    del body["mac"]
    body["mac"] = keyring.sign(_canonical(body))
    return orjson.dumps(body)


def _sealed_fields(record: EndpointRecord) -> bool:
    return bool(record.url or record.headers or record.secrets)


def _settings_problem(record: EndpointRecord) -> str | None:
    unknown = sorted(set(record.settings) - SETTINGS)
    return f"settings.{unknown[0]}: not a setting the endpoints API can set" if unknown else None


def _share(body: dict[str, Any]) -> None:
    """The strings records repeat (their tenant, the key they are under, their event patterns) made one object each
    (``sys.intern``: let go with the last record holding one): a million endpoints of 100,000 tenants hold each
    tenant's name once, not ten times. A record never updated holds its one time once."""
    for field in ("tenant", "key_id"):
        value = body.get(field)
        if type(value) is str:
            body[field] = sys.intern(value)
    events = body.get("events")
    if type(events) is list:
        body["events"] = [sys.intern(e) if type(e) is str else e for e in events]
    if body.get("updated_at") == body.get("created_at"):
        body["updated_at"] = body.get("created_at")


# The settings of every record that has none: one empty dict, never written to (records are read-only values).
_NO_SETTINGS: dict[str, Any] = {}


class Directory:
    """The state the topic describes, built by applying its records in order. Pure.

    ``apply`` returns whether a record was accepted (a higher version than the key's), or raises ``RecordRefused``
    for a record that is not authentic or not one the API could have written; either way a record that is not
    accepted changes nothing anywhere. ``accept_unauthenticated``: records without a MAC are read (a migration
    window), as long as no signed record came before them.
    """

    def __init__(self, keyring: Keyring, accept_unauthenticated: bool = False) -> None:
        self.endpoints: Shards[str, EndpointRecord] = Shards()  # a million, grown without a long stop
        self.tenants: dict[str, TenantRecord] = {}
        self.graves: dict[str, int] = {}  # key -> the version it was deleted at
        self._tokens: dict[str, str] = {}  # sha256 of a token -> its tenant
        self._keyring = keyring
        self._accept_unauthenticated = accept_unauthenticated
        self._signed_seen = False  # a record with a valid MAC was read: no record without one is read after it
        self._under: dict[str | None, int] = {}  # key id -> how many of the records held were written under it
        # tenant -> the ids of its endpoints (in the order read): a tenant's listing reads its own, not every record
        self._held: dict[str, list[str]] = {}

    def version(self, key: str) -> int:
        """The version the next write of ``key`` must exceed."""
        current = self._current(key)
        return current.version if current is not None else self.graves.get(key, 0)

    def _current(self, key: str) -> Record | None:
        kind, _, ident = key.partition("/")
        if kind == "endpoint":
            return self.endpoints.get(ident)
        return self.tenants.get(ident)

    def apply(self, key: str, value: bytes | None) -> tuple[bool, Record | None]:
        """Apply one record of the topic: (accepted, the record). ``RecordRefused`` when it is not applied because
        it is not authentic, not a record, or a tombstone of a key no signed record deleted."""
        if value is None:
            if self._current(key) is not None:
                raise RecordRefused("tombstone", "a tombstone of a key not deleted (a signed delete comes first)")
            return True, None
        record = self.read(key, value)
        if record.version <= self.version(key):
            return False, record
        self._forget(key)
        if record.deleted:
            self.graves[key] = record.version
            return True, record
        self.graves.pop(key, None)
        if isinstance(record, EndpointRecord):
            self.endpoints[record.id] = record
            held = self._held.get(record.tenant)
            if held is None:
                self._held[record.tenant] = [record.id]
            else:
                held.append(record.id)
        else:
            self.tenants[record.id] = record
            for token in record.tokens:
                self._tokens[token.sha256] = record.id
        self._under[record.key_id] = self._under.get(record.key_id, 0) + 1
        return True, record

    def read(self, key: str, value: bytes) -> Record:
        """The record ``value`` under ``key``, its MAC verified (or, in a migration window, a record without one that
        no signed record precedes), its settings ones the API can set. RecordRefused otherwise."""
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise RecordRefused("invalid", "not JSON") from None
        if not isinstance(body, dict):
            raise RecordRefused("invalid", "not a JSON object")
        claimed = body.get("version")
        claimed = claimed if isinstance(claimed, int) and not isinstance(claimed, bool) else None
        mac = body.pop("mac", None)
        if mac is None:
            if not self._accept_unauthenticated:
                raise RecordRefused("unauthenticated", "it has no MAC (written before records were signed): to "
                                    "read such records for a migration, set api.accept_unauthenticated_records = "
                                    "true", claimed)  # fmt: skip
            if self._signed_seen:
                raise RecordRefused("unauthenticated", "it has no MAC and comes after signed records: only records "
                                    "written before the first signed one are read without a MAC", claimed)  # fmt: skip
            body["key_id"] = None
        else:
            try:
                authentic = isinstance(mac, str) and self._keyring.verify(_canonical(body), body.get("key_id"), mac)
            except SecretError as exc:
                raise RecordRefused("key", str(exc), claimed) from None
            if not authentic:
                raise RecordRefused("mac", "its MAC does not verify: not written by a holder of the secrets key, or "
                                    "changed since")  # fmt: skip
            self._signed_seen = True
        _share(body)
        try:
            record: Record = msgspec.convert(body, Record)
        except msgspec.ValidationError as exc:
            raise RecordRefused("invalid", f"not a record: {exc}") from None
        if key != (endpoint_key(record.id) if isinstance(record, EndpointRecord) else tenant_key(record.id)):
            raise RecordRefused("invalid", f"a record of {record.id!r} under key {key!r}")
        problem = _settings_problem(record) if isinstance(record, EndpointRecord) else None
        if problem is not None:
            raise RecordRefused("invalid", problem)
        if isinstance(record, EndpointRecord) and not record.settings:
            msgspec.structs.force_setattr(record, "settings", _NO_SETTINGS)
        return record

    def _forget(self, key: str) -> None:
        kind, _, ident = key.partition("/")
        gone: Record | None
        if kind == "endpoint":
            gone = endpoint = self.endpoints.pop(ident, None)
            if endpoint is not None:
                held = self._held[endpoint.tenant]
                held.remove(ident)  # a tenant's own endpoints only (at most api.max_endpoints_per_tenant)
                if not held:
                    del self._held[endpoint.tenant]
        else:
            gone = tenant = self.tenants.pop(ident, None)
            for token in tenant.tokens if tenant is not None else ():
                self._tokens.pop(token.sha256, None)
        if gone is not None:
            self._under[gone.key_id] -= 1

    def endpoints_of(self, tenant: str) -> int:
        """How many endpoints ``tenant`` has."""
        return len(self._held.get(tenant, ()))

    def ids_of(self, tenant: str) -> list[str]:
        """The ids of ``tenant``'s endpoints, in order: from its own, never a pass over every record (a million
        endpoints of 100,000 tenants: a tenant's listing would read them all)."""
        return sorted(self._held.get(tenant, ()))

    def tenant_of_token(self, token: str) -> str | None:
        return self._tokens.get(token_hash(token))

    def under_old_keys(self) -> int:
        """How many of the records held were written under another key than the current one (or before records were
        signed): ``resealed`` rewrites them."""
        current = self._keyring.current_id
        return sum(n for key_id, n in self._under.items() if key_id != current)

    def stale(self) -> list[Record]:
        """The records held that were written under another key than the current one (or before records were signed).
        None held, as after every start but those of a rotation: answered from the counts, without a look at each."""
        if not self.under_old_keys():
            return []
        current = self._keyring.current_id
        held: list[Record] = [*self.tenants.values(), *self.endpoints.values()]
        return [r for r in held if r.key_id != current]


def _bound(record: EndpointRecord, field: str) -> str:
    """The associated data a sealed field of an endpoint record is bound to: its endpoint and the field."""
    return f"{endpoint_key(record.id)}#{field}"


def _open(record: EndpointRecord, keyring: Keyring, field: str, sealed: str) -> str:
    if record.key_id is None:  # written before records were signed: bound to the endpoint only
        return keyring.open_legacy(sealed, endpoint_key(record.id))
    return keyring.open(sealed, _bound(record, field), record.key_id)


def live_secrets(record: EndpointRecord, keyring: Keyring, now_ms: int | None = None) -> list[tuple[str, int | None]]:
    """Its secrets whose grace has not ended, opened, each with the time it stops signing (unix ms, None: never)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return [
        (_open(record, keyring, "secrets", s.value), s.expires_at)
        for s in record.secrets
        if s.expires_at is None or s.expires_at > now_ms
    ]


def opened(
    record: EndpointRecord, keyring: Keyring, now_ms: int | None = None
) -> tuple[EndpointConfig, SubscriptionConfig]:
    """The endpoint and subscription an endpoint record stands for, its sealed fields opened; secrets whose
    grace has ended left out. Raises ``SecretError`` (a key this instance does not have, or a value sealed for
    another field or record), ``msgspec.ValidationError``, or ``ValueError`` (a setting the API cannot set)."""
    problem = _settings_problem(record)
    if problem is not None:
        raise ValueError(problem)
    live = [secret for secret, _ in live_secrets(record, keyring, now_ms)]
    fields: dict[str, Any] = {
        **record.settings,
        "id": record.id,
        "url": _open(record, keyring, "url", record.url),
        "headers": orjson.loads(_open(record, keyring, "headers", record.headers)) if record.headers else {},
    }
    if live:
        fields["secrets"] = live
    endpoint = msgspec.convert(fields, EndpointConfig)
    subscription = SubscriptionConfig(
        endpoint=record.id, events=record.events, topics=record.topics, where=record.where
    )
    return endpoint, subscription


def routed(
    record: EndpointRecord, keyring: Keyring, tenant_field: str | None
) -> tuple[EndpointConfig, SubscriptionConfig]:
    """What the router delivers an endpoint record as: ``opened``, and with ``api.tenant_field`` set, given a scope
    that its tenant's events only pass, whatever its own subscription says (no caller of the API can set or lift it).
    Raises as ``opened`` does."""
    config, subscription = opened(record, keyring)
    if tenant_field is not None:
        subscription = msgspec.structs.replace(subscription, scope=_scope(tenant_field, record.tenant))
    return config, subscription


@functools.lru_cache(maxsize=1 << 17)
def _scope(tenant_field: str, tenant: str) -> WhereConfig:
    """A tenant's scope, one object for all its endpoints (while it is among the most recent 131,072 tenants seen)."""
    return WhereConfig(field=tenant_field, one_of=[tenant])


class Sealed:
    """An endpoint of the topic as the routing keeps it while it is idle: its record, its sealed fields still sealed,
    opened (``open``) when an ``Endpoint`` is built for it. An idle endpoint then costs no opened URL, headers or
    secrets, and no config beside its record (about 450 bytes each). The record was opened once when it was read, so
    that one that does not open is never routed (``routed``)."""

    __slots__ = ("_keyring", "record")

    def __init__(self, record: EndpointRecord, keyring: Keyring) -> None:
        self.record = record
        self._keyring = keyring

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    @property
    def profile(self) -> str:
        return profile_of(self.record)

    def open(self) -> EndpointConfig:
        """Its config, opened now (secrets whose grace has ended left out); raises as ``opened`` does."""
        return opened(self.record, self._keyring)[0]


_DEFAULT_PROFILE: str = next(f.default for f in msgspec.structs.fields(EndpointConfig) if f.name == "profile")


def profile_of(record: EndpointRecord) -> str:
    """The platform contract an endpoint record delivers by (its ``profile`` setting, or the default)."""
    profile = record.settings.get("profile", _DEFAULT_PROFILE)
    return profile if isinstance(profile, str) else _DEFAULT_PROFILE


def next_expiry(record: EndpointRecord, now_ms: int) -> int | None:
    """When the next of its secrets stops signing (unix ms), if one will."""
    pending = [s.expires_at for s in record.secrets if s.expires_at is not None and s.expires_at > now_ms]
    return min(pending) if pending else None


def sealed_record(
    keyring: Keyring,
    *,
    endpoint_id: str,
    tenant: str,
    version: int,
    created_at: str | None,
    url: str,
    headers: Mapping[str, str],
    secrets: list[tuple[str, int | None]],
    events: list[str],
    topics: list[str] | None,
    where: WhereConfig | None,
    description: str | None,
    settings: Mapping[str, Any],
    updated_at: str | None = None,
) -> EndpointRecord:
    """A new version of an endpoint record, its secrets, URL and headers sealed under the current key."""
    now = utc_now_iso()
    record = EndpointRecord(
        id=endpoint_id,
        tenant=tenant,
        version=version,
        created_at=created_at or now,
        updated_at=updated_at or now,
        events=events,
        topics=topics,
        where=where,
        description=description,
        settings=dict(settings),
        key_id=keyring.current_id,
    )
    return msgspec.structs.replace(
        record,
        url=keyring.seal(url, _bound(record, "url")),
        headers=keyring.seal(orjson.dumps(dict(headers)).decode(), _bound(record, "headers")) if headers else None,
        secrets=[
            SealedSecret(value=keyring.seal(secret, _bound(record, "secrets")), expires_at=expires)
            for secret, expires in secrets
        ],
    )


def resealed(record: Record, keyring: Keyring, now_ms: int | None = None) -> Record:
    """The next version of a record, unchanged but sealed (and so signed) under the current key: how records of an
    old key, or of no key, are rewritten. Secrets whose grace has ended are left out."""
    if isinstance(record, TenantRecord):
        return msgspec.structs.replace(record, version=record.version + 1, key_id=keyring.current_id, mac=None)
    return sealed_record(
        keyring, endpoint_id=record.id, tenant=record.tenant, version=record.version + 1,
        created_at=record.created_at, updated_at=record.updated_at, url=_open(record, keyring, "url", record.url),
        headers=orjson.loads(_open(record, keyring, "headers", record.headers)) if record.headers else {},
        secrets=live_secrets(record, keyring, now_ms), events=record.events, topics=record.topics,
        where=record.where, description=record.description, settings=record.settings,
    )  # fmt: skip


def deleted_marker(record: EndpointRecord, keyring: Keyring) -> EndpointRecord:
    """The versioned delete of an endpoint: nothing sealed left in it."""
    return msgspec.structs.replace(
        record, version=record.version + 1, deleted=True, updated_at=utc_now_iso(), url="", headers=None, secrets=[],
        key_id=keyring.current_id, mac=None,
    )  # fmt: skip


Changed = Callable[[str, EndpointRecord | None], None]  # endpoint id, its record now (None: gone)
