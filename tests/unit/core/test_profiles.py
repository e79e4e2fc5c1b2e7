"""Delivery profiles: the mapping language, each platform's body and headers, skips, timeouts, routing by catalogue.

The seed examples are copied from the five platform documents in ../shared/seeds/. Every body is compared as
exact bytes (field order included), every header set as an exact dict.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from daemon.admin.operate import sample_event as profile_test_event
from daemon.core.config import DeliveryConfig, EndpointConfig, SubscriptionConfig, WhereConfig
from daemon.core.errors import RouterError, TemplateError
from daemon.core.event import Event
from daemon.core.match import RoutingTable
from daemon.core.profiles import PROFILES, Skip, Template, iso_seconds, pattern_matches, skip_for
from daemon.delivery.endpoint import Endpoint
from daemon.delivery.job import Job
from tests.seeds import (
    AGORA_BULK,
    AGORA_LEAD_CREATED,
    AGORA_STATUS_CHANGED,
    CAMPAIGN_LEAD_DELIVERED,
    CONVOCORE_AGENT_CREATED,
    CONVOCORE_MESSAGE_RECEIVED,
    CRM_LEAD_CREATE,
    LEADTERRA_REPLY,
)

T_MS = 1781294400000  # the Kafka record's time: 2026-06-12T20:00:00Z
T_ISO = "2026-06-12T20:00:00Z"
TS = 1718900000  # the attempt's unix time in the headers

WHSEC_1 = "whsec_" + base64.b64encode(b"first-secret-0123456789abcdef").decode()
WHSEC_2 = "whsec_" + base64.b64encode(b"second-secret-9876543210fedcba").decode()
WHSEC_STRANGER = "whsec_" + base64.b64encode(b"not-one-of-ours-000000000000").decode()

# --- the seeds' own examples ---


# --- helpers ---


def compact(obj: Any) -> bytes:
    """The exact bytes of a body: compact JSON, field order kept, UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def event_of(obj: Any, event_type: str | None = None, time_ms: int = T_MS) -> Event:
    value = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    if event_type is None:
        event_type = obj.get("event") or obj.get("type")
    assert isinstance(event_type, str)
    return Event(value, event_type, "leads", 0, 17, time_ms)


def endpoint_of(
    profile: str, id: str = "ep", secret: str | None = None, delivery: DeliveryConfig | None = None, **over: Any
) -> Endpoint:
    kind = PROFILES[profile].key_source
    if secret is None and "secrets" not in over and kind != "optional":
        secret = WHSEC_1 if kind == "whsec" else "endpoint-secret"
    fields: dict[str, Any] = {"id": id, "url": f"https://{id}.example.com/hook", "profile": profile, **over}
    if secret is not None:
        fields["secret"] = secret
    config = EndpointConfig(**fields)
    return Endpoint(config, delivery or DeliveryConfig(), {})


def all_headers(endpoint: Endpoint, job: Job, body: bytes, ts: int) -> dict[str, str]:
    """Every header of the request beyond Host and Content-Length, as the receiver sees them."""
    return {**endpoint.base_headers, **endpoint.request_headers(job, body, ts)[1]}


def job_of(event: Event, attempt: int = 1, delivery_id: str = "msg_0123456789abcdef") -> Job:
    return Job(event=event, delivery_id=delivery_id, ack=lambda: None, attempt=attempt)


def render(profile: str, obj: Any, secret: str | None = None, time_ms: int = T_MS) -> Any:
    return json.loads(endpoint_of(profile, secret=secret).render(event_of(obj, time_ms=time_ms)))


# --- the mapping language: every source ---


def test_type_secret_and_time_sources() -> None:
    template = Template({"t": "$type", "s": "$secret", "iso": "$time.iso", "ms": "$time.ms"})
    out = template.render({"event": "ignored"}, "lead.created", 1718035200999, "sek")
    assert out == {"t": "lead.created", "s": "sek", "iso": "2024-06-10T16:00:00Z", "ms": 1718035200999}
    assert list(out) == ["t", "s", "iso", "ms"]


def test_time_iso_is_utc_seconds_with_z() -> None:
    assert iso_seconds(T_MS) == T_ISO
    assert iso_seconds(T_MS + 999) == T_ISO
    assert iso_seconds(0) == "1970-01-01T00:00:00Z"


def test_event_source_is_the_whole_event() -> None:
    event = {"event": "x", "nested": {"a": [1, 2]}, "n": None}
    assert Template({"all": "$event"}).render(event, "x", 0, "") == {"all": event}


def test_rest_drops_the_type_field_and_the_fields_named_elsewhere() -> None:
    template = Template({"kind": "$type", "who": "lead.name", "id": "id", "rest": "$rest"})
    event = {"event": "e", "type": "t", "lead": {"name": "Ann"}, "id": 5, "kind": "k", "rest": 1, "other": 2, "z": 3}
    # `type` did not carry the event type here: it is the event's own field and stays
    expected = {"kind": "e", "who": "Ann", "id": 5, "rest": {"type": "t", "other": 2, "z": 3}}
    assert template.render(event, "e", 0, "", "event") == expected


def test_rest_with_listed_fields_only() -> None:
    template = Template({"id": "id", "rest": "$rest:secret"})
    event = {"event": "e", "id": 5, "secret": "old", "x": 1}
    assert template.render(event, "e", 0, "", "event") == {"id": 5, "rest": {"id": 5, "x": 1}}


def test_rest_drops_fields_named_by_fallbacks() -> None:
    template = Template({"when": "ts|created|$time.ms", "rest": "$rest"})
    assert template.render({"ts": None, "created": 4, "x": 1}, "e", 9, "") == {"when": 4, "rest": {"x": 1}}


def test_rest_with_another_type_field() -> None:
    template = Template({"r": "$rest"})
    assert template.render({"kind": "k", "event": "e", "type": "t", "x": 1}, "k", 0, "", "kind") == {
        "r": {"event": "e", "type": "t", "x": 1}
    }


