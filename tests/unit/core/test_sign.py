"""Signatures: Standard Webhooks (checked by the reference implementation) and hex HMAC-SHA256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from daemon.core.sign import decode_whsec, hmac_sha256_hex, standard_webhooks_signature

SECRET = "whsec_" + base64.b64encode(b"first-secret-0123456789abcdef").decode()
ROTATED = "whsec_" + base64.b64encode(b"second-secret-9876543210fedcba").decode()
STRANGER = "whsec_" + base64.b64encode(b"not-one-of-ours-000000000000").decode()
BODY = json.dumps({"event": "lead.created", "data": {"id": 42, "name": "Zoë"}}, ensure_ascii=False).encode()


def headers_for(signature: str, msg_id: str, ts: int) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_one_key_verifies_with_standardwebhooks() -> None:
    ts = int(time.time())
    signature = standard_webhooks_signature([decode_whsec(SECRET)], "msg_abc", ts, BODY)
    assert signature.startswith("v1,")
    assert " " not in signature
    payload = Webhook(SECRET).verify(BODY, headers_for(signature, "msg_abc", ts))
    assert payload == {"event": "lead.created", "data": {"id": 42, "name": "Zoë"}}


def test_one_key_does_not_verify_with_another_secret() -> None:
    ts = int(time.time())
    signature = standard_webhooks_signature([decode_whsec(SECRET)], "msg_abc", ts, BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        Webhook(STRANGER).verify(BODY, headers_for(signature, "msg_abc", ts))


@pytest.mark.parametrize(
    ("body", "msg_id", "ts_delta"),
    [
        (BODY + b" ", "msg_abc", 0),  # body changed
        (BODY, "msg_abd", 0),  # id changed
        (BODY, "msg_abc", 1),  # timestamp changed
    ],
)
def test_tampering_is_detected(body: bytes, msg_id: str, ts_delta: int) -> None:
    ts = int(time.time())
    signature = standard_webhooks_signature([decode_whsec(SECRET)], "msg_abc", ts, BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        Webhook(SECRET).verify(body, headers_for(signature, msg_id, ts + ts_delta))


def test_two_keys_give_two_entries_each_verifying_with_its_own_secret() -> None:
    ts = int(time.time())
    keys = [decode_whsec(SECRET), decode_whsec(ROTATED)]
    signature = standard_webhooks_signature(keys, "msg_rot", ts, BODY)
    entries = signature.split(" ")
    assert len(entries) == 2
    assert all(entry.startswith("v1,") for entry in entries)
    assert entries[0] != entries[1]
    # each entry is exactly the single-key signature of its key, in key order
    assert entries[0] == standard_webhooks_signature([keys[0]], "msg_rot", ts, BODY)
    assert entries[1] == standard_webhooks_signature([keys[1]], "msg_rot", ts, BODY)
    headers = headers_for(signature, "msg_rot", ts)
    expected = json.loads(BODY)
    assert Webhook(SECRET).verify(BODY, headers) == expected
    assert Webhook(ROTATED).verify(BODY, headers) == expected
    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        Webhook(STRANGER).verify(BODY, headers)
    # each entry alone verifies only with its own secret
    assert Webhook(ROTATED).verify(BODY, headers_for(entries[1], "msg_rot", ts)) == expected
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, headers_for(entries[1], "msg_rot", ts))


def test_signature_matches_an_independent_computation() -> None:
    key = decode_whsec(SECRET)
    msg_id, ts, body = "msg_2Lh9f1", 1_700_000_000, b'{"event":"order.paid","amount":12.5}'
    digest = hmac.new(key, b"msg_2Lh9f1.1700000000." + body, hashlib.sha256).digest()
    assert standard_webhooks_signature([key], msg_id, ts, body) == "v1," + base64.b64encode(digest).decode()


def test_known_vector_from_the_standard_webhooks_examples() -> None:
    # The example published with the Standard Webhooks / Svix reference libraries.
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    signature = standard_webhooks_signature([key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    expected = hmac.new(key, b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330." + body, hashlib.sha256).digest()
    assert signature == "v1," + base64.b64encode(expected).decode()


def test_binary_body_is_signed_as_raw_bytes() -> None:
    key = b"\x00\x01\x02"
    body = b"\xff\x00\xfe\n"
    digest = hmac.new(key, b"id.0." + body, hashlib.sha256).digest()
    assert standard_webhooks_signature([key], "id", 0, body) == "v1," + base64.b64encode(digest).decode()


def test_no_keys_gives_an_empty_header() -> None:
    assert standard_webhooks_signature([], "msg", 1, b"{}") == ""


@pytest.mark.parametrize(
    ("key", "body"),
    [(b"k", b""), (b"secret", b'{"a":1}'), (b"\x00" * 64, b"x" * 10_000), (b"long-key" * 20, "Zoë".encode())],
)
def test_hmac_sha256_hex_matches_hmac_new(key: bytes, body: bytes) -> None:
    assert hmac_sha256_hex(key, body) == hmac.new(key, body, hashlib.sha256).hexdigest()


def test_hmac_sha256_hex_rfc4231_vector() -> None:
    # RFC 4231, test case 2
    assert hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert len(hmac_sha256_hex(b"k", b"")) == 64


def test_standard_signer_matches_the_function_and_verifies() -> None:
    from daemon.core.sign import StandardSigner, standard_webhooks_signature

    keys = [b"first-key-0123456789", b"second-key-9876543210"]
    signer = StandardSigner(keys)
    for body in (b"", b'{"a": 1}', b"x" * 10_000):
        assert signer.sign("msg_1", 1718900000, body) == standard_webhooks_signature(keys, "msg_1", 1718900000, body)
    # the keyed states are copied, never consumed: signing twice gives the same answer
    assert signer.sign("msg_2", 5, b"b") == signer.sign("msg_2", 5, b"b")


@pytest.mark.parametrize("size", [1, 16, 32, 63, 64, 65, 100, 200])
def test_standard_signer_is_hmac_for_a_key_of_any_length(size: int) -> None:
    """RFC 2104 over SHA-256's 64-byte block: a key shorter than a block padded, a longer one hashed first."""
    from daemon.core.sign import StandardSigner

    key = bytes(range(size))
    body = b"x" * 1_000
    expected = "v1," + base64.b64encode(hmac.new(key, b"msg_9.77." + body, hashlib.sha256).digest()).decode()
    assert StandardSigner([key]).sign("msg_9", 77, body) == expected
