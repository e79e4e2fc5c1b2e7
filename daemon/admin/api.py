"""The endpoints API (``/v1``): customers' webhook endpoints managed at run time, scoped by tenant.

JSON over the admin server, described by ``daemon/openapi.json`` (served at ``/v1/openapi.json``). The
platform's backend calls it with the admin token; a tenant's own token (stored only as a hash) limits a
caller to that tenant, and another tenant's endpoint is a 404 to it, never a 403. Errors follow the
Leadterra contract: 400 malformed (or not https, per the endpoint's profile), 401 missing or bad token,
404 unknown endpoint or tenant, 409 a conflicting update (or an endpoint of the config file, which the API
shows read-only), 422 unknown event types, 429 too many scans of Kafka under way (``daemon.admin.scans``); each
names the field. Validation is ``check-config``'s (``daemon.core.validate.check_endpoint``). State lives in the
endpoints topic (``daemon.kafka.store``); a write returns once this instance has applied it.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType
from yarl import URL

from daemon.admin import web as http
from daemon.admin.operate import Operator, Replay, ReplayCounts
from daemon.admin.portal.links import MAX_TTL_S, LinkKeys
from daemon.admin.scans import Found
from daemon.core.clock import iso_ms, utc_now_iso
from daemon.core.config import PORTAL_FEATURES, Config, EndpointConfig, PortalFeature
from daemon.core.errors import BadRequest, Conflict, NotFound, Unauthorized, Unavailable, Unprocessable
from daemon.core.model import IndexEntry, Outcome, decode_outcome, paused_by, tenant_may_lift
from daemon.core.profiles import PROFILES, pattern_matches
from daemon.core.rate import default_burst
from daemon.core.registry import (
    NOT_BY_API,
    EndpointRecord,
    TenantRecord,
    TokenRecord,
    deleted_marker,
    endpoint_key,
    live_secrets,
    opened,
    sealed_record,
    tenant_key,
    token_hash,
)
from daemon.core.resolve import resolve
from daemon.core.secretbox import Keyring
from daemon.core.validate import check_endpoint
from daemon.engine.health import REASON_OPERATOR, REASON_TENANT, Health, pause_text
from daemon.engine.operational import ACTOR_ADMIN, tenant_actor
from daemon.engine.settle import Settlement
from daemon.kafka.index import Cursor
from daemon.kafka.store import Store

log = logging.getLogger(__name__)

OPENAPI = Path(__file__).with_name("openapi.json")
TenantId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")]
_SUBSCRIPTION_FIELDS = ("events", "topics", "where")
_META_FIELDS = ("tenant", "description", "version")
_ENDPOINT_FIELDS = frozenset(f.name for f in msgspec.structs.fields(EndpointConfig)) - NOT_BY_API
# What only the platform (the admin token) may set: a contract's https rule, and what one endpoint may hold of an
# instance (its share of the in-flight cap and of the connections).
_ADMIN_ONLY_FIELDS = ("allow_http", "max_concurrency", "queue_size")
_LIST_LIMIT = 1000
_DELIVERY_ATTEMPTS = 100  # the newest attempts of one delivery its lookup answers


class Caller(msgspec.Struct, frozen=True):
    tenant: str | None  # None: the platform itself (the admin token)


class TenantBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: TenantId


class EndpointBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A create or an update of ``/v1/endpoints``: which fields were given (UNSET: not). The endpoint's and the
    subscription's fields are checked by the config file's own rules (``check_endpoint``), which name the field; an
    unknown field is a 400 here."""

    url: Any = UNSET
    profile: Any = UNSET
    secret: Any = UNSET
    timeout_s: Any = UNSET
    max_concurrency: Any = UNSET
    headers: Any = UNSET
    allow_http: Any = UNSET
    retry: Any = UNSET
    queue_size: Any = UNSET
    pause_after_failures: Any = UNSET
    while_paused: Any = UNSET
    rate_limit: Any = UNSET
    circuit_breaker: Any = UNSET
    ordering: Any = UNSET
    when_key_fails: Any = UNSET
    events: Any = UNSET
    topics: Any = UNSET
    where: Any = UNSET
    tenant: TenantId | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=500)] | UnsetType | None = UNSET
    version: Annotated[int, Meta(ge=0)] | str | UnsetType | None = UNSET  # an update's expected version

    def given(self) -> dict[str, Any]:
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not UNSET}


class PortalLinkBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A portal link's request: how long it lives (default ``portal.link_ttl_s``), where its "back" goes, and what
    its holder may do (default: everything a tenant token may)."""

    expires_in_s: Annotated[int, Meta(ge=60, le=MAX_TTL_S)] | None = None
    return_url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    features: Annotated[list[PortalFeature], Meta(max_length=len(PORTAL_FEATURES))] | None = None


class RotateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    secret: Annotated[str, Meta(min_length=1, max_length=512)] | None = None
    grace_s: Annotated[float, Meta(ge=0, le=30 * 86400)] | None = None  # default: api.rotation_grace_s


class Api:
    """What the ``/v1`` routes do, built once start-up has reached Kafka (``install`` serves them before)."""

    def __init__(
        self,
        *,
        store: Store,
        settlement: Settlement,
        health: Health,
        operator: Operator,
        keyring: Keyring,
        admin_token: str | None,
        environ: Mapping[str, str],
        rotation_grace_s: float,
    ) -> None:
        self._store = store
        self._settlement = settlement
        self._health = health
        self._operator = operator
        self._keyring = keyring
        self._admin_token = admin_token
        self._environ = environ
        self._grace_s = rotation_grace_s
        self._static: tuple[object, dict[str, list[str]]] | None = None  # (config, events by endpoint of its file)
        self._creating: dict[str, int] = {}  # tenant -> its creations waiting for Kafka here (counted against its cap)
        self.links = LinkKeys(admin_token) if admin_token else None  # the portal's links, signed under the admin token

    @property
    def config(self) -> Config:
        """The running config (the routing's: a reload changes it)."""
        return self._settlement.routing.config

    async def handle(self, route: Route, request: web.Request) -> web.Response:
        """Answer one request for ``route``, after authenticating its caller."""
        caller = self._caller(request)
        if route.admin_only and caller.tenant is not None:
            raise NotFound("no such resource")  # a tenant token never learns what it may not see
        return await route.handler(self, request, caller)

    def _caller(self, request: web.Request) -> Caller:
        token = http.bearer(request)
        if token is None:
            raise Unauthorized("a valid bearer token is required")
        if self._admin_token is not None and hmac.compare_digest(token.encode(), self._admin_token.encode()):
            return Caller(None)
        self._tenants_may_call()
        tenant = self._store.directory.tenant_of_token(token)
        if tenant is None:
            raise Unauthorized("a valid bearer token is required")
        if self._settlement.routing.config.api.tenant_field is None:
            raise Unauthorized("tenant tokens are refused while api.tenant_field is not set")
        return Caller(tenant)

    def _tenants_may_call(self) -> None:
        """Unavailable while this instance is more than ``api.max_token_lag_s`` behind the endpoints topic (it may
        hold a token, or a tenant, that another instance deleted)."""
        api = self._settlement.routing.config.api
        behind = self._store.lagging(api.max_token_lag_s) if api.tenant_field is not None else None
        if behind is not None:
            raise Unavailable(f"tenant tokens are refused while this instance is {behind}: try again shortly")

    def tenant_caller(self, tenant: str) -> Caller:
        """A caller acting for ``tenant`` under the rules of a tenant token (the portal's): Unavailable while this
        instance lags the endpoints topic, Unauthorized while api.tenant_field is unset or for a tenant that does
        not exist."""
        self._tenants_may_call()
        if self._settlement.routing.config.api.tenant_field is None:
            raise Unauthorized("tenants are refused while api.tenant_field is not set")
        if tenant not in self._store.directory.tenants:
            raise Unauthorized(f"no tenant {tenant!r}")
        return Caller(tenant)

    def lagging(self) -> str | None:
        """How this instance is more than ``api.max_token_lag_s`` behind the endpoints topic (what ``/readyz`` says),
        or None."""
        api = self._settlement.routing.config.api
        behind = self._store.lagging(api.max_token_lag_s)
        if behind is None:
            return None
        return f"{behind}: tenant tokens are refused" if api.tenant_field is not None else behind

    # --- tenants ---

    async def create_tenant(self, request: web.Request, caller: Caller) -> web.Response:
        body = await http.body(request, TenantBody)
        directory = self._store.directory
        if body.id in directory.tenants:
            raise Conflict(f"tenant {body.id!r} exists")
        record = TenantRecord(id=body.id, version=directory.version(tenant_key(body.id)) + 1, created_at=utc_now_iso())
        await self._store.write(record)
        return http.json_response(_tenant_view(record), 201)

    async def get_tenant(self, request: web.Request, caller: Caller) -> web.Response:
        return http.json_response(_tenant_view(self._tenant(request.match_info["tenant"], caller)))

    async def create_token(self, request: web.Request, caller: Caller) -> web.Response:
        tenant = self._tenant(request.match_info["tenant"], caller)
        if self._settlement.routing.config.api.tenant_field is None:
            raise Conflict(
                "api.tenant_field is not set: an endpoint receives every tenant's events, so no tenant may hold a token"
            )
        token_id = "tok_" + secrets.token_hex(6)
        token = f"wrt_{tenant.id}_{secrets.token_urlsafe(32)}"
        entry = TokenRecord(id=token_id, sha256=token_hash(token), created_at=utc_now_iso())
        record = msgspec.structs.replace(tenant, version=tenant.version + 1, tokens=[*tenant.tokens, entry])
        await self._store.write(record)
        view = {"id": token_id, "tenant": tenant.id, "token": token, "created_at": entry.created_at}
        return http.json_response(view, 201)

    async def delete_token(self, request: web.Request, caller: Caller) -> web.Response:
        tenant = self._tenant(request.match_info["tenant"], caller)
        token_id = request.match_info["token_id"]
        kept = [t for t in tenant.tokens if t.id != token_id]
        if len(kept) == len(tenant.tokens):
            raise NotFound(f"no token {token_id!r}")
        await self._store.write(msgspec.structs.replace(tenant, version=tenant.version + 1, tokens=kept))
        return web.Response(status=204)

    async def create_portal_link(self, request: web.Request, caller: Caller) -> web.Response:
        """A signed link to the tenant's portal (``daemon.admin.portal``), valid for ``expires_in_s``."""
        tenant = self._tenant(request.match_info["tenant"], caller)
        body = await http.body(request, PortalLinkBody)
        portal = self.config.portal
        if not portal.enabled:
            raise Conflict("portal.enabled is false: the portal is off")
        if self.config.api.tenant_field is None or self.links is None:
            raise Conflict("api.tenant_field is not set: an endpoint would receive every tenant's events, so no tenant "
                           "may have a portal")  # fmt: skip
        ttl = body.expires_in_s or portal.link_ttl_s
        if ttl > portal.max_link_ttl_s:
            raise BadRequest(f"expires_in_s: at most {portal.max_link_ttl_s} (portal.max_link_ttl_s)")
        if body.return_url is not None:
            _check_return_url(body.return_url)
        token, claims = self.links.mint(tenant.id, ttl, time.time(), body.return_url, body.features)
        base = (portal.public_url or f"{request.scheme}://{request.host}").rstrip("/")
        view = {"url": f"{base}/portal/{token}/", "tenant": tenant.id, "expires_at": iso_ms(claims.exp * 1000),
                "features": claims.features}  # fmt: skip
        return http.json_response(view, 201)

    def _tenant(self, tenant_id: str, caller: Caller) -> TenantRecord:
        tenant = self._store.directory.tenants.get(tenant_id)
        if tenant is None or (caller.tenant is not None and caller.tenant != tenant_id):
            raise NotFound(f"no tenant {tenant_id!r}")
        return tenant

    # --- endpoints ---

    async def create(self, request: web.Request, caller: Caller) -> web.Response:
        return http.json_response(
            await self.create_endpoint((await http.body(request, EndpointBody)).given(), caller), 201
        )

    async def create_endpoint(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Create an endpoint from the given fields of an ``EndpointBody``; its view, with its secret this once."""
        tenant = self._scope(body.pop("tenant", None), caller)
        if "version" in body:
            raise BadRequest("version: not for a new endpoint")
        most = self._settlement.routing.config.api.max_endpoints_per_tenant
        held = self._store.directory.endpoints_of(tenant) + self._creating.get(tenant, 0)
        if held >= most:
            raise Conflict(f"tenant: {tenant!r} has {held} endpoints, the most api.max_endpoints_per_tenant allows "
                           "(delete one first)")  # fmt: skip
        endpoint_id = "ep_" + base64.b32encode(secrets.token_bytes(10)).decode().lower()
        fields, subscription, meta = _split(body, caller)
        ceiling = self._settlement.routing.config.api.max_rate_limit_per_second
        if caller.tenant is not None and ceiling is not None:
            fields.setdefault("rate_limit", {"per_second": ceiling})
        _within_ceiling(fields, caller, ceiling)
        if fields.get("secret") is None:  # not given: one is generated for the profiles that sign
            fields.pop("secret", None)
            profile = PROFILES.get(str(fields.get("profile") or "standard-webhooks"))
            generated = _new_secret(profile.key_source) if profile is not None else None
            if generated is not None:
                fields["secret"] = generated
        config, sub = self._checked(endpoint_id, fields, subscription)  # a secret of the wrong type is a 400
        secret = config.secret
        record = self._record(config, sub, tenant, 1, None, meta.get("description"), [(secret, None)] if secret else [])
        self._creating[tenant] = self._creating.get(tenant, 0) + 1
        try:
            await self._store.write(record)
        finally:
            left = self._creating.pop(tenant) - 1
            if left:
                self._creating[tenant] = left
        self._announce("endpoint.created", record, caller)
        view = self._view(record)
        if secret is not None:
            view["secret"] = secret  # shown once: never again
        return view

    def _announce(self, kind: str, record: EndpointRecord, caller: Caller) -> None:
        """An operational event about an endpoint of the API, naming who did it (``daemon.engine.operational``)."""
        operational = self._settlement.operational
        if operational is not None:
            operational.emit(kind, record.id, _actor(caller), tenant=record.tenant, version=record.version)

    async def list_endpoints(self, request: web.Request, caller: Caller) -> web.Response:
        query = request.query
        limit = _bounded(query.get("limit"), 100, _LIST_LIMIT)
        rows, next_after = self.endpoint_views(caller, query.get("tenant"), query.get("status"),
                                               query.get("event_type"), query.get("after", ""), limit)  # fmt: skip
        return http.json_response({"data": rows, "next_after": next_after})

    def endpoint_views(
        self, caller: Caller, tenant: str | None, status: str | None = None, event_type: str | None = None,
        after: str = "", limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:  # fmt: skip
        """A page of the endpoints a caller may see, in id order, and the ``after`` of the next page (None: last)."""
        if caller.tenant is not None:
            if tenant is not None and tenant != caller.tenant:
                raise NotFound(f"no tenant {tenant!r}")
            tenant = caller.tenant
        if status not in (None, "active", "paused"):
            raise BadRequest("status: must be active or paused")
        if tenant is not None and tenant not in self._store.directory.tenants:
            raise NotFound(f"no tenant {tenant!r}")
        rows: list[dict[str, Any]] = []
        for endpoint_id in self._ids(caller, tenant):
            if endpoint_id <= after:
                continue
            record = self._store.directory.endpoints.get(endpoint_id)
            if status is not None and self._status(endpoint_id)["status"] != status:
                continue
            events = record.events if record is not None else self._static_events(endpoint_id)
            if event_type is not None and not _subscribed(events, event_type):
                continue
            rows.append(self._view(record) if record is not None else self._static_view(endpoint_id))
            if len(rows) > limit:
                break
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, rows[-1]["id"] if more else None

    async def get(self, request: web.Request, caller: Caller) -> web.Response:
        return http.json_response(self.view_of(request.match_info["id"], caller))

    async def update(self, request: web.Request, caller: Caller) -> web.Response:
        body = (await http.body(request, EndpointBody)).given()
        if_match = request.headers.get("If-Match", "")
        return http.json_response(await self.update_endpoint(request.match_info["id"], body, if_match, caller))

    async def update_endpoint(
        self, endpoint_id: str, body: dict[str, Any], if_match: str, caller: Caller
    ) -> dict[str, Any]:
        """Change the given fields of an ``EndpointBody`` (the version expected in it or ``if_match``); its view."""
        record = self._own(endpoint_id, caller)
        if not body:
            raise BadRequest("the request body must name at least one field to change")
        _expect_version(record, body, if_match)
        if "tenant" in body and body.pop("tenant") != record.tenant:
            raise BadRequest("tenant: an endpoint cannot change tenants")
        if "secret" in body or "secrets" in body:
            raise BadRequest("secret: change it with rotate-secret")
        current, current_sub = self._opened(record)
        fields = {k: v for k, v in msgspec.to_builtins(current).items() if k in _ENDPOINT_FIELDS and v is not None}
        fields.pop("secrets", None)
        subscription = {k: v for k, v in msgspec.to_builtins(current_sub).items() if k in _SUBSCRIPTION_FIELDS}
        new_fields, new_sub, meta = _split(body, caller)
        _within_ceiling(new_fields, caller, self._settlement.routing.config.api.max_rate_limit_per_second)
        fields.update(new_fields)
        subscription.update({k: v for k, v in new_sub.items()})
        subscription = {k: v for k, v in subscription.items() if v is not None}
        if current.secrets:
            fields["secrets"] = current.secrets
        config, sub = self._checked(record.id, fields, subscription)
        description = meta.get("description", record.description)
        updated = self._record(config, sub, record.tenant, record.version + 1, record.created_at, description,
                               live_secrets(record, self._keyring))  # fmt: skip
        await self._store.write(updated)
        self._announce("endpoint.updated", updated, caller)
        return self._view(updated)

    async def delete(self, request: web.Request, caller: Caller) -> web.Response:
        await self.delete_endpoint(request.match_info["id"], caller)
        return web.Response(status=204)

    async def delete_endpoint(self, endpoint_id: str, caller: Caller) -> None:
        record = self._own(endpoint_id, caller)
        await self._store.write(deleted_marker(record, self._keyring))
        await self._store.tombstone(endpoint_key(record.id))
        self._announce("endpoint.deleted", record, caller)

    async def pause(self, request: web.Request, caller: Caller) -> web.Response:
        return http.json_response(self.pause_endpoint(request.match_info["id"], caller))

    def pause_endpoint(self, endpoint_id: str, caller: Caller) -> dict[str, Any]:
        endpoint_id = self._visible(endpoint_id, caller)
        if caller.tenant is None:
            self._health.pause(endpoint_id, REASON_OPERATOR, "paused through the API", _actor(caller))
        else:
            self._health.pause(endpoint_id, REASON_TENANT, "paused through the API by its tenant", _actor(caller))
        return self.view_of(endpoint_id, caller)

    async def resume(self, request: web.Request, caller: Caller) -> web.Response:
        return http.json_response(self.resume_endpoint(request.match_info["id"], caller))

    def resume_endpoint(self, endpoint_id: str, caller: Caller) -> dict[str, Any]:
        """Resume an endpoint; a tenant lifts only its own pauses and those its failures caused (409 naming who
        paused for the platform's and the contract's)."""
        endpoint_id = self._visible(endpoint_id, caller)
        state = self._health.states.get(endpoint_id)
        if caller.tenant is not None and state is not None and not tenant_may_lift(state):
            raise Conflict(f"endpoint {endpoint_id!r} is {pause_text(state)}: only the platform can resume it")
        self._health.resume(endpoint_id, _actor(caller))
        return self.view_of(endpoint_id, caller)

    async def ping(self, request: web.Request, caller: Caller) -> web.Response:
        return http.json_response(await self.ping_endpoint(request.match_info["id"], caller))

    async def ping_endpoint(self, endpoint_id: str, caller: Caller) -> Outcome:
        return await self._operator.ping(self._visible(endpoint_id, caller))

    async def replay(self, request: web.Request, caller: Caller) -> web.Response:
        endpoint_id = request.match_info["id"]
        self._visible(endpoint_id, caller)
        return http.json_response(await self.replay_endpoint(endpoint_id, await http.body(request, Replay), caller))

    async def replay_endpoint(self, endpoint_id: str, spec: Replay, caller: Caller) -> ReplayCounts:
        return await self._operator.replay(self._visible(endpoint_id, caller), spec, caller.tenant)

    async def rotate(self, request: web.Request, caller: Caller) -> web.Response:
        endpoint_id = request.match_info["id"]
        self._own(endpoint_id, caller)
        return http.json_response(await self.rotate_secret(endpoint_id, await http.body(request, RotateBody), caller))

    async def rotate_secret(self, endpoint_id: str, body: RotateBody, caller: Caller) -> dict[str, Any]:
        """A new signing secret (the old ones keep signing for the grace); the view, with the new secret."""
        record = self._own(endpoint_id, caller)
        config, sub = self._opened(record)
        profile = PROFILES[config.profile]
        if profile.key_source == "optional":
            raise BadRequest(f"secret: the {config.profile} contract carries no secret")
        secret = body.secret or _new_secret(profile.key_source) or ""
        grace = self._grace_s if body.grace_s is None else body.grace_s
        expires = int((time.time() + grace) * 1000)
        live = live_secrets(record, self._keyring)
        old = [(value, expires if until is None else until) for value, until in live]
        secrets_now = [(secret, None), *([] if grace == 0 else old)]
        checked, _ = self._checked(record.id, {**msgspec.to_builtins(config), "secrets": [s for s, _ in secrets_now],
                                               "secret": None}, msgspec.to_builtins(sub))  # fmt: skip
        updated = self._record(checked, sub, record.tenant, record.version + 1, record.created_at, record.description,
                               secrets_now)  # fmt: skip
        await self._store.write(updated)
        self._announce("secret.rotated", updated, caller)
        view = self._view(updated)
        view["secret"] = secret
        return view

    def header_names(self, endpoint_id: str, caller: Caller) -> list[str]:
        """The names of an endpoint's custom headers (their values may be credentials: never shown)."""
        config, _ = self._opened(self._own(endpoint_id, caller))
        return sorted(config.headers)

    def secrets_of(self, endpoint_id: str, caller: Caller) -> list[tuple[str, int | None]]:
        """An endpoint's signing secrets that still sign, current first, each with when it stops (unix ms; None:
        never): what the portal reveals on demand. The ``/v1`` API never answers a secret after create or rotate."""
        return live_secrets(self._own(endpoint_id, caller), self._keyring)

    async def attempts(self, request: web.Request, caller: Caller) -> web.Response:
        limit = _bounded(request.query.get("limit"), 20, 200)
        return http.json_response({"data": await self.attempts_of(request.match_info["id"], limit, caller)})

    async def attempts_of(self, endpoint_id: str, limit: int, caller: Caller) -> list[Outcome]:
        """The endpoint's newest ``limit`` results records, newest first (a scan of the caller's: bounded)."""
        endpoint_id = self._visible(endpoint_id, caller)
        values = await self._operator.scans.attempts(caller.tenant, endpoint_id, limit)
        return [decode_outcome(v) for v in values]

    async def redeliver(self, request: web.Request, caller: Caller) -> web.Response:
        return http.json_response(await self.redeliver_delivery(request.match_info["delivery_id"], caller))

    async def redeliver_delivery(self, delivery_id: str, caller: Caller) -> Outcome:
        """One attempt of a past delivery (never retried), found by its id. A tenant's lookup reads its own
        endpoints' records only: another tenant's delivery is answered as one that never was (the same 404, naming
        the delivery alone)."""
        own = None if caller.tenant is None else self._endpoints_of(caller.tenant)
        where = await self._operator.locate(delivery_id, caller.tenant, own)
        if own is not None and where.endpoint_id not in own:
            raise self._operator.no_delivery(delivery_id)
        return await self._operator.redeliver(delivery_id, where)

    # --- deliveries, by the delivery index ---

    @property
    def indexed(self) -> bool:
        """True when the delivery index is on (a search of deliveries is its alone)."""
        return self._operator.scans.index is not None

    async def deliveries(self, request: web.Request, caller: Caller) -> web.Response:
        q = request.query
        query = DeliveryQuery(
            endpoint_id=q.get("endpoint_id") or None, tenant=q.get("tenant") or None, status=q.get("status") or None,
            event_type=q.get("event_type") or None, since_ms=time_ms(q.get("since"), "since"),
            until_ms=time_ms(q.get("until"), "until"), before=_cursor(q.get("before")),
            limit=_bounded(q.get("limit"), 50, 200),
        )  # fmt: skip
        entries, note, next_before = await self.search_deliveries(query, caller)
        data = [entry_view(e) for e in entries]
        return http.json_response({"data": data, "next_before": next_before, "note": note})

    async def search_deliveries(
        self, query: DeliveryQuery, caller: Caller
    ) -> tuple[list[IndexEntry], str | None, str | None]:
        """The attempts the caller may see that ``query`` asks for, newest first, from the delivery index; why some may
        be missing (the index behind its topic; None: it is not); and the ``before`` of the next page (None: none)."""
        ids: Collection[str] | None = None
        if query.endpoint_id is not None:
            ids = [self._visible(query.endpoint_id, caller)]
        elif caller.tenant is not None or query.tenant is not None:
            ids = self._endpoints_of(self._scope(query.tenant, caller))
        entries, note = await self._operator.scans.search(
            caller.tenant, ids, status=query.status, event_type=query.event_type, since_ms=query.since_ms,
            until_ms=query.until_ms, before=query.before, limit=query.limit,
        )  # fmt: skip
        last = entries[-1] if entries and len(entries) == query.limit else None
        return entries, note, (f"{last.at_ms}.{last.partition}.{last.offset}" if last is not None else None)

    async def delivery(self, request: web.Request, caller: Caller) -> web.Response:
        delivery_id = request.match_info["delivery_id"]
        found = await self.delivery_attempts(delivery_id, caller)
        data = [decode_outcome(v) for v in found.records]
        return http.json_response({"data": data, "found_by": found.by, "note": found.note})

    async def delivery_attempts(self, delivery_id: str, caller: Caller) -> Found:
        """A delivery's attempts (its newest ``_DELIVERY_ATTEMPTS`` results records, oldest first), found by the
        delivery index (else by the bounded scan, which ``note`` says why). A tenant finds its own endpoints'
        deliveries only: another tenant's is the same 404 as one that never was."""
        own = None if caller.tenant is None else self._endpoints_of(caller.tenant)
        found = await self._operator.find(delivery_id, caller.tenant, own, _DELIVERY_ATTEMPTS)
        if not found.records:
            raise self._operator.no_delivery(delivery_id, found.note)
        return found

    # --- the event catalogue ---

    def catalogue(self) -> list[dict[str, Any]]:
        """The config's ``[[event_types]]``, in its order: what customers pick from when they subscribe."""
        return [msgspec.to_builtins(entry) for entry in self._settlement.routing.config.event_types]

    async def event_types(self, request: web.Request, caller: Caller) -> web.Response:
        return http.json_response({"data": self.catalogue()})

    # --- helpers ---

    def _scope(self, tenant: Any, caller: Caller) -> str:
        if caller.tenant is not None:
            if tenant is not None and tenant != caller.tenant:
                raise NotFound(f"no tenant {tenant!r}")
            return caller.tenant
        if not isinstance(tenant, str) or not tenant:
            raise BadRequest("tenant: required")
        if tenant not in self._store.directory.tenants:
            raise NotFound(f"no tenant {tenant!r}")
        return tenant

    def _checked(self, endpoint_id: str, fields: dict[str, Any], subscription: dict[str, Any]) -> tuple[Any, Any]:
        fields = {**fields, "id": endpoint_id}
        subscription = {**subscription, "endpoint": endpoint_id}
        subscription.setdefault("events", [])
        config = self._settlement.routing.config
        endpoint, sub, faults, unknown = check_endpoint(config, self._environ, fields, subscription)
        if faults or endpoint is None or sub is None:
            raise BadRequest("; ".join(faults))
        if unknown:
            raise Unprocessable("; ".join(unknown))
        if not sub.events:
            raise BadRequest("events: at least one event type is required")
        return endpoint, sub

    def _record(
        self, config: EndpointConfig, sub: Any, tenant: str, version: int, created_at: str | None,
        description: str | None, secrets_with_expiry: list[tuple[str, int | None]] | None,
    ) -> EndpointRecord:  # fmt: skip
        settings = {
            k: v
            for k, v in msgspec.to_builtins(config).items()
            if k in _ENDPOINT_FIELDS and k not in ("url", "headers", "secret", "secrets") and v is not None
        }
        return sealed_record(
            self._keyring, endpoint_id=config.id, tenant=tenant, version=version, created_at=created_at,
            url=config.url, headers=config.headers, secrets=secrets_with_expiry or [], events=sub.events,
            topics=sub.topics, where=sub.where, description=description, settings=settings,
        )  # fmt: skip

    def _opened(self, record: EndpointRecord) -> tuple[EndpointConfig, Any]:
        return opened(record, self._keyring)

    def _own(self, endpoint_id: str, caller: Caller) -> EndpointRecord:
        """An API endpoint the caller may change; 409 for one of the config file, 404 for any it may not see."""
        record = self._store.directory.endpoints.get(endpoint_id)
        if record is not None and (caller.tenant is None or self._tenants_own(record, caller.tenant)):
            return record
        if caller.tenant is None and endpoint_id in self._settlement.routing.endpoints:
            raise Conflict(f"endpoint {endpoint_id!r} is defined in the config file: read-only here")
        raise NotFound(f"no endpoint {endpoint_id!r}")

    def _visible(self, endpoint_id: str, caller: Caller) -> str:
        record = self._store.directory.endpoints.get(endpoint_id)
        if record is not None and (caller.tenant is None or self._tenants_own(record, caller.tenant)):
            return endpoint_id
        if caller.tenant is None and endpoint_id in self._settlement.routing.endpoints:
            return endpoint_id  # the config file's: the platform may act on it
        raise NotFound(f"no endpoint {endpoint_id!r}")

    def _tenants_own(self, record: EndpointRecord, tenant: str) -> bool:
        """A tenant's record, and not of an id the config file defines (the platform named one of its endpoints as a
        tenant's: the id, its deliveries, health and actions are the file endpoint's now, the record is not routed)."""
        return record.tenant == tenant and record.id not in self._settlement.routing.static

    def _endpoints_of(self, tenant: str) -> frozenset[str]:
        """The ids of a tenant's endpoints (of the API: the config file's belong to the platform)."""
        return frozenset(self._ids_of(tenant))

    def _ids_of(self, tenant: str) -> list[str]:
        """A tenant's endpoint ids in order, less any the config file defines (``_tenants_own``)."""
        static = self._settlement.routing.static
        return [i for i in self._store.directory.ids_of(tenant) if i not in static]

    def view_of(self, endpoint_id: str, caller: Caller) -> dict[str, Any]:
        """What ``GET /v1/endpoints/{id}`` answers; NotFound for an endpoint the caller may not see."""
        self._visible(endpoint_id, caller)
        record = self._store.directory.endpoints.get(endpoint_id)
        return self._view(record) if record is not None else self._static_view(endpoint_id)

    def _ids(self, caller: Caller, tenant: str | None) -> list[str]:
        """The endpoint ids a caller may list (of one tenant, when given), in order; views are built per page."""
        directory = self._store.directory
        if tenant is not None:
            return self._ids_of(tenant)
        api = directory.endpoints
        ids = list(api)
        if caller.tenant is None:
            ids += [i for i in self._settlement.routing.endpoints if i not in api]
        ids.sort()
        return ids

    def _status(self, endpoint_id: str) -> dict[str, Any]:
        state = self._health.states.get(endpoint_id)
        paused = state is not None and state.paused
        return {
            "status": "paused" if paused else "active",
            "paused_reason": state.reason if paused and state else None,
            "paused_by": paused_by(state),
            "circuit": self._settlement.circuit_of(endpoint_id),
        }

    def _view(self, record: EndpointRecord) -> dict[str, Any]:
        config, sub = self._opened(record)
        return {
            "id": record.id,
            "tenant": record.tenant,
            "url": safe_url(config.url),
            "events": list(sub.events),
            "topics": sub.topics,
            "where": msgspec.to_builtins(sub.where) if sub.where is not None else None,
            "profile": config.profile,
            "description": record.description,
            **self._status(record.id),
            "version": record.version,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "managed": "api",
            "settings": record.settings,
        }

    def _static_events(self, endpoint_id: str) -> list[str]:
        """The event patterns an endpoint of the config file is subscribed to (organisations expanded), indexed
        once per config."""
        config = self._settlement.routing.config
        if self._static is None or self._static[0] is not config:
            events: dict[str, list[str]] = {}
            for sub in resolve(config).subscriptions:
                known = events.setdefault(sub.endpoint, [])
                known.extend(e for e in sub.events if e not in known)
            self._static = (config, events)
        return self._static[1].get(endpoint_id, [])

    def _static_view(self, endpoint_id: str) -> dict[str, Any]:
        config = self._settlement.routing.endpoints.configs[endpoint_id]
        return {
            "id": endpoint_id,
            "tenant": None,
            "url": safe_url(config.url),
            "events": self._static_events(endpoint_id),
            "topics": None,
            "where": None,
            "profile": config.profile,
            "description": None,
            **self._status(endpoint_id),
            "version": 0,
            "created_at": None,
            "updated_at": None,
            "managed": "config",
            "settings": {},
        }


class Route(NamedTuple):
    method: str
    path: str
    handler: Callable[[Api, web.Request, Caller], Awaitable[web.Response]]
    admin_only: bool  # the platform's (the admin token) only: a tenant's token is answered 404


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/tenants", Api.create_tenant, True),
    Route("GET", "/v1/tenants/{tenant}", Api.get_tenant, False),
    Route("POST", "/v1/tenants/{tenant}/tokens", Api.create_token, True),
    Route("DELETE", "/v1/tenants/{tenant}/tokens/{token_id}", Api.delete_token, True),
    Route("POST", "/v1/endpoints", Api.create, False),
    Route("GET", "/v1/endpoints", Api.list_endpoints, False),
    Route("GET", "/v1/endpoints/{id}", Api.get, False),
    Route("PATCH", "/v1/endpoints/{id}", Api.update, False),
    Route("DELETE", "/v1/endpoints/{id}", Api.delete, False),
    Route("POST", "/v1/endpoints/{id}/pause", Api.pause, False),
    Route("POST", "/v1/endpoints/{id}/resume", Api.resume, False),
    Route("POST", "/v1/endpoints/{id}/ping", Api.ping, False),
    Route("POST", "/v1/endpoints/{id}/replay", Api.replay, False),
    Route("POST", "/v1/endpoints/{id}/rotate-secret", Api.rotate, False),
    Route("GET", "/v1/endpoints/{id}/attempts", Api.attempts, False),
    Route("GET", "/v1/deliveries", Api.deliveries, False),
    Route("GET", "/v1/deliveries/{delivery_id}", Api.delivery, False),
    Route("POST", "/v1/deliveries/{delivery_id}/redeliver", Api.redeliver, False),
    Route("GET", "/v1/event-types", Api.event_types, False),
    Route("POST", "/v1/tenants/{tenant}/portal-links", Api.create_portal_link, True),
)


def install(app: web.Application, api: Callable[[], Api | None], not_ready: Callable[[], str | None]) -> None:
    """Add the ``/v1`` routes to the admin server's app, before the daemon has reached Kafka: until it has (and
    built its ``Api``), they answer 503 with the reason; the OpenAPI document answers at once."""

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")

    app.router.add_get("/v1/openapi.json", openapi)
    for route in ROUTES:

        async def handler(request: web.Request, route: Route = route) -> web.Response:
            current = api()
            if current is None:
                raise Unavailable(f"not available yet: {not_ready() or 'starting'}")
            return await current.handle(route, request)

        app.router.add_route(route.method, route.path, handler)


def _split(body: dict[str, Any], caller: Caller) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A request body as (endpoint fields, subscription fields, meta fields); unknown fields are a 400, and so are
    the admin's own fields from a tenant's token."""
    if caller.tenant is not None:
        for key in _ADMIN_ONLY_FIELDS:
            if key in body:
                raise BadRequest(f"{key}: set by the platform (the admin token) only")
    fields: dict[str, Any] = {}
    subscription: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for key, value in body.items():
        if key in _SUBSCRIPTION_FIELDS:
            subscription[key] = value
        elif key in _META_FIELDS:
            meta[key] = value
        elif key in _ENDPOINT_FIELDS:
            fields[key] = value
        else:
            raise BadRequest(f"{key}: unknown field")
    if (
        "description" in meta
        and meta["description"] is not None
        and not (isinstance(meta["description"], str) and len(meta["description"]) <= 500)
    ):
        raise BadRequest("description: must be a string of at most 500 characters")
    return fields, subscription, meta


def _actor(caller: Caller) -> str:
    """Who an operational event says did it: the platform (the admin token) or which tenant's token."""
    return ACTOR_ADMIN if caller.tenant is None else tenant_actor(caller.tenant)


def _within_ceiling(fields: dict[str, Any], caller: Caller, ceiling: float | None) -> None:
    """A tenant's token may give an endpoint a ``rate_limit`` up to ``api.max_rate_limit_per_second`` (a burst of at
    most one second's worth of it), never none: BadRequest otherwise. The platform's token sets any."""
    if caller.tenant is None or ceiling is None or "rate_limit" not in fields:
        return
    limit = fields["rate_limit"]
    most = f"at most api.max_rate_limit_per_second ({ceiling:g})"
    if not isinstance(limit, dict):
        raise BadRequest(f"rate_limit: required for a tenant's endpoint, with per_second {most}")
    per_second, burst = limit.get("per_second"), limit.get("burst")
    if isinstance(per_second, int | float) and not isinstance(per_second, bool) and per_second > ceiling:
        raise BadRequest(f"rate_limit.per_second: {most}")
    if isinstance(burst, int) and not isinstance(burst, bool) and burst > default_burst(ceiling):
        raise BadRequest(f"rate_limit.burst: at most {default_burst(ceiling)} (one second of {most})")


def _expect_version(record: EndpointRecord, body: dict[str, Any], if_match: str) -> None:
    """An update may name the version it expects in the body (``version``: an integer or its string, null for none;
    taken out of ``body``), in ``If-Match``, or both; each that is given must be the endpoint's version (0 never is):
    Conflict if not."""
    expected: list[str] = []
    version = body.pop("version", None)
    if isinstance(version, bool) or not isinstance(version, int | str | None):
        raise BadRequest("version: must be an integer")
    if version is not None:
        expected.append(str(version))
    if if_match.strip().strip('"'):
        expected.append(if_match.strip().strip('"'))
    for given in expected:
        if given != str(record.version):
            raise Conflict(f"version: the endpoint is at version {record.version}, not {given}")


class DeliveryQuery(msgspec.Struct, kw_only=True):
    """A search of deliveries: of one endpoint, or of one tenant's, or (the platform) of every endpoint; by outcome,
    event type and time (unix ms, inclusive), a page of ``limit`` older than ``before``."""

    endpoint_id: str | None = None
    tenant: str | None = None
    status: str | None = None
    event_type: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    before: Cursor | None = None
    limit: int = 50


def time_ms(text: str | None, field: str) -> int | None:
    """Unix ms of an RFC 3339 time (one without its offset is UTC); None for none; BadRequest naming ``field``."""
    if text is None or not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{field}: not a time (RFC 3339, e.g. 2026-12-01T10:00:00Z)") from None
    return int((value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp() * 1000)


def _cursor(text: str | None) -> Cursor | None:
    if text is None or not text:
        return None
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) < 20 for p in parts):
        raise BadRequest("before: not a page's next_before")
    return Cursor(int(parts[0]), int(parts[1]), int(parts[2]))


