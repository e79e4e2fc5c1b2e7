"""Config validation: every fault reported at once, one ``path: message`` line each (the check-config contract)."""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.core.config import (
    AdminConfig,
    Config,
    DeliveryConfig,
    EndpointConfig,
    KafkaConfig,
    SubscriptionConfig,
    resolve_secrets,
)
from daemon.core.errors import ConfigError, RouterError
from daemon.core.profiles import HOP_BY_HOP, PROFILES
from daemon.core.sign import decode_whsec
from daemon.core.validate import (
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    check_endpoint,
    load_config,
    parse_config,
)

RESERVED_HEADERS = PROFILES["standard-webhooks"].reserved_headers

KEY = b"unit-test-secret-0123456789"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER_KEY = b"another-secret-for-rotation"
OTHER_SECRET = "whsec_" + base64.b64encode(OTHER_KEY).decode()


def kafka(**over: Any) -> dict[str, Any]:
    return {
        "bootstrap_servers": "localhost:9092",
        "group_id": "router",
        "topics": ["leads", "orders"],
        "results_topic": "webhook-results",
        **over,
    }


def endpoint(id: str = "crm", **over: Any) -> dict[str, Any]:
    return {"id": id, "url": f"https://{id}.example.com/hook", "secret": SECRET, **over}


def doc(**sections: Any) -> dict[str, Any]:
    """A valid document (one endpoint, one subscription) with ``sections`` replaced."""
    raw: dict[str, Any] = {
        "kafka": kafka(),
        "endpoints": [endpoint()],
        "subscriptions": [{"endpoint": "crm", "events": ["lead.*"]}],
    }
    raw.update(sections)
    return raw


def errors_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {} if environ is None else environ)
    return info.value.errors


# --- valid configs ---


def test_minimal_config_loads_with_defaults() -> None:
    config = parse_config({"kafka": kafka()}, {})
    assert config.kafka == KafkaConfig(
        bootstrap_servers="localhost:9092",
        group_id="router",
        topics=["leads", "orders"],
        results_topic="webhook-results",
    )
    assert config.kafka.client_id == "webhook-router"
    assert config.kafka.auto_offset_reset == "earliest"
    assert config.kafka.event_type_fields == {}
    assert config.kafka.max_in_flight_events == 10_000
    assert config.kafka.commit_interval_ms == 500
    assert config.kafka.enable_idempotence == "auto"
    assert parse_config({"kafka": kafka(enable_idempotence=False)}, {}).kafka.enable_idempotence is False
    assert config.admin == AdminConfig(listen="127.0.0.1:9464")
    assert config.delivery == DeliveryConfig(user_agent="webhook-router/0.1", drain_timeout_s=20.0)
    assert config.endpoints == []
    assert config.subscriptions == []


def test_full_config_loads() -> None:
    raw = doc(
        kafka=kafka(event_type_fields={"orders": "meta.kind"}, auto_offset_reset="latest"),
        admin={"listen": "0.0.0.0:9000"},
        delivery={"user_agent": "acme-hooks/2", "drain_timeout_s": 25, "allowed_networks": ["10.0.0.0/24"]},
        endpoints=[
            endpoint("crm", timeout_s=120, max_concurrency=1024, headers={"X-Tenant": "acme", "Authorization": "t"}),
            endpoint("billing", url="http://10.0.0.7:8080/in?x=1", timeout_s=1, max_concurrency=1),
        ],
        subscriptions=[
            {"endpoint": "crm", "events": ["lead.*", "*"]},
            {"endpoint": "billing", "events": ["order.paid", "lead*"], "topics": ["orders"]},
        ],
    )
    config = parse_config(raw, {})
    assert config.kafka.event_type_fields == {"orders": "meta.kind"}
    assert config.kafka.auto_offset_reset == "latest"
    assert config.admin.listen == "0.0.0.0:9000"
    assert config.delivery.drain_timeout_s == 25.0
    assert config.delivery.allowed_networks == ["10.0.0.0/24"]
    assert [e.id for e in config.endpoints] == ["crm", "billing"]
    assert config.endpoints[0].timeout_s == 120.0
    assert config.endpoints[0].max_concurrency == 1024
    assert config.endpoints[0].headers == {"X-Tenant": "acme", "Authorization": "t"}
    assert config.endpoints[1].url == "http://10.0.0.7:8080/in?x=1"
    assert config.subscriptions == [
        SubscriptionConfig(endpoint="crm", events=["lead.*", "*"]),
        SubscriptionConfig(endpoint="billing", events=["order.paid", "lead*"], topics=["orders"]),
    ]


def test_config_is_frozen() -> None:
    config = parse_config(doc(), {})
    with pytest.raises(AttributeError):
        config.kafka = config.kafka


def test_config_error_is_a_router_error_joining_lines() -> None:
    error = ConfigError(["a: one", "b: two"])
    assert isinstance(error, RouterError)
    assert error.errors == ["a: one", "b: two"]
    assert str(error) == "a: one; b: two"


# --- every structural fault at once, with its path ---


def test_every_structural_fault_is_reported_at_once() -> None:
    raw = doc(
        kafka=kafka(bogus=1, max_poll_records="many"),
        endpoints=[
            endpoint("a", max_concurrency=0),
            endpoint("b", colour="red"),
            endpoint("c", max_concurrency=2000),
        ],
        subscriptions=[{"endpoint": "a", "events": []}],
        extra={"x": 1},
    )
    assert errors_of(raw) == [
        "extra: unknown field",
        "kafka.bogus: unknown field",
        "kafka.max_poll_records: expected `int`, got `str`",
        "endpoints[0].max_concurrency: must be >= 1",
        "endpoints[1].colour: unknown field",
        "endpoints[2].max_concurrency: must be <= 1024",
        "subscriptions[0].events: length must be >= 1",
    ]


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (doc(kafka=kafka(bogus=True)), "kafka.bogus: unknown field"),
        (doc(endpoints=[endpoint(colour="red")]), "endpoints[0].colour: unknown field"),
        (doc(admin={"port": 1}), "admin.port: unknown field"),
        (doc(delivery={"retries": 3}), "delivery.retries: unknown field"),
        (
            doc(subscriptions=[{"endpoint": "crm", "events": ["*"], "filter": "x"}]),
            "subscriptions[0].filter: unknown field",
        ),
        ({"kafka": kafka(), "endpoint": []}, "endpoint: unknown field"),
    ],
)
def test_unknown_fields(raw: dict[str, Any], line: str) -> None:
    assert errors_of(raw) == [line]


def test_missing_required_fields() -> None:
    assert errors_of({}) == ["kafka: required field is missing"]
    assert errors_of({"kafka": {}}) == [
        "kafka.bootstrap_servers: required field is missing",
        "kafka.group_id: required field is missing",
        "kafka.topics: required field is missing",
        "kafka.results_topic: required field is missing",
    ]
    assert errors_of({"kafka": kafka(), "endpoints": [{}], "subscriptions": [{}]}) == [
        "endpoints[0].id: required field is missing",
        "endpoints[0].url: required field is missing",
        "subscriptions[0].endpoint: required field is missing",
        "subscriptions[0].events: required field is missing",
    ]


