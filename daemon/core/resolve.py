"""The endpoints and subscriptions a config stands for: its own, and those its profiles expand (organisations)."""

from __future__ import annotations

import msgspec

from daemon.core.config import Config, EndpointConfig, SubscriptionConfig
from daemon.core.profiles import EXPANSIONS


class Resolved(msgspec.Struct, frozen=True):
    """Endpoints and subscriptions with organisations and campaigns expanded into them."""

    endpoints: list[EndpointConfig]
    subscriptions: list[SubscriptionConfig]


def resolve(config: Config) -> Resolved:
    """Once per config, never per event."""
    endpoints = list(config.endpoints)
    subscriptions = list(config.subscriptions)
    for expansion in EXPANSIONS:
        more_endpoints, more_subscriptions = expansion.expand(config)
        endpoints += more_endpoints
        subscriptions += more_subscriptions
    return Resolved(endpoints, subscriptions)
