"""Profile config: every registration constraint a seed states is a config error with its path; organisations and
campaigns resolve into the routing table exactly as the daemon builds it (``daemon.engine.routing.Routing``)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.core.config import Config, EndpointConfig
from daemon.core.errors import ConfigError
from daemon.core.resolve import resolve
from daemon.core.validate import parse_config
from daemon.delivery.endpoint import Endpoint
from daemon.engine.routing import Routing
from tests.unit.core.test_config import kafka

SECRET = "whsec_" + base64.b64encode(b"unit-test-secret-0123456789").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-for-rotation").decode()

# A valid secret for each profile; None: the profile's contract carries none.
SECRETS: dict[str, str | None] = {
    "standard-webhooks": SECRET,
    "raw": SECRET,
    "agora": "agora-endpoint-secret",
    "leadterra": None,
    "convocore": "workspace-secret",
    "campaign": None,
    "crm": "wh_a46f35f22d9723a",
}
# An event type each profile knows.
KNOWN: dict[str, str] = {
    "standard-webhooks": "anything.at_all",
    "raw": "anything.at_all",
    "agora": "lead.created",
    "leadterra": "reply.received",
    "convocore": "message_received",
    "campaign": "lead.delivered",
    "crm": "lead.create",
}


def ep(profile: str, id: str = "ep", **over: Any) -> dict[str, Any]:
    """A valid endpoint of ``profile``."""
    out: dict[str, Any] = {"id": id, "url": f"https://{id}.example.com/hook", "profile": profile}
    secret = SECRETS[profile]
    if secret is not None:
        out["secret"] = secret
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


def doc(
    endpoints: list[dict[str, Any]] | None = None, subscriptions: list[dict[str, Any]] | None = None, **more: Any
) -> dict[str, Any]:
    return {"kafka": kafka(), "endpoints": endpoints or [], "subscriptions": subscriptions or [], **more}


def one(profile: str, events: list[str] | None = None, **over: Any) -> dict[str, Any]:
    """A document with one endpoint of ``profile`` subscribed to ``events`` (default: a type it knows)."""
    return doc([ep(profile, **over)], [{"endpoint": "ep", "events": events or [KNOWN[profile]]}])


def errors_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {} if environ is None else environ)
    return info.value.errors


def ok(raw: dict[str, Any], environ: dict[str, str] | None = None) -> Config:
    return parse_config(raw, {} if environ is None else environ)


ALL_PROFILES = list(SECRETS)


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_each_profile_accepts_a_valid_endpoint(profile: str) -> None:
    config = ok(one(profile))
    assert config.endpoints[0].profile == profile


def test_profile_defaults_to_standard_webhooks() -> None:
    config = ok(doc([{"id": "ep", "url": "https://ep.example.com/h", "secret": SECRET}]))
    assert config.endpoints[0].profile == "standard-webhooks"


def test_unknown_profile() -> None:
    raw = doc([ep("agora") | {"profile": "zapier"}], [{"endpoint": "ep", "events": ["x"]}])
    assert errors_of(raw) == [
        "endpoints[0].profile: unknown profile 'zapier' "
        "(one of: standard-webhooks, raw, agora, leadterra, convocore, campaign, crm)"
    ]


# --- https only (leadterra) ---


def test_leadterra_http_url_needs_allow_http() -> None:
    assert errors_of(one("leadterra", url="http://lt.example.com/hook")) == [
        "endpoints[0].url: must use https:// (or set allow_http = true on the endpoint)"
    ]
    assert errors_of(one("leadterra", url="HTTP://lt.example.com/hook")) == [
        "endpoints[0].url: must use https:// (or set allow_http = true on the endpoint)"
    ]


def test_leadterra_http_url_with_allow_http_and_https_urls_are_accepted() -> None:
    assert ok(one("leadterra", url="http://lt.example.com/hook", allow_http=True)).endpoints[0].allow_http is True
    assert ok(one("leadterra", url="HTTPS://lt.example.com/hook")).endpoints[0].allow_http is False


@pytest.mark.parametrize("profile", ["standard-webhooks", "raw", "agora", "convocore", "campaign", "crm"])
def test_other_profiles_take_http_urls(profile: str) -> None:
    assert ok(one(profile, url="http://93.184.215.14:8080/in")).endpoints[0].url == "http://93.184.215.14:8080/in"


def test_leadterra_bad_url_is_reported_as_bad_not_as_http() -> None:
    assert errors_of(one("leadterra", url="ftp://lt.example.com/hook")) == [
        "endpoints[0].url: must be an absolute http:// or https:// URL"
    ]


# --- at least one event (leadterra) ---


def test_leadterra_without_a_subscription() -> None:
    assert errors_of(doc([ep("leadterra")])) == [
        "endpoints[0]: the leadterra contract needs at least one subscribed event"
    ]


def test_leadterra_subscription_needs_an_event() -> None:
    assert errors_of(doc([ep("leadterra")], [{"endpoint": "ep", "events": []}])) == [
        "subscriptions[0].events: length must be >= 1"
    ]


def test_leadterra_needs_events_counts_only_its_own_subscriptions() -> None:
    raw = doc(
        [ep("agora", id="ag"), ep("leadterra", id="lt", url="https://lt.example.com/a"), ep("leadterra", id="lt2")],
        [{"endpoint": "ag", "events": ["lead.created"]}, {"endpoint": "lt2", "events": ["message.*"]}],
    )
    assert errors_of(raw) == ["endpoints[1]: the leadterra contract needs at least one subscribed event"]


@pytest.mark.parametrize("profile", ["standard-webhooks", "raw", "agora", "convocore", "campaign", "crm"])
def test_other_profiles_may_have_no_subscription(profile: str) -> None:
    assert ok(doc([ep(profile)])).subscriptions == []


# --- known event types ---


@pytest.mark.parametrize(
    ("profile", "bad"),
    [
        ("leadterra", "lead.created"),
        ("agora", "lead.create"),
        ("agora", "leads.created"),
        ("convocore", "lead.created"),
        ("convocore", "agent.created"),
        ("campaign", "lead.created"),
        ("crm", "lead.created"),
        ("crm", "lead.message.create"),
    ],
)
def test_unknown_event_type_per_profile(profile: str, bad: str) -> None:
    assert errors_of(one(profile, [KNOWN[profile], bad])) == [
        f"subscriptions[0].events[1]: '{bad}' is not one of the {profile} event types"
    ]


def test_leadterra_unknown_event_exact_text() -> None:
    assert errors_of(one("leadterra", ["lead.created"])) == [
        "subscriptions[0].events[0]: 'lead.created' is not one of the leadterra event types"
    ]


@pytest.mark.parametrize(
    ("profile", "pattern"),
    [
        ("agora", "order.*"),
        ("agora", "lead.x*"),
        ("leadterra", "reply.sent*"),
        ("convocore", "lead.*"),
        ("campaign", "order*"),
        ("crm", "lead.message.*"),
    ],
)
def test_a_wildcard_matching_no_catalogue_entry(profile: str, pattern: str) -> None:
    assert errors_of(one(profile, [pattern])) == [
        f"subscriptions[0].events[0]: '{pattern}' is not one of the {profile} event types"
    ]


@pytest.mark.parametrize(
    ("profile", "patterns"),
    [
        ("agora", ["*", "lead*", "lead.*", "call.*", "ping", "leads.bulk_created"]),
        ("leadterra", ["*", "message.*", "reply.received", "campaign.started"]),
        ("convocore", ["*", "client_*", "webhook_test", "lead_captured"]),
        ("campaign", ["*", "lead.*", "lead.first_submission_action"]),
        ("crm", ["*", "lead.*", "lead.note.*", "tag.delete"]),
        ("standard-webhooks", ["*", "anything", "x.*"]),
        ("raw", ["whatever.happened"]),
    ],
)
def test_known_types_and_wildcards_that_match_the_catalogue(profile: str, patterns: list[str]) -> None:
    assert ok(one(profile, patterns)).subscriptions[0].events == patterns


def test_bad_wildcard_placement_is_reported_before_the_catalogue() -> None:
    assert errors_of(one("agora", ["le*d", "lead*"])) == [
        "subscriptions[0].events[0]: '*' may only end a pattern ('lead.*' or '*')"
    ]


def test_events_of_a_missing_endpoint_are_not_checked_against_a_catalogue() -> None:
    assert errors_of(doc([], [{"endpoint": "ghost", "events": ["x.y"]}])) == [
        "subscriptions[0].endpoint: no endpoint with id 'ghost'"
    ]


# --- timeouts within the contract ---


@pytest.mark.parametrize(
    ("profile", "timeout", "line"),
    [
        ("agora", 30, "endpoints[0].timeout_s: the agora contract allows at most 10 s"),
        ("agora", 10.5, "endpoints[0].timeout_s: the agora contract allows at most 10 s"),
        ("leadterra", 11, "endpoints[0].timeout_s: the leadterra contract allows at most 10 s"),
        ("convocore", 61, "endpoints[0].timeout_s: the convocore contract allows at most 60 s"),
        ("convocore", 60.5, "endpoints[0].timeout_s: the convocore contract allows at most 60 s"),
        ("campaign", 121, "endpoints[0].timeout_s: must be <= 120"),
        ("crm", 121, "endpoints[0].timeout_s: must be <= 120"),
        ("standard-webhooks", 0.5, "endpoints[0].timeout_s: must be >= 1"),
    ],
)
def test_timeout_above_the_contract(profile: str, timeout: float, line: str) -> None:
    assert errors_of(one(profile, timeout_s=timeout)) == [line]


@pytest.mark.parametrize(
    ("profile", "timeout"),
    [
        ("agora", 10),
        ("agora", 1),
        ("leadterra", 10),
        ("convocore", 60),
        ("campaign", 120),
        ("crm", 120),
        ("standard-webhooks", 120),
        ("raw", 120),
    ],
)
def test_timeout_up_to_the_contract(profile: str, timeout: float) -> None:
    config = ok(one(profile, timeout_s=timeout))
    assert config.endpoints[0].timeout_s == timeout
    assert Endpoint(config.endpoints[0], config.delivery, {}).timeout_s == timeout


@pytest.mark.parametrize(
    ("profile", "timeout"),
    [
        ("agora", 10.0),
        ("leadterra", 10.0),
        ("convocore", 60.0),
        ("campaign", 10.0),
        ("standard-webhooks", 10.0),
        ("crm", 10.0),
        ("raw", 10.0),
    ],
)
def test_default_timeout_is_the_profiles(profile: str, timeout: float) -> None:
    config = ok(one(profile))
    assert config.endpoints[0].timeout_s is None
    assert Endpoint(config.endpoints[0], config.delivery, {}).timeout_s == timeout


# --- secrets ---


@pytest.mark.parametrize("profile", ["standard-webhooks", "raw", "agora", "convocore", "crm"])
def test_a_secret_is_required(profile: str) -> None:
    assert errors_of(one(profile, secret=None)) == [
        "endpoints[0]: exactly one of secret, secret_env, secrets is required"
    ]


@pytest.mark.parametrize("profile", ["standard-webhooks", "raw"])
def test_whsec_is_required_for_standard_webhooks_and_raw(profile: str) -> None:
    assert errors_of(one(profile, secret="plain-text-secret")) == [
        "endpoints[0].secret: must be base64, optionally after 'whsec_'"
    ]
    assert errors_of(one(profile, secret="whsec_")) == ["endpoints[0].secret: must not be empty"]


@pytest.mark.parametrize("profile", ["agora", "convocore", "crm"])
def test_text_secret_for_agora_convocore_crm(profile: str) -> None:
    assert ok(one(profile, secret="plain text, any ünicode!")).endpoints[0].secret == "plain text, any ünicode!"
    assert ok(one(profile, secret=SECRET)).endpoints[0].secret == SECRET
    assert errors_of(one(profile, secret="")) == ["endpoints[0].secret: must not be empty"]


@pytest.mark.parametrize("profile", ["leadterra", "campaign"])
@pytest.mark.parametrize(
    ("field", "value"), [("secret", "s"), ("secret", SECRET), ("secret_env", "HOOK_SECRET"), ("secrets", ["a", "b"])]
)
def test_no_secret_for_leadterra_and_campaign(profile: str, field: str, value: Any) -> None:
    assert errors_of(one(profile, **{field: value}), {"HOOK_SECRET": "x"}) == [
        f"endpoints[0].{field}: the {profile} contract carries no secret"
    ]


def test_secrets_list_with_a_bad_entry() -> None:
    assert errors_of(one("standard-webhooks", secret=None, secrets=[SECRET, "not base64!", OTHER_SECRET])) == [
        "endpoints[0].secrets[1]: must be base64, optionally after 'whsec_'"
    ]
    assert errors_of(one("raw", secret=None, secrets=["whsec_", SECRET])) == [
        "endpoints[0].secrets[0]: must not be empty"
    ]
    assert errors_of(one("agora", secret=None, secrets=["current", ""])) == [
        "endpoints[0].secrets[1]: must not be empty"
    ]


def test_secrets_list_shape() -> None:
    assert errors_of(one("standard-webhooks", secret=None, secrets=[])) == ["endpoints[0].secrets: length must be >= 1"]
    assert errors_of(one("standard-webhooks", secret=None, secrets=[SECRET] * 9)) == [
        "endpoints[0].secrets: length must be <= 8"
    ]
    assert errors_of(one("standard-webhooks", secrets=[SECRET])) == [
        "endpoints[0]: exactly one of secret, secret_env, secrets is required"
    ]


def test_secrets_list_is_accepted_in_order() -> None:
    endpoint = ok(one("standard-webhooks", secret=None, secrets=[SECRET, OTHER_SECRET])).endpoints[0]
    assert endpoint.secrets == [SECRET, OTHER_SECRET]


def test_secret_env_for_a_text_secret() -> None:
    raw = one("convocore", secret=None, secret_env="WS_SECRET")
    assert ok(raw, {"WS_SECRET": "from-env"}).endpoints[0].secret_env == "WS_SECRET"
    assert errors_of(raw) == ["endpoints[0].secret_env: environment variable WS_SECRET is not set"]
    assert errors_of(raw, {"WS_SECRET": ""}) == ["endpoints[0].secret_env: must not be empty"]


def test_agora_signature_headers_are_reserved() -> None:
    raw = one("agora", headers={"x-agora-signature-256": "sha256=00"})
    assert errors_of(raw) == ["endpoints[0].headers.x-agora-signature-256: set by the router, cannot be overridden"]


# --- where ---


@pytest.mark.parametrize(
    "where",
    [{"field": "campaignId"}, {"field": "campaignId", "one_of": ["A"], "none_of": ["B"]}],
)
def test_where_needs_exactly_one_of_one_of_and_none_of(where: dict[str, Any]) -> None:
    raw = doc([ep("agora")], [{"endpoint": "ep", "events": ["lead.created"], "where": where}])
    assert errors_of(raw) == ["subscriptions[0].where: exactly one of one_of, none_of is required"]


def where_doc(where: dict[str, Any]) -> dict[str, Any]:
    return doc([ep("agora")], [{"endpoint": "ep", "events": ["lead.created"], "where": where}])


def test_where_shape() -> None:
    assert errors_of(where_doc({"field": "", "one_of": ["7"]})) == ["subscriptions[0].where.field: length must be >= 1"]
    assert errors_of(where_doc({"field": "x", "one_of": [7]})) == [
        "subscriptions[0].where.one_of[0]: expected `str`, got `int`"
    ]
    assert errors_of(where_doc({"field": "x", "none_of": ["a"], "colour": "red"})) == [
        "subscriptions[0].where.colour: unknown field"
    ]


def test_where_faults_are_all_reported() -> None:
    assert errors_of(where_doc({"field": "", "one_of": [7], "colour": "red"})) == [
        "subscriptions[0].where.colour: unknown field",
        "subscriptions[0].where.field: length must be >= 1",
        "subscriptions[0].where.one_of[0]: expected `str`, got `int`",
    ]


@pytest.mark.parametrize("key", ["one_of", "none_of"])
def test_where_with_one_of_them_is_accepted(key: str) -> None:
    raw = doc([ep("agora")], [{"endpoint": "ep", "events": ["lead.created"], "where": {"field": "a.b", key: ["x"]}}])
    where = ok(raw).subscriptions[0].where
    assert where is not None
    expected = ("a.b", ["x"], None) if key == "one_of" else ("a.b", None, ["x"])
    assert (where.field, where.one_of, where.none_of) == expected


# --- organisations and campaigns: validation ---


def org(**over: Any) -> dict[str, Any]:
    return {"id": "acme", "url": "https://acme.example.com/hooks", "events": ["lead.delivered"], **over}


def test_a_valid_organisation() -> None:
    config = ok(doc(organizations=[org(campaigns=[{"id": "ABC", "url": "http://abc.example.com/h"}])]))
    (acme,) = config.organizations
    assert (acme.enabled, acme.retry_attempts, acme.timeout_s, acme.campaign_field, acme.allow_http) == (
        True,
        3,
        10.0,
        "campaignId",
        True,
    )
    assert acme.campaigns[0].enabled is None


@pytest.mark.parametrize(
    "url", ["ftp://acme.example.com/h", "acme.example.com", "https://", "https:///x", "http://a:99999/"]
)
def test_organisation_bad_url(url: str) -> None:
    assert errors_of(doc(organizations=[org(url=url)])) == [
        "organizations[0].url: must be an absolute http:// or https:// URL"
    ]


def test_campaign_bad_url() -> None:
    raw = doc(organizations=[org(campaigns=[{"id": "A"}, {"id": "B", "url": "mailto:x@example.com"}])])
    assert errors_of(raw) == ["organizations[0].campaigns[1].url: must be an absolute http:// or https:// URL"]


def test_organisation_and_campaign_event_types_are_the_campaign_catalogue() -> None:
    raw = doc(
        organizations=[
            org(
                events=["lead.delivered", "lead.created", "order.*"],
                campaigns=[{"id": "A", "events": ["lead.*"]}, {"id": "B", "events": ["lead.failed", "lead.converted"]}],
            )
        ]
    )
    assert errors_of(raw) == [
        "organizations[0].events[1]: 'lead.created' is not one of the campaign event types",
        "organizations[0].events[2]: 'order.*' is not one of the campaign event types",
        "organizations[0].campaigns[1].events[1]: 'lead.converted' is not one of the campaign event types",
    ]


def test_campaign_events_wildcard_placement() -> None:
    raw = doc(organizations=[org(campaigns=[{"id": "A", "events": ["lead.*.x"]}])])
    assert errors_of(raw) == ["organizations[0].campaigns[0].events[0]: '*' may only end a pattern ('lead.*' or '*')"]


def test_duplicate_campaign_ids() -> None:
    raw = doc(organizations=[org(campaigns=[{"id": "ABC"}, {"id": "DEF"}, {"id": "ABC"}, {"id": "ABC"}])])
    assert errors_of(raw) == [
        "organizations[0].campaigns[2].id: duplicate campaign id 'ABC'",
        "organizations[0].campaigns[3].id: duplicate campaign id 'ABC'",
    ]


def test_same_campaign_id_in_two_organisations_is_fine() -> None:
    raw = doc(organizations=[org(campaigns=[{"id": "ABC"}]), org(id="globex", campaigns=[{"id": "ABC"}])])
    assert [e.id for e in resolve(ok(raw)).endpoints] == ["acme", "acme:ABC", "globex", "globex:ABC"]


def test_organisation_topics_must_be_kafka_topics() -> None:
    raw = doc(organizations=[org(topics=["leads", "nope", "orders", "other"])])
    assert errors_of(raw) == [
        "organizations[0].topics[1]: 'nope' is not one of kafka.topics",
        "organizations[0].topics[3]: 'other' is not one of kafka.topics",
    ]


def test_organisation_and_campaign_headers_are_checked() -> None:
    raw = doc(
        organizations=[
            org(
                headers={"Content-Type": "text/plain", "X-Ok": "1", "Bad Name": "x", "X-Nl": "a\nb"},
                campaigns=[{"id": "A", "headers": {"webhook-signature": "v1,x", "Host": "evil"}}],
            )
        ]
    )
    assert errors_of(raw) == [
        "organizations[0].headers.Content-Type: set by the router, cannot be overridden",
        "organizations[0].headers.Bad Name: not a valid header name",
        "organizations[0].headers.X-Nl: value must not contain control characters",
        "organizations[0].campaigns[0].headers.Host: set by the router, cannot be overridden",
    ]


def test_organisation_id_is_an_endpoint_id() -> None:
    raw = doc([ep("agora", id="acme")], organizations=[org(), org()])
    assert errors_of(raw) == [
        "organizations[0].id: duplicate endpoint id 'acme'",
        "organizations[1].id: duplicate endpoint id 'acme'",
    ]


def test_campaign_endpoint_id_colliding_with_an_endpoint_is_refused() -> None:
    raw = doc(
        [ep("standard-webhooks", id="acme:ABC", url="https://other.example.com/hook")],
        [{"endpoint": "acme:ABC", "events": ["*"]}],
        organizations=[org(campaigns=[{"id": "ABC"}])],
    )
    with pytest.raises(ConfigError):
        parse_config(raw, {})


def test_subscriptions_may_name_an_organisation_or_a_campaign_endpoint() -> None:
    raw = doc(
        [],
        [{"endpoint": "acme", "events": ["lead.failed"]}, {"endpoint": "acme:ABC", "events": ["lead.failed"]}],
        organizations=[org(campaigns=[{"id": "ABC"}])],
    )
    assert [s.endpoint for s in ok(raw).subscriptions] == ["acme", "acme:ABC"]
    raw = doc([], [{"endpoint": "acme", "events": ["lead.created"]}], organizations=[org()])
    assert errors_of(raw) == ["subscriptions[0].events[0]: 'lead.created' is not one of the campaign event types"]


def test_organisation_and_campaign_ranges() -> None:
    raw = doc(
        organizations=[
            org(
                events=[],
                retry_attempts=0,
                timeout_s=121,
                campaigns=[{"id": "a:b", "retry_attempts": 11, "timeout_s": 0.5}, {"id": "c", "events": []}],
            )
        ]
    )
    assert errors_of(raw) == [
        "organizations[0].events: length must be >= 1",
        "organizations[0].retry_attempts: must be >= 1",
        "organizations[0].timeout_s: must be <= 120",
        "organizations[0].campaigns[0].id: has characters that are not allowed",
        "organizations[0].campaigns[0].retry_attempts: must be <= 10",
        "organizations[0].campaigns[0].timeout_s: must be >= 1",
        "organizations[0].campaigns[1].events: length must be >= 1",
    ]


def test_organisation_and_campaign_range_bounds_are_inclusive() -> None:
    raw = doc(
        organizations=[
            org(retry_attempts=1, timeout_s=1, campaigns=[{"id": "A", "retry_attempts": 10, "timeout_s": 120}])
        ]
    )
    config = ok(raw)
    assert (config.organizations[0].retry_attempts, config.organizations[0].timeout_s) == (1, 1.0)
    assert (config.organizations[0].campaigns[0].retry_attempts, config.organizations[0].campaigns[0].timeout_s) == (
        10,
        120.0,
    )


def test_organisation_unknown_fields() -> None:
    raw = doc(organizations=[org(profile="agora", campaigns=[{"id": "A", "secret": "s"}])])
    assert errors_of(raw) == [
        "organizations[0].profile: unknown field",
        "organizations[0].campaigns[0].secret: unknown field",
    ]


# --- organisations and campaigns: resolved into the routing table ---


def routing(raw: dict[str, Any]) -> Routing:
    """The routing table exactly as the daemon builds it from this config."""
    config = ok(raw)
    return Routing(config, {})


def selected(table: Routing, event_type: str, campaign: Any = None, topic: str = "leads", **fields: Any):
    event = {"event": event_type, **fields}
    if campaign is not None:
        event["campaignId"] = campaign
    return table.table.match(topic, event_type).select(lambda: event)


def endpoints_by_id(raw: dict[str, Any]) -> dict[str, EndpointConfig]:
    resolved = resolve(ok(raw))
    ids = [e.id for e in resolved.endpoints]
    assert len(ids) == len(set(ids))
    return {e.id: e for e in resolved.endpoints}


ACME = org(
    events=["lead.delivered", "lead.failed"],
    headers={"X-Org": "acme"},
    timeout_s=20,
    max_concurrency=4,
    campaigns=[
        {"id": "ABC", "url": "https://abc.example.com/hook", "events": ["lead.delivered"], "headers": {"X-C": "abc"}}
        | {"timeout_s": 30},
        {"id": "DEF"},
        {"id": "OFF", "enabled": False},
        {"id": "OFF2", "enabled": False, "events": ["lead.queued"], "url": "https://off2.example.com/hook"},
        {"id": "GHI", "url": "https://ghi.example.com/hook", "events": ["lead.queued"]},
    ],
)


def test_resolve_expands_organisation_and_campaign_endpoints() -> None:
    raw = doc([ep("agora", id="42")], [{"endpoint": "42", "events": ["lead.*"]}], organizations=[ACME])
    endpoints = endpoints_by_id(raw)
    assert list(endpoints) == ["42", "acme", "acme:ABC", "acme:DEF", "acme:GHI"]
    summary = {
        id: (e.url, e.profile, e.headers, e.timeout_s, e.max_concurrency, e.allow_http, e.secret, e.secrets)
        for id, e in endpoints.items()
        if id != "42"
    }
    assert summary == {
        "acme": ("https://acme.example.com/hooks", "campaign", {"X-Org": "acme"}, 20.0, 4, True, None, None),
        "acme:ABC": ("https://abc.example.com/hook", "campaign", {"X-C": "abc"}, 30.0, 4, True, None, None),
        "acme:DEF": ("https://acme.example.com/hooks", "campaign", {"X-Org": "acme"}, 20.0, 4, True, None, None),
        "acme:GHI": ("https://ghi.example.com/hook", "campaign", {"X-Org": "acme"}, 20.0, 4, True, None, None),
    }


def test_resolve_leaves_the_config_without_organisations_alone() -> None:
    raw = doc([ep("agora", id="42")], [{"endpoint": "42", "events": ["lead.*"]}])
    config = ok(raw)
    resolved = resolve(config)
    assert resolved.endpoints == config.endpoints
    assert resolved.subscriptions == config.subscriptions


@pytest.mark.parametrize(
    ("event_type", "campaign", "expected"),
    [
        # ABC configures lead.delivered itself: its URL; lead.failed only the organisation configures: the org's.
        ("lead.delivered", "ABC", ("acme:ABC",)),
        ("lead.failed", "ABC", ("acme",)),
        # DEF overrides nothing: everything the organisation configures, at the inherited settings.
        ("lead.delivered", "DEF", ("acme:DEF",)),
        ("lead.failed", "DEF", ("acme:DEF",)),
        # a disabled campaign gets nothing, and the organisation does not take its events.
        ("lead.delivered", "OFF", ()),
        ("lead.failed", "OFF", ()),
        ("lead.delivered", "OFF2", ()),  # even when its own events would not take these from the organisation
        ("lead.queued", "OFF2", ()),
        # GHI's events: its own; the organisation's others: the organisation's.
        ("lead.queued", "GHI", ("acme:GHI",)),
        ("lead.delivered", "GHI", ("acme",)),
        ("lead.failed", "GHI", ("acme",)),
        # campaigns the config does not name, and events without a campaign: the organisation's settings.
        ("lead.delivered", "ZZZ", ("acme",)),
        ("lead.failed", None, ("acme",)),
        # nobody configures these.
        ("lead.queued", "ABC", ()),
        ("lead.queued", "ZZZ", ()),
        ("lead.processed", "DEF", ()),
        ("lead.created", "ABC", ()),
    ],
)
def test_campaign_inheritance_and_override_per_event(
    event_type: str, campaign: str | None, expected: tuple[str, ...]
) -> None:
    assert selected(routing(doc(organizations=[ACME])), event_type, campaign) == expected


def test_explicit_subscriptions_route_beside_organisations() -> None:
    raw = doc(
        [ep("campaign", id="audit")],
        [{"endpoint": "audit", "events": ["*"]}, {"endpoint": "acme", "events": ["lead.processed"]}],
        organizations=[ACME],
    )
    table = routing(raw)
    assert selected(table, "lead.delivered", "ABC") == ("audit", "acme:ABC")
    assert selected(table, "lead.processed", "ABC") == ("audit", "acme")
    assert selected(table, "lead.delivered", "OFF") == ("audit",)
    assert selected(table, "order.paid", "ABC") == ()


def test_campaign_ids_compare_as_text() -> None:
    raw = doc(organizations=[org(campaigns=[{"id": "7", "url": "https://seven.example.com/h"}])])
    table = routing(raw)
    assert selected(table, "lead.delivered", 7) == ("acme:7",)
    assert selected(table, "lead.delivered", "7") == ("acme:7",)
    assert selected(table, "lead.delivered", 7.0) == ("acme",)
    assert selected(table, "lead.delivered", True) == ("acme",)


def test_campaign_field_may_be_nested() -> None:
    raw = doc(organizations=[org(campaign_field="lead.campaign.id", campaigns=[{"id": "ABC", "url": "https://a.b/h"}])])
    table = routing(raw)
    assert selected(table, "lead.delivered", lead={"campaign": {"id": "ABC"}}) == ("acme:ABC",)
    assert selected(table, "lead.delivered", "ABC") == ("acme",)


def test_organisation_topics_limit_every_route() -> None:
    raw = doc(organizations=[org(topics=["orders"], campaigns=[{"id": "ABC"}])])
    table = routing(raw)
    assert selected(table, "lead.delivered", "ABC", topic="orders") == ("acme:ABC",)
    assert selected(table, "lead.delivered", "ZZZ", topic="orders") == ("acme",)
    assert selected(table, "lead.delivered", "ABC", topic="leads") == ()
    assert selected(table, "lead.delivered", "ZZZ", topic="leads") == ()


def test_disabled_campaign_gets_no_endpoint() -> None:
    raw = doc(organizations=[org(campaigns=[{"id": "OFF", "enabled": False, "url": "https://off.example.com/h"}])])
    assert list(endpoints_by_id(raw)) == ["acme"]
    table = routing(raw)
    assert selected(table, "lead.delivered", "OFF") == ()
    assert selected(table, "lead.delivered", "ON") == ("acme",)


def test_disabled_organisation_with_an_enabled_campaign() -> None:
    raw = doc(
        organizations=[
            org(
                enabled=False,
                events=["lead.*"],
                campaigns=[
                    {"id": "ON", "enabled": True},
                    {"id": "INH"},
                    {"id": "ONE", "enabled": True, "events": ["lead.failed"], "url": "https://one.example.com/h"},
                ],
            )
        ]
    )
    endpoints = endpoints_by_id(raw)
    assert list(endpoints) == ["acme", "acme:ON", "acme:ONE"]
    assert endpoints["acme:ON"].url == "https://acme.example.com/hooks"
    table = routing(raw)
    assert selected(table, "lead.delivered", "ON") == ("acme:ON",)
    assert selected(table, "lead.processed", "ON") == ("acme:ON",)
    assert selected(table, "lead.created", "ON") == ()  # the catalogue still applies to an inherited wildcard
    assert selected(table, "lead.failed", "ONE") == ("acme:ONE",)
    assert selected(table, "lead.delivered", "ONE") == ()
    assert selected(table, "lead.delivered", "INH") == ()
    assert selected(table, "lead.delivered", "ZZZ") == ()
    assert selected(table, "lead.delivered") == ()


def test_campaign_wildcard_over_organisation_events() -> None:
    raw = doc(organizations=[org(events=["lead.delivered"], campaigns=[{"id": "W", "events": ["lead.*"]}])])
    table = routing(raw)
    assert selected(table, "lead.delivered", "W") == ("acme:W",)
    assert selected(table, "lead.failed", "W") == ("acme:W",)
    assert selected(table, "lead.failed", "X") == ()
    assert selected(table, "lead.delivered", "X") == ("acme",)


def test_campaign_event_inside_an_organisation_wildcard_goes_to_the_campaign() -> None:
    raw = doc(organizations=[org(events=["lead.*"], campaigns=[{"id": "C", "events": ["lead.delivered"]}])])
    table = routing(raw)
    assert selected(table, "lead.delivered", "C") == ("acme:C",)
    assert selected(table, "lead.delivered", "D") == ("acme",)
    assert selected(table, "lead.failed", "D") == ("acme",)


def test_organisation_keeps_the_wildcard_events_a_campaign_does_not_configure() -> None:
    raw = doc(organizations=[org(events=["lead.*"], campaigns=[{"id": "C", "events": ["lead.delivered"]}])])
    assert selected(routing(raw), "lead.failed", "C") == ("acme",)


def test_same_events_listed_explicitly_go_to_the_organisation() -> None:
    raw = doc(
        organizations=[
            org(events=["lead.delivered", "lead.failed"], campaigns=[{"id": "C", "events": ["lead.delivered"]}])
        ]
    )
    assert selected(routing(raw), "lead.failed", "C") == ("acme",)


def test_star_organisation_events_stay_within_the_campaign_catalogue() -> None:
    raw = doc(organizations=[org(events=["*"], campaigns=[{"id": "ABC"}])])
    table = routing(raw)
    assert selected(table, "lead.first_submission_action", "ABC") == ("acme:ABC",)
    assert selected(table, "lead.first_submission_action", "XYZ") == ("acme",)
    assert selected(table, "order.paid", "ABC") == ()
    assert selected(table, "ping", "XYZ") == ()


def test_without_campaigns_the_organisation_takes_its_events_unconditionally() -> None:
    table = routing(doc(organizations=[org(events=["lead.delivered", "lead.failed"])]))
    decode_calls = []
    match = table.table.match("leads", "lead.failed")
    assert match.select(lambda: decode_calls.append(1)) == ("acme",)
    assert decode_calls == []


# --- the check-config command ---

FAULTY_TOML = f"""
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "router"
topics = ["leads"]
results_topic = "webhook-results"

