"""daemon.engine.routing with the endpoints of the topic kept sealed (``daemon.core.registry.Sealed``): what an idle
one holds, and that the endpoint built from it, carried over a reload, listed or dropped, is the one its opened
config gives. Pure: no Kafka, no HTTP."""

from __future__ import annotations

import base64
import os

import pytest

from daemon.core.config import EndpointConfig
from daemon.core.match import RoutingTable
from daemon.core.registry import Directory, EndpointRecord, Sealed, endpoint_key, routed, sealed_record, signed
from daemon.core.secretbox import Keyring
from daemon.core.validate import parse_config
from daemon.engine.routing import Routing
from tests.helpers import cycles_left

SECRET = "whsec_" + base64.b64encode(b"routing-test-secret-0123456789").decode()
RAW = {
    "kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"},
    "endpoints": [{"id": "file-1", "url": "https://file.example.com/in", "secret": SECRET}],
    "subscriptions": [{"endpoint": "file-1", "events": ["*"]}],
}


def record(keyring: Keyring, i: int, version: int = 1, **settings: object) -> EndpointRecord:
    written = sealed_record(
        keyring, endpoint_id=f"api-{i}", tenant=f"t-{i % 3}", version=version, created_at=None,
        url=f"https://h{i}.example.com/in?v={version}", headers={"X-Token": f"tok-{i}"}, secrets=[(SECRET, None)],
        events=[f"lead.{i}", "call.*"], topics=None, where=None, description=None, settings=settings,
    )  # fmt: skip
    directory = Directory(keyring)
    directory.apply(endpoint_key(written.id), signed(written, keyring))  # as the topic gives it back: verified
    return directory.endpoints[written.id]


def put(routing: Routing, keyring: Keyring, held: EndpointRecord) -> EndpointConfig:
    config, subscription = routed(held, keyring, "tenant")
    routing.put(config, subscription, Sealed(held, keyring))
    return config


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(os.urandom(32))


def test_an_idle_endpoint_of_the_topic_is_kept_sealed_and_built_as_its_opened_config_would_be(keyring: Keyring) -> None:
    routing = Routing(parse_config(RAW, {}), {})
    configs = {i: put(routing, keyring, record(keyring, i, max_concurrency=3)) for i in range(5)}
    assert all(isinstance(routing.endpoints.held(f"api-{i}"), EndpointRecord) for i in range(5))  # no handle each
    assert isinstance(routing.endpoints.held("file-1"), EndpointConfig)  # the file's are not sealed
    assert routing.endpoints.built == 0 and len(routing.endpoints) == 6 and "api-4" in routing.endpoints
    built = routing.endpoints["api-2"]
    assert built.config == configs[2] and built.managed == "api" and str(built.url) == "https://h2.example.com/in?v=1"
    assert built.max_concurrency == 3 and built.secret == SECRET
    assert routing.endpoints.configs["api-3"] == configs[3]  # read by id: opened then
    assert dict(routing.endpoints.configs) == {"file-1": routing.endpoints.configs["file-1"], **{
        f"api-{i}": configs[i] for i in range(5)}}  # fmt: skip
    assert routing.endpoints.file_configs().keys() == {"file-1"}
    assert routing.tenant_of("api-4") == "t-1" and routing.tenant_of("file-1") is None
    assert routing.table.match("t", "lead.2").select(lambda: {"tenant": "t-2"}) == ("file-1", "api-2")


def test_a_changed_record_lets_its_built_endpoint_go_and_the_next_one_is_built_from_the_new_record(
    keyring: Keyring,
) -> None:
    routing = Routing(parse_config(RAW, {}), {})
    put(routing, keyring, record(keyring, 1))
    before = routing.endpoints["api-1"]
    put(routing, keyring, record(keyring, 1))  # the same settings again: a new record, the same config
    assert routing.endpoints["api-1"] is before
    put(routing, keyring, record(keyring, 1, version=2))
    after = routing.endpoints["api-1"]
    assert after is not before and str(after.url) == "https://h1.example.com/in?v=2"
    routing.drop("api-1")
    assert "api-1" not in routing.endpoints and routing.endpoints.held("api-1") is None
    assert routing.table.match("t", "lead.1").select(lambda: {"tenant": "t-1"}) == ("file-1",)


