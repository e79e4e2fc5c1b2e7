"""A reload (SIGHUP): the new config and its routing built beside the running ones, off the event loop, and what a
swap brings up to date (the config file's pauses, the routing's gauges). What a reload may change is
``daemon.core.reload``'s rule."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

from daemon.core.config import Config
from daemon.core.errors import ConfigError
from daemon.core.heap import give_back, no_full_collections
from daemon.core.reload import refused
from daemon.core.validate import load_config
from daemon.engine.health import Health
from daemon.engine.routing import Routing
from daemon.observe.metrics import Metrics

_NAMED = 10  # ids named in a refusal


async def reloaded(
    path: str | Path, environ: Mapping[str, str], running: Config, routing: Routing
) -> tuple[Config, Routing]:
    """The config at ``path`` and its routing, ready to swap in; ConfigError (every fault, or what a reload may not
    change) leaves the running ones alone. The routing of the config file's endpoints is built in a thread (100,000
    endpoints take seconds; the loop keeps answering); the endpoints managed at run time are the running routing's,
    shared, not copied (``daemon.engine.routing.RunTimeEndpoints``): what they changed meanwhile is already there."""
    new = await asyncio.to_thread(load_config, path, dict(environ))
    refusals = refused(running, new)
    if refusals:
        raise ConfigError(refusals)
    built = await asyncio.to_thread(_built, new, environ, routing)
    taken = built.taken()  # on the loop, with nothing awaited before the swap: an endpoint put meanwhile is seen
    if taken:
        raise ConfigError([_taken_id(new, routing, endpoint_id) for endpoint_id in sorted(taken)[:_NAMED]])
    return new, built


def _taken_id(config: Config, running: Routing, endpoint_id: str) -> str:
    """The refusal of one id the new config file would take from an endpoint of the API, naming its field."""
    indexes = [i for i, endpoint in enumerate(config.endpoints) if endpoint.id == endpoint_id]
    field = f"endpoints[{indexes[0]}].id" if indexes else "endpoints"
    tenant = running.tenant_of(endpoint_id)
    whose = f" (tenant {tenant})" if tenant is not None else ""
    return (f"{field}: {endpoint_id!r} is an endpoint of the endpoints API{whose}: give this one another "
            "id, or delete that one first")  # fmt: skip


def _built(config: Config, environ: Mapping[str, str], previous: Routing) -> Routing:
    """The routing of ``config`` (in a thread), with no full collection while it is built (``daemon.core.heap``): a
    full pass holds the interpreter from the loop for as long as it traverses what is live."""
    with no_full_collections():
        return Routing(config, environ, previous)


async def let_go(swapped: list[Routing]) -> None:
    """Free the routing a reload swapped out (``swapped``, its only item), in a thread and a piece at a time
    (``Routing.take_apart``): its own part, the config file's endpoints and routes (100,000 are seconds to free). Only
    when nothing else holds it (a request that took it before the swap reads it whole): otherwise it goes with its
    last reference, as before."""
    await asyncio.sleep(0)  # the reload's own references are gone by the next turn of the loop
    routing = swapped.pop()
    routing.table.retire()  # its cached matches point back at it: cycles, never collected once frozen
    alone = object()  # held as ``routing`` is, by this frame alone: the count of an object nothing else holds
    if sys.getrefcount(routing) > sys.getrefcount(alone):  # compared, not a number: counts differ between versions
        return
    await asyncio.to_thread(_taken_apart, routing)


def _taken_apart(routing: Routing) -> None:
    routing.take_apart()
    give_back()  # the routing's memory back to the system


def follow_config_pauses(health: Health, old: Routing | None, new: Routing) -> None:
    """The config file's ``paused`` flags, as they are now, applied to endpoint health."""
    was = old.endpoints.file_configs() if old is not None else {}
    for endpoint_id, config in new.endpoints.file_configs().items():
        before = was.get(endpoint_id)
        health.follow_config(endpoint_id, config.paused, before is not None and before.paused)


def count_routing(metrics: Metrics, routing: Routing) -> None:
    """The config file's subscriptions (the endpoints are read off the routing in use: ``Settlement.expose``)."""
    metrics.subscriptions.set(routing.subscriptions)