[[endpoints]]
id = "42"
url = "https://agora.example.com/hook"
profile = "agora"
timeout_s = 30
secret = "agora-endpoint-secret"

[[endpoints]]
id = "lt"
url = "http://leadterra.example.com/hook"
profile = "leadterra"
secret = "no-secret-in-this-contract"

[[endpoints]]
id = "cc"
url = "https://convocore.example.com/hook"
profile = "convocore"
timeout_s = 61

[[endpoints]]
id = "sw"
url = "https://sw.example.com/hook"
secrets = ["{SECRET}", "not base64!"]

[[subscriptions]]
endpoint = "42"
events = ["order.*", "lead.created"]

[[subscriptions]]
endpoint = "cc"
events = ["lead.created"]
where = {{ field = "payload.agentPlatform" }}

[[organizations]]
id = "acme"
url = "ftp://acme.example.com/hooks"
events = ["lead.created"]
topics = ["nope"]
headers = {{ Content-Type = "text/plain" }}

[[organizations.campaigns]]
id = "ABC"

[[organizations.campaigns]]
id = "ABC"
events = ["lead.delivered", "lead.x"]
"""

FAULTY_LINES = [
    "endpoints[0].timeout_s: the agora contract allows at most 10 s",
    "endpoints[1].url: must use https:// (or set allow_http = true on the endpoint)",
    "endpoints[1].secret: the leadterra contract carries no secret",
    "endpoints[2].timeout_s: the convocore contract allows at most 60 s",
    "endpoints[2]: exactly one of secret, secret_env, secrets is required",
    "endpoints[3].secrets[1]: must be base64, optionally after 'whsec_'",
    "organizations[0].url: must be an absolute http:// or https:// URL",
    "organizations[0].headers.Content-Type: set by the router, cannot be overridden",
    "organizations[0].events[0]: 'lead.created' is not one of the campaign event types",
    "organizations[0].topics[0]: 'nope' is not one of kafka.topics",
    "organizations[0].campaigns[1].id: duplicate campaign id 'ABC'",
    "organizations[0].campaigns[1].events[1]: 'lead.x' is not one of the campaign event types",
    "subscriptions[0].events[0]: 'order.*' is not one of the agora event types",
    "subscriptions[1].events[0]: 'lead.created' is not one of the convocore event types",
    "subscriptions[1].where: exactly one of one_of, none_of is required",
    "endpoints[1]: the leadterra contract needs at least one subscribed event",
]


def test_check_config_lists_every_profile_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.toml"
    path.write_text(FAULTY_TOML, encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == FAULTY_LINES
    assert "agora-endpoint-secret" not in err
    assert "no-secret-in-this-contract" not in err


def test_check_config_accepts_the_fixed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixed = (
        FAULTY_TOML.replace("timeout_s = 30\n", "timeout_s = 10\n")
        .replace('url = "http://leadterra', 'url = "https://leadterra')
        .replace('secret = "no-secret-in-this-contract"\n', "")
        .replace("timeout_s = 61\n", 'timeout_s = 60\nsecret = "workspace-secret"\n')
        .replace(', "not base64!"', "")
        .replace('"order.*", ', "")
        .replace('events = ["lead.created"]\nwhere = {', 'events = ["lead_captured"]\nwhere = { none_of = ["vf"],')
        .replace("ftp://", "https://")
        .replace('events = ["lead.created"]\ntopics = ["nope"]', 'events = ["lead.*"]\ntopics = ["leads"]')
        .replace("Content-Type", "X-Org")
        .replace('id = "ABC"\nevents = ["lead.delivered", "lead.x"]', 'id = "DEF"\nevents = ["lead.delivered"]')
        + '\n[[subscriptions]]\nendpoint = "lt"\nevents = ["reply.received"]\n'
    )
    path = tmp_path / "router.toml"
    path.write_text(fixed, encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    # 4 endpoints and 3 subscriptions written, plus an organisation with 2 campaigns: 3 endpoints, 8 subscriptions
    assert (out, err) == (f"{path}: ok (7 endpoints, 11 subscriptions)\n", "")


# --- status rules: the profile's, overridden per endpoint ---


def test_status_overrides_are_merged_into_the_profiles_rules() -> None:
    retry = {"policy": "once", "delays_s": [60], "final_statuses": [404], "pause_statuses": [410]}
    config = ok(one("agora", retry=retry))
    rules = Endpoint(config.endpoints[0], config.delivery, {}).statuses
    assert (rules.verdict(404), rules.verdict(410), rules.verdict(400), rules.verdict(None)) == (
        "final",
        "gone",
        "retry",
        "retry",
    )


def test_a_status_both_retried_and_final_is_refused() -> None:
    retry = {"policy": "schedule", "delays_s": [5], "retry_statuses": [404, 409], "final_statuses": [409]}
    assert errors_of(one("standard-webhooks", retry=retry)) == [
        "endpoints[0].retry.final_statuses: [409] also in retry_statuses: retried or final?"
    ]


def test_status_overrides_are_within_300_to_599() -> None:
    retry = {"policy": "schedule", "delays_s": [5], "pause_statuses": [200]}
    assert errors_of(one("standard-webhooks", retry=retry)) == ["endpoints[0].retry.pause_statuses[0]: must be >= 300"]