def test_a_reload_shares_the_run_time_endpoints_unopened_and_uncopied_and_sees_what_changes_meanwhile(
    keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload builds the config file's part alone: the run-time endpoints (a million of the topic) and their routes
    are the running routing's own maps, not copies (a second routing of a million built beside the first took 12-15 s
    and left the process 420 MiB larger); a change made on the running routing while the new one is built is the new
    one's at once, with nothing to catch up."""
    routing = Routing(parse_config(RAW, {}), {})
    for i in range(4):
        put(routing, keyring, record(keyring, i))
    opened: list[str] = []
    real_open = Sealed.open

    def counted(self: Sealed) -> EndpointConfig:
        opened.append(self.id)
        return real_open(self)

    monkeypatch.setattr(Sealed, "open", counted)
    raw = {
        **RAW,
        "endpoints": [*RAW["endpoints"], {"id": "file-2", "url": "https://f2.example.com/", "secret": SECRET}],
    }
    reloaded = Routing(parse_config(raw, {}), {}, routing)
    assert opened == [] and reloaded.run_time is routing.run_time and reloaded.dynamic is routing.dynamic
    assert reloaded.table.run_time is routing.table.run_time and reloaded.table.file is not routing.table.file
    put(routing, keyring, record(keyring, 2, version=2))  # on the running routing, while the new one was built
    routing.drop("api-3")
    put(routing, keyring, record(keyring, 4))
    assert opened == [] and "api-3" not in reloaded.endpoints and "api-4" in reloaded.endpoints
    assert str(reloaded.endpoints["api-2"].url) == "https://h2.example.com/in?v=2" and opened == ["api-2"]
    assert reloaded.table.match("t", "lead.0").select(lambda: {"tenant": "t-0"}) == ("file-1", "api-0")
    assert reloaded.table.match("t", "lead.4").select(lambda: {"tenant": "t-1"}) == ("file-1", "api-4")
    assert routing.table.match("t", "lead.4").select(lambda: {"tenant": "t-1"}) == ("file-1", "api-4")
    assert len(reloaded.endpoints) == 6 and len(routing.endpoints) == 5  # file-2 is the new routing's alone
    assert set(reloaded.endpoints) == {"file-1", "file-2", "api-0", "api-1", "api-2", "api-4"}


def test_the_ids_a_new_config_file_would_take_from_run_time_endpoints_are_found_and_found_again_before_the_swap(
    keyring: Keyring,
) -> None:
    """A reload whose file defines the id of an endpoint of the API is refused (``daemon.app.reload``): a retry, a pause
    or a failure count is kept by the id. The new routing looks for such ids in the reload's thread; one put on the
    running routing meanwhile is found when it looks again, on the loop; nothing of the running routing changes."""
    routing = Routing(parse_config(RAW, {}), {})
    for i in range(3):
        put(routing, keyring, record(keyring, i))
    named = [{"id": f"api-{i}", "url": f"https://f{i}.example.com/", "secret": SECRET} for i in (1, 4)]
    taken = {**RAW, "endpoints": [*RAW["endpoints"], *named]}
    reloaded = Routing(parse_config(taken, {}), {}, routing)
    assert reloaded.taken() == ["api-1"]
    put(routing, keyring, record(keyring, 4))  # after the thread looked
    assert sorted(reloaded.taken()) == ["api-1", "api-4"]
    routing.drop("api-1")
    assert reloaded.taken() == ["api-4"]
    assert routing.table.match("t", "lead.4").select(lambda: {"tenant": "t-1"}) == ("file-1", "api-4")
    assert routing.endpoints["api-4"].managed == "api" and routing.tenant_of("api-4") == "t-1"