@pytest.mark.parametrize(
    ("raw", "lines"),
    [
        ({"kafka": 3}, ["kafka: must be a table"]),
        (doc(endpoints={"id": "crm"}), ["endpoints: must be an array of tables"]),
        (doc(endpoints=[5]), ["endpoints[0]: must be a table"]),
        (doc(kafka=kafka(topics=[])), ["kafka.topics: length must be >= 1"]),
        (doc(kafka=kafka(topics="leads")), ["kafka.topics: must be an array"]),
        (doc(kafka=kafka(topics=["leads", "bad topic"])), ["kafka.topics[1]: has characters that are not allowed"]),
        (doc(kafka=kafka(group_id="g" * 250)), ["kafka.group_id: length must be <= 249"]),
        (
            doc(kafka=kafka(auto_offset_reset="middle")),
            ["kafka.auto_offset_reset: must be one of 'earliest', 'latest'"],
        ),
        (doc(kafka=kafka(enable_idempotence="yes")), ["kafka.enable_idempotence: must be one of 'auto'"]),
        (
            doc(kafka=kafka(enable_idempotence=True, results_acks="leader")),
            [
                'kafka.enable_idempotence: needs results_acks = "all" (an idempotent producer waits for every in-sync '
                "replica)"
            ],
        ),
        (
            doc(kafka=kafka(commit_interval_ms=5, linger_ms=1001)),
            ["kafka.commit_interval_ms: must be >= 10", "kafka.linger_ms: must be <= 1000"],
        ),
        (
            doc(kafka=kafka(produce_timeout_ms=999)),
            ["kafka.produce_timeout_ms: must be >= 1000"],
        ),
        (
            doc(kafka=kafka(produce_timeout_ms=300_001)),
            ["kafka.produce_timeout_ms: must be <= 300000"],
        ),
        (doc(admin={"listen": "localhost"}), ["admin.listen: has characters that are not allowed"]),
        (doc(endpoints=[endpoint(id="bad id!")]), ["endpoints[0].id: has characters that are not allowed"]),
        (doc(endpoints=[endpoint(id="")]), ["endpoints[0].id: length must be >= 1"]),
        (doc(endpoints=[endpoint(url="")]), ["endpoints[0].url: length must be >= 1"]),
        (doc(endpoints=[endpoint(timeout_s="10")]), ["endpoints[0].timeout_s: expected `float`, got `str`"]),
        (doc(endpoints=[endpoint(timeout_s=True)]), ["endpoints[0].timeout_s: expected `float`, got `bool`"]),
        (doc(endpoints=[endpoint(max_concurrency=1.5)]), ["endpoints[0].max_concurrency: expected `int`, got `float`"]),
        (doc(endpoints=[endpoint(secret=5)]), ["endpoints[0].secret: expected `str`, got `int`"]),
        (doc(endpoints=[endpoint(headers={"X-A": 5})]), ["endpoints[0].headers.X-A: expected `str`, got `int`"]),
        (
            doc(subscriptions=[{"endpoint": "crm", "events": ["lead.*", ""]}]),
            ["subscriptions[0].events[1]: length must be >= 1"],
        ),
        (
            doc(subscriptions=[{"endpoint": "crm", "events": "lead.*"}]),
            ["subscriptions[0].events: must be an array"],
        ),
    ],
)
def test_structural_faults(raw: dict[str, Any], lines: list[str]) -> None:
    assert errors_of(raw) == lines


def test_int_bounds_are_inclusive() -> None:
    config = parse_config(doc(endpoints=[endpoint(max_concurrency=1)]), {})
    assert config.endpoints[0].max_concurrency == 1
    config = parse_config(doc(endpoints=[endpoint(max_concurrency=1024)]), {})
    assert config.endpoints[0].max_concurrency == 1024


def test_float_bounds_are_reported_at_their_path() -> None:
    # The exact wording of float bounds is pinned by test_float_bounds_follow_the_documented_wording.
    lines = errors_of(doc(endpoints=[endpoint("a"), endpoint("b"), endpoint("c", timeout_s=200)]))
    assert len(lines) == 1
    assert lines[0].startswith("endpoints[2].timeout_s: must be <= 120")
    lines = errors_of(doc(endpoints=[endpoint(timeout_s=0.5)]))
    assert len(lines) == 1
    assert lines[0].startswith("endpoints[0].timeout_s: must be >= 1")


def test_timeout_bounds_are_inclusive() -> None:
    assert parse_config(doc(endpoints=[endpoint(timeout_s=1)]), {}).endpoints[0].timeout_s == 1.0
    assert parse_config(doc(endpoints=[endpoint(timeout_s=120)]), {}).endpoints[0].timeout_s == 120.0


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (
            doc(endpoints=[endpoint("a"), endpoint("b"), endpoint("c", timeout_s=200)]),
            "endpoints[2].timeout_s: must be <= 120",
        ),
        (doc(endpoints=[endpoint(timeout_s=0.5)]), "endpoints[0].timeout_s: must be >= 1"),
        (doc(delivery={"drain_timeout_s": 30}), "delivery.drain_timeout_s: must be <= 25"),
        (doc(delivery={"drain_timeout_s": 0}), "delivery.drain_timeout_s: must be > 0"),
    ],
)
def test_float_bounds_follow_the_documented_wording(raw: dict[str, Any], line: str) -> None:
    assert errors_of(raw) == [line]


@pytest.mark.parametrize("drain", [25.5, 26, 30, 0, -1])
def test_drain_timeout_outside_0_to_25_is_refused(drain: float) -> None:
    lines = errors_of(doc(delivery={"drain_timeout_s": drain}))
    assert len(lines) == 1
    expected = "delivery.drain_timeout_s: must be <= 25" if drain > 0 else "delivery.drain_timeout_s: must be > 0"
    assert lines[0].startswith(expected)


@pytest.mark.parametrize("drain", [0.1, 1, 20, 25, 25.0])
def test_drain_timeout_up_to_25_is_accepted(drain: float) -> None:
    assert parse_config(doc(delivery={"drain_timeout_s": drain}), {}).delivery.drain_timeout_s == float(drain)


def test_every_bad_item_of_a_list_is_reported() -> None:
    assert errors_of(doc(kafka=kafka(topics=["leads", "bad topic", ""]))) == [
        "kafka.topics[1]: has characters that are not allowed",
        "kafka.topics[2]: length must be >= 1",
    ]


# --- semantic faults ---


