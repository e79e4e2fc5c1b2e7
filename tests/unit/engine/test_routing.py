"""daemon.engine.routing with the endpoints of the topic kept sealed (``daemon.core.registry.Sealed``): what an idle
one holds, and that the endpoint built from it, carried over a reload, listed or dropped, is the one its opened
config gives. Pure: no Kafka, no HTTP."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest

from daemon.core.config import EndpointConfig
from daemon.core.registry import Directory, EndpointRecord, Sealed, endpoint_key, routed, sealed_record, signed
from daemon.core.secretbox import Keyring
from daemon.core.shards import PARTS as SHARDS
from daemon.core.shards import Shards
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


async def test_a_reload_carries_the_sealed_endpoints_over_unopened_and_catches_up_with_changes_made_meanwhile(
    keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = Routing(parse_config(RAW, {}), {})
    for i in range(4):
        put(routing, keyring, record(keyring, i))
    opened: list[str] = []
    real_open = Sealed.open

    def counted(self: Sealed) -> EndpointConfig:
        opened.append(self.id)
        return real_open(self)

    monkeypatch.setattr(Sealed, "open", counted)
    reloaded = Routing(parse_config(RAW, {}), {}, routing, await routing.copy_run_time())
    assert opened == [] and all(reloaded.endpoints.held(f"api-{i}") is routing.endpoints.held(f"api-{i}")
                                for i in range(4))  # fmt: skip
    put(routing, keyring, record(keyring, 2, version=2))  # while the new routing was built
    routing.drop("api-3")
    put(routing, keyring, record(keyring, 4))
    reloaded.catch_up(routing)
    assert opened == [] and "api-3" not in reloaded.endpoints and "api-4" in reloaded.endpoints
    assert str(reloaded.endpoints["api-2"].url) == "https://h2.example.com/in?v=2" and opened == ["api-2"]
    assert reloaded.table.match("t", "lead.0").select(lambda: {"tenant": "t-0"}) == ("file-1", "api-0")
    routing.drop("api-0")  # the routing swapped out records no more changes
    assert routing.changed is None and "api-0" in reloaded.endpoints


async def test_the_run_time_endpoints_are_copied_a_part_at_a_time_and_what_changes_between_parts_is_caught_up(
    keyring: Keyring,
) -> None:
    """The copy of a million endpoints is taken in parts with the loop going on between them (a SIGHUP at a million
    held /healthz 2.2 s when the pairs were listed in one step); what a put or a drop changes meanwhile, in a part
    copied already or not yet, is recorded by the running routing, and ``catch_up`` applies those alone."""
    routing = Routing(parse_config(RAW, {}), {})
    records = [record(keyring, i) for i in range(670)]
    for held in records[:600]:
        put(routing, keyring, held)
    changed: set[str] = set()

    async def meanwhile() -> None:  # a change after each part the copy takes
        for i in range(600, 670):
            await asyncio.sleep(0)
            put(routing, keyring, records[i])
            routing.drop(f"api-{i - 600}")
            changed.update((f"api-{i}", f"api-{i - 600}"))

    copying = asyncio.create_task(routing.copy_run_time())
    changes = asyncio.create_task(meanwhile())
    copied = await copying
    assert len(changed) >= SHARDS  # the loop ran between the parts
    await changes
    reloaded = Routing(parse_config(RAW, {}), {}, routing, copied)
    compared: list[str] = []
    real_get = Shards.get

    def counted(self: Shards[str, object], key: str, default: object = None) -> object:
        compared.append(key)
        return real_get(self, key, default)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Shards, "get", counted)
        reloaded.catch_up(routing)
    assert set(reloaded.endpoints) == set(routing.endpoints) == {"file-1", *(f"api-{i}" for i in range(70, 670))}
    assert set(reloaded.dynamic) == set(routing.dynamic)
    assert compared and set(compared) <= changed  # the ids changed since the copy began, not every endpoint
    for i in (0, 69, 70, 599, 600, 669):
        expected = ("file-1", f"api-{i}") if i >= 70 else ("file-1",)
        tenant = {"tenant": f"t-{i % 3}"}
        assert reloaded.table.match("t", f"lead.{i}").select(lambda: tenant) == expected  # noqa: B023


async def test_a_routing_let_go_is_freed_by_its_references_alone(keyring: Keyring) -> None:
    """After a reload the routing swapped out is frozen (``gc.freeze``: out of the cyclic collector's reach, so that its
    full passes do not stop the loop): a cycle in it would be kept for good, a million endpoints' maps a SIGHUP."""
    config = parse_config(RAW, {})
    with cycles_left() as kept:
        routing = Routing(config, {})
        for i in range(20):
            put(routing, keyring, record(keyring, i))
        routing.endpoints["api-3"]  # one built, as a delivery builds it
        assert dict(routing.endpoints.configs).keys() == {"file-1", *(f"api-{i}" for i in range(20))}
        reloaded = Routing(config, {}, routing, await routing.copy_run_time())
        reloaded.catch_up(routing)
        del routing, reloaded
    assert kept == []


async def test_a_routing_swapped_out_is_taken_apart_and_the_one_in_use_keeps_all_it_shares_with_it(
    keyring: Keyring,
) -> None:
    """``take_apart`` (in a thread, after a reload) empties the old routing's own maps and routes a piece at a time;
    the sealed records, subscriptions and built endpoints the new one shares with it are let go of, not emptied."""
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
    reloaded = Routing(config, {}, routing, await routing.copy_run_time())
    reloaded.catch_up(routing)
    assert reloaded.endpoints.adopt(built)
    routing.take_apart()
    assert len(routing.dynamic) == 0 and len(routing.endpoints) == 1  # the file's endpoint only
    assert routing.table.match("t", "lead.3").select(lambda: {"tenant": "t-0"}) == ()  # nothing routes by it now
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


async def test_the_first_sealed_record_put_while_a_reload_builds_is_opened_by_the_new_routing(keyring: Keyring) -> None:
    """The new routing learns the keyring from the one it replaces: at its copy, that one may have had no sealed record
    yet (an empty endpoints topic); the first comes during the build and is caught up with, and must open."""
    routing = Routing(parse_config(RAW, {}), {})
    reloaded = Routing(parse_config(RAW, {}), {}, routing, await routing.copy_run_time())
    put(routing, keyring, record(keyring, 1))
    reloaded.catch_up(routing)
    assert reloaded.endpoints.keyring is keyring
    assert str(reloaded.endpoints["api-1"].url) == "https://h1.example.com/in?v=1"