def test_dotted_paths() -> None:
    template = Template({"v": "a.b.c"})
    assert template.render({"a": {"b": {"c": [1, {"d": 2}]}}}, "e", 0, "") == {"v": [1, {"d": 2}]}
    assert template.render({"a": {"b": {"c": 0}}}, "e", 0, "") == {"v": 0}
    assert template.render({"a": {"b": {"c": False}}}, "e", 0, "") == {"v": False}
    assert template.render({"a": {"b": {"c": ""}}}, "e", 0, "") == {"v": ""}
    assert template.render({"a": {"b": {}}}, "e", 0, "") == {"v": None}
    assert template.render({"a": {"b": "not an object"}}, "e", 0, "") == {"v": None}
    assert template.render({"a": [{"b": {"c": 1}}]}, "e", 0, "") == {"v": None}
    assert template.render({"a": None}, "e", 0, "") == {"v": None}
    assert template.render({}, "e", 0, "") == {"v": None}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"a": 1, "b": 2}, 1),
        ({"b": 2}, 2),
        ({"a": None, "b": 2}, 2),  # null counts as absent
        ({"a": 0, "b": 2}, 0),  # falsy values are present
        ({"a": False, "b": 2}, False),
        ({"a": "", "b": 2}, ""),
        ({"a": None, "b": None}, 777),
        ({}, 777),
    ],
)
def test_fallbacks_take_the_first_present(event: dict[str, Any], expected: Any) -> None:
    assert Template({"v": "a|b|$time.ms"}).render(event, "e", 777, "") == {"v": expected}


def test_fallbacks_allow_spaces_and_end_in_null_when_nothing_is_present() -> None:
    template = Template({"v": " a | x.y "})
    assert template.render({"x": {"y": "deep"}}, "e", 0, "") == {"v": "deep"}
    assert template.render({"x": {}}, "e", 0, "") == {"v": None}


def test_missing_fields_are_null() -> None:
    template = Template({"present": "p", "absent": "q", "null": "n", "deep": "p.q"})
    assert template.render({"p": "yes", "n": None}, "e", 0, "") == {
        "present": "yes",
        "absent": None,
        "null": None,
        "deep": None,
    }


def test_nested_tables_build_nested_objects() -> None:
    template = Template({"outer": {"inner": {"v": "a.b", "t": "$type"}, "s": "$secret"}, "x": "x"})
    out = template.render({"a": {"b": 1}}, "e", 0, "sek")
    assert out == {"outer": {"inner": {"v": 1, "t": "e"}, "s": "sek"}, "x": None}
    assert compact(out) == b'{"outer":{"inner":{"v":1,"t":"e"},"s":"sek"},"x":null}'


def test_spread_places_fields_in_order() -> None:
    template = Template({"first": "$type", "...": "obj", "last": "$time.ms"})
    out = template.render({"obj": {"p": 1, "q": 2}}, "e", 5, "")
    assert list(out.items()) == [("first", "e"), ("p", 1), ("q", 2), ("last", 5)]


def test_spread_later_keys_win_but_keep_their_first_place() -> None:
    after = Template({"...": "obj", "p": "$type"}).render({"obj": {"p": 1, "q": 2}}, "e", 0, "")
    assert list(after.items()) == [("p", "e"), ("q", 2)]
    before = Template({"p": "$type", "...": "obj"}).render({"obj": {"p": 1, "q": 2}}, "e", 0, "")
    assert list(before.items()) == [("p", 1), ("q", 2)]


@pytest.mark.parametrize("value", [None, [1, 2], "text", 3])
def test_spread_of_a_non_object_adds_nothing(value: Any) -> None:
    template = Template({"a": "$type", "...": "obj"})
    assert template.render({"obj": value}, "e", 0, "") == {"a": "e"}
    assert template.render({}, "e", 0, "") == {"a": "e"}


def test_spread_of_a_nested_table_and_of_fallbacks() -> None:
    assert Template({"...": {"t": "$type", "s": "$secret"}}).render({}, "e", 0, "k") == {"t": "e", "s": "k"}
    template = Template({"t": "$type", "...": "payload|$rest"})
    assert template.render({"type": "x", "payload": {"p": 1}, "q": 2}, "x", 0, "", "type") == {"t": "x", "p": 1}
    assert template.render({"type": "x", "q": 2, "r": 3}, "x", 0, "", "type") == {"t": "x", "q": 2, "r": 3}


def test_render_builds_a_new_object_each_time() -> None:
    template = Template({"a": "a"})
    first = template.render({"a": 1}, "e", 0, "")
    first["a"] = 99
    assert template.render({"a": 1}, "e", 0, "") == {"a": 1}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"x": ""}, "x: a source must be a non-empty string or a table"),
        ({"x": 5}, "x: a source must be a non-empty string or a table"),
        ({"x": None}, "x: a source must be a non-empty string or a table"),
        ({"x": ["a"]}, "x: a source must be a non-empty string or a table"),
        ({"x": "$nope"}, "x: unknown source '$nope'"),
        ({"x": "a|$time.sec"}, "x: unknown source '$time.sec'"),
        ({"x": "$"}, "x: unknown source '$'"),
        ({"x": "a..b"}, "x: bad field path 'a..b'"),
        ({"x": ".a"}, "x: bad field path '.a'"),
        ({"x": "a|"}, "x: bad field path ''"),
        ({"x": "a||b"}, "x: bad field path ''"),
        ({"o": {"i": {"j": "$x"}}}, "o.i.j: unknown source '$x'"),
        ({"...": 1}, "...: a source must be a non-empty string or a table"),
    ],
)
def test_bad_specs_are_template_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(spec)
    assert str(info.value) == message
    assert isinstance(info.value, RouterError)


# --- the profiles ---


