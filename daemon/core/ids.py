"""The ids the router gives deliveries and attempts."""

from __future__ import annotations

import hashlib
import itertools
import secrets


def delivery_id(event_key: str, endpoint_id: str) -> str:
    """The id of one (event, endpoint) pair, sent as ``webhook-id``: the same across attempts, retries, restarts,
    redeliveries and replays of that event to that endpoint, and different for every other event (``event_key``
    is the event's identity, ``daemon.core.model.Event.key``)."""
    digest = hashlib.blake2b(f"{event_key}\0{endpoint_id}".encode(), digest_size=16)
    return "msg_" + digest.hexdigest()


_NONCE = secrets.token_hex(4)  # this process's; with the counter, no two results records share an attempt id


_ATTEMPTS = itertools.count(1)


def new_attempt_id(delivery: str, attempt: int) -> str:
    """A results record's own id: unique across attempts, retries, redeliveries, restarts and processes."""
    return f"{delivery}-{attempt}-{_NONCE}{next(_ATTEMPTS):x}"
