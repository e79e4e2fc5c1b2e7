"""Values: the event type probe, response body truncation, timestamps, status classes, delivery ids, endpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.core import model
from daemon.core.clock import utc_now_iso
from daemon.core.config import DeliveryConfig, EndpointConfig
from daemon.core.errors import InvalidEvent
from daemon.core.event import TypeReader
from daemon.core.ids import delivery_id, new_attempt_id
from daemon.core.mask import MASKED, MIN_MASKED, Mask
from daemon.core.model import RESPONSE_BODY_LIMIT, Outcome, decode_outcome, encode_outcome, truncate_body
from daemon.delivery.endpoint import Endpoint
from daemon.observe.metrics import status_class

# --- TypeReader ---


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"event": "lead.created"}', "lead.created"),
        (b'{"type": "order.paid"}', "order.paid"),
        (b'{"event": "a", "type": "b"}', "a"),  # event wins
        (b'{"type": "b", "event": "a"}', "a"),
        (b'{"event": null, "type": "b"}', "b"),
        (b' \n{"data": [1, {"x": null}], "type": "t", "extra": {"event": "nested"}}\n', "t"),
        ('{"event": "lead.créé"}'.encode(), "lead.créé"),
        (b'{"event": "\\u00e9"}', "é"),
    ],
)
def test_default_fields(raw: bytes, expected: str) -> None:
    assert TypeReader().read(raw) == expected


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        ("kind", b'{"kind": "k", "event": "ignored"}', "k"),
        ("meta.kind", b'{"meta": {"kind": "lead.created"}, "event": "ignored"}', "lead.created"),
        ("a.b.c", b'{"a": {"b": {"c": "deep"}}}', "deep"),
    ],
)
def test_custom_field(field: str, raw: bytes, expected: str) -> None:
    assert TypeReader(field).read(raw) == expected


def test_describe() -> None:
    assert TypeReader().describe == "'event' or 'type'"
    assert TypeReader("meta.kind").describe == "'meta.kind'"
    assert TypeReader(None).describe == "'event' or 'type'"
    assert TypeReader("").describe == "'event' or 'type'"


def _reason(reader: TypeReader, raw: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as info:
        reader.read(raw)
    return str(info.value)


DEFAULT_NO_TYPE = "no event type field ('event' or 'type')"
DEFAULT_NOT_STRING = "event type field ('event' or 'type') must be a non-empty string"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty record"),
        (None, "empty record"),
        (b"not json", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"event": "a"} trailing', "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"\x00\x01\x02", "not valid JSON"),
        (b'["lead.created"]', "not a JSON object"),
        (b'"lead.created"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"{}", DEFAULT_NO_TYPE),
        (b'{"kind": "lead.created"}', DEFAULT_NO_TYPE),
        (b'{"event": null, "type": null}', DEFAULT_NO_TYPE),
        (b'{"event": 5}', DEFAULT_NOT_STRING),
        (b'{"event": 5, "type": "ok"}', DEFAULT_NOT_STRING),
        (b'{"type": true}', DEFAULT_NOT_STRING),
        (b'{"type": ["a"]}', DEFAULT_NOT_STRING),
        (b'{"event": {"name": "a"}}', DEFAULT_NOT_STRING),
        (b'{"event": ""}', DEFAULT_NOT_STRING),
        (b'{"type": ""}', DEFAULT_NOT_STRING),
    ],
)
def test_invalid_events_default_reader(raw: bytes | None, reason: str) -> None:
    assert _reason(TypeReader(), raw) == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty record"),
        (None, "empty record"),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'[{"meta": {"kind": "x"}}]', "not a JSON object"),
        (b'"x"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"{}", "no event type field ('meta.kind')"),
        (b'{"event": "lead.created"}', "no event type field ('meta.kind')"),
        (b'{"meta": 3}', "no event type field ('meta.kind')"),
        (b'{"meta": ["kind"]}', "no event type field ('meta.kind')"),
        (b'{"meta": {}}', "no event type field ('meta.kind')"),
        (b'{"meta": {"kind": null}}', "no event type field ('meta.kind')"),
        (b'{"meta.kind": "flat"}', "no event type field ('meta.kind')"),
        (b'{"meta": {"kind": 7}}', "event type field ('meta.kind') must be a non-empty string"),
        (b'{"meta": {"kind": ["x"]}}', "event type field ('meta.kind') must be a non-empty string"),
        (b'{"meta": {"kind": {"a": 1}}}', "event type field ('meta.kind') must be a non-empty string"),
        (b'{"meta": {"kind": ""}}', "event type field ('meta.kind') must be a non-empty string"),
    ],
)
def test_invalid_events_custom_reader(raw: bytes | None, reason: str) -> None:
    assert _reason(TypeReader("meta.kind"), raw) == reason


_DEEP = b'{"event": "x", "a": ' + b"[" * 1000 + b"]" * 1000 + b"}"


@pytest.mark.parametrize("field", [None, "meta.kind"])
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event": "lead.\xff", "meta": {"kind": "lead.\xff"}}', "not valid UTF-8"),
        (_DEEP, "nested too deeply"),
    ],
)
def test_hostile_records_are_invalid_events_not_crashes(field: str | None, raw: bytes, reason: str) -> None:
    assert _reason(TypeReader(field), raw) == reason


def test_invalid_event_is_an_exception_with_its_reason() -> None:
    error = InvalidEvent("empty record")
    assert isinstance(error, Exception)
    assert error.args == ("empty record",)


# --- truncate_body ---


def test_short_body_is_kept() -> None:
    assert truncate_body(b"") == ""
    assert truncate_body(b"ok") == "ok"
    assert truncate_body("Zoë €".encode()) == "Zoë €"


def test_body_at_the_limit_is_kept() -> None:
    assert RESPONSE_BODY_LIMIT == 4096
    body = b"x" * 4096
    assert truncate_body(body) == "x" * 4096


def test_long_ascii_body_is_cut_at_the_limit() -> None:
    assert truncate_body(b"a" * 10_000) == "a" * 4096


@pytest.mark.parametrize("char", ["é", "€", "😀", "中"])
@pytest.mark.parametrize("shift", range(4))
def test_multibyte_body_stays_within_the_limit(char: str, shift: int) -> None:
    # ``shift`` ASCII bytes first, so the limit falls inside a character at every position.
    raw = b"a" * shift + (char * 5_000).encode()
    text = truncate_body(raw)
    size = len(text.encode("utf-8"))
    assert size <= 4096
    width = len(char.encode())
    whole = (4096 - shift) // width
    assert text == "a" * shift + char * whole
    assert size == shift + whole * width
    assert 4096 - size < width


def test_invalid_utf8_is_dropped() -> None:
    assert truncate_body(b"ok\xff\xfe done") == "ok done"
    text = truncate_body(b"\xff" * 5_000)
    assert text == ""


def test_truncated_body_encodes_within_the_limit_for_mixed_input() -> None:
    unit = "aé€😀"  # 1 + 2 + 3 + 4 = 10 bytes
    text = truncate_body((unit * 2_000).encode())
    assert text == unit * 409 + "aé€"  # 4090 + 6 bytes: the limit falls exactly after the euro sign
    assert len(text.encode()) == 4096
    text = truncate_body(b"\xff" + (unit * 2_000).encode())
    assert text == unit * 409 + "aé"  # one junk byte dropped: the euro sign no longer fits
    assert len(text.encode()) == 4093


# --- utc_now_iso ---

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_utc_now_iso_format_and_value() -> None:
    before = datetime.now(UTC)
    text = utc_now_iso()
    after = datetime.now(UTC)
    assert ISO_MS.match(text), text
    stamp = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(milliseconds=1) <= stamp <= after


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1763897400.25, "2025-11-23T11:30:00.250Z"),
        (1763897400.0, "2025-11-23T11:30:00.000Z"),
        (1763897400.5, "2025-11-23T11:30:00.500Z"),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (951782400.75, "2000-02-29T00:00:00.750Z"),
    ],
)
def test_utc_now_iso_fixed_clock(monkeypatch: pytest.MonkeyPatch, now: float, expected: str) -> None:
    monkeypatch.setattr(time, "time", lambda: now)
    assert utc_now_iso() == expected


def test_utc_now_iso_just_before_a_second_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    now = math.nextafter(1763897401.0, 0.0)
    monkeypatch.setattr(time, "time", lambda: now)
    assert utc_now_iso() == "2025-11-23T11:30:00.999Z"


# --- Outcome ---


def test_outcome_round_trip() -> None:
    outcome = Outcome(
        delivery_id="msg_1",
        endpoint_id="crm",
        event_type="lead.created",
        attempt=1,
        status=model.DELIVERED,
        http_status=204,
        duration_ms=12.5,
        response_body="",
        source_topic="leads",
        source_partition=3,
        source_offset=42,
        timestamp="2025-11-23T11:30:00.250Z",
    )
    raw = encode_outcome(outcome)
    assert decode_outcome(raw) == outcome
    assert raw.startswith(b'{"delivery_id":"msg_1","endpoint_id":"crm","event_type":"lead.created","attempt":1,')
    assert (model.DELIVERED, model.FAILED, model.INVALID_EVENT) == ("delivered", "failed", "invalid_event")


# --- status_class ---


@pytest.mark.parametrize(
    ("http_status", "error", "expected"),
    [
        (200, None, "2xx"),
        (204, None, "2xx"),
        (299, None, "2xx"),
        (100, None, "1xx"),
        (301, "HTTP 301", "3xx"),
        (404, "HTTP 404", "4xx"),
        (429, "HTTP 429", "4xx"),
        (500, "HTTP 500", "5xx"),
        (599, "HTTP 599", "5xx"),
        (600, "HTTP 600", "other"),
        (99, None, "other"),
        (0, None, "other"),
        (-1, None, "other"),
        (503, "timeout: something", "5xx"),  # a status always wins
        (None, "timeout: no complete response within 10 s", "timeout"),
        (None, "connection error: Connection refused", "connection"),
        (None, "connection error: name resolution failed", "connection"),
        (None, "protocol error: bad status line", "connection"),
        (None, "TLS error: handshake or certificate verification failed", "connection"),
        (None, "a timeout: not at the start", "connection"),
        (None, "", "connection"),
        (None, None, "connection"),
    ],
)
def test_status_class(http_status: int | None, error: str | None, expected: str) -> None:
    assert status_class(http_status, error) == expected


# --- event identity and delivery ids ---


def rec(value: bytes | None, offset: int = 42, timestamp: int = 1_781_294_400_000, topic: str = "leads",
        headers: tuple[tuple[str, bytes], ...] = ()) -> Any:  # fmt: skip
    from tests.unit.standins import Record

    return Record(topic, 0, offset, value, timestamp=timestamp, headers=headers)


def test_delivery_id_is_a_hash_of_the_event_key_and_the_endpoint() -> None:
    expected = "msg_" + hashlib.blake2b(b"kafka:leads\x000\x0042\x00123\x00crm", digest_size=16).hexdigest()
    assert delivery_id("kafka:leads\x000\x0042\x00123", "crm") == expected
    assert re.fullmatch(r"msg_[0-9a-f]{32}", delivery_id("k", "e"))
    assert delivery_id("k", "crm") != delivery_id("k", "CRM") != delivery_id("k2", "crm")


def test_an_event_without_an_id_is_known_by_its_coordinates_and_timestamp() -> None:
    value = b'{"event": "lead.created"}'
    event = TypeReader().event(rec(value))
    assert event.key == "kafka:leads\x000\x0042\x001781294400000"
    again = TypeReader().event(rec(value))
    recreated = TypeReader().event(rec(value, timestamp=1_790_000_000_000))  # the same offset on a re-created topic
    assert again.key == event.key and recreated.key != event.key
    assert len({TypeReader().event(rec(value, offset=n)).key for n in range(100)}) == 100


def test_an_events_own_id_field_makes_its_identity_on_any_offset() -> None:
    reader = TypeReader(id_field="meta.id")
    first = reader.event(rec(b'{"event": "x", "meta": {"id": "evt_1"}}', offset=1))
    copy = reader.event(rec(b'{"event": "x", "meta": {"id": "evt_1"}}', offset=99, timestamp=5))
    other = reader.event(rec(b'{"event": "x", "meta": {"id": "evt_2"}}', offset=1))
    elsewhere = reader.event(rec(b'{"event": "x", "meta": {"id": "evt_1"}}', topic="orders"))
    assert first.key == copy.key == "id:leads\x00evt_1"
    assert other.key != first.key and elsewhere.key != first.key
    missing = reader.event(rec(b'{"event": "x"}', offset=7))
    assert missing.key.startswith("kafka:leads\x000\x007\x00")  # no id: the coordinates


def test_a_structured_cloudevent_is_routed_by_its_type_and_known_by_source_and_id() -> None:
    value = b'{"specversion": "1.0", "type": "com.acme.lead.created", "source": "/crm", "id": "A-1", "data": {}}'
    event = TypeReader().event(rec(value))
    assert (event.event_type, event.key) == ("com.acme.lead.created", "ce:/crm\x00A-1")
    assert TypeReader(id_field="nope").event(rec(value)).key == "ce:/crm\x00A-1"


def test_a_binary_cloudevent_is_routed_by_its_headers_whatever_its_data() -> None:
    headers = (("ce_specversion", b"1.0"), ("ce_type", b"com.acme.call.ended"), ("ce_source", b"/pbx"),
               ("ce_id", b"c-9"), ("content-type", b"application/octet-stream"))  # fmt: skip
    event = TypeReader().event(rec(b"\x00\x01 not json", headers=headers))
    assert (event.event_type, event.key, event.value) == ("com.acme.call.ended", "ce:/pbx\x00c-9", b"\x00\x01 not json")
    with pytest.raises(InvalidEvent, match="the ce_type header must not contain control characters"):
        TypeReader().event(rec(b"{}", headers=(("ce_type", b"a\nb"),)))


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX-Injected: 1", False),
        (b"garbage", False),
        (b"\xff", False),
    ],
)
def test_a_traceparent_header_is_kept_only_when_well_formed(header: bytes, kept: bool) -> None:
    event = TypeReader().event(rec(b'{"event": "x"}', headers=(("traceparent", header),)))
    assert event.traceparent == (header.decode() if kept else None)


def test_an_event_larger_than_the_limit_is_invalid() -> None:
    value = b'{"event": "x", "p": "' + b"a" * 2030 + b'"}'
    assert len(value) == 2053
    with pytest.raises(InvalidEvent, match=r"too large: 2053 bytes \(kafka.max_event_bytes is 2048\)"):
        TypeReader(max_bytes=2048).event(rec(value))
    assert TypeReader(max_bytes=2053).event(rec(value)).event_type == "x"


def test_attempt_ids_never_repeat() -> None:
    ids = {new_attempt_id("msg_1", 1) for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("msg_1-1-") for i in ids)


# --- Endpoint.delivers_as ---

SECRET = "whsec_" + base64.b64encode(b"endpoint-secret-0123456789").decode()
ROTATED = "whsec_" + base64.b64encode(b"rotated-secret-9876543210").decode()


def parts(
    delivery: DeliveryConfig | None = None, environ: dict[str, str] | None = None, **over: Any
) -> tuple[EndpointConfig, DeliveryConfig, dict[str, str]]:
    fields: dict[str, Any] = {"id": "crm", "url": "https://crm.example.com/hook", "secret": SECRET}
    fields.update(over)
    return EndpointConfig(**fields), delivery or DeliveryConfig(), environ or {}


def make(delivery: DeliveryConfig | None = None, environ: dict[str, str] | None = None, **over: Any) -> Endpoint:
    return Endpoint(*parts(delivery, environ, **over))


def test_endpoint_is_built_from_its_config() -> None:
    ep = make(DeliveryConfig(user_agent="acme/1"), headers={"X-Tenant": "acme"}, timeout_s=3.5, max_concurrency=4)
    assert ep.id == "crm"
    assert str(ep.url) == "https://crm.example.com/hook"
    assert ep.secret == SECRET
    assert ep.timeout_s == 3.5
    assert ep.max_concurrency == 4
    assert ep.base_headers == {"Content-Type": "application/json", "User-Agent": "acme/1", "X-Tenant": "acme"}


def test_endpoint_header_may_override_user_agent() -> None:
    ep = make(headers={"User-Agent": "custom/2"})
    assert ep.base_headers == {"Content-Type": "application/json", "User-Agent": "custom/2"}


def test_endpoint_secret_from_environ() -> None:
    ep = make(environ={"CRM_SECRET": ROTATED}, secret=None, secret_env="CRM_SECRET")
    assert ep.secret == ROTATED


def test_delivers_as_identical() -> None:
    assert make().delivers_as(*parts())
    env = {"CRM_SECRET": SECRET}
    assert make(environ=env, secret=None, secret_env="CRM_SECRET").delivers_as(
        *parts(environ=dict(env), secret=None, secret_env="CRM_SECRET")
    )
    assert make(headers={"User-Agent": "custom/2"}).delivers_as(*parts(headers={"User-Agent": "custom/2"}))


@pytest.mark.parametrize(
    "changed",
    [
        {"url": "https://crm.example.com/other"},
        {"secret": ROTATED},
        {"timeout_s": 11.0},
        {"max_concurrency": 9},
        {"headers": {"X-Tenant": "acme"}},
        {"id": "crm2"},
    ],
)
def test_delivers_as_differs_when_the_config_differs(changed: dict[str, Any]) -> None:
    assert not make().delivers_as(*parts(**changed))
    assert not make(**changed).delivers_as(*parts())


def test_delivers_as_differs_when_the_env_secret_changed() -> None:
    before = make(environ={"CRM_SECRET": SECRET}, secret=None, secret_env="CRM_SECRET")
    after = make(environ={"CRM_SECRET": ROTATED}, secret=None, secret_env="CRM_SECRET")
    assert before.config == after.config
    assert before.delivers_as(after.config, DeliveryConfig(), {"CRM_SECRET": ROTATED}) is False


def test_delivers_as_differs_when_the_user_agent_changed() -> None:
    assert make(DeliveryConfig(user_agent="a/1")).delivers_as(*parts(DeliveryConfig(user_agent="b/2"))) is False


def test_delivers_as_ignores_the_drain_timeout() -> None:
    assert make(DeliveryConfig(drain_timeout_s=5)).delivers_as(*parts(DeliveryConfig(drain_timeout_s=25))) is True


def test_check_refuses_what_would_stop_a_build() -> None:
    Endpoint.check(parts()[0], {})
    with pytest.raises(ValueError, match="CRM_SECRET"):
        Endpoint.check(parts(secret=None, secret_env="CRM_SECRET")[0], {})
    with pytest.raises(ValueError, match="profile"):
        Endpoint.check(parts(profile="nope")[0], {})


def test_same_secret_inline_or_from_env_is_not_the_same_endpoint() -> None:
    # The config differs (secret vs secret_env), so the lane is rebuilt even though the key is the same.
    inline = make()
    from_env = make(environ={"CRM_SECRET": SECRET}, secret=None, secret_env="CRM_SECRET")
    assert inline.secret == from_env.secret
    assert inline.delivers_as(from_env.config, DeliveryConfig(), {"CRM_SECRET": SECRET}) is False


# --- Mask: an endpoint's secrets never reach a results record ---

SECRETS = st.text(min_size=MIN_MASKED, max_size=40)


@given(SECRETS, st.text(max_size=60), st.text(max_size=60))
def test_a_secret_is_masked_wherever_it_stands(secret: str, before: str, after: str) -> None:
    masked = Mask([secret])(before + secret + after + secret)
    assert secret not in masked
    assert MASKED in masked


@given(SECRETS, st.text(max_size=30))
def test_a_secret_echoed_inside_json_is_masked_in_every_escaping(secret: str, other: str) -> None:
    mask = Mask([secret])
    for echoed in (json.dumps({"s": secret, "o": other}), json.dumps({"s": secret}, ensure_ascii=False)):
        masked = mask(echoed)
        assert secret not in masked
        assert json.dumps(secret)[1:-1] not in masked and json.dumps(secret, ensure_ascii=False)[1:-1] not in masked


@given(SECRETS, st.integers(0, RESPONSE_BODY_LIMIT), st.sampled_from(["x", "é", "€"]))
def test_a_body_cut_in_the_middle_of_a_secret_keeps_none_of_its_start(secret: str, pad: int, filler: str) -> None:
    raw = (filler * pad + secret + "tail").encode()
    cut = raw[:RESPONSE_BODY_LIMIT]
    masked = Mask([secret])(truncate_body(cut), cut=len(cut) >= RESPONSE_BODY_LIMIT)
    assert secret not in masked
    assert not any(masked.endswith(secret[:k]) for k in range(4, len(secret)))


@given(st.lists(SECRETS, min_size=2, max_size=4), st.text(max_size=40))
def test_secrets_that_hold_one_another_are_all_masked(secrets: list[str], text: str) -> None:
    body = text.join(secrets) + secrets[0] + secrets[0][:-1]
    masked = Mask(secrets)(body)
    assert not any(secret in masked for secret in secrets)


def test_short_values_and_bodies_without_secrets_are_left_alone() -> None:
    mask = Mask(["abc", "s", "tok-12345"])
    assert mask("abc s ok") == "abc s ok"
    assert mask('{"token": "tok-12345"}') == '{"token": "***"}'
    assert mask("tok-12345".replace("-", "%2D")) == "tok%2D12345"  # only the encodings a receiver uses
    assert mask("a%20b") == "a%20b" and not Mask([])


def test_an_endpoint_masks_its_secrets_url_credentials_and_header_values() -> None:
    endpoint = make(
        url="https://hook-user:pa55w%2Frd@crm.example.com/hook",
        headers={"Authorization": "Bearer tok-0123456789", "X-Api-Key": "key-abcdef", "X-Short": "v"},
    )
    basic = base64.b64encode(b"hook-user:pa55w/rd").decode()
    echoed = json.dumps(
        {"signing": SECRET, "auth": f"Basic {basic}", "bearer": "Bearer tok-0123456789", "key": "key-abcdef",
         "user": "hook-user", "password": "pa55w/rd", "encoded": "pa55w%2Frd", "short": "v"}
    )  # fmt: skip
    masked = endpoint.mask(echoed)
    for leaked in (SECRET, basic, "tok-0123456789", "key-abcdef", "hook-user", "pa55w/rd", "pa55w%2Frd"):
        assert leaked not in masked
    assert json.loads(masked)["short"] == "v"


def test_an_endpoint_with_an_injected_secret_masks_it() -> None:
    endpoint = make(profile="convocore", secret="workspace-secret-42")
    assert endpoint.mask('{"payload": {"workspaceSecret": "workspace-secret-42"}}') == (
        '{"payload": {"workspaceSecret": "***"}}'
    )


@given(
    delivery=st.text(min_size=1, max_size=60),
    endpoint=st.text(min_size=1, max_size=200),
    event_type=st.none() | st.text(max_size=2_000),
    status=st.sampled_from([model.DELIVERED, model.FAILED, model.DEAD_LETTERED, model.SKIPPED_PAUSED]),
    attempt=st.integers(0, 10_000),
    trigger=st.sampled_from([model.LIVE, model.PING, model.REDELIVERY, model.REPLAY]),
    http_status=st.none() | st.integers(100, 599),
    duration_ms=st.none() | st.floats(0, 1e9, allow_nan=False),
    position=st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1)),
)
def test_an_index_entry_is_shorter_than_its_results_record_so_a_writes_entries_fit_where_its_records_did(
    delivery: str, endpoint: str, event_type: str | None, status: str, attempt: int, trigger: str,
    http_status: int | None, duration_ms: float | None, position: tuple[int, int],
) -> None:  # fmt: skip
    outcome = Outcome(delivery_id=delivery, endpoint_id=endpoint, event_type=event_type, attempt=attempt, status=status,
                      http_status=http_status, duration_ms=duration_ms, source_topic=None, source_partition=None,
                      source_offset=None, timestamp=utc_now_iso(), trigger=trigger)  # fmt: skip
    entry = model.index_entry(outcome, int(time.time() * 1000))
    assert entry is not None
    row = (*position, *entry)
    alone = len(model.encode_index(model.IndexRecord(entries=[])))  # the record's own bytes, once per write
    assert len(model.encode_index(model.IndexRecord(entries=[row]))) - alone < len(encode_outcome(outcome))
    assert model.decode_index(model.encode_index(model.IndexRecord(entries=[row, row]))) == [row, row]


def test_utc_now_iso_follows_the_clock_through_its_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # The text of the last millisecond is kept: calls in the same millisecond share it, the next one is new, and a
    # second's last millisecond is followed by the next second's first.
    times = iter([1763897400.2501, 1763897400.2509, 1763897400.2511, 1763897400.9995, 1763897401.0004, 1763897400.0])
    monkeypatch.setattr(time, "time", lambda: next(times))
    got = [utc_now_iso() for _ in range(6)]
    assert got == [
        "2025-11-23T11:30:00.250Z",
        "2025-11-23T11:30:00.250Z",
        "2025-11-23T11:30:00.251Z",
        "2025-11-23T11:30:00.999Z",
        "2025-11-23T11:30:01.000Z",
        "2025-11-23T11:30:00.000Z",  # a clock set back: written as it says
    ]