def test_the_profiles_and_their_contract_values() -> None:
    assert sorted(PROFILES) == ["agora", "campaign", "convocore", "crm", "leadterra", "raw", "standard-webhooks"]
    table = {
        name: (
            type(p.signing).__name__,
            p.key_source,
            p.standard_headers,
            p.https_only,
            p.needs_events,
            p.injects_secret,
        )
        for name, p in PROFILES.items()
    }
    assert table == {
        "standard-webhooks": ("StandardWebhooksSigning", "whsec", True, False, False, False),
        "raw": ("StandardWebhooksSigning", "whsec", False, False, False, False),
        "agora": ("AgoraSigning", "text", True, False, False, False),
        "leadterra": ("Unsigned", "optional", True, True, True, False),
        "convocore": ("Unsigned", "text", True, False, False, True),
        "campaign": ("Unsigned", "optional", True, False, False, False),
        "crm": ("Unsigned", "text", True, False, False, True),
    }
    assert PROFILES["standard-webhooks"].template is None
    assert PROFILES["raw"].template is None
    assert PROFILES["standard-webhooks"].catalogue is None
    assert PROFILES["raw"].catalogue is None


def test_catalogues_are_the_seeds_event_lists() -> None:
    assert PROFILES["agora"].catalogue == frozenset({
        "lead.created", "leads.bulk_created", "lead.status_changed", "lead.converted", "call.started",
        "call.completed", "form.submitted", "ping",
    })  # fmt: skip
    assert PROFILES["leadterra"].catalogue == frozenset(
        {"campaign.started", "message.sent", "message.bounced", "reply.received"}
    )
    assert PROFILES["convocore"].catalogue == frozenset({
        "message_received", "chat_delegated", "bug_reported", "agent_created", "agent_updated", "agent_deleted",
        "webhook_test", "lead_captured", "form_submitted", "organisation_created", "organisation_updated",
        "organisation_deleted", "client_created", "client_updated", "client_deleted",
    })  # fmt: skip
    assert PROFILES["campaign"].catalogue == frozenset({
        "lead.delivered", "lead.disqualified", "lead.failed", "lead.queued", "lead.first_submission_action",
        "lead.processed",
    })  # fmt: skip
    assert PROFILES["crm"].catalogue == frozenset({
        "lead.create", "lead.update", "lead.delete",
        "lead.status.update", "lead.list.update", "lead.tags.update", "lead.track", "lead.task.create",
        "lead.task.update", "lead.task.delete", "lead.note.create", "lead.note.update", "lead.note.delete",
        "campaign.create", "campaign.update", "campaign.delete",
        "list.create", "list.update", "list.delete",
        "status.create", "status.update", "status.delete",
        "tag.create", "tag.update", "tag.delete",
    })  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "timeout"),
    [
        ("agora", 10.0),
        ("leadterra", 10.0),
        ("convocore", 60.0),
        ("campaign", 10.0),
        ("crm", 10.0),
        ("standard-webhooks", 10.0),
        ("raw", 10.0),
    ],
)
def test_default_timeout_is_the_profiles(profile: str, timeout: float) -> None:
    endpoint = endpoint_of(profile)
    assert endpoint.config.timeout_s is None
    assert endpoint.timeout_s == timeout


def test_an_explicit_timeout_wins() -> None:
    assert endpoint_of("convocore", timeout_s=5).timeout_s == 5.0
    assert endpoint_of("standard-webhooks", timeout_s=120).timeout_s == 120.0


def test_max_timeouts() -> None:
    maxima = {name: p.max_timeout_s for name, p in PROFILES.items()}
    assert maxima == {
        "standard-webhooks": 120.0,
        "raw": 120.0,
        "agora": 10.0,
        "leadterra": 10.0,
        "convocore": 60.0,
        "campaign": 120.0,
        "crm": 120.0,
    }


# --- agora ---


def test_agora_lead_created_is_the_seed_byte_for_byte() -> None:
    body = endpoint_of("agora").render(event_of(AGORA_LEAD_CREATED))
    assert body == compact(AGORA_LEAD_CREATED)


def test_agora_bulk_is_the_seed_byte_for_byte() -> None:
    assert endpoint_of("agora").render(event_of(AGORA_BULK)) == compact(AGORA_BULK)


def test_agora_without_a_timestamp_gets_the_record_time_last() -> None:
    event = {"event": "lead.status_changed", "campaign_id": 7, "lead_id": 1234, "from": "new", "to": "won"}
    assert endpoint_of("agora").render(event_of(event)) == compact(
        {"event": "lead.status_changed", "campaign_id": 7, "lead_id": 1234, "from": "new", "to": "won"}
        | {"timestamp": T_ISO}
    )


def test_agora_puts_event_first_keeps_the_events_order_and_takes_the_type_from_the_type_field() -> None:
    event = {"timestamp": "2026-01-01T00:00:00Z", "type": "lead.converted", "campaign_id": 7}
    body = endpoint_of("agora").render(event_of(event))
    assert body == b'{"event":"lead.converted","timestamp":"2026-01-01T00:00:00Z","campaign_id":7}'


def test_agora_all_other_events_example_arrives_in_the_seeds_order() -> None:
    assert endpoint_of("agora").render(event_of(AGORA_STATUS_CHANGED)) == compact(AGORA_STATUS_CHANGED)
    fields_after = {**AGORA_STATUS_CHANGED, "from": "new", "to": "contacted"}
    assert endpoint_of("agora").render(event_of(fields_after)) == compact(fields_after)


def test_agora_adds_a_missing_timestamp_last() -> None:
    event = {"event": "call.completed", "campaign_id": 7, "duration": 30}
    body = endpoint_of("agora").render(event_of(event, time_ms=T_MS))
    assert body == compact({**event, "timestamp": T_ISO})


