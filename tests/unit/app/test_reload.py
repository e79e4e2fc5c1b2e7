"""daemon.app.reload.let_go: the routing a reload swapped out is taken apart in a thread only when nothing else holds
it (a request that took the routing before the swap reads it whole). Pure: a real Routing, no Kafka, no HTTP."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from daemon.app.reload import let_go, reloaded
from daemon.core.config import EndpointConfig, SubscriptionConfig
from daemon.core.errors import ConfigError
from daemon.core.validate import parse_config
from daemon.engine.routing import Routing
from tests.helpers import cycles_left

SECRET = "whsec_" + base64.b64encode(b"reload-test-secret-0123456789ab").decode()
RAW = {"kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"}}


def routing_of(count: int, run_time: int = 5) -> Routing:
    """``count`` endpoints of the config file (the routing's own part) and ``run_time`` put at run time (shared)."""
    raw = {
        **RAW,
        "endpoints": [{"id": f"ep_{i}", "url": f"https://h{i}.example.com/in", "secret": SECRET} for i in range(count)],
        "subscriptions": [{"endpoint": f"ep_{i}", "events": ["*"]} for i in range(count)],
    }
    routing = Routing(parse_config(raw, {}), {})
    for i in range(run_time):
        config = EndpointConfig(id=f"api_{i}", url=f"https://a{i}.example.com/in", secret=SECRET)
        routing.put(config, SubscriptionConfig(endpoint=f"api_{i}", events=["*"]))
    return routing


EVERY = (*(f"ep_{i}" for i in range(50)), *(f"api_{i}" for i in range(5)))


async def test_a_routing_nothing_else_holds_is_taken_apart_and_what_it_shares_is_left_whole() -> None:
    swapped = [routing_of(50)]
    watched = swapped[0].table.file  # its own table, not the routing: the routing itself is let go of
    shared = swapped[0].run_time
    await let_go(swapped)
    assert swapped == [] and watched.match("t", "x").endpoints == ()
    assert len(shared) == 5 and shared.table.match("t", "x").endpoints == tuple(f"api_{i}" for i in range(5))
    shared.table.retire()  # its cached answer points back at it: a cycle, in the daemon shared with the routing in use


async def test_a_routing_still_held_elsewhere_is_left_whole() -> None:
    routing = routing_of(50)
    await let_go([routing])  # this test still holds it, as a request under way would
    assert len(routing.dynamic) == 5 and len(routing.endpoints) == 55
    assert routing.table.match("t", "x").select(lambda: {}) == EVERY
    # The run-time table cached that answer, which points back at it: in the daemon that table is shared with the
    # routing in use, here nothing else holds it; its cycle (RoutingTable, Match...) is let go here rather than left to
    # the collector.
    routing.table.run_time.retire()


async def test_a_routing_still_held_elsewhere_has_no_cycle_left_once_its_last_holder_lets_go() -> None:
    """Its cached matches point back at its tables: a cycle, and a frozen one is never collected (its routes kept for
    good). ``let_go`` empties the caches even when it leaves the routing whole, and they keep nothing more while its
    last holder reads on, so that holder frees it alone."""
    with cycles_left() as kept:
        routing = routing_of(50)
        kept_alive = Routing(routing.config, {}, routing)  # the routing in use, sharing the run-time endpoints
        assert routing.table.match("t", "x").select(lambda: {}) == EVERY  # one cached
        await let_go([routing])  # still held here, as a replay under way holds it
        assert len(routing.dynamic) == 5 and len(routing.endpoints) == 55  # left whole
        assert routing.table.match("t", "y").select(lambda: {}) == EVERY  # the replay reads on: nothing kept
        del routing
    assert kept == []
    assert len(kept_alive.endpoints) == 55


async def test_a_reload_whose_file_takes_the_id_of_an_endpoint_of_the_api_is_refused_naming_the_field(
    tmp_path: Path,
) -> None:
    """Its retries, pause and failures are kept by the id: the tenant's would become the platform's. The running
    routing is left as it was."""
    routing = routing_of(1, run_time=3)
    path = tmp_path / "router.toml"
    path.write_text(
        '[kafka]\nbootstrap_servers = "k:9092"\ngroup_id = "g"\ntopics = ["t"]\nresults_topic = "r"\n'
        f'[[endpoints]]\nid = "ep_0"\nurl = "https://h0.example.com/in"\nsecret = "{SECRET}"\n'
        f'[[endpoints]]\nid = "api_2"\nurl = "https://p.example.com/in"\nsecret = "{SECRET}"\n'
    )
    with pytest.raises(ConfigError) as refused:
        await reloaded(path, {}, routing.config, routing)
    assert refused.value.errors == [
        "endpoints[1].id: 'api_2' is an endpoint of the endpoints API: give this one another id, "
        "or delete that one first"
    ]
    assert routing.endpoints["api_2"].managed == "api" and len(routing.endpoints) == 4