def test_every_semantic_fault_is_reported_at_once() -> None:
    raw = doc(
        kafka=kafka(results_topic="leads", event_type_fields={"billing": "kind"}),
        endpoints=[
            endpoint("crm"),
            endpoint("crm", url="ftp://crm.example.com/"),
            endpoint("hub", secret=None, secret_env="HUB_SECRET"),
            endpoint("ops", headers={"Webhook-Signature": "v1,forged", "X-Note": "a\nb"}),
        ],
        subscriptions=[
            {"endpoint": "ghost", "events": ["le*ad"]},
            {"endpoint": "crm", "events": ["lead.*"], "topics": ["leads", "billing"]},
        ],
    )
    assert errors_of(raw) == [
        "kafka.results_topic: must not be one of kafka.topics",
        "kafka.event_type_fields.billing: not one of kafka.topics",
        "endpoints[1].id: duplicate endpoint id 'crm'",
        "endpoints[1].url: must be an absolute http:// or https:// URL",
        "endpoints[2].secret_env: environment variable HUB_SECRET is not set",
        "endpoints[3].headers.Webhook-Signature: set by the router, cannot be overridden",
        "endpoints[3].headers.X-Note: value must not contain control characters",
        "subscriptions[0].endpoint: no endpoint with id 'ghost'",
        "subscriptions[0].events[0]: '*' may only end a pattern ('lead.*' or '*')",
        "subscriptions[1].topics[1]: 'billing' is not one of kafka.topics",
    ]


def test_unknown_endpoint_in_subscription() -> None:
    raw = doc(subscriptions=[{"endpoint": "crm", "events": ["*"]}, {"endpoint": "billing", "events": ["*"]}])
    assert errors_of(raw) == ["subscriptions[1].endpoint: no endpoint with id 'billing'"]
    assert errors_of(doc(endpoints=[])) == ["subscriptions[0].endpoint: no endpoint with id 'crm'"]


def test_subscription_may_reference_an_endpoint_defined_later_or_twice() -> None:
    raw = doc(
        endpoints=[endpoint("crm"), endpoint("billing")],
        subscriptions=[{"endpoint": "billing", "events": ["*"]}, {"endpoint": "billing", "events": ["lead.*"]}],
    )
    assert [s.endpoint for s in parse_config(raw, {}).subscriptions] == ["billing", "billing"]


def test_duplicate_endpoint_ids() -> None:
    raw = doc(endpoints=[endpoint("a"), endpoint("b"), endpoint("a"), endpoint("a")], subscriptions=[])
    assert errors_of(raw) == [
        "endpoints[2].id: duplicate endpoint id 'a'",
        "endpoints[3].id: duplicate endpoint id 'a'",
    ]


def test_endpoint_ids_are_case_sensitive() -> None:
    config = parse_config(doc(endpoints=[endpoint("crm"), endpoint("CRM")]), {})
    assert [e.id for e in config.endpoints] == ["crm", "CRM"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://crm.example.com/hook",
        "crm.example.com/hook",
        "/hook",
        "http://",
        "https:///hook",
        "https://?q=1",
        "https://#frag",
        "http:/crm.example.com",
        "ws://crm.example.com/hook",
        "javascript://crm",
    ],
)
def test_bad_urls(url: str) -> None:
    assert errors_of(doc(endpoints=[endpoint(url=url)])) == [
        "endpoints[0].url: must be an absolute http:// or https:// URL"
    ]


@pytest.mark.parametrize(
    "url",
    ["http://crm", "https://crm.example.com", "HTTPS://CRM.example.com/Hook", "http://93.184.215.14:8080/a/b?c=d#e"],
)
def test_good_urls(url: str) -> None:
    assert parse_config(doc(endpoints=[endpoint(url=url)]), {}).endpoints[0].url == url


@pytest.mark.parametrize("url", ["http://[::1/hook", "http://crm.example.com:99999/hook", "https://user@/hook"])
def test_urls_the_http_client_refuses_are_refused(url: str) -> None:
    assert errors_of(doc(endpoints=[endpoint(url=url)])) == [
        "endpoints[0].url: must be an absolute http:// or https:// URL"
    ]


_CONTROL_MESSAGE = "must not contain control characters (CR, LF, tab, NUL...): percent-encode one that belongs in it"
_REWRITE_MESSAGE = (
    "would not be sent as written (the HTTP client removes dot segments such as /../ and an empty ? or #): "
    "write it as it is to be sent"
)


@pytest.mark.parametrize(
    "url",
    ["https://crm.example.com/\r\nX: 1", "https://crm.example.com/a\tb", "https://crm.example.com/a\x00",
     "https://crm.example.com/a?b=1\nc", "https://crm.example.com/a#\x7f", "https://crm.exa\nmple.com/hook",
     "https://user:p\rw@crm.example.com/", "https://crm.example.com/\x85"],
)  # fmt: skip
def test_a_url_with_a_control_character_is_refused(url: str) -> None:
    assert errors_of(doc(endpoints=[endpoint(url=url)])) == [f"endpoints[0].url: {_CONTROL_MESSAGE}"]


@pytest.mark.parametrize(
    "url",
    ["https://crm.example.com/a/../hook", "https://crm.example.com/./hook", "https://crm.example.com/a/..",
     "https://crm.example.com/hook?", "https://crm.example.com/hook#", "https://crm.example.com/hook/%2e%2e/x"],
)  # fmt: skip
def test_a_url_the_http_client_would_send_otherwise_is_refused(url: str) -> None:
    assert errors_of(doc(endpoints=[endpoint(url=url)])) == [f"endpoints[0].url: {_REWRITE_MESSAGE}"]


@pytest.mark.parametrize(
    "url",
    ["https://crm.example.com/p?q=%c3%a9", "https://crm.example.com/p%7Eq", "https://crm.example.com/p?a[]=1&b=2",
     "https://crm.example.com/caf\u00e9", "https://crm.example.com/a%2Fb?x=%2B%26&y=a+b&z=%0D%0A",
     "https://CRM.Example.com:443/Hook", "https://crm.example.com?x=1", "https://crm.example.com/p?r=https://b.example/c?d"],
)  # fmt: skip
def test_a_url_sent_as_written_up_to_percent_encoding_is_accepted(url: str) -> None:
    assert parse_config(doc(endpoints=[endpoint(url=url)]), {}).endpoints[0].url == url


# --- secrets ---


def test_secret_and_secret_env_both_or_neither() -> None:
    both = endpoint(secret_env="CRM_SECRET")
    neither = {"id": "crm", "url": "https://crm.example.com/hook"}
    environ = {"CRM_SECRET": SECRET}
    assert errors_of(doc(endpoints=[both]), environ) == [
        "endpoints[0]: exactly one of secret, secret_env, secrets is required"
    ]
    assert errors_of(doc(endpoints=[neither]), environ) == [
        "endpoints[0]: exactly one of secret, secret_env, secrets is required"
    ]


def test_secret_env_not_set() -> None:
    ep = {"id": "crm", "url": "https://crm.example.com/hook", "secret_env": "CRM_SECRET"}
    assert errors_of(doc(endpoints=[ep]), {"OTHER": SECRET}) == [
        "endpoints[0].secret_env: environment variable CRM_SECRET is not set"
    ]


def test_secret_env_is_resolved_from_the_environ_given() -> None:
    ep = {"id": "crm", "url": "https://crm.example.com/hook", "secret_env": "CRM_SECRET"}
    config = parse_config(doc(endpoints=[ep]), {"CRM_SECRET": OTHER_SECRET})
    assert config.endpoints[0].secret is None
    assert config.endpoints[0].secret_env == "CRM_SECRET"
    assert resolve_secrets(config.endpoints[0], {"CRM_SECRET": OTHER_SECRET})[0] == OTHER_SECRET
    assert decode_whsec(resolve_secrets(config.endpoints[0], {"CRM_SECRET": OTHER_SECRET})[0]) == OTHER_KEY