@pytest.mark.parametrize(
    ("profile", "seed"),
    [
        ("agora", "AGORA_LEAD_CREATED"),
        ("agora", "AGORA_BULK"),
        ("agora", "AGORA_STATUS_CHANGED"),
        ("leadterra", "LEADTERRA_REPLY"),
        ("campaign", "CAMPAIGN_LEAD_DELIVERED"),
    ],
)
def test_every_seed_example_produced_in_its_printed_order_arrives_in_that_order(profile: str, seed: str) -> None:
    import tests.seeds

    example = getattr(tests.seeds, seed)
    assert endpoint_of(profile).render(event_of(example)) == compact(example)


@pytest.mark.parametrize("seed", ["CONVOCORE_AGENT_CREATED", "CONVOCORE_MESSAGE_RECEIVED", "CONVOCORE_LEAD_CAPTURED"])
def test_convocore_seed_examples_keep_their_order_with_the_endpoints_secret(seed: str) -> None:
    import tests.seeds

    example = getattr(tests.seeds, seed)
    expected = {**example, "payload": {**example["payload"], "workspaceSecret": "endpoint-secret"}}
    assert endpoint_of("convocore").render(event_of(example)) == compact(expected)


def test_crm_seed_example_keeps_its_order_with_the_endpoints_secret() -> None:
    expected = {**CRM_LEAD_CREATE, "secret": "endpoint-secret"}
    assert endpoint_of("crm").render(event_of(CRM_LEAD_CREATE)) == compact(expected)


def test_agora_keeps_a_type_field_that_is_not_the_event_type() -> None:
    event = {"event": "call.completed", "campaign_id": 7, "type": "outbound", "timestamp": T_ISO}
    assert render("agora", event) == event


def test_agora_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = endpoint_of("agora", id="42", secret="agora-endpoint-secret", headers={"X-Tenant": "acme"})
    event = event_of(AGORA_LEAD_CREATED)
    body = endpoint.render(event)
    headers = all_headers(endpoint, job_of(event), body, TS)
    signature = "sha256=" + hmac.new(b"agora-endpoint-secret", body, hashlib.sha256).hexdigest()
    assert headers == {
        "Content-Type": "application/json",
        "User-Agent": "webhook-router/0.1",
        "X-Tenant": "acme",
        "X-Agora-Signature-256": signature,
        "X-Agora-Event": "lead.created",
        "X-Agora-Delivery": "42-1-1718900000",
    }
    assert hmac.compare_digest(headers["X-Agora-Signature-256"], signature)
    assert not any(name.lower().startswith("webhook-") for name in headers)


def test_agora_delivery_header_counts_attempts_and_signature_uses_utf8_secret() -> None:
    endpoint = endpoint_of("agora", id="ag-7", secret="sécret-ü")
    event = event_of(AGORA_BULK)
    body = endpoint.render(event)
    headers = all_headers(endpoint, job_of(event, attempt=2), body, 1718900123)
    assert headers["X-Agora-Delivery"] == "ag-7-2-1718900123"
    assert headers["X-Agora-Event"] == "leads.bulk_created"
    expected = hmac.new("sécret-ü".encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Agora-Signature-256"] == "sha256=" + expected
    assert headers["X-Agora-Signature-256"] != "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()


def test_agora_signature_is_of_the_rendered_body() -> None:
    endpoint = endpoint_of("agora", secret="s")
    event = event_of({"type": "lead.converted", "campaign_id": 7})  # rendered differs from the arrived bytes
    body = endpoint.render(event)
    assert body != event.value
    assert all_headers(endpoint, job_of(event), body, TS)["X-Agora-Signature-256"] == (
        "sha256=" + hmac.new(b"s", body, hashlib.sha256).hexdigest()
    )


# --- leadterra ---


def test_leadterra_envelope_event_is_kept() -> None:
    assert endpoint_of("leadterra").render(event_of(LEADTERRA_REPLY)) == compact(LEADTERRA_REPLY)


def test_leadterra_flat_event_is_wrapped_in_the_envelope() -> None:
    flat = {"event": "reply.received", "replyId": "rep_001", "campaignId": "camp_42", "classification": "positive"}
    assert endpoint_of("leadterra").render(event_of(flat)) == compact(
        {
            "event": "reply.received",
            "timestamp": T_ISO,
            "data": {"replyId": "rep_001", "campaignId": "camp_42", "classification": "positive"},
        }
    )


def test_leadterra_envelope_fields_outside_data_are_dropped() -> None:
    event = {"data": {"id": 1}, "source": "x", "type": "message.sent", "timestamp": "2026-01-01T00:00:00Z"}
    assert render("leadterra", event) == {
        "event": "message.sent",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"id": 1},
    }


def test_leadterra_null_data_and_timestamp_fall_back() -> None:
    event = {"event": "message.bounced", "timestamp": None, "data": None, "messageId": "m1"}
    assert render("leadterra", event) == {"event": "message.bounced", "timestamp": T_ISO, "data": {"messageId": "m1"}}


# --- convocore ---


def test_convocore_seed_gets_the_endpoint_workspace_secret() -> None:
    body = endpoint_of("convocore", secret="ws-secret-1").render(event_of(CONVOCORE_AGENT_CREATED))
    expected = json.loads(json.dumps(CONVOCORE_AGENT_CREATED))
    expected["payload"]["workspaceSecret"] = "ws-secret-1"
    assert body == compact(expected)


def test_convocore_message_seed() -> None:
    out = render("convocore", CONVOCORE_MESSAGE_RECEIVED, secret="ws")
    assert list(out) == ["type", "payload"]
    assert list(out["payload"]) == list(CONVOCORE_MESSAGE_RECEIVED["payload"])
    assert out["payload"]["createdAt"] == 1718035200000
    assert out["payload"]["workspaceSecret"] == "ws"


def test_convocore_envelope_without_created_at_gets_the_record_time_in_ms() -> None:
    event = {"type": "webhook_test", "payload": {"message": "This is a test event"}}
    assert endpoint_of("convocore", secret="ws").render(event_of(event)) == compact(
        {
            "type": "webhook_test",
            "payload": {"message": "This is a test event", "createdAt": T_MS, "workspaceSecret": "ws"},
        }
    )


