"""The campaign lead router (seed 003): ``{event, leadId, submissionId, campaignId, status, timestamp, data}``.

Its customers configure organisations, not endpoints: organisation-level settings (enabled, URL, events,
custom headers, retry attempts 1-10, timeout 1-120 s) are inherited by each campaign unless the campaign
overrides them; for an event both configure, the campaign's URL and headers win; a disabled campaign
gets nothing. ``Organizations`` resolves that into plain endpoints (``acme``, ``acme:ABC``) and
subscriptions once per config, never per event.
"""

from __future__ import annotations

from typing import Final

import msgspec

from daemon.core.config import (
    Config,
    EndpointConfig,
    EndpointRetryConfig,
    OrganizationConfig,
    SubscriptionConfig,
    WhereConfig,
)
from daemon.core.policy import EVERY_FAILURE, Policy
from daemon.core.profiles.base import Checks, Profile, Unsigned, pattern_matches
from daemon.core.profiles.template import Template

EVENTS: Final = frozenset(
    {"lead.delivered", "lead.disqualified", "lead.failed", "lead.queued", "lead.first_submission_action"}
    | {"lead.processed"}
)


class Organizations:
    """The ``[[organizations]]`` part of a config, resolved into endpoints and subscriptions."""

    def expand(self, config: Config) -> tuple[list[EndpointConfig], list[SubscriptionConfig]]:
        """Per campaign: a disabled campaign gets nothing; a campaign's own endpoint (its URL, headers and
        limits, each inherited where it sets none) gets the events it configures (or inherits); the
        organisation's endpoint gets the rest of the organisation's events for that campaign. An event
        both configure goes to the campaign's URL only."""
        endpoints: list[EndpointConfig] = []
        subscriptions: list[SubscriptionConfig] = []
        for org in config.organizations:
            endpoints.append(_org_endpoint(org))
            # Each event type the organisation asks for -> the campaigns that take it away from the
            # organisation's endpoint (patterns expanded over the catalogue: a wildcard is claimed type by type).
            org_types = _expand(org.events)
            claimed: dict[str, list[str]] = {t: [] for t in org_types}
            for camp in org.campaigns:
                enabled = org.enabled if camp.enabled is None else camp.enabled
                own_events = camp.events if camp.events is not None else org.events
                own_types = _expand(own_events)
                for event_type in org_types:
                    if not enabled or event_type in own_types:
                        claimed[event_type].append(camp.id)
                if not enabled:
                    continue
                camp_id = f"{org.id}:{camp.id}"
                endpoints.append(
                    EndpointConfig(
                        id=camp_id,
                        url=camp.url or org.url,
                        profile="campaign",
                        timeout_s=camp.timeout_s or org.timeout_s,
                        max_concurrency=org.max_concurrency,
                        headers=camp.headers if camp.headers is not None else org.headers,
                        allow_http=org.allow_http,
                        retry=_retry(camp.retry_attempts or org.retry_attempts, org),
                    )
                )
                subscriptions.append(
                    SubscriptionConfig(
                        endpoint=camp_id,
                        events=list(own_events),
                        topics=org.topics,
                        where=WhereConfig(field=org.campaign_field, one_of=[camp.id]),
                    )
                )
            if not org.enabled:
                continue
            for event_type in sorted(claimed):
                campaigns = claimed[event_type]
                subscriptions.append(
                    SubscriptionConfig(
                        endpoint=org.id,
                        events=[event_type],
                        topics=org.topics,
                        where=WhereConfig(field=org.campaign_field, none_of=campaigns) if campaigns else None,
                    )
                )
        return endpoints, subscriptions

    def check(self, config: Config, checks: Checks) -> None:
        for i, org in enumerate(config.organizations):
            path = f"organizations[{i}]"
            checks.endpoint_id(_org_endpoint(org), f"{path}.id")
            checks.url(org.url, org.allow_http, False, f"{path}.url")
            checks.headers(org.headers, CAMPAIGN, f"{path}.headers")
            checks.events(org.events, CAMPAIGN, f"{path}.events")
            checks.topics(org.topics, path)
            campaign_ids: set[str] = set()
            for j, camp in enumerate(org.campaigns):
                where = f"{path}.campaigns[{j}]"
                if camp.id in campaign_ids:
                    checks.fault(f"{where}.id", f"duplicate campaign id {camp.id!r}")
                else:
                    endpoint = msgspec.structs.replace(_org_endpoint(org), id=f"{org.id}:{camp.id}")
                    checks.endpoint_id(endpoint, f"{where}.id")
                campaign_ids.add(camp.id)
                if camp.url is not None:
                    checks.url(camp.url, org.allow_http, False, f"{where}.url")
                if camp.headers is not None:
                    checks.headers(camp.headers, CAMPAIGN, f"{where}.headers")
                if camp.events is not None:
                    checks.events(camp.events, CAMPAIGN, f"{where}.events")


def _org_endpoint(org: OrganizationConfig) -> EndpointConfig:
    return EndpointConfig(
        id=org.id,
        url=org.url,
        profile="campaign",
        timeout_s=org.timeout_s,
        max_concurrency=org.max_concurrency,
        headers=org.headers,
        allow_http=org.allow_http,
        retry=_retry(org.retry_attempts, org),
    )


def _retry(retries: int, org: OrganizationConfig) -> EndpointRetryConfig:
    return EndpointRetryConfig(policy="exponential", retries=retries, base_s=org.retry_base_s, max_s=org.retry_max_s)


def _expand(patterns: list[str]) -> set[str]:
    """The catalogue's event types that any of ``patterns`` matches."""
    return {t for t in EVENTS if any(pattern_matches(p, t) for p in patterns)}


CAMPAIGN: Final = Profile(
    name="campaign",
    template=Template(
        {
            "event": "$type",
            "leadId": "leadId",
            "submissionId": "submissionId",
            "campaignId": "campaignId",
            "status": "status",
            "timestamp": "timestamp|$time.iso",
            "data": "data|$rest",
        }
    ),
    signing=Unsigned(),
    key_source="optional",
    timeout_s=10.0,
    catalogue=EVENTS,
    test_event={"event": "ping", "status": "test", "data": {}},
    # "Failed webhook deliveries are retried with exponential backoff up to the configured retry limit."
    retry=Policy("exponential", attempts=4, base_s=30, max_s=7200, jitter=0.2),
    statuses=EVERY_FAILURE,
    expansion=Organizations(),
)
