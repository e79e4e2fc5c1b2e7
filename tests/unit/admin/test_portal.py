"""The portal's pure parts: its links (signed, expiring, bound to the admin token), its CSRF tokens, its pages'
escaping, its attempts filter and its forms, and the [portal] config's checks."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from multidict import MultiDict, MultiDictProxy

from daemon.admin.portal import pages
from daemon.admin.portal.links import MAX_TTL_S, Claims, LinkExpired, LinkForged, LinkKeys
from daemon.admin.portal.site import filter_attempts, form_fields, headers
from daemon.core.errors import BadRequest
from daemon.core.model import Outcome
from daemon.core.validate import parse_config
from tests.unit.core.test_config import doc, errors_of

TOKEN = "adm_3f9c1e7a52b84d06a9e2c5f1b7d4308e6a1c9f25"
NOW = 1_800_000_000.0


def test_a_link_minted_here_reads_back_its_claims_until_it_expires_and_never_after() -> None:
    keys = LinkKeys(TOKEN)
    token, claims = keys.mint("acme", 3600, NOW, "https://platform.example/back", ["deliveries"])
    assert token.startswith("v1.") and token.count(".") == 2
    assert keys.read(token, NOW + 3599) == claims
    assert (claims.tenant, claims.exp - claims.iat, claims.features) == ("acme", 3600, ["deliveries"])
    with pytest.raises(LinkExpired) as info:
        keys.read(token, NOW + 3600)  # never late: expired at exp exactly
    assert info.value.http_status == 401 and info.value.claims.return_url == "https://platform.example/back"


def test_a_link_lives_a_day_at_most_whatever_it_is_asked_for() -> None:
    keys = LinkKeys(TOKEN)
    _, claims = keys.mint("acme", 10 * MAX_TTL_S, NOW)
    assert claims.exp - claims.iat == MAX_TTL_S
    longer = keys.token(Claims(tenant="acme", iat=int(NOW), exp=int(NOW) + MAX_TTL_S + 1, sid="a" * 32))
    with pytest.raises(LinkForged):
        keys.read(longer, NOW)  # signed here, but no link minted here claims that much


def test_a_link_changed_in_any_way_or_signed_under_another_token_is_forged() -> None:
    keys = LinkKeys(TOKEN)
    token, _ = keys.mint("acme", 3600, NOW)
    version, claims, mac = token.split(".")
    raw = base64.urlsafe_b64decode(claims + "==")
    as_globex = base64.urlsafe_b64encode(raw.replace(b'"acme"', b'"globex"')).rstrip(b"=").decode()
    other, _ = LinkKeys(TOKEN + "x").mint("acme", 3600, NOW)
    future = keys.token(Claims(tenant="acme", iat=int(NOW) + 3600, exp=int(NOW) + 7200, sid="a" * 32))
    for forged in (f"{version}.{as_globex}.{mac}", f"v2.{claims}.{mac}", f"{version}.{claims}.{mac[:-1]}",
                   f"{version}.{claims}.", other, future, "", "a.b", "a.b.c.d", "v1." + "A" * 5000 + ".x"):  # fmt: skip
        with pytest.raises(LinkForged) as info:
            keys.read(forged, NOW)
        assert info.value.http_status == 403 and "acme" not in str(info.value)


def test_a_csrf_token_is_bound_to_its_session_and_to_the_admin_token() -> None:
    keys = LinkKeys(TOKEN)
    _, first = keys.mint("acme", 3600, NOW)
    _, second = keys.mint("acme", 3600, NOW)
    assert first.sid != second.sid
    assert keys.csrf_ok(first, keys.csrf(first))
    assert not keys.csrf_ok(first, keys.csrf(second))
    assert not keys.csrf_ok(first, LinkKeys(TOKEN + "x").csrf(first))
    assert not keys.csrf_ok(first, "")


def test_every_answer_says_who_may_frame_it_and_sends_no_referrer() -> None:
    none = headers([])
    assert none["Content-Security-Policy"].endswith("frame-ancestors 'none'") and none["X-Frame-Options"] == "DENY"
    some = headers(["https://app.example.com", "'self'"])
    assert some["Content-Security-Policy"].endswith("frame-ancestors https://app.example.com 'self'")
    assert "X-Frame-Options" not in some
    for found in (none, some):
        assert found["Referrer-Policy"] == "no-referrer" and found["Cache-Control"] == "no-store"
        assert "default-src 'none'" in found["Content-Security-Policy"] and "form-action 'self'" in found[
            "Content-Security-Policy"]  # fmt: skip


def context(**over: Any) -> pages.Context:
    fields: dict[str, Any] = {"base": "/portal/v1.x.y", "title": "Webhooks", "tenant": "acme", "csrf": "c" * 64,
                              "features": frozenset({"manage"}), "expires_at": "2027-01-15T08:00:00.000Z",
                              "return_url": None, "campaigns": False}  # fmt: skip
    return pages.Context(**{**fields, **over})


def test_every_value_a_page_shows_is_escaped_and_every_form_carries_the_csrf_token() -> None:
    row = {"id": "ep_1", "url": 'https://x.example/"><script>alert(1)</script>', "events": ["<b>"],
           "description": "<img src=x>", "status": "active"}  # fmt: skip
    text = pages.endpoints(context(), [row], None, None)
    assert "<script>alert(1)" not in text and "<img src=x>" not in text and "&lt;b&gt;" in text
    view = {**row, "profile": "standard-webhooks", "version": 1, "created_at": None}
    page = pages.endpoint(context(features=frozenset({"manage", "ping", "secrets", "replay"})), view, [], 0, {}, [])
    assert page.count('<form method="post"') == page.count(f'name="csrf" value="{"c" * 64}"') >= 4
    back = pages.layout(context(return_url='https://p.example/"x'), "T", "")
    assert 'href="https://p.example/&quot;x" target="_top" rel="noopener noreferrer"' in back


def attempt(status: str, event_type: str, at: str) -> Outcome:
    return Outcome(delivery_id="msg_1", endpoint_id="ep_1", event_type=event_type, attempt=1, status=status,
                   source_topic="t", source_partition=0, source_offset=0, timestamp=at)  # fmt: skip


def test_attempts_are_filtered_by_outcome_event_type_and_time_inclusively() -> None:
    found = [attempt("delivered", "lead.created", "2026-12-01T10:00:00.000Z"),
             attempt("failed", "lead.created", "2026-12-01T11:00:00.000Z"),
             attempt("failed", "call.ended", "2026-12-01T12:00:00.000Z")]  # fmt: skip
    assert filter_attempts(found, {}) == found
    assert filter_attempts(found, {"status": "failed"}) == found[1:]
    assert filter_attempts(found, {"status": "failed", "event_type": "lead.created"}) == [found[1]]
    assert filter_attempts(found, {"since": "2026-12-01T11:00", "until": "2026-12-01T12:00:00"}) == found[1:]
    assert filter_attempts(found, {"until": "2026-12-01T10:59:59"}) == [found[0]]
    with pytest.raises(BadRequest, match="since: not a time"):
        filter_attempts(found, {"since": "yesterday"})


def form(*pairs: tuple[str, str]) -> MultiDictProxy[str]:
    return MultiDictProxy(MultiDict(pairs))


def test_a_form_becomes_the_apis_endpoint_fields_with_its_headers_kept_unless_replaced_or_removed() -> None:
    given = form(("url", " https://a.example/h "), ("events", "lead.created"), ("events", "lead.noted"),
                 ("events_other", "call.*, x.y"), ("description", ""),
                 ("headers", "X-A: 1\n\nX-B:two words"))  # fmt: skip
    assert form_fields(given, editing=False) == {
        "url": "https://a.example/h", "events": ["lead.created", "lead.noted", "call.*", "x.y"], "description": None,
        "headers": {"X-A": "1", "X-B": "two words"}}  # fmt: skip
    kept = form_fields(form(("url", "https://a.example/h")), editing=True)
    assert "headers" not in kept
    assert form_fields(form(("url", "u"), ("clear_headers", "1")), editing=True)["headers"] == {}
    with pytest.raises(BadRequest, match="headers: line 2 is not 'Name: value'"):
        form_fields(form(("headers", "X-A: 1\nno colon here")), editing=False)


def test_the_portal_config_is_checked_naming_each_field() -> None:
    api = {"enabled": True, "secrets_key_env": "K", "tenant_field": "tenant"}
    environ = {"K": base64.b64encode(b"k" * 32).decode(), "T": TOKEN}
    admin = {"token_env": "T"}
    lines = errors_of(doc(portal={"enabled": True}), {})
    assert lines == ["portal.enabled: the portal needs the endpoints API with api.tenant_field (it shows one tenant's "
                     "endpoints)"]  # fmt: skip
    bad = {"enabled": True, "link_ttl_s": 7200, "max_link_ttl_s": 3600, "public_url": "https://h.example/portal",
           "frame_ancestors": ["https://ok.example", "https://a.example; script-src *", "'none'"]}  # fmt: skip
    lines = errors_of(doc(api=api, admin=admin, portal=bad), environ)
    assert lines == [
        "portal.link_ttl_s: must be <= portal.max_link_ttl_s (3600)",
        "portal.public_url: must be a scheme and host (and port) only: the pages are under /portal/",
        "portal.frame_ancestors[1]: must be a CSP source: 'self', a scheme (https:) or [scheme://]host[:port] (a "
        "leading *. allowed), without spaces, ';' or ','",
        "portal.frame_ancestors[2]: 'none' cannot stand beside other sources",
    ]
    good = {"enabled": True, "public_url": "https://hooks.example.com", "frame_ancestors": [
        "https://app.example.com", "https://*.example.com:8443", "'self'", "https:"]}  # fmt: skip
    organizations = [{"id": "org", "url": "https://o.example/h", "events": ["lead.delivered"], "tenant": "acme"}]
    config = parse_config(doc(api=api, admin=admin, portal=good, organizations=organizations), environ)
    assert config.portal.frame_ancestors[1] == "https://*.example.com:8443" and config.organizations[0].tenant == "acme"
    lines = errors_of(doc(organizations=[{**organizations[0], "tenant": "a b"}]))
    assert lines == ["organizations[0].tenant: has characters that are not allowed"]