def test_convocore_flat_event_becomes_the_payload() -> None:
    flat = {"type": "client_created", "organisationId": "org_345678", "clientId": "client_901234", "createdAt": 5}
    assert endpoint_of("convocore", secret="ws").render(event_of(flat)) == compact(
        {
            "type": "client_created",
            "payload": {
                "organisationId": "org_345678",
                "clientId": "client_901234",
                "createdAt": 5,
                "workspaceSecret": "ws",
            },
        }
    )


def test_convocore_flat_event_without_created_at_and_with_a_stale_secret() -> None:
    flat = {"type": "bug_reported", "workspaceSecret": "stale", "bugDescription": "broken"}
    assert render("convocore", flat, secret="fresh") == {
        "type": "bug_reported",
        "payload": {"bugDescription": "broken", "createdAt": T_MS, "workspaceSecret": "fresh"},
    }


def test_convocore_top_level_created_at_for_an_envelope() -> None:
    event = {"type": "agent_deleted", "createdAt": 42, "payload": {"agentId": "a"}}
    assert render("convocore", event, secret="ws") == {
        "type": "agent_deleted",
        "payload": {"agentId": "a", "createdAt": 42, "workspaceSecret": "ws"},
    }


# --- campaign ---


def test_campaign_seed_is_kept_byte_for_byte() -> None:
    assert endpoint_of("campaign").render(event_of(CAMPAIGN_LEAD_DELIVERED)) == compact(CAMPAIGN_LEAD_DELIVERED)


def test_campaign_flat_event_gives_the_seed() -> None:
    flat = {k: v for k, v in CAMPAIGN_LEAD_DELIVERED.items() if k not in ("timestamp", "data")}
    flat |= CAMPAIGN_LEAD_DELIVERED["data"]
    body = endpoint_of("campaign").render(event_of(flat, time_ms=1718447400000))
    assert body == compact(CAMPAIGN_LEAD_DELIVERED)


def test_campaign_has_seven_fields_null_when_absent() -> None:
    assert render("campaign", {"event": "lead.queued", "reason": "cap"}) == {
        "event": "lead.queued",
        "leadId": None,
        "submissionId": None,
        "campaignId": None,
        "status": None,
        "timestamp": T_ISO,
        "data": {"reason": "cap"},
    }


# --- crm ---


def test_crm_seed_gets_the_endpoint_secret() -> None:
    body = endpoint_of("crm", secret="wh_endpoint").render(event_of(CRM_LEAD_CREATE))
    assert body == compact(CRM_LEAD_CREATE | {"secret": "wh_endpoint"})
    assert list(json.loads(body)) == ["id_space", "event", "secret", "payload"]


def test_crm_flat_event() -> None:
    flat = {"event": "lead.update", "id_space": "sp-1", "id": "e1", "first_name": "Jean", "secret": "stale"}
    assert render("crm", flat, secret="wh_x") == {
        "id_space": "sp-1",
        "event": "lead.update",
        "secret": "wh_x",
        "payload": {"id_space": "sp-1", "id": "e1", "first_name": "Jean"},
    }


def test_crm_id_space_from_the_payload() -> None:
    event = {"event": "tag.create", "payload": {"id": "t1", "id_space": "sp-2"}}
    assert render("crm", event, secret="s") == {
        "id_space": "sp-2",
        "event": "tag.create",
        "secret": "s",
        "payload": {"id": "t1", "id_space": "sp-2"},
    }


def test_crm_flat_event_payload_keeps_id_space() -> None:
    flat = {"event": "lead.create", "id_space": "sp-1", "id": "e1", "first_name": "Jean"}
    assert render("crm", flat, secret="wh_x")["payload"] == {"id_space": "sp-1", "id": "e1", "first_name": "Jean"}


# --- standard-webhooks and raw ---


@pytest.mark.parametrize("profile", ["standard-webhooks", "raw"])
def test_body_is_exactly_as_it_arrived(profile: str) -> None:
    value = b'{ "type" : "x.y",  "n": 1.50, "s": "Zo\\u00eb" }\n'
    event = event_of(value, "x.y")
    assert endpoint_of(profile).render(event) is value
    assert event.bodies == {}


def test_standard_webhooks_headers_with_two_secrets_verify_with_each() -> None:
    endpoint = endpoint_of("standard-webhooks", secrets=[WHSEC_1, WHSEC_2], headers={"X-Tenant": "acme"})
    event = event_of({"event": "lead.created", "data": {"id": 1}})
    body = endpoint.render(event)
    ts = int(time.time())
    headers = all_headers(endpoint, job_of(event, delivery_id="msg_abc"), body, ts)
    assert list(headers) == [
        "Content-Type",
        "User-Agent",
        "X-Tenant",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "webhook-router/0.1"
    assert headers["X-Tenant"] == "acme"
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(ts)
    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2
    assert all(entry.startswith("v1,") for entry in entries)
    assert Webhook(WHSEC_1).verify(body, headers) == {"event": "lead.created", "data": {"id": 1}}
    assert Webhook(WHSEC_2).verify(body, headers) == {"event": "lead.created", "data": {"id": 1}}
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC_STRANGER).verify(body, headers)
    # each entry belongs to one secret, the current one first
    Webhook(WHSEC_1).verify(body, headers | {"webhook-signature": entries[0]})
    Webhook(WHSEC_2).verify(body, headers | {"webhook-signature": entries[1]})
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC_2).verify(body, headers | {"webhook-signature": entries[0]})


def test_standard_webhooks_one_secret_one_entry() -> None:
    endpoint = endpoint_of("standard-webhooks", secret=WHSEC_2)
    event = event_of({"event": "a"})
    ts = int(time.time())
    headers = all_headers(endpoint, job_of(event), event.value, ts)
    assert " " not in headers["webhook-signature"]
    Webhook(WHSEC_2).verify(event.value, headers)


