"""Convocore (seed 002): ``{type, payload: {..., createdAt (ms), workspaceSecret}}``; 60 s; never retried.

The secret goes inside each payload (that is how receivers verify). Convocore-only events from a
VoiceFlow agent (``agentPlatform = "vf"``) are never delivered.
"""

from __future__ import annotations

from typing import Final

from daemon.core.policy import EVERY_FAILURE, Policy
from daemon.core.profiles.base import Profile, Skip, Unsigned
from daemon.core.profiles.template import Template

EVENTS: Final = frozenset(
    {"message_received", "chat_delegated", "bug_reported", "agent_created", "agent_updated", "agent_deleted"}
    | {"webhook_test", "lead_captured", "form_submitted", "organisation_created", "organisation_updated"}
    | {"organisation_deleted", "client_created", "client_updated", "client_deleted"}
)

CONVOCORE: Final = Profile(
    name="convocore",
    template=Template(
        {
            "type": "$type",
            "payload": {
                "...": "payload|$rest",
                "createdAt": "payload.createdAt|createdAt|$time.ms",
                "workspaceSecret": "$secret",
            },
        }
    ),
    signing=Unsigned(),
    key_source="text",
    timeout_s=60.0,
    max_timeout_s=60.0,
    catalogue=EVENTS,
    test_event={"type": "webhook_test", "payload": {"message": "This is a test event"}},
    retry=Policy("none"),  # "No automatic retry mechanism"
    statuses=EVERY_FAILURE,  # every failure is one (the policy leaves no retry); nothing pauses
    skips=(
        Skip(
            status="skipped_unsupported",
            types=frozenset({"lead_captured", "form_submitted"}),
            path="payload.agentPlatform|agentPlatform",
            values=frozenset({"vf"}),
            reason="Convocore-only event from a VoiceFlow (vf) agent",
        ),
    ),
    injects_secret=True,
)
