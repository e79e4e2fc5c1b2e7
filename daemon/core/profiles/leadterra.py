"""Leadterra (seed 001): ``{event, timestamp, data}``; https only; known event types only; 10 s; a fixed schedule."""

from __future__ import annotations

from typing import Final

from daemon.core.policy import EVERY_FAILURE, Policy
from daemon.core.profiles.base import Profile, Unsigned
from daemon.core.profiles.template import Template

EVENTS: Final = frozenset({"campaign.started", "message.sent", "message.bounced", "reply.received"})

LEADTERRA: Final = Profile(
    name="leadterra",
    template=Template({"event": "$type", "timestamp": "timestamp|$time.iso", "data": "data|$rest"}),
    signing=Unsigned(),
    key_source="optional",
    timeout_s=10.0,
    max_timeout_s=10.0,
    catalogue=EVENTS,
    https_only=True,
    needs_events=True,
    # "Any non-2xx response or a timeout is treated as a delivery failure and triggers the retry schedule."
    retry=Policy("schedule", delays_s=(30, 300, 1800, 7200, 28800)),
    statuses=EVERY_FAILURE,
    test_event={"event": "ping", "data": {"message": "test delivery from webhook-router"}},
)