def test_raw_headers_are_only_the_signature_headers() -> None:
    endpoint = endpoint_of("raw", secrets=[WHSEC_1, WHSEC_2], headers={"X-Tenant": "acme"})
    event = event_of(b'{"type":"x"}', "x")
    body = endpoint.render(event)
    ts = int(time.time())
    headers = all_headers(endpoint, job_of(event, delivery_id="msg_raw"), body, ts)
    assert list(headers) == ["webhook-id", "webhook-timestamp", "webhook-signature"]
    assert headers["webhook-id"] == "msg_raw"
    assert headers["webhook-timestamp"] == str(ts)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(WHSEC_1).verify(body, headers) == {"type": "x"}
    assert Webhook(WHSEC_2).verify(body, headers) == {"type": "x"}
    assert endpoint.base_headers == {}


@pytest.mark.parametrize("profile", ["leadterra", "campaign", "convocore", "crm"])
def test_unsigned_profiles_send_content_type_and_custom_headers_only(profile: str) -> None:
    endpoint = endpoint_of(profile, headers={"Authorization": "Bearer t", "X-Custom": "v"})
    event = event_of({"event": "x"})
    body = endpoint.render(event)
    assert all_headers(endpoint, job_of(event), body, TS) == {
        "Content-Type": "application/json",
        "User-Agent": "webhook-router/0.1",
        "Authorization": "Bearer t",
        "X-Custom": "v",
    }


def test_user_agent_comes_from_the_delivery_config() -> None:
    endpoint = endpoint_of("campaign", delivery=DeliveryConfig(user_agent="acme-hooks/2"))
    event = event_of({"event": "lead.failed"})
    assert all_headers(endpoint, job_of(event), b"{}", TS) == {
        "Content-Type": "application/json",
        "User-Agent": "acme-hooks/2",
    }


def test_headers_are_a_fresh_dict_per_delivery() -> None:
    endpoint = endpoint_of("agora", secret="s")
    event = event_of(AGORA_LEAD_CREATED)
    body = endpoint.render(event)
    first = all_headers(endpoint, job_of(event), body, TS)
    all_headers(endpoint, job_of(event, attempt=2), body, TS + 1)
    assert first["X-Agora-Delivery"] == "ep-1-1718900000"
    assert "X-Agora-Event" not in endpoint.base_headers


def test_agora_custom_headers_cannot_add_a_second_signature() -> None:
    endpoint = endpoint_of("agora", secret="s", headers={"x-agora-signature-256": "sha256=forged"})
    event = event_of(AGORA_LEAD_CREATED)
    headers = all_headers(endpoint, job_of(event), endpoint.render(event), TS)
    assert [name for name in headers if name.lower() == "x-agora-signature-256"] == ["X-Agora-Signature-256"]


# --- a body is built once per event and shared by the endpoints that send it ---


def test_one_body_object_for_endpoints_of_a_profile_without_the_secret() -> None:
    event = event_of(AGORA_LEAD_CREATED)
    a = endpoint_of("agora", id="a", secret="one")
    b = endpoint_of("agora", id="b", secret="two")
    assert a.render(event) is b.render(event)
    assert list(event.bodies) == [("agora", None)]


def test_bodies_per_profile_and_per_injected_secret() -> None:
    event = event_of(CONVOCORE_MESSAGE_RECEIVED)
    c1 = endpoint_of("convocore", id="c1", secret="s1")
    c2 = endpoint_of("convocore", id="c2", secret="s2")
    c1_again = endpoint_of("convocore", id="c3", secret="s1")
    crm = endpoint_of("crm", id="crm", secret="s1")
    camp_a = endpoint_of("campaign", id="ca")
    camp_b = endpoint_of("campaign", id="cb")
    b1, b2 = c1.render(event), c2.render(event)
    assert b1 != b2
    assert json.loads(b1)["payload"]["workspaceSecret"] == "s1"
    assert json.loads(b2)["payload"]["workspaceSecret"] == "s2"
    assert c1_again.render(event) is b1
    assert c1.render(event) is b1
    assert crm.render(event) is not b1
    assert json.loads(crm.render(event))["secret"] == "s1"
    assert camp_a.render(event) is camp_b.render(event)
    assert set(event.bodies) == {("convocore", "s1"), ("convocore", "s2"), ("crm", "s1"), ("campaign", None)}


def test_the_event_is_decoded_once_for_all_bodies() -> None:
    event = event_of(AGORA_LEAD_CREATED)
    endpoint_of("agora").render(event)
    decoded = event.decoded()
    endpoint_of("campaign").render(event)
    endpoint_of("crm").render(event)
    assert event.decoded() is decoded


def test_a_body_that_is_not_a_json_object_renders_from_an_empty_event() -> None:
    event = event_of(b"[1, 2]", "lead.created")
    assert endpoint_of("agora").render(event) == compact({"event": "lead.created", "timestamp": T_ISO})


# --- test deliveries (ping) ---


def test_agora_test_event_is_ping() -> None:
    endpoint = endpoint_of("agora", id="42", secret="s")
    event = profile_test_event(endpoint)
    assert event.event_type == "ping"
    body = endpoint.render(event)
    assert json.loads(body) == {"event": "ping", "timestamp": iso_seconds(event.time_ms)}
    assert all_headers(endpoint, job_of(event), body, TS)["X-Agora-Event"] == "ping"


def test_convocore_test_event_is_the_seeds_webhook_test() -> None:
    endpoint = endpoint_of("convocore", secret="ws")
    event = profile_test_event(endpoint)
    assert event.event_type == "webhook_test"
    assert json.loads(endpoint.render(event)) == {
        "type": "webhook_test",
        "payload": {"message": "This is a test event", "createdAt": event.time_ms, "workspaceSecret": "ws"},
    }