def test_secret_env_value_must_be_a_whsec_secret() -> None:
    ep = {"id": "crm", "url": "https://crm.example.com/hook", "secret_env": "CRM_SECRET"}
    assert errors_of(doc(endpoints=[ep]), {"CRM_SECRET": "whsec_***"}) == [
        "endpoints[0].secret_env: must be base64, optionally after 'whsec_'"
    ]
    assert errors_of(doc(endpoints=[ep]), {"CRM_SECRET": ""}) == ["endpoints[0].secret_env: must not be empty"]


def test_inline_secret_resolves_to_itself() -> None:
    config = parse_config(doc(), {})
    assert resolve_secrets(config.endpoints[0], {})[0] == SECRET
    assert decode_whsec(SECRET) == KEY


@pytest.mark.parametrize(
    ("secret", "line"),
    [
        ("whsec_not base64!", "endpoints[0].secret: must be base64, optionally after 'whsec_'"),
        ("whsec_abc", "endpoints[0].secret: must be base64, optionally after 'whsec_'"),  # bad padding
        (
            "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 9).decode(),
            "endpoints[0].secret: must be base64, optionally after 'whsec_'",
        ),
        (
            "whsec_" + base64.b64encode(KEY).decode() + "\n",
            "endpoints[0].secret: must be base64, optionally after 'whsec_'",
        ),
        ("whsec_", "endpoints[0].secret: must not be empty"),
        ("", "endpoints[0].secret: must not be empty"),
    ],
)
def test_invalid_whsec_secret(secret: str, line: str) -> None:
    assert errors_of(doc(endpoints=[endpoint(secret=secret)])) == [line]


def test_invalid_secret_is_not_echoed_in_the_error() -> None:
    secret = "whsec_p@ssw0rd-do-not-print"
    with pytest.raises(ConfigError) as info:
        parse_config(doc(endpoints=[endpoint(secret=secret)]), {})
    assert "p@ssw0rd" not in str(info.value)
    assert all("p@ssw0rd" not in line for line in info.value.errors)


def test_decode_whsec() -> None:
    assert decode_whsec("whsec_" + base64.b64encode(b"\x00\x01\xff").decode()) == b"\x00\x01\xff"
    with pytest.raises(ValueError, match=r"^must be base64, optionally after 'whsec_'$"):
        decode_whsec("whsec_%%%")
    with pytest.raises(ValueError, match=r"^must not be empty$"):
        decode_whsec("whsec_")


# --- headers ---


@pytest.mark.parametrize("name", sorted(RESERVED_HEADERS - HOP_BY_HOP))
def test_reserved_headers_cannot_be_overridden(name: str) -> None:
    for spelled in (name, name.upper(), name.title()):
        assert errors_of(doc(endpoints=[endpoint(headers={spelled: "x"})])) == [
            f"endpoints[0].headers.{spelled}: set by the router, cannot be overridden"
        ]


def test_reserved_header_set() -> None:
    hop_by_hop = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
                  "trailer", "transfer-encoding", "upgrade"}  # fmt: skip
    transport = {"host", "content-length", "content-type", "traceparent", *hop_by_hop}
    assert {*transport, "webhook-id", "webhook-timestamp", "webhook-signature"} == RESERVED_HEADERS
    agora = {"x-agora-signature-256", "x-agora-event", "x-agora-delivery"}
    assert PROFILES["agora"].reserved_headers == {*transport, *agora}
    assert PROFILES["crm"].reserved_headers == transport


_HOP = "a hop-by-hop or proxy header (it speaks to the connection or the egress proxy, not the receiver)"


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize(
    "name",
    ["Proxy-Authorization", "proxy-authorization", "PROXY-CONNECTION", "Proxy-Whatever", "Connection", "Keep-Alive",
     "TE", "Trailer", "Transfer-Encoding", "Upgrade"],
)  # fmt: skip
def test_no_profile_lets_an_endpoint_set_a_hop_by_hop_or_proxy_header(profile: str, name: str) -> None:
    """Proxy-Authorization of an endpoint's own replaced the router's credentials for delivery.proxy_url."""
    raw = doc(endpoints=[endpoint(profile=profile, headers={name: "Basic ZXZpbDpldmls"})], subscriptions=[])
    assert f"endpoints[0].headers.{name}: {_HOP}" in errors_of(raw)


def test_an_organisations_and_a_campaigns_proxy_headers_are_refused_alike() -> None:
    org = {
        "id": "acme",
        "url": "https://acme.example.com/h",
        "events": ["lead.delivered"],
        "headers": {"Proxy-Authorization": "x"},
        "campaigns": [{"id": "ABC", "headers": {"Upgrade": "h2c"}}],
    }
    assert errors_of(doc(endpoints=[], subscriptions=[], organizations=[org])) == [
        f"organizations[0].headers.Proxy-Authorization: {_HOP}",
        f"organizations[0].campaigns[0].headers.Upgrade: {_HOP}",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["X Bad", "X:Colon", "", "X-Ünicode", "(x)", "a/b"])
def test_invalid_header_names(name: str) -> None:
    assert errors_of(doc(endpoints=[endpoint(headers={name: "v"})])) == [
        f"endpoints[0].headers.{name}: not a valid header name"
    ]


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\r\nInjected: yes", "\n", "trailing\n"])
def test_header_values_with_line_breaks(value: str) -> None:
    assert errors_of(doc(endpoints=[endpoint(headers={"X-Note": value})])) == [
        "endpoints[0].headers.X-Note: value must not contain control characters"
    ]


def test_every_header_fault_is_reported() -> None:
    headers = {"X Bad": "v", "Content-Type": "text/plain", "X-Note": "a\nb", "X-R": "a\rb", "X-Ok": "fine"}
    assert errors_of(doc(endpoints=[endpoint(headers=headers)])) == [
        "endpoints[0].headers.X Bad: not a valid header name",
        "endpoints[0].headers.Content-Type: set by the router, cannot be overridden",
        "endpoints[0].headers.X-Note: value must not contain control characters",
        "endpoints[0].headers.X-R: value must not contain control characters",
    ]


def test_good_headers() -> None:
    headers = {"Authorization": "Bearer abc", "X-Tenant": "acme", "User-Agent": "custom/1", "x!#$%&'*+.^_`|~": "ok"}
    assert parse_config(doc(endpoints=[endpoint(headers=headers)]), {}).endpoints[0].headers == headers


