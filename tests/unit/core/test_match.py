"""RoutingTable: exact types, prefix wildcards, ``*``, topic filters, dedupe, cache."""

from __future__ import annotations

import random
from typing import Any

import pytest

import daemon.core.match
from daemon.core.config import SubscriptionConfig, WhereConfig
from daemon.core.match import Layered, RoutingTable


def sub(endpoint: str, *events: str, topics: list[str] | None = None) -> SubscriptionConfig:
    return SubscriptionConfig(endpoint=endpoint, events=list(events), topics=topics)


def test_exact_match() -> None:
    table = RoutingTable([sub("crm", "lead.created")])
    assert table.match("leads", "lead.created").endpoints == ("crm",)
    assert table.match("leads", "lead.updated").endpoints == ()
    assert table.match("leads", "lead.created.v2").endpoints == ()
    assert table.match("leads", "lead.create").endpoints == ()
    assert table.match("leads", "Lead.Created").endpoints == ()


def test_prefix_wildcard() -> None:
    table = RoutingTable([sub("crm", "lead.*")])
    assert table.match("leads", "lead.created").endpoints == ("crm",)
    assert table.match("leads", "lead.a.b.c").endpoints == ("crm",)
    assert table.match("leads", "lead.").endpoints == ("crm",)
    assert table.match("leads", "lead").endpoints == ()
    assert table.match("leads", "leads.created").endpoints == ()
    assert table.match("leads", "xlead.created").endpoints == ()
    assert table.match("leads", "order.created").endpoints == ()


def test_prefix_wildcard_without_dot() -> None:
    table = RoutingTable([sub("crm", "lead*")])
    assert table.match("leads", "lead").endpoints == ("crm",)
    assert table.match("leads", "leader.elected").endpoints == ("crm",)
    assert table.match("leads", "lea").endpoints == ()


def test_star_matches_every_type() -> None:
    table = RoutingTable([sub("audit", "*")])
    for event_type in ("lead.created", "x", "order.paid", "*", "a.b.c.d.e"):
        assert table.match("leads", event_type).endpoints == ("audit",)
        assert table.match("orders", event_type).endpoints == ("audit",)


def test_nested_prefixes_all_match() -> None:
    table = RoutingTable([sub("a", "a.*"), sub("ab", "a.b.*"), sub("abc", "a.b.c.*"), sub("other", "a.c.*")])
    assert table.match("t", "a.b.c.d").endpoints == ("a", "ab", "abc")
    assert table.match("t", "a.b.x").endpoints == ("a", "ab")
    assert table.match("t", "a.x").endpoints == ("a",)
    assert table.match("t", "a.c.x").endpoints == ("a", "other")
    assert table.match("t", "b.c").endpoints == ()


def test_topic_filter() -> None:
    table = RoutingTable(
        [
            sub("anywhere", "lead.created"),
            sub("orders-only", "lead.created", topics=["orders"]),
            sub("both", "lead.*", topics=["leads", "orders"]),
            sub("leads-only", "*", topics=["leads"]),
        ]
    )
    assert table.match("leads", "lead.created").endpoints == ("anywhere", "both", "leads-only")
    assert table.match("orders", "lead.created").endpoints == ("anywhere", "orders-only", "both")
    assert table.match("billing", "lead.created").endpoints == ("anywhere",)
    assert table.match("billing", "lead.updated").endpoints == ()
    assert table.match("leads", "order.paid").endpoints == ("leads-only",)
    assert table.match("orders", "order.paid").endpoints == ()


def test_endpoint_matched_several_times_appears_once() -> None:
    table = RoutingTable(
        [
            sub("crm", "lead.created", "lead.*", "*"),
            sub("crm", "lead.created"),
            sub("billing", "lead.created", "lead.*"),
            sub("crm", "*", topics=["leads"]),
        ]
    )
    assert table.match("leads", "lead.created").endpoints == ("crm", "billing")
    assert table.match("leads", "lead.updated").endpoints == ("crm", "billing")
    assert table.match("leads", "order.paid").endpoints == ("crm",)