@pytest.mark.parametrize(
    ("profile", "event_type"),
    [
        ("standard-webhooks", "webhook.test"),
        ("raw", "webhook.test"),
        ("leadterra", "ping"),
        ("campaign", "ping"),
        ("crm", "ping"),
    ],
)
def test_test_event_types(profile: str, event_type: str) -> None:
    assert profile_test_event(endpoint_of(profile)).event_type == event_type


# --- events a profile never delivers ---


def test_agora_bulk_items_are_skipped() -> None:
    agora = PROFILES["agora"]
    rule = skip_for(agora, AGORA_LEAD_CREATED | {"batch_id": "b-1"}, "lead.created")
    assert rule == Skip(
        status="skipped_bulk_item",
        types=frozenset({"lead.created"}),
        path="batch_id",
        values=None,
        reason="part of a bulk batch: delivered once as leads.bulk_created",
    )
    assert skip_for(agora, AGORA_LEAD_CREATED | {"batch_id": 0}, "lead.created") is rule


@pytest.mark.parametrize(
    ("event", "event_type"),
    [
        (AGORA_LEAD_CREATED, "lead.created"),
        (AGORA_LEAD_CREATED | {"batch_id": None}, "lead.created"),
        (AGORA_BULK | {"batch_id": "b-1"}, "leads.bulk_created"),
        ({"event": "lead.status_changed", "batch_id": "b-1"}, "lead.status_changed"),
        ({"event": "lead.created", "meta": {"batch_id": "b-1"}}, "lead.created"),
        (None, "lead.created"),
    ],
)
def test_agora_is_not_skipped_otherwise(event: dict[str, Any] | None, event_type: str) -> None:
    assert skip_for(PROFILES["agora"], event, event_type) is None


@pytest.mark.parametrize(
    "event",
    [
        {"type": "lead_captured", "payload": {"agentId": "a", "agentPlatform": "vf"}},
        {"type": "lead_captured", "agentId": "a", "agentPlatform": "vf"},
        {"type": "lead_captured", "payload": {"agentPlatform": None}, "agentPlatform": "vf"},
        {"type": "lead_captured", "payload": {"agentId": "a"}, "agentPlatform": "vf"},
        {"type": "form_submitted", "payload": {"formType": "ui_engine_form", "agentPlatform": "vf"}},
        {"type": "form_submitted", "agentPlatform": "vf"},
    ],
)
def test_convocore_only_events_from_voiceflow_are_skipped(event: dict[str, Any]) -> None:
    rule = skip_for(PROFILES["convocore"], event, event["type"])
    assert rule is not None
    assert (rule.status, rule.reason) == ("skipped_unsupported", "Convocore-only event from a VoiceFlow (vf) agent")


@pytest.mark.parametrize(
    ("event", "event_type"),
    [
        ({"type": "lead_captured", "payload": {"agentPlatform": "vg"}}, "lead_captured"),
        ({"type": "lead_captured", "payload": {"agentId": "a"}}, "lead_captured"),
        ({"type": "form_submitted", "agentPlatform": "VF"}, "form_submitted"),
        ({"type": "form_submitted", "payload": {"agentPlatform": "vg"}, "agentPlatform": "vf"}, "form_submitted"),
        (CONVOCORE_AGENT_CREATED, "agent_created"),  # the seed's own VF example: supported
        ({"type": "message_received", "agentPlatform": "vf"}, "message_received"),
        (None, "lead_captured"),
    ],
)
def test_convocore_is_not_skipped_otherwise(event: dict[str, Any] | None, event_type: str) -> None:
    assert skip_for(PROFILES["convocore"], event, event_type) is None


def test_convocore_skip_with_an_unhashable_platform_value() -> None:
    event = {"type": "lead_captured", "payload": {"agentPlatform": ["vf"]}}
    assert skip_for(PROFILES["convocore"], event, "lead_captured") is None


@pytest.mark.parametrize("profile", ["standard-webhooks", "raw", "leadterra", "campaign", "crm"])
def test_other_profiles_never_skip(profile: str) -> None:
    assert PROFILES[profile].skips == ()
    assert skip_for(PROFILES[profile], AGORA_LEAD_CREATED | {"batch_id": "b", "agentPlatform": "vf"}, "x") is None


# --- routing: catalogues and conditions ---


def test_pattern_matches() -> None:
    assert pattern_matches("*", "anything")
    assert pattern_matches("lead.*", "lead.created")
    assert not pattern_matches("lead.*", "leads.bulk_created")
    assert pattern_matches("lead*", "leads.bulk_created")
    assert pattern_matches("ping", "ping")
    assert not pattern_matches("ping", "pings")


def sub(endpoint: str, *events: str, where: WhereConfig | None = None) -> SubscriptionConfig:
    return SubscriptionConfig(endpoint=endpoint, events=list(events), where=where)


def test_a_wildcard_of_a_catalogue_profile_never_matches_types_outside_it() -> None:
    table = RoutingTable(
        [sub("agora", "*"), sub("leadterra", "*"), sub("any", "*"), sub("agora-l", "lead*")],
        {"agora": PROFILES["agora"].catalogue, "leadterra": PROFILES["leadterra"].catalogue, "any": None}
        | {"agora-l": PROFILES["agora"].catalogue},
    )
    assert table.match("t", "lead.created").endpoints == ("agora", "any", "agora-l")
    assert table.match("t", "leads.bulk_created").endpoints == ("agora", "any", "agora-l")
    assert table.match("t", "lead.deleted").endpoints == ("any",)
    assert table.match("t", "ping").endpoints == ("agora", "any")
    assert table.match("t", "reply.received").endpoints == ("leadterra", "any")
    assert table.match("t", "order.paid").endpoints == ("any",)
    assert table.match("t", "order.paid").conditional == ()


def test_an_exact_subscription_outside_the_catalogue_never_matches() -> None:
    table = RoutingTable([sub("lt", "lead.created")], {"lt": PROFILES["leadterra"].catalogue})
    assert table.match("t", "lead.created").endpoints == ()


