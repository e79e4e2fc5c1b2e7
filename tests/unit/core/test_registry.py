"""daemon.core.registry: the state the endpoints topic describes, how versions settle conflicts, and why a record
nobody with the key wrote changes nothing. Pure."""

from __future__ import annotations

import os
from typing import Any

import msgspec
import orjson
import pytest

from daemon.core.config import EndpointConfig
from daemon.core.registry import (
    NOT_BY_API,
    SETTINGS,
    Directory,
    EndpointRecord,
    Record,
    RecordRefused,
    SealedSecret,
    TenantRecord,
    TokenRecord,
    deleted_marker,
    endpoint_key,
    live_secrets,
    next_expiry,
    opened,
    resealed,
    sealed_record,
    signed,
    tenant_key,
    token_hash,
)
from daemon.core.secretbox import Keyring, SecretBox, SecretError
from daemon.core.shards import Shards

KEY, OTHER_KEY = os.urandom(32), os.urandom(32)
KEYS = Keyring(KEY, [OTHER_KEY])  # a previous key too: a record may name it, and must then verify under it
OTHER = Keyring(OTHER_KEY)
SECRET = "whsec_dGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZg=="


def endpoint(
    version: int = 1,
    endpoint_id: str = "ep",
    url: str = "https://a.example.com/h",
    keyring: Keyring = KEYS,
    **over: Any,
) -> EndpointRecord:
    fields: dict[str, Any] = {
        "endpoint_id": endpoint_id, "tenant": "acme", "version": version, "created_at": None, "url": url,
        "headers": {}, "secrets": [(SECRET, None)], "events": ["lead.*"], "topics": None, "where": None,
        "description": None, "settings": {}, **over,
    }  # fmt: skip
    return sealed_record(keyring, **fields)


def record(version: int, endpoint_id: str = "ep", deleted: bool = False, url: str = "https://a.example.com/h") -> bytes:
    if deleted:  # the delete of the version before
        return signed(deleted_marker(endpoint(version - 1, endpoint_id, url), KEYS), KEYS)
    return signed(endpoint(version, endpoint_id, url), KEYS)


def tampered(value: bytes, **changes: Any) -> bytes:
    """``value`` with fields changed after it was signed (its MAC kept): what a writer without the key can do."""
    return orjson.dumps({**orjson.loads(value), **changes})


def unsigned(rec: Record) -> bytes:
    """A record as a version before records were signed wrote it: no key id, no MAC."""
    body = msgspec.to_builtins(rec)
    del body["key_id"], body["mac"]
    return orjson.dumps(body)


def legacy_endpoint(key: bytes, version: int = 1, **settings: Any) -> EndpointRecord:
    """An endpoint record as a version before records were signed sealed it (``v1:``, bound to the endpoint only)."""
    box, bound = SecretBox(key), endpoint_key("ep")
    return EndpointRecord(id="ep", tenant="acme", version=version, created_at="c", updated_at="u",
                          url=box.seal("https://old.example.com/h", bound), settings=settings,
                          secrets=[SealedSecret(value=box.seal(SECRET, bound))], events=["lead.*"])  # fmt: skip


def refusal(directory: Directory, key: str, value: bytes | None) -> RecordRefused:
    with pytest.raises(RecordRefused) as refused:
        directory.apply(key, value)
    return refused.value


# --- versions ---


def test_a_higher_version_replaces_and_an_equal_or_lower_one_is_rejected() -> None:
    d = Directory(KEYS)
    assert d.apply(endpoint_key("ep"), record(1))[0]
    assert d.apply(endpoint_key("ep"), record(2, url="https://b.example.com/h"))[0]
    accepted, _ = d.apply(endpoint_key("ep"), record(2, url="https://c.example.com/h"))  # a racing writer's 2
    assert not accepted
    assert opened(d.endpoints["ep"], KEYS)[0].url == "https://b.example.com/h"
    assert not d.apply(endpoint_key("ep"), record(1))[0]
    assert d.version(endpoint_key("ep")) == 2


def test_two_creates_of_one_id_the_first_in_the_log_wins() -> None:
    d = Directory(KEYS)
    assert d.apply(endpoint_key("ep"), record(1, url="https://first.example.com/h"))[0]
    assert not d.apply(endpoint_key("ep"), record(1, url="https://second.example.com/h"))[0]


