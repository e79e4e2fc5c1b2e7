"""The portal's routes on the admin server: one tenant's endpoints, deliveries and event types, as server-rendered
pages with plain forms (``daemon.admin.portal.pages``), for the holder of a signed link
(``daemon.admin.portal.links``).

Every page acts through the endpoints API's own methods (``daemon.admin.api.Api``) with a tenant caller, never an
HTTP round trip: the tenant's scope, its caps, who may lift a pause, the URL checks and the network guard apply
exactly as they do to a tenant token. A session is the link's token in the URL path (no cookie: the portal lives in
an iframe of the platform's pages, where third-party cookies do not work); every POST must carry the session's
CSRF token, and is refused when the browser says it comes from another site.

Every answer, errors included, carries the security headers (``headers``): a Content-Security-Policy allowing
nothing but this server's own stylesheet, script and forms, framed only by ``portal.frame_ancestors``;
``Referrer-Policy: no-referrer`` (the path holds the session: no link, form or asset request may carry it
elsewhere), ``nosniff``, ``no-store``. A failure is logged without the request's path (it holds the session).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
from aiohttp import web
from multidict import MultiDictProxy
from yarl import URL

from daemon.admin import web as http
from daemon.admin.api import Api, Caller, DeliveryQuery, RotateBody, install, safe_url
from daemon.admin.operate import Replay
from daemon.admin.portal import pages
from daemon.admin.portal.links import Claims, LinkExpired
from daemon.core.clock import iso_ms
from daemon.core.config import PortalFeature
from daemon.core.errors import BadRequest, Forbidden, NotFound, RouterError, Unavailable
from daemon.core.model import IndexEntry, Outcome, decode_outcome

log = logging.getLogger(__name__)

ASSETS: Final = {
    "portal.css": (Path(__file__).with_name("assets") / "portal.css", "text/css"),
    "portal.js": (Path(__file__).with_name("assets") / "portal.js", "text/javascript"),
}
_HEADER_LINE = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*:\s*(.*)$")
_MAX_FORM_EVENTS = 1000  # patterns one form may carry (the API bounds what it keeps: api.max_events_per_endpoint)
Page = Callable[["Session", web.Request], Awaitable[web.StreamResponse]]


def headers(frame_ancestors: Iterable[str]) -> dict[str, str]:
    """The security headers of every portal answer, framed by ``frame_ancestors`` (none: by no page)."""
    ancestors = " ".join(frame_ancestors) or "'none'"
    found = {
        "Content-Security-Policy": (
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; "
            f"base-uri 'none'; frame-ancestors {ancestors}"
        ),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    }
    if ancestors == "'none'":
        found["X-Frame-Options"] = "DENY"  # for browsers older than frame-ancestors
    return found


@dataclass(frozen=True)
class Session:
    """One request's session: the API, the tenant caller, the link's claims and what every page shows."""

    api: Api
    caller: Caller
    claims: Claims
    ctx: pages.Context

    def need(self, feature: PortalFeature) -> None:
        if not self.claims.may(feature):
            raise Forbidden(f"this link does not allow it ({feature}): ask for a link that does")


class Portal:
    """The ``/portal/`` routes; ``api()`` is None until the daemon has reached Kafka (its pages answer 503)."""

    def __init__(self, api: Callable[[], Api | None], not_ready: Callable[[], str | None]) -> None:
        self._api = api
        self._not_ready = not_ready

    def install(self, app: web.Application) -> None:
        routes = app.router
        routes.add_get("/portal/assets/{name}", self._asset)
        pages_: list[tuple[str, str, Page]] = [
            ("GET", "/portal/{token}", self._endpoints),
            ("GET", "/portal/{token}/", self._endpoints),
            ("GET", "/portal/{token}/events", self._event_types),
            ("GET", "/portal/{token}/campaigns", self._campaigns),
            ("GET", "/portal/{token}/endpoints/new", self._new),
            ("POST", "/portal/{token}/endpoints", self._create),
            ("GET", "/portal/{token}/endpoints/{id}", self._endpoint),
            ("POST", "/portal/{token}/endpoints/{id}", self._update),
            ("GET", "/portal/{token}/endpoints/{id}/edit", self._edit),
            ("GET", "/portal/{token}/endpoints/{id}/delete", self._confirm_delete),
            ("POST", "/portal/{token}/endpoints/{id}/delete", self._delete),
            ("POST", "/portal/{token}/endpoints/{id}/pause", self._pause),
            ("POST", "/portal/{token}/endpoints/{id}/resume", self._resume),
            ("POST", "/portal/{token}/endpoints/{id}/ping", self._ping),
            ("POST", "/portal/{token}/endpoints/{id}/secret", self._secret),
            ("POST", "/portal/{token}/endpoints/{id}/rotate", self._rotate),
            ("POST", "/portal/{token}/endpoints/{id}/replay", self._replay),
            ("GET", "/portal/{token}/endpoints/{id}/deliveries/{delivery_id}", self._delivery),
            ("POST", "/portal/{token}/endpoints/{id}/deliveries/{delivery_id}/redeliver", self._redeliver),
        ]
        for method, path, page in pages_:
            routes.add_route(method, path, self._page(page))
        for method in ("GET", "POST"):
            routes.add_route(method, "/portal/{tail:.*}", self._nowhere)

    # --- the frame of every page ---

    def _page(self, page: Page) -> http.Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            ancestors: list[str] = []
            try:
                api = self._api()
                if api is None:
                    raise Unavailable(f"not available yet: {self._not_ready() or 'starting'}")
                portal = api.config.portal
                ancestors = portal.frame_ancestors
                if not portal.enabled or api.links is None:
                    raise NotFound("there is no portal here")
                session = self._session(api, request)
                if request.method == "POST":
                    await self._check_post(session, request)
                response = await page(session, request)
            except LinkExpired as exc:
                text = pages.plain(401, "Link expired", str(exc), exc.claims.return_url)
                response = http.html_response(text, 401)
            except RouterError as exc:
                response = http.html_response(pages.plain(exc.http_status, _title(exc.http_status), str(exc)),
                                              exc.http_status)  # fmt: skip
            except web.HTTPException:
                raise
            except Exception:  # a bug: logged without the path (it holds the session)
                log.exception("a portal page failed (%s)", request.method)
                response = http.html_response(pages.plain(500, "Something went wrong", "Try again later."), 500)
            response.headers.update(headers(ancestors))
            if response.status == 503:
                response.headers.setdefault("Retry-After", "1")
            return response

        return handle

    def _session(self, api: Api, request: web.Request) -> Session:
        links = api.links
        if links is None:
            raise NotFound("there is no portal here")
        claims = links.read(request.match_info["token"], time.time())
        caller = api.tenant_caller(claims.tenant)
        config = api.config
        ctx = pages.Context(
            base=f"/portal/{request.match_info['token']}", title=config.portal.title, tenant=claims.tenant,
            csrf=links.csrf(claims), features=frozenset(claims.features), expires_at=iso_ms(claims.exp * 1000),
            return_url=claims.return_url, campaigns=any(o.tenant == claims.tenant for o in config.organizations),
        )  # fmt: skip
        return Session(api, caller, claims, ctx)

    async def _check_post(self, session: Session, request: web.Request) -> None:
        """A POST must come from the portal's own pages: the browser's Sec-Fetch-Site and Origin (when it sends
        them) say so, and the form carries the session's CSRF token."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Forbidden("this form was sent from another site")
        origin = request.headers.get("Origin")
        if origin is not None and origin != "null" and origin != self._origin(session, request):
            raise Forbidden("this form was sent from another site")
        form = await request.post()
        given = form.get("csrf")
        links = session.api.links
        if links is None or not isinstance(given, str) or not links.csrf_ok(session.claims, given):
            raise Forbidden("this form is not one of this page's (its CSRF token does not match): reload the page")

    @staticmethod
    def _origin(session: Session, request: web.Request) -> str:
        public = session.api.config.portal.public_url
        url = URL(public) if public else URL(f"{request.scheme}://{request.host}")
        return str(url.origin())

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        found = ASSETS.get(request.match_info["name"])
        api = self._api()
        ancestors = api.config.portal.frame_ancestors if api is not None else []
        if found is None:
            response = http.html_response(pages.plain(404, "Not found", "There is nothing here."), 404)
        else:
            path, kind = found
            response = web.Response(body=path.read_bytes(), content_type=kind, charset="utf-8")
        response.headers.update(headers(ancestors))
        if found is not None:
            response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    async def _nowhere(self, request: web.Request) -> web.StreamResponse:
        api = self._api()
        response = http.html_response(pages.plain(404, "Not found", "There is nothing here."), 404)
        response.headers.update(headers(api.config.portal.frame_ancestors if api is not None else []))
        return response

    # --- endpoints ---

    async def _endpoints(self, s: Session, request: web.Request) -> web.StreamResponse:
        rows, next_after = s.api.endpoint_views(s.caller, None, after=request.query.get("after", ""), limit=100)
        return _html(pages.endpoints(s.ctx, rows, next_after, pages.NOTICES.get(request.query.get("done", ""))))

    async def _new(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("manage")
        return _html(pages.endpoint_form(s.ctx, s.api.config.event_types, {}))

    async def _create(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("manage")
        form = await request.post()
        try:
            body = form_fields(form, editing=False)
            created = await s.api.create_endpoint(body, s.caller)
        except RouterError as exc:
            if exc.http_status >= 500:
                raise
            values = {**_form_values(form)}
            text = pages.endpoint_form(s.ctx, s.api.config.event_types, values, error=str(exc))
            return _html(text, exc.http_status)
        return _see(f"{s.ctx.base}/endpoints/{created['id']}?done=created")

    async def _endpoint(self, s: Session, request: web.Request) -> web.StreamResponse:
        view = s.api.view_of(request.match_info["id"], s.caller)
        return _html(
            await self._endpoint_page(s, view, request.query, pages.NOTICES.get(request.query.get("done", "")))
        )

    async def _endpoint_page(
        self, s: Session, view: dict[str, Any], query: Any, notice: str | None = None, error: str | None = None
    ) -> str:
        filters = {k: str(query.get(k, "")) for k in ("status", "event_type", "since", "until")}
        attempts: list[Outcome] = []
        read: int | None = 0  # None: searched in the delivery index (at any age), not among the newest read
        note = None
        if s.claims.may("deliveries") and s.api.indexed:
            since, until = _utc(filters["since"], "since"), _utc(filters["until"], "until")
            search = DeliveryQuery(
                endpoint_id=view["id"], status=filters["status"] or None, event_type=filters["event_type"] or None,
                since_ms=None if since is None else int(since.timestamp() * 1000),
                until_ms=None if until is None else int(until.timestamp() * 1000),
                limit=s.api.config.portal.attempts_shown,
            )  # fmt: skip
            entries, note, _ = await s.api.search_deliveries(search, s.caller)
            attempts, read = [entry_outcome(e) for e in entries], None
        elif s.claims.may("deliveries"):
            found = await s.api.attempts_of(view["id"], s.api.config.portal.attempts_shown, s.caller)
            read = len(found)
            attempts = filter_attempts(found, filters)
        known = [entry.name for entry in s.api.config.event_types]
        subscribed = [e for e in view["events"] if "*" not in e]
        types = list(dict.fromkeys([*known, *subscribed]))
        return pages.endpoint(s.ctx, view, attempts, read, filters, types, notice, error, note)

    async def _edit(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("manage")
        endpoint_id = request.match_info["id"]
        view = s.api.view_of(endpoint_id, s.caller)
        names = s.api.header_names(endpoint_id, s.caller)
        return _html(pages.endpoint_form(s.ctx, s.api.config.event_types, view, endpoint_id=endpoint_id,
                                         header_names=names))  # fmt: skip

    async def _update(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("manage")
        endpoint_id = request.match_info["id"]
        form = await request.post()
        try:
            body = form_fields(form, editing=True)
            await s.api.update_endpoint(endpoint_id, body, "", s.caller)
        except RouterError as exc:
            if exc.http_status >= 500 or exc.http_status == 404:
                raise
            names = s.api.header_names(endpoint_id, s.caller)
            text = pages.endpoint_form(s.ctx, s.api.config.event_types, _form_values(form), endpoint_id=endpoint_id,
                                       header_names=names, error=str(exc))  # fmt: skip
            return _html(text, exc.http_status)
        return _see(f"{s.ctx.base}/endpoints/{endpoint_id}?done=updated")

    async def _confirm_delete(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("manage")
        view = s.api.view_of(request.match_info["id"], s.caller)
        s.api.header_names(view["id"], s.caller)  # one the tenant may change (not only see)
        return _html(pages.confirm_delete(s.ctx, view))

    async def _delete(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("manage")
        await s.api.delete_endpoint(request.match_info["id"], s.caller)
        return _see(f"{s.ctx.base}/?done=deleted")

    async def _pause(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("manage")
        s.api.pause_endpoint(request.match_info["id"], s.caller)
        return _see(f"{s.ctx.base}/endpoints/{request.match_info['id']}?done=paused")

    async def _resume(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("manage")
        endpoint_id = request.match_info["id"]
        try:
            s.api.resume_endpoint(endpoint_id, s.caller)
        except RouterError as exc:  # e.g. paused by the platform: a tenant cannot lift it
            if exc.http_status != 409:
                raise
            view = s.api.view_of(endpoint_id, s.caller)
            return _html(await self._endpoint_page(s, view, {}, error=str(exc)), 409)
        return _see(f"{s.ctx.base}/endpoints/{endpoint_id}?done=resumed")

    async def _ping(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("ping")
        endpoint_id = request.match_info["id"]
        result = await s.api.ping_endpoint(endpoint_id, s.caller)
        return _html(pages.outcome(s.ctx, "Test event", f"{s.ctx.base}/endpoints/{endpoint_id}", result))

    async def _secret(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("secrets")
        endpoint_id = request.match_info["id"]
        return _html(pages.secrets(s.ctx, endpoint_id, _shown(s.api.secrets_of(endpoint_id, s.caller)), False))

    async def _rotate(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("secrets")
        endpoint_id = request.match_info["id"]
        await s.api.rotate_secret(endpoint_id, RotateBody(), s.caller)
        return _html(pages.secrets(s.ctx, endpoint_id, _shown(s.api.secrets_of(endpoint_id, s.caller)), True))

    async def _replay(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("replay")
        endpoint_id = request.match_info["id"]
        form = await request.post()
        since, until = _utc(form.get("from"), "from"), _utc(form.get("to"), "to")
        if since is None:
            raise BadRequest("from: a start time is required")
        spec = Replay(from_time=since, to_time=until)
        counts = await s.api.replay_endpoint(endpoint_id, spec, s.caller)
        return _html(pages.replayed(s.ctx, endpoint_id, msgspec.to_builtins(counts)))

    async def _delivery(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("deliveries")
        view = s.api.view_of(request.match_info["id"], s.caller)
        delivery_id = request.match_info["delivery_id"]
        try:
            found = await s.api.delivery_attempts(delivery_id, s.caller)
        except NotFound as exc:
            return _html(pages.delivery(s.ctx, view, delivery_id, [], str(exc)))
        mine = [a for a in map(decode_outcome, reversed(found.records)) if a.endpoint_id == view["id"]]
        return _html(pages.delivery(s.ctx, view, delivery_id, mine, found.note))

    async def _redeliver(self, s: Session, request: web.Request) -> web.StreamResponse:
        s.need("redeliver")
        endpoint_id, delivery_id = request.match_info["id"], request.match_info["delivery_id"]
        s.api.view_of(endpoint_id, s.caller)
        result = await s.api.redeliver_delivery(delivery_id, s.caller)
        back = f"{s.ctx.base}/endpoints/{endpoint_id}/deliveries/{delivery_id}"
        return _html(pages.outcome(s.ctx, "Redelivery", back, result))

    # --- the catalogue and the campaigns ---

    async def _event_types(self, s: Session, request: web.Request) -> web.StreamResponse:
        return _html(pages.event_types(s.ctx, s.api.config.event_types))

    async def _campaigns(self, s: Session, request: web.Request) -> web.StreamResponse:
        organizations = [o for o in s.api.config.organizations if o.tenant == s.claims.tenant]
        return _html(pages.campaigns(s.ctx, organizations, safe_url))


def serve_api(app: web.Application, api: Callable[[], Api | None], not_ready: Callable[[], str | None]) -> None:
    """The ``/v1`` routes, and the portal's beside them (they answer once ``portal.enabled`` is true)."""
    install(app, api, not_ready)
    Portal(api, not_ready).install(app)


def entry_outcome(entry: IndexEntry) -> Outcome:
    """An attempt as the delivery index has it, in a results record's shape (its response and error are on its
    delivery's page, read from the record itself)."""
    return Outcome(delivery_id=entry.delivery_id, endpoint_id=entry.endpoint_id, event_type=entry.event_type,
                   attempt=entry.attempt, status=entry.status, http_status=entry.http_status,
                   duration_ms=entry.duration_ms, source_topic=None, source_partition=None, source_offset=None,
                   timestamp=iso_ms(entry.at_ms), trigger=entry.trigger)  # fmt: skip


def filter_attempts(attempts: Iterable[Outcome], filters: dict[str, str]) -> list[Outcome]:
    """The attempts whose outcome, event type and time (UTC, inclusive bounds) are those asked for (empty: any);
    BadRequest naming a bound that is not a time."""
    status, event_type = filters.get("status") or None, filters.get("event_type") or None
    since, until = _utc(filters.get("since"), "since"), _utc(filters.get("until"), "until")
    kept = []
    for attempt in attempts:
        if status is not None and attempt.status != status:
            continue
        if event_type is not None and attempt.event_type != event_type:
            continue
        if since is not None or until is not None:
            at = _utc(attempt.timestamp, "timestamp")
            if at is None or (since is not None and at < since) or (until is not None and at > until):
                continue
        kept.append(attempt)
    return kept


def form_fields(form: MultiDictProxy[Any], editing: bool) -> dict[str, Any]:
    """The fields of an ``EndpointBody`` a form gives: url, description, events (boxes and typed), headers (lines
    ``Name: value``; an edit keeps the endpoint's unless lines are given or "remove" is ticked)."""
    events = [str(e) for e in form.getall("events", [])]
    events += [e for e in re.split(r"[\s,]+", str(form.get("events_other") or "")) if e]
    if len(events) > _MAX_FORM_EVENTS:
        raise BadRequest(f"events: at most {_MAX_FORM_EVENTS} in one form")
    body: dict[str, Any] = {"url": str(form.get("url") or "").strip(), "events": events}
    description = str(form.get("description") or "").strip()
    body["description"] = description or None
    lines = [line.strip() for line in str(form.get("headers") or "").splitlines() if line.strip()]
    if lines:
        found: dict[str, str] = {}
        for n, line in enumerate(lines, 1):
            match = _HEADER_LINE.match(line)
            if match is None:
                raise BadRequest(f"headers: line {n} is not 'Name: value'")
            found[match[1]] = match[2].strip()
        body["headers"] = found
    elif editing and form.get("clear_headers"):
        body["headers"] = {}
    return body


def _form_values(form: MultiDictProxy[Any]) -> dict[str, Any]:
    """What a form that was refused showed, to show it again (header values included: the user typed them)."""
    events = [str(e) for e in form.getall("events", [])]
    events += [e for e in re.split(r"[\s,]+", str(form.get("events_other") or "")) if e]
    return {"url": form.get("url"), "description": form.get("description"), "events": events,
            "headers_text": form.get("headers")}  # fmt: skip


def _utc(text: object, field: str) -> datetime | None:
    """A time given as RFC 3339 or a datetime-local value (taken as UTC); None for none; BadRequest naming ``field``."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{field}: not a time (YYYY-MM-DDTHH:MM[:SS], UTC)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _shown(live: list[tuple[str, int | None]]) -> list[tuple[str, str]]:
    return [(value, "signs until it is rotated" if until is None else f"signs until {iso_ms(until)[:19]} UTC")
            for value, until in live]  # fmt: skip


def _html(text: str, status: int = 200) -> web.Response:
    return http.html_response(text, status)


def _see(location: str) -> web.Response:
    """After a change: the browser GETs its result (a reload does not repeat the change)."""
    return web.Response(status=303, headers={"Location": location})


def _title(status: int) -> str:
    return {400: "Not possible", 401: "Not signed in", 403: "Not allowed", 404: "Not found", 409: "Not possible",
            422: "Not possible", 503: "Not available yet"}.get(status, "Something went wrong")  # fmt: skip
