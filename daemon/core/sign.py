"""Signature schemes. Pure, stdlib only."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any


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


_BLOCK = 64  # SHA-256's block size: HMAC's key pads (RFC 2104)
_INNER = bytes(x ^ 0x36 for x in range(256))
_OUTER = bytes(x ^ 0x5C for x in range(256))


class StandardSigner:
    """``standard_webhooks_signature`` with the keys set up once: HMAC-SHA256 done as RFC 2104 defines it over two
    SHA-256 states keyed once (the key's inner and outer pads hashed), each signature copying them: about half the
    CPU of copying a keyed ``hmac`` object (whose ``copy``, ``update`` and ``digest`` are Python) per request."""

    __slots__ = ("_pads",)  # used per request (the hot path)

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._pads = [_keyed(key) for key in keys]

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        prefix = b"%s.%d." % (msg_id.encode(), timestamp)
        entries = []
        for inner, outer in self._pads:
            mac = inner.copy()
            mac.update(prefix)
            mac.update(body)
            out = outer.copy()
            out.update(mac.digest())
            entries.append("v1," + binascii.b2a_base64(out.digest(), newline=False).decode())
        return " ".join(entries)


def _keyed(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the key's inner and outer pads (a key longer than a block is hashed first)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_INNER)), hashlib.sha256(key.translate(_OUTER))


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
