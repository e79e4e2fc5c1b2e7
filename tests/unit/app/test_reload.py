"""daemon.app.reload.let_go: the routing a reload swapped out is taken apart in a thread only when nothing else holds
it (a request that took the routing before the swap reads it whole). Pure: a real Routing, no Kafka, no HTTP."""

from __future__ import annotations

import base64

from daemon.app.reload import let_go
from daemon.core.config import EndpointConfig, SubscriptionConfig
from daemon.core.validate import parse_config
from daemon.engine.routing import Routing
from tests.helpers import cycles_left

SECRET = "whsec_" + base64.b64encode(b"reload-test-secret-0123456789ab").decode()
RAW = {"kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"}}


def routing_of(count: int) -> Routing:
    routing = Routing(parse_config(RAW, {}), {})
    for i in range(count):
        config = EndpointConfig(id=f"ep_{i}", url=f"https://h{i}.example.com/in", secret=SECRET)
        routing.put(config, SubscriptionConfig(endpoint=f"ep_{i}", events=["*"]))
    return routing


async def test_a_routing_nothing_else_holds_is_taken_apart() -> None:
    swapped = [routing_of(50)]
    watched = swapped[0].dynamic  # its map, not the routing: the routing itself is let go of
    await let_go(swapped)
    assert swapped == [] and len(watched) == 0


async def test_a_routing_still_held_elsewhere_is_left_whole() -> None:
    routing = routing_of(50)
    await let_go([routing])  # this test still holds it, as a request under way would
    assert len(routing.dynamic) == 50 and len(routing.endpoints) == 50
    assert routing.table.match("t", "x").select(lambda: {}) == tuple(f"ep_{i}" for i in range(50))


async def test_a_routing_still_held_elsewhere_has_no_cycle_left_once_its_last_holder_lets_go() -> None:
    """Its cached matches point back at its table: a cycle, and a frozen one is never collected (its routes kept for
    good). ``let_go`` empties the caches even when it leaves the routing whole, so its last holder frees it alone."""
    routing = routing_of(50)
    assert routing.table.match("t", "x").select(lambda: {}) == tuple(f"ep_{i}" for i in range(50))  # one cached
    with cycles_left() as kept:
        await let_go([routing])  # still held here, as a replay under way holds it
        assert len(routing.dynamic) == 50 and len(routing.endpoints) == 50  # left whole
        del routing
    assert kept == []