def test_endpoints_in_config_order_for_one_kind_of_pattern() -> None:
    table = RoutingTable([sub(name, "lead.created") for name in ("zeta", "alpha", "mid", "alpha", "beta")])
    assert table.match("leads", "lead.created").endpoints == ("zeta", "alpha", "mid", "beta")
    table = RoutingTable([sub(name, "*") for name in ("zeta", "alpha", "mid")])
    assert table.match("leads", "x").endpoints == ("zeta", "alpha", "mid")


def test_endpoints_in_config_order_across_pattern_kinds() -> None:
    table = RoutingTable([sub("audit", "*"), sub("crm", "lead.*"), sub("billing", "lead.created"), sub("sales", "l*")])
    assert table.match("leads", "lead.created").endpoints == ("audit", "crm", "billing", "sales")


def test_no_match_is_an_empty_tuple() -> None:
    table = RoutingTable([sub("crm", "lead.*", topics=["leads"])])
    result = table.match("orders", "lead.created")
    assert result.endpoints == ()
    assert result.conditional == ()
    assert RoutingTable([]).match("leads", "lead.created").endpoints == ()


def test_result_is_a_tuple_of_endpoint_ids() -> None:
    result = RoutingTable([sub("crm", "*")]).match("leads", "x")
    assert type(result.endpoints) is tuple
    assert result.endpoints == ("crm",)
    assert result.select(lambda: None) == ("crm",)


def test_cache_returns_the_same_answer() -> None:
    table = RoutingTable([sub("crm", "lead.*"), sub("billing", "*", topics=["orders"])])
    first = table.match("orders", "lead.created")
    assert first.endpoints == ("crm", "billing")
    assert table.match("orders", "lead.created") is first
    empty = table.match("leads", "order.paid")
    assert empty.endpoints == ()
    assert table.match("leads", "order.paid") is empty
    # the cache is keyed by topic too
    assert table.match("leads", "lead.created").endpoints == ("crm",)
    assert table.match("orders", "lead.created").endpoints == ("crm", "billing")


def test_cache_is_bounded_and_answers_stay_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.core.match, "_CACHE_LIMIT", 8)
    table = RoutingTable([sub("crm", "lead.*"), sub("audit", "*", topics=["audit"])])
    for round_ in range(3):
        for i in range(50):
            assert table.match("leads", f"lead.e{i}").endpoints == ("crm",), round_
            assert table.match("audit", f"other.e{i}").endpoints == ("audit",), round_
            assert table.match("leads", f"other.e{i}").endpoints == (), round_
            assert len(table._cache) <= 8


def test_cache_is_bounded_in_bytes_and_never_keeps_long_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.core.match, "_CACHE_BYTES", 10_000)
    table = RoutingTable([sub("crm", "lead.*")])
    huge = "lead." + "x" * 100_000
    for i in range(3_000):
        assert table.match("leads", f"{huge}{i}").endpoints == ("crm",)  # answered, never kept
    assert len(table._cache) == 0
    for i in range(1_000):
        assert table.match("leads", f"lead.{'y' * 200}{i}").endpoints == ("crm",)
        assert table._cache_bytes <= 10_000 + 400
    assert 0 < len(table._cache) < 1_000


def test_subscriptions_may_be_any_iterable() -> None:
    table = RoutingTable(sub(f"ep{i}", f"t{i}") for i in range(3))
    assert table.match("x", "t1").endpoints == ("ep1",)


