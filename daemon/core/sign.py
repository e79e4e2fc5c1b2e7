"""Signature schemes. Pure, stdlib only."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence


def standard_webhooks_signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``, one per key.

    Several keys (a secret being rotated) give several space-separated entries, so a receiver that
    knows any one of them can verify.
    """
    content = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return " ".join("v1," + base64.b64encode(hmac.digest(key, content, "sha256")).decode() for key in keys)


def hmac_sha256_hex(key: bytes, body: bytes) -> str:
    """Hex HMAC-SHA256 of the raw body (GitHub-style ``sha256=`` signatures)."""
    return hmac.digest(key, body, "sha256").hex()


class StandardSigner:
    """``standard_webhooks_signature`` with the keys set up once: each signature copies a keyed HMAC state
    instead of hashing the key again, and feeds the body without copying it."""

    __slots__ = ("_states",)  # used per request (the hot path)

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._states = [hmac.new(key, digestmod=hashlib.sha256) for key in keys]

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        prefix = b"%s.%d." % (msg_id.encode(), timestamp)
        entries = []
        for state in self._states:
            mac = state.copy()
            mac.update(prefix)
            mac.update(body)
            entries.append("v1," + base64.b64encode(mac.digest()).decode())
        return " ".join(entries)


def decode_whsec(secret: str) -> bytes:
    """Key bytes of a Standard Webhooks secret (``whsec_`` + base64). Raises ValueError."""
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64, optionally after 'whsec_'") from None
    if not key:
        raise ValueError("must not be empty")
    return key
