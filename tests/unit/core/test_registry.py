"""daemon.core.registry: the state the endpoints topic describes, and how versions settle conflicts. Pure."""

from __future__ import annotations

import os

import msgspec
import pytest

from daemon.core.registry import (
    Directory,
    EndpointRecord,
    SealedSecret,
    TenantRecord,
    TokenRecord,
    encode,
    endpoint_key,
    next_expiry,
    opened,
    sealed_record,
    tenant_key,
    token_hash,
)
from daemon.core.secretbox import SecretBox, SecretError

BOX = SecretBox(os.urandom(32))


def record(version: int, endpoint_id: str = "ep", deleted: bool = False, url: str = "https://a.example.com/h") -> bytes:
    rec = sealed_record(
        BOX, endpoint_id=endpoint_id, tenant="acme", version=version, created_at=None, url=url, headers={},
        secrets=[], events=["lead.*"], topics=None, where=None, description=None, settings={},
    )  # fmt: skip
    if deleted:
        rec = msgspec.structs.replace(rec, deleted=True)
    return encode(rec)


def test_a_higher_version_replaces_and_an_equal_or_lower_one_is_rejected() -> None:
    d = Directory()
    assert d.apply(endpoint_key("ep"), record(1))[0]
    assert d.apply(endpoint_key("ep"), record(2, url="https://b.example.com/h"))[0]
    accepted, _ = d.apply(endpoint_key("ep"), record(2, url="https://c.example.com/h"))  # a racing writer's 2
    assert not accepted
    assert BOX.open(d.endpoints["ep"].url, endpoint_key("ep")) == "https://b.example.com/h"
    assert not d.apply(endpoint_key("ep"), record(1))[0]
    assert d.version(endpoint_key("ep")) == 2


def test_two_creates_of_one_id_the_first_in_the_log_wins() -> None:
    d = Directory()
    assert d.apply(endpoint_key("ep"), record(1, url="https://first.example.com/h"))[0]
    assert not d.apply(endpoint_key("ep"), record(1, url="https://second.example.com/h"))[0]


def test_a_delete_leaves_a_grave_no_stale_update_can_resurrect() -> None:
    d = Directory()
    d.apply(endpoint_key("ep"), record(1))
    assert d.apply(endpoint_key("ep"), record(2, deleted=True))[0]
    assert "ep" not in d.endpoints and d.version(endpoint_key("ep")) == 2
    assert not d.apply(endpoint_key("ep"), record(2))[0]  # an update that read version 1
    assert d.apply(endpoint_key("ep"), None)[0]  # the tombstone
    assert d.apply(endpoint_key("ep"), record(3))[0]  # created again


def test_after_compaction_the_latest_record_alone_rebuilds_the_state() -> None:
    d = Directory()
    assert d.apply(endpoint_key("ep"), record(7))[0]
    assert d.endpoints["ep"].version == 7


def test_a_record_under_another_key_is_refused() -> None:
    with pytest.raises(ValueError, match="under key"):
        Directory().apply(endpoint_key("other"), record(1))


def test_tenant_tokens_are_known_by_their_hash_only() -> None:
    d = Directory()
    token = "wrt_acme_" + os.urandom(16).hex()
    tenant = TenantRecord(id="acme", version=1, created_at="t",
                          tokens=[TokenRecord(id="t1", sha256=token_hash(token), created_at="t")])  # fmt: skip
    d.apply(tenant_key("acme"), encode(tenant))
    assert d.tenant_of_token(token) == "acme"
    assert d.tenant_of_token(token + "x") is None
    assert token not in encode(tenant).decode()
    d.apply(tenant_key("acme"), encode(msgspec.structs.replace(tenant, version=2, tokens=[])))
    assert d.tenant_of_token(token) is None


def test_an_opened_record_is_the_endpoint_and_subscription_it_stands_for() -> None:
    rec = sealed_record(
        BOX, endpoint_id="ep", tenant="acme", version=1, created_at=None, url="https://u:p@a.example.com/h",
        headers={"Authorization": "Bearer t0ken"}, secrets=[("whsec_new", None), ("whsec_old", 2_000)],
        events=["lead.*"], topics=["leads"], where=None, description="CRM", settings={"timeout_s": 5},
    )  # fmt: skip
    raw = encode(rec).decode()
    assert "t0ken" not in raw and "whsec_" not in raw and "u:p@" not in raw
    endpoint, subscription = opened(rec, BOX, now_ms=1_000)
    assert (endpoint.url, endpoint.headers, endpoint.secrets, endpoint.timeout_s) == (
        "https://u:p@a.example.com/h",
        {"Authorization": "Bearer t0ken"},
        ["whsec_new", "whsec_old"],
        5.0,
    )
    assert (subscription.endpoint, subscription.events, subscription.topics) == ("ep", ["lead.*"], ["leads"])
    later, _ = opened(rec, BOX, now_ms=3_000)
    assert later.secrets == ["whsec_new"]  # the grace of the rotation is over
    assert next_expiry(rec, 1_000) == 2_000 and next_expiry(rec, 3_000) is None
    with pytest.raises(SecretError):
        opened(rec, SecretBox(os.urandom(32)))


def test_an_endpoint_record_round_trips() -> None:
    rec = EndpointRecord(id="e", tenant="t", version=3, created_at="c", updated_at="u",
                         secrets=[SealedSecret(value="v1:x", expires_at=5)])  # fmt: skip
    assert msgspec.json.decode(encode(rec), type=EndpointRecord) == rec