def test_a_delete_leaves_a_grave_no_stale_update_can_resurrect() -> None:
    d = Directory(KEYS)
    d.apply(endpoint_key("ep"), record(1))
    assert d.apply(endpoint_key("ep"), record(2, deleted=True))[0]
    assert "ep" not in d.endpoints and d.version(endpoint_key("ep")) == 2
    assert not d.apply(endpoint_key("ep"), record(2))[0]  # an update that read version 1
    assert d.apply(endpoint_key("ep"), None)[0]  # the tombstone
    assert d.apply(endpoint_key("ep"), record(3))[0]  # created again


def test_a_delete_marker_keeps_nothing_sealed() -> None:
    marker = deleted_marker(endpoint(1, headers={"Authorization": "Bearer t"}), KEYS)
    assert (marker.deleted, marker.version, marker.url, marker.headers, marker.secrets) == (True, 2, "", None, [])


def test_after_compaction_the_latest_record_alone_rebuilds_the_state() -> None:
    d = Directory(KEYS)
    assert d.apply(endpoint_key("ep"), record(7))[0]
    assert d.endpoints["ep"].version == 7


def test_a_record_under_another_key_is_refused() -> None:
    refused = refusal(Directory(KEYS), endpoint_key("other"), record(1))
    assert (refused.reason, str(refused)) == ("invalid", "a record of 'ep' under key 'endpoint/other'")


def test_the_endpoints_a_tenant_has_are_counted_through_updates_and_deletes() -> None:
    d = Directory(KEYS)

    def put(version: int, endpoint_id: str, tenant: str) -> None:
        d.apply(endpoint_key(endpoint_id), signed(endpoint(version, endpoint_id, tenant=tenant), KEYS))

    def delete(version: int, endpoint_id: str, tenant: str) -> None:
        marker = deleted_marker(endpoint(version - 1, endpoint_id, tenant=tenant), KEYS)
        assert d.apply(endpoint_key(endpoint_id), signed(marker, KEYS))[0]
        assert d.apply(endpoint_key(endpoint_id), None)[0]  # then its tombstone

    for i in (2, 0, 1):
        put(1, f"a{i}", "a")
    put(1, "b0", "b")
    assert (d.endpoints_of("a"), d.endpoints_of("b"), d.endpoints_of("c")) == (3, 1, 0)
    assert (d.ids_of("a"), d.ids_of("b"), d.ids_of("c")) == (["a0", "a1", "a2"], ["b0"], [])  # in id order
    put(2, "a0", "a")  # an update is the same endpoint
    put(2, "a0", "a")  # a rejected one changes nothing
    assert d.endpoints_of("a") == 3 and d.ids_of("a") == ["a0", "a1", "a2"]
    delete(2, "a1", "a")
    assert (d.endpoints_of("a"), d.endpoints_of("b")) == (2, 1) and d.ids_of("a") == ["a0", "a2"]
    put(2, "a2", "b")  # a record that names another tenant moves the endpoint
    assert (d.ids_of("a"), d.ids_of("b")) == (["a0"], ["a2", "b0"])
    delete(3, "a2", "b")
    delete(3, "a0", "a")
    assert d.endpoints_of("a") == 0 and "a" not in d._held and d.endpoints_of("b") == 1 and d.ids_of("a") == []


def test_tenant_tokens_are_known_by_their_hash_only() -> None:
    d = Directory(KEYS)
    token = "wrt_acme_" + os.urandom(16).hex()
    tenant = TenantRecord(id="acme", version=1, created_at="t",
                          tokens=[TokenRecord(id="t1", sha256=token_hash(token), created_at="t")])  # fmt: skip
    d.apply(tenant_key("acme"), signed(tenant, KEYS))
    assert d.tenant_of_token(token) == "acme"
    assert d.tenant_of_token(token + "x") is None
    assert token not in signed(tenant, KEYS).decode()
    d.apply(tenant_key("acme"), signed(msgspec.structs.replace(tenant, version=2, tokens=[]), KEYS))
    assert d.tenant_of_token(token) is None