def test_an_endpoint_without_a_catalogue_entry_takes_every_type() -> None:
    table = RoutingTable([sub("x", "*")], {"other": frozenset({"a"})})
    assert table.match("t", "zzz").endpoints == ("x",)
    assert RoutingTable([sub("x", "*")]).match("t", "zzz").endpoints == ("x",)


def where_table(where: WhereConfig) -> RoutingTable:
    return RoutingTable([sub("ep", "lead.*", where=where)])


@pytest.mark.parametrize(
    ("event", "one_of", "none_of"),
    [
        ({"campaignId": "ABC"}, True, False),
        ({"campaignId": "XYZ"}, False, True),
        ({"campaignId": 7}, True, False),  # ints compare as their decimal text
        ({"campaignId": -3}, False, True),
        ({"campaignId": 7.0}, False, True),  # floats are not compared
        ({"campaignId": True}, False, True),  # bools never match, not even "True" or "1"
        ({"campaignId": False}, False, True),
        ({"campaignId": None}, False, True),
        ({"campaignId": ["ABC"]}, False, True),
        ({"campaignId": {"ABC": 1}}, False, True),
        ({}, False, True),
        (None, False, True),
        ([1, 2], False, True),
    ],
)
def test_where_one_of_and_none_of(event: Any, one_of: bool, none_of: bool) -> None:
    values = ["ABC", "7", "True", "true", "1", "0", "False"]
    selected_one = (
        where_table(WhereConfig(field="campaignId", one_of=values)).match("t", "lead.x").select(lambda: event)
    )
    selected_none = (
        where_table(WhereConfig(field="campaignId", none_of=values)).match("t", "lead.x").select(lambda: event)
    )
    assert selected_one == (("ep",) if one_of else ())
    assert selected_none == (("ep",) if none_of else ())


@pytest.mark.parametrize(
    ("event", "selected"),
    [
        ({"meta": {"campaign": {"id": "ABC"}}}, ("ep",)),
        ({"meta": {"campaign": {"id": 12}}}, ("ep",)),
        ({"meta": {"campaign": "ABC"}}, ()),
        ({"meta": {"campaign": {"id": "abc"}}}, ()),  # case matters
        ({"meta.campaign.id": "ABC"}, ()),
        ({"meta": None}, ()),
    ],
)
def test_where_dotted_field(event: dict[str, Any], selected: tuple[str, ...]) -> None:
    table = where_table(WhereConfig(field="meta.campaign.id", one_of=["ABC", "12"]))
    assert table.match("t", "lead.created").select(lambda: event) == selected


class Decoder:
    """A decode callable that counts its calls."""

    def __init__(self, event: Any) -> None:
        self.event = event
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.event


def test_select_never_decodes_without_a_condition() -> None:
    table = RoutingTable([sub("a", "lead.*"), sub("b", "*")])
    decode = Decoder({"campaignId": "ABC"})
    assert table.match("t", "lead.created").select(decode) == ("a", "b")
    assert table.match("t", "order.paid").select(decode) == ("b",)
    assert decode.calls == 0


def test_select_decodes_once_for_every_condition() -> None:
    table = RoutingTable(
        [
            sub("plain", "lead.*"),
            sub("abc", "lead.*", where=WhereConfig(field="campaignId", one_of=["ABC"])),
            sub("not-abc", "lead.*", where=WhereConfig(field="campaignId", none_of=["ABC"])),
            sub("also-abc", "lead.created", where=WhereConfig(field="campaignId", one_of=["ABC", "DEF"])),
        ]
    )
    match = table.match("t", "lead.created")
    decode = Decoder({"campaignId": "ABC"})
    assert match.select(decode) == ("plain", "abc", "also-abc")
    assert decode.calls == 1
    other = Decoder({"campaignId": "DEF"})
    assert match.select(other) == ("plain", "not-abc", "also-abc")
    assert other.calls == 1


def test_an_endpoint_also_subscribed_without_condition_needs_no_decoding() -> None:
    table = RoutingTable(
        [sub("ep", "lead.*", where=WhereConfig(field="campaignId", one_of=["ABC"])), sub("ep", "lead.created")]
    )
    match = table.match("t", "lead.created")
    assert match.conditional == ()
    decode = Decoder({})
    assert match.select(decode) == ("ep",)
    assert decode.calls == 0
    assert table.match("t", "lead.failed").select(Decoder({"campaignId": "ABC"})) == ("ep",)


def test_one_endpoint_under_two_conditions_is_selected_once() -> None:
    table = RoutingTable(
        [
            sub("ep", "lead.*", where=WhereConfig(field="campaignId", one_of=["A"])),
            sub("ep", "lead.*", where=WhereConfig(field="region", one_of=["eu"])),
        ]
    )
    decode = Decoder({"campaignId": "A", "region": "eu"})
    assert table.match("t", "lead.created").select(decode) == ("ep",)
    assert decode.calls == 1


def test_condition_and_catalogue_together() -> None:
    table = RoutingTable(
        [sub("camp", "*", where=WhereConfig(field="campaignId", one_of=["ABC"]))],
        {"camp": PROFILES["campaign"].catalogue},
    )
    decode = Decoder({"campaignId": "ABC"})
    assert table.match("t", "lead.created").select(decode) == ()
    assert decode.calls == 0
    assert table.match("t", "lead.delivered").select(decode) == ("camp",)
    assert decode.calls == 1


def test_select_with_the_events_own_decoder() -> None:
    table = RoutingTable([sub("ep", "lead.*", where=WhereConfig(field="campaignId", one_of=["7"]))])
    event = event_of({"event": "lead.created", "campaignId": 7})
    assert table.match("leads", "lead.created").select(event.decoded) == ("ep",)
    assert table.match("leads", "lead.created").select(event_of(b"not json", "lead.created").decoded) == ()