def test_a_put_that_fails_half_way_moves_the_version_on_all_the_same(
    keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload's thread that looked before a put, or while it changed the maps, must look again."""
    routing = Routing(parse_config(RAW, {}), {})
    before = routing.run_time.version

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("half-way")

    monkeypatch.setattr(RoutingTable, "add", broken)
    with pytest.raises(RuntimeError):
        put(routing, keyring, record(keyring, 1))
    assert routing.run_time.version >= before + 2 and "api-1" in routing.endpoints


def test_a_routing_let_go_is_freed_by_its_references_alone(keyring: Keyring) -> None:
    """The first read's state is frozen (``gc.freeze``: out of the cyclic collector's reach, so that its full passes
    do not stop the loop): a cycle in a routing swapped out would be kept for good. Its cached answers point back at
    its tables (``let_go`` lets them go first); the run-time endpoints it shared live on in the routing in use."""
    config = parse_config(RAW, {})
    with cycles_left() as kept:
        routing = Routing(config, {})
        for i in range(20):
            put(routing, keyring, record(keyring, i))
        swapped = Routing(config, {}, routing)
        for i in range(20, 25):
            put(swapped, keyring, record(keyring, i))
        swapped.endpoints["api-3"]  # one built, as a delivery builds it
        assert swapped.table.match("t", "lead.3").select(lambda: {"tenant": "t-0"}) == ("file-1", "api-3")
        assert swapped.table.match("t", "lead.21").select(lambda: {"tenant": "t-0"}) == ("file-1", "api-21")
        assert dict(swapped.endpoints.configs).keys() == {"file-1", *(f"api-{i}" for i in range(25))}
        routing = Routing(config, {}, swapped)
        assert routing.table.match("t", "lead.3").select(lambda: {"tenant": "t-0"}) == ("file-1", "api-3")
        swapped.table.retire()  # as let_go does
        del swapped
    assert kept == []
    assert len(routing.endpoints) == 26


def test_a_routing_swapped_out_is_taken_apart_and_the_one_in_use_keeps_all_it_shares_with_it(
    keyring: Keyring,
) -> None:
    """``take_apart`` (in a thread, after a reload) empties the old routing's own part, the file's endpoints and
    routes; the run-time endpoints and their routes, the built endpoints and the tally it shares with the new one are
    left whole."""
    config = parse_config(RAW, {})
    routing = Routing(config, {})
    for i in range(40):
        held = record(keyring, i)
        if i % 2:
            put(routing, keyring, held)
        else:  # unscoped (no tenant field): in the table's index of every event
            unscoped, subscription = routed(held, keyring, None)
            routing.put(unscoped, subscription, Sealed(held, keyring))
    built = routing.endpoints["api-3"]
    reloaded = Routing(config, {}, routing)
    assert reloaded.endpoints.adopt(built)
    routing.take_apart()
    assert "file-1" not in routing.endpoints.file_configs()  # its own part emptied
    assert routing.table.file.match("t", "lead.3").endpoints == ()
    assert len(reloaded.dynamic) == 40 and len(reloaded.endpoints) == 41
    assert (
        reloaded.endpoints["api-3"] is built and str(reloaded.endpoints["api-8"].url) == "https://h8.example.com/in?v=1"
    )
    assert reloaded.table.match("t", "lead.3").select(lambda: {"tenant": "t-0"}) == ("file-1", "api-3")
    assert reloaded.table.match("t", "lead.4").select(lambda: {"tenant": "t-9"}) == ("file-1", "api-4")
    assert set(reloaded.table.match("t", "call.x").select(lambda: {"tenant": "t-1"})) == {
        "file-1", *(f"api-{i}" for i in range(40) if i % 2 == 0 or i % 3 == 1)}  # fmt: skip


def test_the_records_are_opened_with_the_routings_one_keyring_and_one_of_another_is_refused(keyring: Keyring) -> None:
    """A record is kept without a handle of its own (48 bytes an endpoint): every record of a routing is opened with
    its one keyring, the API's secrets key; a record sealed under another is refused, not opened with the wrong key."""
    routing = Routing(parse_config(RAW, {}), {})
    put(routing, keyring, record(keyring, 1))
    assert routing.endpoints.keyring is keyring
    other = Keyring(os.urandom(32))
    with pytest.raises(ValueError, match="another keyring"):
        put(routing, other, record(other, 2))
    assert "api-2" not in routing.endpoints and str(routing.endpoints["api-1"].url) == "https://h1.example.com/in?v=1"


def test_the_first_sealed_record_put_while_a_reload_builds_is_opened_by_the_new_routing(keyring: Keyring) -> None:
    """The keyring is the run-time endpoints' own, shared: the first sealed record may come while a reload builds (an
    endpoints topic empty until then), and the new routing opens it."""
    routing = Routing(parse_config(RAW, {}), {})
    reloaded = Routing(parse_config(RAW, {}), {}, routing)
    put(routing, keyring, record(keyring, 1))
    assert reloaded.endpoints.keyring is keyring
    assert str(reloaded.endpoints["api-1"].url) == "https://h1.example.com/in?v=1"
