"""The CRM (seed 004): ``{id_space, event, secret, payload}`` with the secret injected; paused after 10 failures."""

from __future__ import annotations

from typing import Final

from daemon.core.policy import EVERY_FAILURE, Policy
from daemon.core.profiles.base import Profile, Unsigned
from daemon.core.profiles.template import Template

EVENTS: Final = frozenset(
    {"lead.create", "lead.update", "lead.delete", "lead.status.update", "lead.list.update", "lead.tags.update"}
    | {"lead.track", "lead.task.create", "lead.task.update", "lead.task.delete", "lead.note.create"}
    | {"lead.note.update", "lead.note.delete", "campaign.create", "campaign.update", "campaign.delete"}
    | {"list.create", "list.update", "list.delete", "status.create", "status.update", "status.delete"}
    | {"tag.create", "tag.update", "tag.delete"}
)

CRM: Final = Profile(
    name="crm",
    template=Template(
        {
            "id_space": "id_space|payload.id_space",
            "event": "$type",
            "secret": "$secret",
            "payload": "payload|$rest:secret",
        }
    ),
    signing=Unsigned(),
    key_source="text",
    timeout_s=10.0,
    catalogue=EVENTS,
    test_event={"event": "ping", "payload": {}},
    injects_secret=True,
    retry=Policy("none"),  # "There is no retry policy"
    statuses=EVERY_FAILURE,  # every failure counts towards the pause; no single answer pauses
    pause_after_failures=10,  # "If the delivery of a webhook fails 10 times, the webhook endpoint will be paused"
)