def test_headers_are_bounded_in_number_value_size_and_total() -> None:
    assert (MAX_HEADERS, MAX_HEADER_VALUE_BYTES, MAX_HEADERS_BYTES) == (20, 1024, 8192)  # README says so
    at_most = {f"X-H{i:02d}": "v" * (MAX_HEADERS_BYTES // MAX_HEADERS - 5) for i in range(MAX_HEADERS)}
    assert parse_config(doc(endpoints=[endpoint(headers=at_most)]), {}).endpoints[0].headers == at_most
    one_more = {**{f"X-H{i:02d}": "v" for i in range(MAX_HEADERS)}, "X-Extra": "v"}
    assert errors_of(doc(endpoints=[endpoint(headers=one_more)])) == [
        "endpoints[0].headers: at most 20 custom headers (21 given)"
    ]
    long_value = {"X-Long": "é" * 513}  # 1026 bytes in UTF-8
    assert errors_of(doc(endpoints=[endpoint(headers=long_value)])) == [
        "endpoints[0].headers.X-Long: value must be at most 1024 bytes (1026 given)"
    ]
    heavy = {f"X-H{i:02d}": "v" * 1000 for i in range(9)}
    assert errors_of(doc(endpoints=[endpoint(headers=heavy)])) == [
        "endpoints[0].headers: names and values must total at most 8192 bytes (9045 given)"
    ]


def test_the_issue_s_headers_are_refused_naming_the_field() -> None:
    # 140 custom header values of 4,100 characters each: each value, their number and their total are faults.
    headers = {f"X-H{i:03d}": "k" * 4100 for i in range(140)}
    lines = errors_of(doc(endpoints=[endpoint(headers=headers)]))
    assert lines[:2] == [
        "endpoints[0].headers: at most 20 custom headers (140 given)",
        "endpoints[0].headers: names and values must total at most 8192 bytes (574840 given)",
    ]
    assert lines[2] == "endpoints[0].headers.X-H000: value must be at most 1024 bytes (4100 given)"
    assert len(lines) == 2 + 140


def test_campaign_headers_are_bounded_alike() -> None:
    campaign = {"id": "c1", "headers": {f"X-{i}": "v" for i in range(21)}}
    org = {"id": "acme", "url": "https://acme.example.com/h", "events": ["lead.*"], "headers": {"X-A": "v" * 2000},
           "campaigns": [campaign]}  # fmt: skip
    lines = errors_of(doc(endpoints=[], subscriptions=[], organizations=[org]))
    assert "organizations[0].headers.X-A: value must be at most 1024 bytes (2000 given)" in lines
    assert any(line.endswith("headers: at most 20 custom headers (21 given)") for line in lines)


# --- what a tenant may set (endpoints of the API) ---


def test_an_endpoint_of_the_api_has_at_most_max_events_per_endpoint_patterns_each_kept_once() -> None:
    config = parse_config(doc(), {})
    assert config.api.max_events_per_endpoint == 100 and config.api.max_endpoints_per_tenant == 100

    def check(events: list[Any], config: Config = config) -> tuple[list[str] | None, list[str]]:
        _, sub, faults, _ = check_endpoint(config, {}, endpoint("api-1"), {"endpoint": "api-1", "events": events})
        return (sub.events if sub is not None else None), faults

    assert check(["*"] * 50_000) == (None, ["events: at most 100 patterns (api.max_events_per_endpoint), 50000 given"])
    assert check(["lead.*", "call.ended", "lead.*", "*", "call.ended"]) == (["lead.*", "call.ended", "*"], [])
    assert check([f"t.{i}" for i in range(100)]) == ([f"t.{i}" for i in range(100)], [])
    assert check([f"t.{i}" for i in range(100)] + [None])[1] == [
        "events: at most 100 patterns (api.max_events_per_endpoint), 101 given"
    ]
    assert check(["x" * 256])[1] == ["events[0]: length must be <= 255"]
    lower = parse_config(doc(api={"max_events_per_endpoint": 2}), {})
    assert check(["a", "b", "a"], lower)[1] == ["events: at most 2 patterns (api.max_events_per_endpoint), 3 given"]
    many = doc(subscriptions=[{"endpoint": "crm", "events": [f"t.{i}" for i in range(1_000)]}])
    assert len(parse_config(many, {}).subscriptions[0].events) == 1_000  # the config file's are the platform's


@pytest.mark.parametrize("name", ["X-Evil\n", "webhook-signature\n"])
def test_header_name_with_trailing_newline_is_refused(name: str) -> None:
    lines = errors_of(doc(endpoints=[endpoint(headers={name: "v"})]))
    assert len(lines) == 1
    assert lines[0].startswith(f"endpoints[0].headers.{name}: ")


@pytest.mark.parametrize("value", ["a\x00b", "a\x0bb", "a\x7fb"])
def test_header_value_with_control_characters_is_refused(value: str) -> None:
    lines = errors_of(doc(endpoints=[endpoint(headers={"X-A": value})]))
    assert len(lines) == 1
    assert lines[0].startswith("endpoints[0].headers.X-A: ")


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (doc(kafka=kafka(topics=["leads\n"]), subscriptions=[]), "kafka.topics[0]"),
        (doc(endpoints=[endpoint("crm\n")], subscriptions=[]), "endpoints[0].id"),
        (doc(admin={"listen": "127.0.0.1:9464\n"}), "admin.listen"),
    ],
)
def test_names_with_trailing_newline_are_refused(raw: dict[str, Any], path: str) -> None:
    lines = errors_of(raw)
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: ")


# --- topics, patterns, event type fields ---


def test_subscription_topics_must_be_kafka_topics() -> None:
    raw = doc(subscriptions=[{"endpoint": "crm", "events": ["*"], "topics": ["orders", "billing", "webhook-results"]}])
    assert errors_of(raw) == [
        "subscriptions[0].topics[1]: 'billing' is not one of kafka.topics",
        "subscriptions[0].topics[2]: 'webhook-results' is not one of kafka.topics",
    ]


@pytest.mark.parametrize("pattern", ["le*ad", "*lead", "**", "lead.**", "*.created", "a*b*"])
def test_bad_wildcard_patterns(pattern: str) -> None:
    raw = doc(subscriptions=[{"endpoint": "crm", "events": ["lead.created", pattern]}])
    assert errors_of(raw) == ["subscriptions[0].events[1]: '*' may only end a pattern ('lead.*' or '*')"]


@pytest.mark.parametrize("pattern", ["*", "lead.*", "lead*", "lead.created", "a"])
def test_good_patterns(pattern: str) -> None:
    raw = doc(subscriptions=[{"endpoint": "crm", "events": [pattern]}])
    assert parse_config(raw, {}).subscriptions[0].events == [pattern]


def test_results_topic_must_not_be_consumed() -> None:
    assert errors_of(doc(kafka=kafka(results_topic="orders"))) == [
        "kafka.results_topic: must not be one of kafka.topics"
    ]


def test_event_type_fields_for_unknown_topics() -> None:
    raw = doc(kafka=kafka(event_type_fields={"leads": "kind", "billing": "type", "webhook-results": "x"}))
    assert errors_of(raw) == [
        "kafka.event_type_fields.billing: not one of kafka.topics",
        "kafka.event_type_fields.webhook-results: not one of kafka.topics",
    ]


def test_event_type_field_must_not_be_empty() -> None:
    assert errors_of(doc(kafka=kafka(event_type_fields={"leads": ""}))) == [
        "kafka.event_type_fields.leads: length must be >= 1"
    ]


