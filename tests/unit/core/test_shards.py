"""daemon.core.shards.Shards against a dict: the same answers for every operation the endpoint maps use, and each part
grown on its own (the reason it exists: no one step of growing the whole)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import daemon.core.shards
from daemon.core.shards import Shards

keys = st.text(max_size=6)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, st.integers()),
        st.tuples(st.just("del"), keys, st.none()),
        st.tuples(st.just("pop"), keys, st.none()),
        st.tuples(st.just("pop default"), keys, st.integers()),
    ),
    max_size=200,
)


@given(operations)
def test_it_answers_as_a_dict_does(ops: list[tuple[str, str, int | None]]) -> None:
    shards: Shards[str, int | None] = Shards()
    plain: dict[str, int | None] = {}
    for op, key, value in ops:
        if op == "set":
            shards[key] = plain[key] = value
        elif op == "del":
            if key in plain:
                del shards[key], plain[key]
            else:
                with pytest.raises(KeyError):
                    del shards[key]
        elif op == "pop":
            if key in plain:
                assert shards.pop(key) == plain.pop(key)
            else:
                with pytest.raises(KeyError):
                    shards.pop(key)
        else:
            assert shards.pop(key, value) == plain.pop(key, value)
        assert len(shards) == len(plain)
        assert (key in shards) == (key in plain)
        assert shards.get(key) == plain.get(key) and shards.get(key, -1) == plain.get(key, -1)
    assert sorted(shards) == sorted(plain) == sorted(shards.keys())
    assert sorted(shards.items()) == sorted(plain.items())
    assert sorted(shards.values(), key=repr) == sorted(plain.values(), key=repr)
    for key in plain:
        assert shards[key] == plain[key]


def test_a_missing_key_is_a_key_error_and_none_is_a_value() -> None:
    shards: Shards[str, None] = Shards()
    with pytest.raises(KeyError):
        shards["x"]
    shards["x"] = None
    assert "x" in shards and shards.pop("x", 1) is None and "x" not in shards


def test_the_entries_are_spread_over_the_parts_so_none_grows_by_the_whole() -> None:
    shards: Shards[str, int] = Shards()
    for i in range(64_000):
        shards[f"api-{i}"] = i
    sizes = [len(part) for part in shards._parts]
    assert len(sizes) == daemon.core.shards.PARTS
    assert max(sizes) < 2 * 64_000 // len(sizes)  # 1,000 each on average: no part holds a large share


def test_taken_apart_it_is_empty_and_its_values_live_on_where_they_are_held() -> None:
    shards: Shards[str, list[int]] = Shards()
    held = [[i] for i in range(1_000)]
    for i, value in enumerate(held):
        shards[f"k{i}"] = value
    shards.take_apart()
    assert len(shards) == 0 and list(shards.items()) == [] and "k1" not in shards
    assert held[999] == [999]  # a value is let go of, not emptied
    shards["k1"] = held[1]
    assert len(shards) == 1 and shards["k1"] == [1]
