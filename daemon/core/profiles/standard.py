"""Standard Webhooks (the default) and ``raw``: the event body as it arrived, signed the Standard Webhooks way.

``webhook-id`` (stable for one delivery), ``webhook-timestamp`` (unix seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of id.timestamp.body>``, one entry per secret while one rotates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from daemon.core.policy import Policy
from daemon.core.profiles.base import Profile
from daemon.core.sign import StandardSigner, decode_whsec

# Svix's schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
SVIX_SCHEDULE: Final = Policy("schedule", delays_s=(5, 300, 1800, 7200, 18000, 36000, 36000))
_TEST_EVENT: Final = {"type": "webhook.test", "data": {"message": "test delivery from webhook-router"}}


class _Signer:
    """One endpoint's signing, keys prepared once. ``__slots__``: used per request (the hot path)."""

    __slots__ = ("_signer",)

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._signer = StandardSigner(keys)

    def headers(self, delivery_id: str, wire_id: str | None, event_type: str, body: bytes, ts: int) -> dict[str, str]:
        return {
            "webhook-id": delivery_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": self._signer.sign(delivery_id, ts, body),
        }


class StandardWebhooksSigning:
    headers_owned: Final = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})

    def signer(self, secrets: Sequence[str]) -> _Signer:
        return _Signer([decode_whsec(secret) for secret in secrets])

    def wire_id(self, endpoint_id: str, delivery_id: str, attempt: int, ts: int) -> str | None:
        return None  # webhook-id is the delivery id, the same for every attempt


STANDARD_WEBHOOKS: Final = Profile(
    name="standard-webhooks",
    template=None,
    signing=StandardWebhooksSigning(),
    key_source="whsec",
    test_event=_TEST_EVENT,
    retry=SVIX_SCHEDULE,
)

RAW: Final = Profile(
    name="raw",
    template=None,
    signing=StandardWebhooksSigning(),
    key_source="whsec",
    standard_headers=False,  # Host, Content-Length and the signature headers only
    test_event=_TEST_EVENT,
    retry=SVIX_SCHEDULE,
)