def entry_view(entry: IndexEntry) -> dict[str, Any]:
    """An index entry as the API shows it: its fields, the time as RFC 3339 beside its unix ms."""
    return {**msgspec.to_builtins(entry), "timestamp": iso_ms(entry.at_ms)}


def _bounded(given: str | None, default: int, most: int) -> int:
    if given is None:
        return default
    try:
        value = int(given)
    except ValueError:
        raise BadRequest("limit: must be an integer") from None
    if not 1 <= value <= most:
        raise BadRequest(f"limit: must be 1..{most}")
    return value


def _new_secret(key_source: str) -> str | None:
    if key_source == "whsec":
        return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    if key_source == "text":
        return "whs_" + secrets.token_urlsafe(24)
    return None


def _check_return_url(url: str) -> None:
    """BadRequest naming ``return_url`` for one a page should not link to: not http(s), with credentials or
    control characters."""
    try:
        parsed = URL(url)
    except ValueError:
        parsed = None
    if (
        parsed is None or parsed.scheme not in ("http", "https") or not parsed.host or parsed.user or parsed.password
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url)
    ):  # fmt: skip
        raise BadRequest("return_url: must be an http(s) URL without credentials or control characters")


def _subscribed(patterns: list[str], event_type: str) -> bool:
    return any(pattern_matches(p, event_type) for p in patterns)


def safe_url(url: str) -> str:
    """The URL without its credentials (they are secrets)."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<unparseable>"
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


def _tenant_view(record: TenantRecord) -> dict[str, Any]:
    tokens = [{"id": t.id, "created_at": t.created_at} for t in record.tokens]
    return {"id": record.id, "created_at": record.created_at, "version": record.version, "tokens": tokens}
