"""A reload (SIGHUP): the new config and its routing built beside the running ones, off the event loop, and what a
swap brings up to date (the config file's pauses, the routing's gauges). What a reload may change is
``daemon.core.reload``'s rule."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from daemon.core.config import Config
from daemon.core.errors import ConfigError
from daemon.core.reload import refused
from daemon.core.validate import load_config
from daemon.engine.health import Health
from daemon.engine.routing import Routing
from daemon.observe.metrics import Metrics


async def reloaded(
    path: str | Path, environ: Mapping[str, str], running: Config, routing: Routing
) -> tuple[Config, Routing]:
    """The config at ``path`` and its routing, ready to swap in; ConfigError (every fault, or what a reload may not
    change) leaves the running ones alone. The routing is built in a thread (100,000 endpoints take seconds; the loop
    keeps answering), then brought up to date on the loop with the run-time changes applied meanwhile."""
    new = await asyncio.to_thread(load_config, path, dict(environ))
    refusals = refused(running, new)
    if refusals:
        raise ConfigError(refusals)
    built = await asyncio.to_thread(Routing, new, environ, routing, routing.run_time())
    built.catch_up(routing)
    return new, built


def follow_config_pauses(health: Health, old: Routing | None, new: Routing) -> None:
    """The config file's ``paused`` flags, as they are now, applied to endpoint health."""
    was = old.endpoints.file_configs() if old is not None else {}
    for endpoint_id, config in new.endpoints.file_configs().items():
        before = was.get(endpoint_id)
        health.follow_config(endpoint_id, config.paused, before is not None and before.paused)


def count_routing(metrics: Metrics, routing: Routing) -> None:
    metrics.endpoints.set(len(routing.endpoints))
    metrics.subscriptions.set(routing.subscriptions)
