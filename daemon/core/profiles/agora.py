"""Agora (seed 000): a flat body, ``X-Agora-*`` headers, 10 s, one retry for live events only, bulk batches once.

``X-Agora-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`` keyed with the endpoint secret,
``X-Agora-Event: <type>``, ``X-Agora-Delivery: {endpoint_id}-{attempt}-{unix_ts}``. A bulk batch is
delivered once as ``leads.bulk_created``; its per-lead ``lead.created`` events are never delivered beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from daemon.core.policy import EVERY_FAILURE, Policy
from daemon.core.profiles.base import Profile, Skip
from daemon.core.profiles.template import Template
from daemon.core.sign import hmac_sha256_hex

EVENTS: Final = frozenset(
    {"lead.created", "leads.bulk_created", "lead.status_changed", "lead.converted", "call.started"}
    | {"call.completed", "form.submitted", "ping"}
)


class _Signer:
    """One endpoint's signing, keys prepared once. ``__slots__``: used per request (the hot path)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def headers(self, delivery_id: str, wire_id: str | None, event_type: str, body: bytes, ts: int) -> dict[str, str]:
        return {
            "X-Agora-Signature-256": "sha256=" + hmac_sha256_hex(self._key, body),
            "X-Agora-Event": event_type,
            "X-Agora-Delivery": wire_id or "",
        }


class AgoraSigning:
    headers_owned: Final = frozenset({"x-agora-signature-256", "x-agora-event", "x-agora-delivery"})

    def signer(self, secrets: Sequence[str]) -> _Signer:
        return _Signer(secrets[0].encode() if secrets else b"")

    def wire_id(self, endpoint_id: str, delivery_id: str, attempt: int, ts: int) -> str | None:
        return f"{endpoint_id}-{attempt}-{ts}"  # X-Agora-Delivery: {endpoint_id}-{attempt}-{unix_ts}


AGORA: Final = Profile(
    name="agora",
    template=Template({"event": "$type", "...": "$rest", "timestamp": "timestamp|$time.iso"}),
    signing=AgoraSigning(),
    key_source="text",
    timeout_s=10.0,
    max_timeout_s=10.0,
    catalogue=EVENTS,
    test_event={"event": "ping"},
    # "Automatic retry: once, on non-2xx or timeout — live events only"; the contract pauses on nothing.
    retry=Policy("once", delays_s=(60,), live_only=True),
    statuses=EVERY_FAILURE,
    skips=(
        Skip(
            status="skipped_bulk_item",
            types=frozenset({"lead.created"}),
            path="batch_id",
            values=None,
            reason="part of a bulk batch: delivered once as leads.bulk_created",
        ),
    ),
)