def test_an_opened_record_is_the_endpoint_and_subscription_it_stands_for() -> None:
    rec = endpoint(
        url="https://u:p@a.example.com/h", headers={"Authorization": "Bearer t0ken"},
        secrets=[("whsec_new", None), ("whsec_old", 2_000)], topics=["leads"], description="CRM",
        settings={"timeout_s": 5},
    )  # fmt: skip
    raw = signed(rec, KEYS).decode()
    assert "t0ken" not in raw and "whsec_" not in raw and "u:p@" not in raw
    endpoint_, subscription = opened(rec, KEYS, now_ms=1_000)
    assert (endpoint_.url, endpoint_.headers, endpoint_.secrets, endpoint_.timeout_s) == (
        "https://u:p@a.example.com/h",
        {"Authorization": "Bearer t0ken"},
        ["whsec_new", "whsec_old"],
        5.0,
    )
    assert (subscription.endpoint, subscription.events, subscription.topics) == ("ep", ["lead.*"], ["leads"])
    later, _ = opened(rec, KEYS, now_ms=3_000)
    assert later.secrets == ["whsec_new"]  # the grace of the rotation is over
    assert live_secrets(rec, KEYS, now_ms=3_000) == [("whsec_new", None)]
    assert next_expiry(rec, 1_000) == 2_000 and next_expiry(rec, 3_000) is None
    with pytest.raises(SecretError):
        opened(rec, Keyring(os.urandom(32)))


def test_an_endpoint_record_round_trips() -> None:
    rec = EndpointRecord(id="e", tenant="t", version=3, created_at="c", updated_at="u",
                         secrets=[SealedSecret(value="v2:x", expires_at=5)], key_id=KEYS.current_id)  # fmt: skip
    d = Directory(KEYS)
    assert d.apply(endpoint_key("e"), signed(rec, KEYS)) == (True, rec)


# --- authenticity: a record nobody with the key wrote changes nothing ---


@pytest.mark.parametrize(
    ("key", "changes"),
    [
        ("endpoint/ep", {"tenant": "globex"}),
        ("endpoint/ep", {"version": 9}),
        ("endpoint/ep", {"settings": {"timeout_s": 1}}),
        ("endpoint/ep", {"events": ["*"]}),
        ("endpoint/ep", {"where": {"field": "org", "one_of": ["globex"]}}),
        ("endpoint/ep", {"description": "mine now"}),
        ("endpoint/ep", {"deleted": True}),
        ("endpoint/ep", {"key_id": OTHER.current_id}),  # another key this instance has: its MAC does not verify
        ("endpoint/ep", {"extra": 1}),  # a field this version does not know is covered too
        ("tenant/acme", {"tokens": [{"id": "t2", "sha256": token_hash("mine"), "created_at": "t"}]}),
        ("tenant/acme", {"version": 9}),
    ],
)
def test_a_field_changed_after_signing_makes_the_record_refused_and_changes_nothing(
    key: str, changes: dict[str, Any]
) -> None:
    d = Directory(KEYS)
    original = (
        record(1) if key.startswith("endpoint/") else signed(TenantRecord(id="acme", version=1, created_at="t"), KEYS)
    )
    d.apply(key, original)
    before = (dict(d.endpoints), dict(d.tenants), d.tenant_of_token("mine"))
    refused = refusal(d, key, tampered(original, **changes))
    assert refused.reason == "mac" and "does not verify" in str(refused)
    assert (dict(d.endpoints), dict(d.tenants), d.tenant_of_token("mine")) == before


def test_a_sealed_value_moved_into_another_field_is_refused_by_its_mac_and_does_not_open_there() -> None:
    rec = endpoint(1)
    moved = msgspec.structs.replace(rec, url=rec.secrets[0].value)  # the secret copied into the URL
    refused = refusal(Directory(KEYS), endpoint_key("ep"), tampered(signed(rec, KEYS), url=moved.url))
    assert refused.reason == "mac"
    with pytest.raises(SecretError):  # even signed by a holder of the key: bound to the field it was sealed for
        opened(moved, KEYS)
    other = endpoint(1, endpoint_id="other")
    with pytest.raises(SecretError):  # nor to another endpoint
        opened(msgspec.structs.replace(other, url=rec.url), KEYS)