def test_many_subscriptions() -> None:
    subs: list[SubscriptionConfig] = []
    for i in range(10_000):
        subs.append(sub(f"exact-{i}", f"type.{i}"))
    for i in range(5_000):
        subs.append(sub(f"prefix-{i}", f"ns{i}.*", topics=["leads"] if i % 2 else None))
    for i in range(4_990):
        subs.append(sub(f"multi-{i % 100}", f"type.{i}", f"ns{i}.*"))
    for i in range(10):
        subs.append(sub(f"star-{i}", "*", topics=[f"topic-{i}"]))
    assert len(subs) == 20_000
    table = RoutingTable(subs)

    assert table.match("leads", "type.0").endpoints == ("exact-0", "multi-0")
    assert table.match("leads", "type.4989").endpoints == ("exact-4989", "multi-89")
    assert table.match("leads", "type.4990").endpoints == ("exact-4990",)
    assert table.match("leads", "type.9999").endpoints == ("exact-9999",)
    assert table.match("leads", "type.10000").endpoints == ()
    assert table.match("leads", "ns7.created").endpoints == ("prefix-7", "multi-7")
    assert table.match("orders", "ns7.created").endpoints == ("multi-7",)
    assert table.match("orders", "ns8.created").endpoints == ("prefix-8", "multi-8")
    # "ns1.*" must not match "ns12.x", nor "ns12.*" match "ns1.x"
    assert table.match("orders", "ns12.x").endpoints == ("prefix-12", "multi-12")
    assert table.match("orders", "ns4999.x").endpoints == ()
    assert table.match("leads", "ns4999.x").endpoints == ("prefix-4999",)
    assert table.match("topic-3", "anything").endpoints == ("star-3",)
    assert table.match("topic-3", "type.5").endpoints == ("exact-5", "multi-5", "star-3")
    assert table.match("topic-99", "anything").endpoints == ()
    for i in range(0, 10_000, 97):
        expected = (f"exact-{i}", f"multi-{i % 100}") if i < 4_990 else (f"exact-{i}",)
        assert table.match("orders", f"type.{i}").endpoints == expected


# --- changes in place (endpoints managed at run time) ---


def test_an_endpoint_added_later_is_matched_after_the_earlier_ones() -> None:
    table = RoutingTable([sub("crm", "lead.*"), sub("audit", "*")])
    assert table.match("leads", "lead.created").endpoints == ("crm", "audit")  # cached
    table.add([sub("api-1", "lead.created"), sub("api-1", "call.*")])
    assert table.match("leads", "lead.created").endpoints == ("crm", "audit", "api-1")
    assert table.match("leads", "call.ended").endpoints == ("audit", "api-1")


def test_removing_an_endpoint_takes_every_route_of_it_and_nothing_else() -> None:
    table = RoutingTable([sub("crm", "lead.*"), sub("audit", "*"), sub("crm", "call.ended")])
    table.add([sub("api-1", "lead.*"), sub("api-1", "*"), sub("api-1", "x.y")])
    assert table.match("leads", "x.y").endpoints == ("audit", "api-1")
    assert table.remove("api-1")
    assert not table.remove("api-1")
    assert table.match("leads", "x.y").endpoints == ("audit",)
    assert table.match("leads", "lead.created").endpoints == ("crm", "audit")
    assert table.remove("crm")
    assert table.match("leads", "call.ended").endpoints == ("audit",)
    assert table._routes._prefixes == {} and "call.ended" not in table._routes._exact


def test_changes_among_100000_endpoints_keep_every_other_answer() -> None:
    table = RoutingTable(sub(f"ep-{i}", f"lead.{i % 50}", "call.*") for i in range(100_000))
    assert len(table.match("t", "lead.7").endpoints) == 2_000
    for n in range(100):
        table.remove(f"ep-{n * 7}")
        table.add([sub(f"ep-{n * 7}", "lead.7")])
    assert len(table.match("t", "lead.7").endpoints) == 2_000 + 100 - 2  # 2 of them were lead.7 already
    assert len(table.match("t", "lead.8").endpoints) == 2_000 - 2
    assert len(table.match("t", "call.x").endpoints) == 100_000 - 100