def test_sasl_password_env_must_be_set() -> None:
    sasl = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}
    raw = doc(kafka=kafka(**sasl, sasl_password_env="KAFKA_PASSWORD"))
    assert errors_of(raw) == ["kafka.sasl_password_env: environment variable KAFKA_PASSWORD is not set"]
    config = parse_config(raw, {"KAFKA_PASSWORD": "pw"})
    assert config.kafka.sasl_password_env == "KAFKA_PASSWORD"


def test_admin_port_range() -> None:
    assert errors_of(doc(admin={"listen": "0.0.0.0:65536"})) == ["admin.listen: port must be <= 65535"]
    assert parse_config(doc(admin={"listen": "0.0.0.0:65535"}), {}).admin.listen == "0.0.0.0:65535"


def test_structural_faults_are_reported_before_semantic_ones() -> None:
    # Semantic checks need a decoded config: while a structural fault remains, they are not run.
    raw = doc(endpoints=[endpoint(max_concurrency=0)], subscriptions=[{"endpoint": "ghost", "events": ["*"]}])
    assert errors_of(raw) == ["endpoints[0].max_concurrency: must be >= 1"]


# --- secrets never printed ---


def test_repr_never_contains_the_secret() -> None:
    ep = {"id": "crm", "url": "https://crm.example.com/hook?token=abc", "secret_env": "CRM_SECRET"}
    config = parse_config(doc(endpoints=[endpoint("inline"), ep]), {"CRM_SECRET": OTHER_SECRET})
    secret_body = SECRET.removeprefix("whsec_")
    for text in (
        repr(config),
        str(config),
        repr(config.endpoints),
        repr(config.endpoints[0]),
        str(config.endpoints[0]),
    ):
        assert SECRET not in text
        assert secret_body not in text
        assert OTHER_SECRET not in text
    assert repr(config) == "Config(topics=['leads', 'orders'], endpoints=2)"
    assert repr(config.endpoints[0]) == "EndpointConfig(id='inline', profile='standard-webhooks', url=<redacted>)"
    assert repr(config.endpoints[1]) == "EndpointConfig(id='crm', profile='standard-webhooks', url=<redacted>)"
    assert "token=abc" not in repr(config.endpoints)


def test_endpoint_config_repr_built_directly() -> None:
    ep = EndpointConfig(id="x", url="https://x.example.com/", secret=SECRET)
    assert repr(ep) == "EndpointConfig(id='x', profile='standard-webhooks', url=<redacted>)"
    assert SECRET not in repr(Config(kafka=KafkaConfig(**kafka()), endpoints=[ep]))


# --- files ---

GOOD_TOML = f"""
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "router"
topics = ["leads", "orders"]
results_topic = "webhook-results"

[kafka.event_type_fields]
orders = "meta.kind"

[delivery]
drain_timeout_s = 15

[[endpoints]]
id = "crm"
url = "https://crm.example.com/hook"
secret = "{SECRET}"
headers = {{ "X-Tenant" = "acme" }}

[[endpoints]]
id = "billing"
url = "https://billing.example.com/hook"
secret_env = "BILLING_SECRET"

[[subscriptions]]
endpoint = "crm"
events = ["lead.*"]

[[subscriptions]]
endpoint = "billing"
events = ["order.paid"]
topics = ["orders"]
"""

BAD_TOML = """
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "router"
topics = ["leads"]
results_topic = "webhook-results"
bogus = 1

[[endpoints]]
id = "crm"
url = "https://crm.example.com/hook"
secret = "whsec_"
timeout_s = 500

[[endpoints]]
id = "billing"
url = "https://billing.example.com/hook"
secret = "whsec_"
colour = "red"
"""

BAD_TOML_LINES = [
    "kafka.bogus: unknown field",
    "endpoints[0].timeout_s: must be <= 120",
    "endpoints[1].colour: unknown field",
]


def write(tmp_path: Path, text: str, name: str = "router.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD_TOML), {"BILLING_SECRET": OTHER_SECRET})
    assert config.kafka.event_type_fields == {"orders": "meta.kind"}
    assert config.delivery.drain_timeout_s == 15.0
    assert [(e.id, e.secret, e.secret_env) for e in config.endpoints] == [
        ("crm", SECRET, None),
        ("billing", None, "BILLING_SECRET"),
    ]
    assert config.endpoints[0].headers == {"X-Tenant": "acme"}
    assert config.subscriptions[1] == SubscriptionConfig(endpoint="billing", events=["order.paid"], topics=["orders"])


def test_load_config_accepts_a_str_path(tmp_path: Path) -> None:
    assert len(load_config(str(write(tmp_path, GOOD_TOML)), {"BILLING_SECRET": SECRET}).endpoints) == 2


def test_load_config_uses_the_environ_given_not_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD_TOML)
    monkeypatch.setenv("BILLING_SECRET", SECRET)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.errors == ["endpoints[1].secret_env: environment variable BILLING_SECRET is not set"]
    monkeypatch.delenv("BILLING_SECRET")
    assert load_config(path, {"BILLING_SECRET": SECRET}).endpoints[1].secret_env == "BILLING_SECRET"


def test_load_config_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD_TOML)
    monkeypatch.delenv("BILLING_SECRET", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["endpoints[1].secret_env: environment variable BILLING_SECRET is not set"]
    monkeypatch.setenv("BILLING_SECRET", SECRET)
    assert [e.id for e in load_config(path).endpoints] == ["crm", "billing"]


def test_load_config_reports_every_fault_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BAD_TOML), {})
    lines = info.value.errors
    assert [line.split(":")[0] for line in lines] == [line.split(":")[0] for line in BAD_TOML_LINES]
    assert lines[0] == BAD_TOML_LINES[0]
    assert lines[1].startswith(BAD_TOML_LINES[1])
    assert lines[2] == BAD_TOML_LINES[2]


@pytest.mark.parametrize(
    "text",
    ["[kafka\n", "a = 1\na = 2\n", 'kafka = { bootstrap_servers = "x" \n', '[kafka]\ntopics = ["a",,]\n'],
)
def test_toml_syntax_errors(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
    else:  # pragma: no cover - every sample is broken
        pytest.fail("sample is valid TOML")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.errors == [f"{path}: not valid TOML: {message}"]


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.errors == [
        f"{path}: not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 7)"
    ]


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"\xff\xfe[kafka]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.errors == [
        f"{path}: not valid TOML: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.errors == [f"{path}: cannot read: No such file or directory"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {})
    assert info.value.errors == [f"{tmp_path}: cannot read: Is a directory"]


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ""), {})
    assert info.value.errors == ["kafka: required field is missing"]


# --- the check-config command ---


def test_cli_check_config_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_SECRET", SECRET)
    path = write(tmp_path, GOOD_TOML)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok (2 endpoints, 2 subscriptions)\n"
    assert err == ""


def test_cli_check_config_bad_file_prints_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BAD_TOML)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0] == "kafka.bogus: unknown field"
    assert lines[1].startswith("endpoints[0].timeout_s: must be <= 120")
    assert lines[2] == "endpoints[1].colour: unknown field"


def test_cli_check_config_semantic_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BILLING_SECRET", raising=False)
    text = GOOD_TOML.replace('endpoint = "crm"', 'endpoint = "ghost"').replace('"lead.*"', '"le*ad"')
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "endpoints[1].secret_env: environment variable BILLING_SECRET is not set",
        "subscriptions[0].endpoint: no endpoint with id 'ghost'",
        "subscriptions[0].events[0]: '*' may only end a pattern ('lead.*' or '*')",
    ]


