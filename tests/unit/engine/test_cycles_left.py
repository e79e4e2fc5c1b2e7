"""tests.helpers.cycles_left, the check the routing's tests rely on: it reports a cycle of the daemon's objects that the
block builds and lets go, and never one that existed before the block and is let go inside it (an earlier test's
garbage whose last reference the session's event loop drops during a later test's check). Pure: a real Routing."""

from __future__ import annotations

import base64

from daemon.core.validate import parse_config
from daemon.engine.routing import Routing
from tests.helpers import cycles_left

SECRET = "whsec_" + base64.b64encode(b"cycles-left-test-secret-012345").decode()
RAW = {
    "kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"},
    "endpoints": [{"id": "ep", "url": "https://h.example.com/in", "secret": SECRET}],
    "subscriptions": [{"endpoint": "ep", "events": ["*"]}],
}


def cyclic() -> Routing:
    """A routing whose table cached an answer that points back at it: a cycle only the collector frees (the daemon's
    own, let go by ``retire``; should it ever go, these tests need another cycle of the daemon's types)."""
    routing = Routing(parse_config(RAW, {}), {})
    assert routing.table.match("t", "x").select(lambda: {}) == ("ep",)
    return routing


def test_a_cycle_the_block_builds_and_lets_go_is_reported() -> None:
    with cycles_left() as kept:
        routing = cyclic()
        del routing
    assert "RoutingTable" in kept and "Match" in kept


def test_a_cycle_built_before_the_block_and_let_go_inside_it_is_not_the_blocks() -> None:
    held = [cyclic()]  # as the event loop holds an earlier test's last reference until one of the next test's awaits
    with cycles_left() as kept:
        held.clear()
        routing = Routing(parse_config(RAW, {}), {})  # built and let go without a cycle
        del routing
    assert kept == []