def test_a_scope_must_hold_beside_the_subscriptions_own_condition() -> None:
    scoped = SubscriptionConfig(endpoint="acme", events=["*"], scope=WhereConfig(field="org.id", one_of=["acme"]))
    both = SubscriptionConfig(
        endpoint="acme-big", events=["*"], where=WhereConfig(field="size", none_of=["small"]),
        scope=WhereConfig(field="org.id", one_of=["acme"]),
    )  # fmt: skip
    match = RoutingTable([scoped, both]).match("t", "lead.created")
    assert match.endpoints == ()  # every route is conditional now
    assert match.select(lambda: {"org": {"id": "acme"}, "size": "big"}) == ("acme", "acme-big")
    assert match.select(lambda: {"org": {"id": "acme"}, "size": "small"}) == ("acme",)
    assert match.select(lambda: {"org": {"id": "globex"}, "size": "big"}) == ()
    assert match.select(lambda: {"size": "big"}) == ()  # no tenant named: no endpoint of a tenant
    assert match.select(lambda: {"org": {"id": ["acme"]}}) == ()


# --- tenants: an event is matched against its own tenant's routes only ---


def scoped(endpoint: str, tenant: str, *events: str, where: WhereConfig | None = None) -> SubscriptionConfig:
    return SubscriptionConfig(endpoint=endpoint, events=list(events), where=where,
                              scope=WhereConfig(field="org.id", one_of=[tenant]))  # fmt: skip