def test_cli_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.toml"
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{path}: cannot read: No such file or directory\n"


def test_cli_check_config_does_not_print_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_SECRET", "whsec_env-s3cret!")
    path = write(tmp_path, GOOD_TOML.replace(SECRET, "whsec_sup3r-s3cret!"))
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "endpoints[0].secret: must be base64, optionally after 'whsec_'",
        "endpoints[1].secret_env: must be base64, optionally after 'whsec_'",
    ]
    assert "s3cret" not in err


# --- the SSRF guard in check-config: refused hosts, allowed networks, the egress proxy ---

_REFUSED = "(unless delivery.allowed_networks allows its range)"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data", "cloud metadata address"),
        ("http://10.0.0.7:8080/in", "private address"),
        ("http://172.16.0.1/", "private address"),
        ("http://192.168.1.1/", "private address"),
        ("http://100.64.0.1/", "carrier-grade NAT (shared) address"),
        ("http://127.0.0.1:8080/", "loopback address"),
        ("http://127.0.0.2/", "loopback address"),
        ("http://0.0.0.0/", "'this network' address"),
        ("http://224.0.0.1/", "multicast address"),
        ("http://240.0.0.1/", "reserved (class E) address"),
        ("http://255.255.255.255/", "broadcast address"),
        ("http://[::1]/", "IPv6 loopback address"),
        ("http://[::]/", "unspecified IPv6 address"),
        ("http://[fc00::1]/", "unique-local IPv6 address"),
        ("http://[fe80::1]/", "link-local IPv6 address"),
        ("http://[::ffff:127.0.0.1]/", "loopback address inside an IPv4-mapped IPv6 address"),
        ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata address inside a NAT64 address"),
        ("http://[2002:c0a8:101::1]/", "private address inside a 6to4 address"),
        ("http://example.com@127.0.0.1/", "loopback address"),
        ("http://localhost:8080/", "a name that always means a loopback address"),
        ("https://app.localhost/", "a name that always means a loopback address"),
        ("http://metadata.google.internal/", "a name that always means a cloud metadata address"),
    ],
)
def test_a_url_whose_host_the_guard_refuses_is_refused_with_the_reason(url: str, why: str) -> None:
    assert errors_of(doc(endpoints=[endpoint(url=url)])) == [f"endpoints[0].url: the host is refused: {why} {_REFUSED}"]


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/", "http://0177.0.0.1/", "http://0x7f.0.0.1/", "http://127.1/", "http://127.0.0.1./",
     "http://%31%32%37.0.0.1/", "http://1.2.3.4.5/"],
)  # fmt: skip
def test_a_host_written_as_a_number_in_another_form_than_a_b_c_d_is_refused(url: str) -> None:
    (line,) = errors_of(doc(endpoints=[endpoint(url=url)]))
    assert line.startswith("endpoints[0].url: the host is written in a form that is refused: an IPv4 address must be")


def test_allowed_networks_let_their_ranges_through_and_only_those() -> None:
    urls = ["http://127.0.0.1:8080/", "http://localhost/", "http://10.1.2.3/", "http://[::ffff:10.1.0.1]/"]
    raw = doc(
        delivery={"allowed_networks": ["127.0.0.0/8", "10.1.0.0/16"]},
        endpoints=[endpoint(f"e{i}", url=url) for i, url in enumerate([*urls, "http://10.2.0.1/"])],
        subscriptions=[],
    )
    assert errors_of(raw) == [f"endpoints[4].url: the host is refused: private address {_REFUSED}"]


def test_allowed_networks_must_be_cidr_networks() -> None:
    raw = doc(delivery={"allowed_networks": ["10.0.0.0/8", "10.0.0.1/8", "example.com", "fd00::/8", "::1/129"]})
    expected = "must be a network in CIDR form with no host bits set (e.g. 10.0.0.0/8, fd00::/8 or 127.0.0.1/32)"
    assert errors_of(raw) == [f"delivery.allowed_networks[{i}]: {expected}" for i in (1, 2, 4)]


def test_allowed_networks_of_the_api_must_be_cidr_networks() -> None:
    raw = doc(api={"allowed_networks": ["10.20.0.0/16", "10.20.0.1/16"]})
    expected = "must be a network in CIDR form with no host bits set (e.g. 10.0.0.0/8, fd00::/8 or 127.0.0.1/32)"
    assert errors_of(raw) == [f"api.allowed_networks[1]: {expected}"]


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://10.20.0.5/admin", "private address"),
        ("http://127.0.0.1:8080/", "loopback address"),
        ("http://localhost/", "a name that always means a loopback address"),
        ("http://[::ffff:10.20.0.5]/", "private address inside an IPv4-mapped IPv6 address"),
        ("http://169.254.169.254/", "cloud metadata address"),
    ],
)
def test_an_endpoint_of_the_api_is_judged_by_api_allowed_networks_never_by_delivery_s(url: str, refused: str) -> None:
    """delivery.allowed_networks lets the config file's endpoints into the platform's network; a tenant's URL into
    the same ranges is refused, naming the list that would allow it."""
    allowing = ["10.20.0.0/16", "127.0.0.0/8", "169.254.0.0/16"]
    config = parse_config(doc(delivery={"allowed_networks": allowing}), {})
    given = {"id": "ep_x", "url": url, "secret": SECRET}
    _, _, faults, _ = check_endpoint(config, {}, given, {"endpoint": "ep_x", "events": ["*"]})
    assert faults == [f"url: the host is refused: {refused} (unless api.allowed_networks allows its range)"]
    config = parse_config(doc(api={"allowed_networks": allowing}), {})
    assert check_endpoint(config, {}, given, {"endpoint": "ep_x", "events": ["*"]})[2] == []
    assert errors_of(doc(api={"allowed_networks": allowing}, endpoints=[endpoint(url=url)]))[0].startswith(
        "endpoints[0].url: the host is refused"  # and the list of the API's lets no endpoint of the file through
    )


@pytest.mark.parametrize(
    ("proxy", "error"),
    [
        ("http://smokescreen.internal:4750", None),
        ("http://user:pw@10.0.0.5:3128/", None),  # the proxy itself may be anywhere: the router connects only to it
        ("https://proxy.example.com:443", "must be an http:// URL of the proxy (http://host:port)"),
        ("socks5://proxy:1080", "must be an http:// URL of the proxy (http://host:port)"),
        ("http://proxy:3128/path", "must be the proxy's address only (http://host:port), no path"),
    ],
)
def test_the_egress_proxy_is_an_http_address(proxy: str, error: str | None) -> None:
    raw = doc(delivery={"proxy_url": proxy})
    if error is None:
        assert parse_config(raw, {}).delivery.proxy_url == proxy
    else:
        assert errors_of(raw) == [f"delivery.proxy_url: {error}"]


def test_the_proxy_url_is_not_printed_with_the_config() -> None:
    config = parse_config(doc(delivery={"proxy_url": "http://user:pr0xy-pw@proxy:3128"}), {})
    assert "pr0xy-pw" not in repr(config.delivery) and "pr0xy-pw" not in repr(config)


