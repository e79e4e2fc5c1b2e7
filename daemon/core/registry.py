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
(``daemon.core.secretbox``): a reader of the topic without the key learns none of them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import orjson

from daemon.core.clock import utc_now_iso
from daemon.core.config import EndpointConfig, SubscriptionConfig, WhereConfig
from daemon.core.secretbox import SecretBox

log = logging.getLogger(__name__)


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
    settings: dict[str, Any] = {}  # the other fields of EndpointConfig, as given


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


Record = EndpointRecord | TenantRecord
_decode = msgspec.json.Decoder(Record).decode
encode = msgspec.json.Encoder().encode


def endpoint_key(endpoint_id: str) -> str:
    return f"endpoint/{endpoint_id}"


def tenant_key(tenant_id: str) -> str:
    return f"tenant/{tenant_id}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Directory:
    """The state the topic describes, built by applying its records in order. Pure.

    ``apply`` returns whether a record was accepted; a rejected record changes nothing anywhere.
    """

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointRecord] = {}
        self.tenants: dict[str, TenantRecord] = {}
        self.graves: dict[str, int] = {}  # key -> the version it was deleted at
        self._tokens: dict[str, str] = {}  # sha256 of a token -> its tenant

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
        """Apply one record of the topic: (accepted, the record). A tombstone (None) is always accepted."""
        if value is None:
            self._drop(key)
            return True, None
        record = _decode(value)
        ident = record.id
        if key != (endpoint_key(ident) if isinstance(record, EndpointRecord) else tenant_key(ident)):
            raise ValueError(f"record of {ident!r} under key {key!r}")
        if record.version <= self.version(key):
            return False, record
        if record.deleted:
            self._drop(key)
            self.graves[key] = record.version
            return True, record
        self.graves.pop(key, None)
        if isinstance(record, EndpointRecord):
            self.endpoints[ident] = record
        else:
            old = self.tenants.get(ident)
            for token in old.tokens if old is not None else ():
                self._tokens.pop(token.sha256, None)
            self.tenants[ident] = record
            for token in record.tokens:
                self._tokens[token.sha256] = ident
        return True, record

    def _drop(self, key: str) -> None:
        kind, _, ident = key.partition("/")
        if kind == "endpoint":
            self.endpoints.pop(ident, None)
            return
        tenant = self.tenants.pop(ident, None)
        for token in tenant.tokens if tenant is not None else ():
            self._tokens.pop(token.sha256, None)

    def tenant_of_token(self, token: str) -> str | None:
        return self._tokens.get(token_hash(token))


def opened(
    record: EndpointRecord, box: SecretBox, now_ms: int | None = None
) -> tuple[EndpointConfig, SubscriptionConfig]:
    """The endpoint and subscription an endpoint record stands for, its sealed fields opened; secrets whose
    grace has ended left out. Raises ``SecretError`` (wrong key) or ``msgspec.ValidationError``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    bound = endpoint_key(record.id)
    live = [box.open(s.value, bound) for s in record.secrets if s.expires_at is None or s.expires_at > now_ms]
    fields: dict[str, Any] = {
        **record.settings,
        "id": record.id,
        "url": box.open(record.url, bound),
        "headers": orjson.loads(box.open(record.headers, bound)) if record.headers else {},
    }
    if live:
        fields["secrets"] = live
    endpoint = msgspec.convert(fields, EndpointConfig)
    subscription = SubscriptionConfig(
        endpoint=record.id, events=record.events, topics=record.topics, where=record.where
    )
    return endpoint, subscription


def routed(
    record: EndpointRecord, box: SecretBox, tenant_field: str | None
) -> tuple[EndpointConfig, SubscriptionConfig]:
    """What the router delivers an endpoint record as: ``opened``, and with ``api.tenant_field`` set, given a scope
    that its tenant's events only pass, whatever its own subscription says (no caller of the API can set or lift it).
    Raises as ``opened`` does."""
    config, subscription = opened(record, box)
    if tenant_field is not None:
        scope = WhereConfig(field=tenant_field, one_of=[record.tenant])
        subscription = msgspec.structs.replace(subscription, scope=scope)
    return config, subscription


def next_expiry(record: EndpointRecord, now_ms: int) -> int | None:
    """When the next of its secrets stops signing (unix ms), if one will."""
    pending = [s.expires_at for s in record.secrets if s.expires_at is not None and s.expires_at > now_ms]
    return min(pending) if pending else None


def sealed_record(
    box: SecretBox,
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
) -> EndpointRecord:
    """A new version of an endpoint record, its secrets, URL and headers sealed."""
    bound = endpoint_key(endpoint_id)
    now = utc_now_iso()
    return EndpointRecord(
        id=endpoint_id,
        tenant=tenant,
        version=version,
        created_at=created_at or now,
        updated_at=now,
        url=box.seal(url, bound),
        headers=box.seal(orjson.dumps(dict(headers)).decode(), bound) if headers else None,
        secrets=[SealedSecret(value=box.seal(secret, bound), expires_at=expires) for secret, expires in secrets],
        events=events,
        topics=topics,
        where=where,
        description=description,
        settings=dict(settings),
    )


Changed = Callable[[str, EndpointRecord | None], None]  # endpoint id, its record now (None: gone)