class Reads(dict[str, Any]):
    """An event that counts the reads of its top-level fields."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.reads.append(key)
        return super().get(key, default)


def test_an_event_is_checked_against_its_own_tenants_routes_only() -> None:
    hostile = [scoped(f"a-{i}", "a", *(["*"] * 1000), where=WhereConfig(field="x", one_of=["1"])) for i in range(100)]
    table = RoutingTable([sub("platform", "*"), *hostile, scoped("b-1", "b", "lead.*")])
    match = table.match("t", "lead.created")
    event = Reads(org={"id": "b"})
    for _ in range(200):
        assert match.select(lambda: event) == ("platform", "b-1")
    assert table.tally.checked == 200  # b-1's route, once an event: never one of a's
    assert event.reads == ["org"] * 200  # the tenant read once an event
    assert match.select(lambda: {"org": {"id": "a"}, "x": "1"}) == ("platform", *(f"a-{i}" for i in range(100)))
    assert table.tally.checked == 300
    assert match.select(lambda: {"org": {"id": "c"}}) == ("platform",)
    assert match.select(lambda: {"org": {"id": 7}}) == ("platform",) and table.tally.checked == 300


def test_patterns_are_indexed_once_each() -> None:
    table = RoutingTable([sub("a", *(["*"] * 50_000)), sub("b", "x", "x", "y.*", "y.*", "x"), sub("c", "x", "*")])
    index = table._routes
    assert len(index._star) == 2 and len(index._exact["x"]) == 1 and len(index._prefixes["y."]) == 1
    assert index.added("a") == [("*", index._star[0])] and index.added("c") == [("*", index._star[1])]
    assert table.match("t", "x").endpoints == ("a", "b", "c")
    tenant = RoutingTable([scoped("t-1", "t", *(["lead.*"] * 10_000))])
    assert len(tenant._scoped[("org", "id")]["t"]._prefixes["lead."]) == 1


def test_an_event_no_tenant_subscribed_to_is_not_decoded() -> None:
    table = RoutingTable([sub("platform", "*"), scoped("b-1", "b", "lead.*", "call.ended")])
    assert table.match("t", "order.paid").select(lambda: pytest.fail("decoded")) == ("platform",)
    assert not table.match("t", "lead.x").empty and RoutingTable([scoped("b-1", "b", "lead.*")]).match("t", "x").empty
    assert table.match("t", "call.ended").select(lambda: {"org": {"id": "b"}}) == ("platform", "b-1")


def test_scoped_routes_keep_topics_catalogues_and_order() -> None:
    table = RoutingTable(
        [scoped("b-2", "b", "lead.*"), SubscriptionConfig(endpoint="b-1", events=["*"], topics=["leads"],
         scope=WhereConfig(field="org.id", one_of=["b", "c"])), scoped("b-3", "b", "lead.*")],
        {"b-3": frozenset({"lead.updated"})},
    )  # fmt: skip
    decode_b = lambda: {"org": {"id": "b"}}  # noqa: E731
    assert table.match("leads", "lead.created").select(decode_b) == ("b-2", "b-1")
    assert table.match("orders", "lead.created").select(decode_b) == ("b-2",)
    assert table.match("leads", "lead.updated").select(decode_b) == ("b-2", "b-1", "b-3")
    assert table.match("leads", "x").select(lambda: {"org": {"id": "c"}}) == ("b-1",)


def test_removing_a_scoped_endpoint_takes_its_routes_of_every_value() -> None:
    table = RoutingTable([scoped("b-1", "b", "lead.*"), scoped("b-1", "b", "call.*"), scoped("c-1", "c", "*")])
    table.add([SubscriptionConfig(endpoint="bc", events=["*"], scope=WhereConfig(field="org.id", one_of=["b", "c"]))])
    assert table.match("t", "lead.x").select(lambda: {"org": {"id": "b"}}) == ("b-1", "bc")
    assert table.remove("b-1") and table.remove("bc") and not table.remove("bc")
    assert list(table._scoped[("org", "id")]) == ["c"]
    assert table.match("t", "lead.x").select(lambda: {"org": {"id": "b"}}) == ()
    assert table.remove("c-1") and table._scoped == {} and table._scoped_any == {}
    assert table.match("t", "lead.x").empty


def test_a_scope_of_none_of_is_a_condition_like_any_other() -> None:
    subscription = SubscriptionConfig(endpoint="e", events=["*"], scope=WhereConfig(field="org.id", none_of=["a"]))
    match = RoutingTable([subscription]).match("t", "x")
    assert len(match.conditional) == 1
    assert match.select(lambda: {"org": {"id": "b"}}) == ("e",) and match.select(lambda: {"org": {"id": "a"}}) == ()


def test_the_cache_counts_the_matches_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.core.match, "_CACHE_BYTES", 100_000)
    table = RoutingTable(sub(f"ep-{i}", "*") for i in range(2_000))  # 16,000 bytes of matches a type
    for i in range(100):
        assert len(table.match("t", f"type.{i}").endpoints) == 2_000
        assert table._cache_bytes <= 100_000
    assert 0 < len(table._cache) <= 100_000 // 16_000
    wide = RoutingTable(sub(f"ep-{i}", "*") for i in range(5_000))  # 40,000 bytes: more than a quarter, never kept
    assert len(wide.match("t", "x").endpoints) == 5_000 and len(wide._cache) == 0


def test_a_tenants_routes_for_a_type_are_resolved_once_and_kept_within_the_same_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = RoutingTable([scoped("b-1", "b", "lead.*"), scoped("c-1", "c", "*")])
    b = lambda: {"org": {"id": "b"}}  # noqa: E731
    assert table.match("t", "lead.x").select(b) == ("b-1",)
    key = ("t", "lead.x", ("org", "id"), "b")
    assert list(table._scoped_cache) == [key] and table._scoped_cache[key][0][1] == "b-1"
    kept = table._cache_bytes
    assert table.match("t", "lead.x").select(b) == ("b-1",) and table._cache_bytes == kept
    assert table.match("t", "lead.x").select(lambda: {"org": {"id": "x" * 10_000}}) == ()
    assert list(table._scoped_cache) == [key]  # a value no tenant has is not kept
    monkeypatch.setattr(daemon.core.match, "_CACHE_LIMIT", 8)
    for i in range(100):  # tenant c's events of ever new types
        assert table.match("t", f"new.{i}").select(lambda: {"org": {"id": "c"}}) == ("c-1",)
        assert len(table._cache) + len(table._scoped_cache) <= 8
        assert table.match("t", "lead.x").select(b) == ("b-1",)


def test_what_scoped_routes_want_is_counted_once_per_pattern_and_follows_every_add_and_remove() -> None:
    table = RoutingTable(
        [scoped(f"e-{i}", f"t-{i % 100}", "lead.*", "call.ended") for i in range(1_000)]
        + [SubscriptionConfig(endpoint="bc", events=["order.*"], topics=["orders"],
                              scope=WhereConfig(field="org.id", one_of=["b", "c"]))]
    )  # fmt: skip
    wanted = table._scoped_any[("org", "id")]
    assert len(wanted._index._by_endpoint) == 3  # lead.*, call.ended, order.* on orders: not 2,001 routes
    assert not table.match("t", "lead.x").empty and not table.match("orders", "order.paid").empty
    assert table.match("t", "order.paid").empty  # order.* is limited to its topic
    for i in range(999):
        table.remove(f"e-{i}")
    assert not table.match("t", "lead.x").empty and not table.match("t", "call.ended").empty
    assert table.match("t", "lead.x").select(lambda: {"org": {"id": "t-99"}}) == ("e-999",)
    table.remove("e-999")
    assert table.match("t", "lead.x").empty and table.match("t", "call.ended").empty
    assert len(wanted._index._by_endpoint) == 1  # the endpoint of two values counted once, removed once
    table.remove("bc")
    assert table.match("orders", "order.paid").empty and table._scoped_any == {}


# --- the file's table over the run-time one (daemon.engine.routing shares the latter between routings) ---


def _mixed(seed: int, count: int) -> list[SubscriptionConfig]:
    """Subscriptions of every kind: exact types, prefixes, ``*``, topic limits, conditions, tenant scopes."""
    rng = random.Random(seed)
    subs = []
    for i in range(count):
        events = rng.choice([["lead.created"], ["lead.*"], ["*"], ["call.ended", "lead.created"], ["call.*"]])
        topics = rng.choice([None, None, ["a"]])
        where = rng.choice([None, None, WhereConfig(field="size", one_of=["big"])])
        scope = rng.choice([None, WhereConfig(field="org.id", one_of=[f"t{i % 4}"])])
        subs.append(SubscriptionConfig(endpoint=f"e{i}", events=events, topics=topics, where=where, scope=scope))
    return subs


def test_the_layered_tables_answer_as_one_table_of_both_would_across_changes() -> None:
    subs = _mixed(7, 120)
    one, file, run_time = RoutingTable(subs), RoutingTable(subs[:40]), RoutingTable(subs[40:])
    layered = Layered(file, run_time)
    events = [{"org": {"id": f"t{t}"}, "size": size} for t in range(5) for size in ("big", "small")]
    for round_ in range(3):
        for topic in ("a", "b"):
            for event_type in ("lead.created", "lead.x", "call.ended", "other"):
                for event in events:
                    expected = one.match(topic, event_type).select(lambda: event)  # noqa: B023
                    got = layered.match(topic, event_type).select(lambda: event)  # noqa: B023
                    assert got == expected, (round_, topic, event_type, event)
        for i in range(40 + round_ * 7, 40 + round_ * 7 + 5):  # changes to the run-time table: seen at once
            one.remove(f"e{i}")
            run_time.remove(f"e{i}")
        one.add([SubscriptionConfig(endpoint=f"n{round_}", events=["*"])])
        run_time.add([SubscriptionConfig(endpoint=f"n{round_}", events=["*"])])


def test_the_layered_cache_is_bounded_and_counts_one_tally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.core.match, "_CACHE_LIMIT", 8)
    run_time = RoutingTable([scoped("acme-1", "acme", "*", where=WhereConfig(field="size", one_of=["big"]))])
    file = RoutingTable([sub("crm", "lead.*")], tally=run_time.tally)
    layered = Layered(file, run_time)
    huge = "lead." + "x" * 1_000
    for i in range(50):
        assert layered.match("t", f"lead.e{i}").select(lambda: {"org": {"id": "acme"}, "size": "big"}) == (
            "crm", "acme-1")  # fmt: skip
        assert layered.match("t", f"{huge}{i}").endpoints == ("crm",)  # answered, never kept
        assert len(layered._cache) <= 2  # a quarter of the bound: the two tables share the rest
    assert layered.tally is run_time.tally and run_time.tally.checked == 50
    assert layered.cache_bytes >= file.cache_bytes + run_time.cache_bytes