def test_organisation_and_campaign_urls_go_through_the_same_check() -> None:
    org: dict[str, Any] = {"id": "acme", "url": "http://169.254.169.254/", "events": ["lead.delivered"],
           "campaigns": [{"id": "ABC", "url": "http://0x7f.0.0.1/h"}]}  # fmt: skip
    lines = errors_of(doc(endpoints=[], subscriptions=[], organizations=[org]))
    assert lines[0] == f"organizations[0].url: the host is refused: cloud metadata address {_REFUSED}"
    assert lines[1].startswith("organizations[0].campaigns[0].url: the host is written in a form that is refused")


def test_a_reload_cannot_change_the_tenant_field_nor_the_network_guard() -> None:
    from daemon.core.reload import at_restart, refused

    kafka = {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"}
    old = parse_config({"kafka": kafka, "api": {"tenant_field": "org.id"}}, {})
    assert refused(old, parse_config({"kafka": kafka, "api": {"tenant_field": "org.id"}, "delivery": {}}, {})) == []
    moved = parse_config({"kafka": {**kafka, "group_id": "g2"}, "api": {"tenant_field": "org.id"}}, {})
    assert refused(old, moved) == [] and at_restart(old, moved) == ["kafka.group_id"]
    api = {"tenant_field": "org.id", "previous_secrets_key_files": ["/k"]}
    rotated = parse_config({"kafka": kafka, "api": api}, {})
    assert refused(old, rotated) == [] and at_restart(old, rotated) == ["api.previous_secrets_key_files"]
    assert refused(old, parse_config({"kafka": kafka, "delivery": {"allowed_networks": ["10.0.0.0/8"]}}, {})) == [
        "delivery.allowed_networks: changed, which needs a restart (the running config is kept)",
        "api.tenant_field: changed, which needs a restart (the running config is kept)",
    ]
    api = {"tenant_field": "org.id", "allowed_networks": ["10.20.0.0/16"]}
    assert refused(old, parse_config({"kafka": kafka, "api": api}, {})) == [
        "api.allowed_networks: changed, which needs a restart (the running config is kept)"
    ]


def test_a_subscriptions_scope_needs_exactly_one_of_one_of_and_none_of() -> None:
    raw = {
        "kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"},
        "endpoints": [{"id": "a", "url": "https://a.example.com/h", "secret": "whsec_" + "a2tr" * 8}],
        "subscriptions": [{"endpoint": "a", "events": ["*"], "scope": {"field": "org.id"}}],
    }
    with pytest.raises(ConfigError) as refused:
        parse_config(raw, {})
    assert refused.value.errors == ["subscriptions[0].scope: exactly one of one_of, none_of is required"]


# --- the admin token's strength ---

STRONG_TOKEN = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("", "0 character(s) long, at least 32 are required"),
        ("t", "1 character(s) long, at least 32 are required"),
        ("t0ken", "5 character(s) long, at least 32 are required"),
        (STRONG_TOKEN[:31], "31 character(s) long, at least 32 are required"),
        ("a" * 64, "1 different character(s), at least 10 are required"),
        ("0123456789" * 4, "one shorter string repeated"),
        ("ab12" * 10, "4 different character(s), at least 10 are required"),
    ],
)
def test_a_weak_admin_token_is_refused_naming_the_field(token: str, why: str) -> None:
    (line,) = errors_of(doc(admin={"token_env": "ADMIN_TOKEN"}), {"ADMIN_TOKEN": token})
    advice = "(generate one: `openssl rand -hex 32`)"
    assert line == f"admin.token_env: the token in ADMIN_TOKEN is too weak: {why} {advice}"


@pytest.mark.parametrize("token", [STRONG_TOKEN, STRONG_TOKEN[:32], "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"])
def test_a_strong_admin_token_passes(token: str) -> None:
    config = parse_config(doc(admin={"token_env": "ADMIN_TOKEN"}), {"ADMIN_TOKEN": token})
    assert config.admin.token_env == "ADMIN_TOKEN"


def test_cli_check_config_and_run_refuse_a_weak_admin_token_with_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("BILLING_SECRET", SECRET)
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "changeme")
    path = write(tmp_path, GOOD_TOML + '\n[admin]\ntoken_env = "ROUTER_ADMIN_TOKEN"\n')
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "changeme" not in err
    assert err.splitlines() == [
        "admin.token_env: the token in ROUTER_ADMIN_TOKEN is too weak: 8 character(s) long, at least 32 are required "
        "(generate one: `openssl rand -hex 32`)"
    ]
    assert main(["run", "--config", str(path)]) == 2  # before anything starts
    assert "admin.token_env: the token in ROUTER_ADMIN_TOKEN is too weak" in caplog.text
    assert "changeme" not in caplog.text + capsys.readouterr().err
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", STRONG_TOKEN)
    assert main(["check-config", str(path)]) == 0


# --- the endpoints API's keys ---


def test_every_previous_secrets_key_must_load_and_each_fault_names_its_field(tmp_path: Path) -> None:
    good = base64.b64encode(bytes(range(32))).decode()
    environ = {"ADMIN_TOKEN": STRONG_TOKEN, "KEY": good, "OLD": good, "SHORT": base64.b64encode(b"short").decode()}
    api = {"enabled": True, "secrets_key_env": "KEY", "previous_secrets_key_envs": ["OLD", "SHORT", "GONE"],
           "previous_secrets_key_files": [str(tmp_path / "missing")]}  # fmt: skip
    assert errors_of(doc(admin={"token_env": "ADMIN_TOKEN"}, api=api), environ) == [
        "api.previous_secrets_key_envs[1]: the key must be 32 bytes, not 5",
        "api.previous_secrets_key_envs[2]: environment variable GONE is not set",
        f"api.previous_secrets_key_files[0]: cannot read {tmp_path / 'missing'}: No such file or directory",
    ]
    api = {**api, "previous_secrets_key_envs": ["OLD"], "previous_secrets_key_files": []}
    config = parse_config(doc(admin={"token_env": "ADMIN_TOKEN"}, api=api), environ)
    assert (config.api.previous_secrets_key_envs, config.api.accept_unauthenticated_records) == (["OLD"], False)


def test_process_workers_is_one_by_default_a_number_or_auto() -> None:
    assert parse_config(doc(), {}).process.workers == 1
    assert parse_config(doc(process={"workers": 4}), {}).process.workers == 4
    assert parse_config(doc(process={"workers": "auto"}), {}).process.workers == "auto"


@pytest.mark.parametrize(
    ("workers", "line"),
    [
        (0, "process.workers: must be >= 1"),
        (257, "process.workers: must be <= 256"),
        ("many", "process.workers: must be one of 'auto'"),
        (1.5, "process.workers: expected one of int, 'auto'"),
        (True, "process.workers: expected one of int, 'auto'"),
    ],
)
def test_a_wrong_number_of_workers_is_refused_naming_the_field(workers: Any, line: str) -> None:
    assert errors_of(doc(process={"workers": workers})) == [line]