def test_a_record_signed_under_a_key_this_instance_does_not_have_is_refused_naming_its_key_id() -> None:
    elsewhere = Keyring(os.urandom(32))
    refused = refusal(Directory(KEYS), endpoint_key("ep"), signed(endpoint(1, keyring=elsewhere), elsewhere))
    assert refused.reason == "key"
    assert f"written under key id {elsewhere.current_id!r}, which this instance does not have" in str(refused)
    assert "api.previous_secrets_key_files" in str(refused)


@pytest.mark.parametrize("value", [b"not json", b"[1]", b'{"kind": "endpoint", "mac": 1, "key_id": "x"}'])
def test_what_is_not_a_signed_record_is_refused(value: bytes) -> None:
    assert refusal(Directory(KEYS), endpoint_key("ep"), value).reason in ("invalid", "key", "mac")


def test_a_tombstone_of_a_live_key_is_refused_and_one_after_a_signed_delete_is_applied() -> None:
    d = Directory(KEYS)
    d.apply(endpoint_key("ep"), record(1))
    assert refusal(d, endpoint_key("ep"), None).reason == "tombstone"
    assert "ep" in d.endpoints
    assert d.apply(endpoint_key("never"), None)[0]  # compaction may leave a tombstone alone: nothing to drop


# --- settings: only what the API itself can set ---


def test_the_settings_a_record_may_hold_are_the_fields_the_api_sets_in_the_clear() -> None:
    fields = {f.name for f in msgspec.structs.fields(EndpointConfig)}
    assert sorted(SETTINGS) == sorted(fields - NOT_BY_API - {"url", "headers", "secret"})
    assert sorted(SETTINGS) == ["allow_http", "circuit_breaker", "max_concurrency", "ordering", "pause_after_failures",
                                "profile", "queue_size", "rate_limit", "retry", "timeout_s", "when_key_fails",
                                "while_paused"]  # fmt: skip


@pytest.mark.parametrize("setting", ["secret_env", "secrets", "secret", "paused", "url", "colour"])
def test_a_signed_record_with_a_setting_the_api_cannot_set_is_refused_and_never_opened(setting: str) -> None:
    rec = endpoint(1, settings={"profile": "crm", setting: "WR_ADMIN_TOKEN"})
    refused = refusal(Directory(KEYS), endpoint_key("ep"), signed(rec, KEYS))
    assert (refused.reason, str(refused)) == ("invalid", f"settings.{setting}: not a setting the endpoints API can set")
    with pytest.raises(ValueError, match=f"settings.{setting}"):
        opened(rec, KEYS)


# --- rotation: the current key writes, previous keys still read ---


def test_records_of_a_previous_key_are_read_and_resealed_under_the_current_one() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = Keyring(old)
    rec = endpoint(3, headers={"X-Token": "h"}, secrets=[("whsec_a", None), ("whsec_b", 1)], settings={"timeout_s": 5})
    rotated = Keyring(new, [old])
    assert Keyring(new).current_id == rotated.current_id != before.current_id
    d = Directory(rotated)
    written = signed(endpoint(3, headers={"X-Token": "h"}, keyring=before, secrets=[("whsec_a", None)]), before)
    assert d.apply(endpoint_key("ep"), written)[0]
    tenant = TenantRecord(id="acme", version=1, created_at="t")
    assert d.apply(tenant_key("acme"), signed(tenant, before))[0]
    assert d.under_old_keys() == 2 and {r.id for r in d.stale()} == {"ep", "acme"}
    was = opened(d.endpoints["ep"], rotated)
    for stale in d.stale():
        assert d.apply(endpoint_key(stale.id) if stale.id == "ep" else tenant_key(stale.id),
                       signed(resealed(stale, rotated), rotated))[0]  # fmt: skip
    assert d.under_old_keys() == 0 and d.stale() == []
    now = d.endpoints["ep"]
    assert (now.version, now.key_id, d.tenants["acme"].version) == (4, rotated.current_id, 2)
    assert opened(now, Keyring(new)) == was  # the same endpoint, readable without the old key
    assert refusal(Directory(Keyring(new)), endpoint_key("ep"), written).reason == "key"
    assert rec.key_id == KEYS.current_id


# --- records written before records were signed ---


def test_a_record_without_a_mac_is_refused_unless_the_operator_accepts_them_for_a_migration() -> None:
    legacy = unsigned(legacy_endpoint(KEY))
    refused = refusal(Directory(KEYS), endpoint_key("ep"), legacy)
    assert refused.reason == "unauthenticated"
    assert "set api.accept_unauthenticated_records = true" in str(refused)
    d = Directory(KEYS, accept_unauthenticated=True)
    assert d.apply(endpoint_key("ep"), legacy)[0]
    assert opened(d.endpoints["ep"], KEYS)[0].url == "https://old.example.com/h"
    assert d.under_old_keys() == 1
    assert d.apply(endpoint_key("ep"), signed(resealed(d.endpoints["ep"], KEYS), KEYS))[0]
    assert d.under_old_keys() == 0 and opened(d.endpoints["ep"], KEYS)[0].url == "https://old.example.com/h"


def test_no_record_without_a_mac_is_read_after_a_signed_one_even_in_a_migration_window() -> None:
    d = Directory(KEYS, accept_unauthenticated=True)
    d.apply(endpoint_key("first"), record(1, endpoint_id="first"))
    refused = refusal(d, endpoint_key("ep"), unsigned(legacy_endpoint(KEY, version=5)))
    assert refused.reason == "unauthenticated" and "comes after signed records" in str(refused)
    assert "ep" not in d.endpoints


def test_a_record_without_a_mac_may_still_hold_only_the_settings_the_api_sets() -> None:
    d = Directory(KEYS, accept_unauthenticated=True)
    refused = refusal(d, endpoint_key("ep"), unsigned(legacy_endpoint(KEY, secret_env="WR_ADMIN_TOKEN")))
    assert (refused.reason, str(refused)) == ("invalid", "settings.secret_env: not a setting the endpoints API can set")


def test_a_legacy_sealed_value_moved_into_another_field_opens_but_a_v2_one_never_does() -> None:
    # The limit of the migration window, stated: v1 values are bound to the endpoint only.
    legacy = legacy_endpoint(KEY)
    moved = msgspec.structs.replace(legacy, url=legacy.secrets[0].value)
    assert opened(moved, KEYS)[0].url == SECRET
    current = endpoint(1)
    with pytest.raises(SecretError):
        opened(msgspec.structs.replace(current, url=current.secrets[0].value), KEYS)


def test_records_read_share_what_they_repeat_and_are_the_records_written() -> None:
    directory = Directory(KEYS)
    written = [endpoint(1, f"ep-{i}", settings={"max_concurrency": 4} if i == 2 else {}) for i in range(3)]
    for w in written:
        directory.apply(endpoint_key(w.id), signed(w, KEYS))
    held = [directory.endpoints[f"ep-{i}"] for i in range(3)]
    assert held == [msgspec.structs.replace(w, mac=held[i].mac) for i, w in enumerate(written)]  # the same values
    a, b, c = held
    assert a.tenant is b.tenant and a.key_id is b.key_id and a.events[0] is b.events[0]
    assert a.settings is b.settings and a.settings == {} and c.settings == {"max_concurrency": 4}
    assert a.updated_at is a.created_at  # never updated: one time held once
    updated = msgspec.structs.replace(a, version=2, updated_at="2030-01-01T00:00:00Z", mac=None)
    directory.apply(endpoint_key("ep-0"), signed(updated, KEYS))
    assert directory.endpoints["ep-0"].updated_at == "2030-01-01T00:00:00Z" != directory.endpoints["ep-0"].created_at


def test_with_nothing_under_an_old_key_no_record_is_looked_at_to_say_so() -> None:
    d = Directory(KEYS)
    assert d.apply(endpoint_key("ep"), record(1))[0]

    class Unread(Shards[str, EndpointRecord]):
        def values(self) -> Any:
            raise AssertionError("every record looked at")

    unread = Unread()
    for ident, held in d.endpoints.items():
        unread[ident] = held
    d.endpoints = unread
    assert d.stale() == [] and d.under_old_keys() == 0
