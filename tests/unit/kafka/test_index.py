"""daemon.kafka.index.IndexStore, the delivery index's local copy (a real SQLite private database): a delivery's
entries by its id, scoped to the caller's endpoints; searches by endpoint, outcome, event type and time, a page at a
time; an entry read twice kept once; entries of records the results topic no longer has dropped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.core.model import IndexEntry, encode_index
from daemon.kafka.index import Cursor, IndexStore


def entry(delivery_id: str, offset: int, **fields: object) -> IndexEntry:
    values: dict[str, object] = {"delivery_id": delivery_id, "endpoint_id": "ep_a", "event_type": "lead.created",
                                 "status": "delivered", "attempt": 1, "trigger": "live", "at_ms": 1_000 + offset,
                                 "partition": 0, "offset": offset, **fields}  # fmt: skip
    return IndexEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def store() -> Iterator[IndexStore]:
    s = IndexStore()
    yield s
    s.close()


def add(store: IndexStore, *entries: IndexEntry) -> int:
    return store.add([encode_index(e) for e in entries])


def test_a_deliverys_entries_oldest_first_and_only_of_the_callers_endpoints(store: IndexStore) -> None:
    add(store, entry("msg_1", 5, attempt=2, status="failed"), entry("msg_1", 3), entry("msg_2", 4),
        entry("msg_3", 6, endpoint_id="ep_b"))  # fmt: skip
    assert [(e.offset, e.attempt) for e in store.attempts("msg_1", None)] == [(3, 1), (5, 2)]
    assert [e.offset for e in store.attempts("msg_1", ["ep_a", "ep_c"])] == [3, 5]
    assert store.attempts("msg_3", ["ep_a"]) == []  # another's: as if it never was
    assert store.attempts("msg_3", []) == []
    assert [e.endpoint_id for e in store.attempts("msg_3", None)] == ["ep_b"]
    assert store.attempts("msg_9", None) == []


def test_an_entry_read_twice_is_kept_once_and_one_that_does_not_decode_is_left_out(store: IndexStore) -> None:
    assert store.add([encode_index(entry("msg_1", 3)), encode_index(entry("msg_1", 3)), b"{not json"]) == 2
    assert len(store.attempts("msg_1", None)) == 1


def test_a_search_filters_by_endpoint_outcome_event_type_and_time_newest_first_a_page_at_a_time(
    store: IndexStore,
) -> None:
    add(store, *[entry(f"msg_{n}", n, status="failed" if n % 2 else "delivered",
                       event_type="lead.updated" if n % 3 == 0 else "lead.created",
                       endpoint_id="ep_b" if n >= 8 else "ep_a") for n in range(10)])  # fmt: skip
    assert [e.offset for e in store.search(None, limit=3)] == [9, 8, 7]
    assert [e.offset for e in store.search(["ep_a"], status="failed")] == [7, 5, 3, 1]
    assert [e.offset for e in store.search(["ep_a"], event_type="lead.updated")] == [6, 3, 0]
    assert [e.offset for e in store.search(None, since_ms=1_002, until_ms=1_004)] == [4, 3, 2]  # inclusive
    assert [e.offset for e in store.search(["ep_b"])] == [9, 8]
    first = store.search(["ep_a"], limit=3)
    last = first[-1]
    rest = store.search(["ep_a"], limit=10, before=Cursor(last.at_ms, last.partition, last.offset))
    assert [e.offset for e in first + rest] == [7, 6, 5, 4, 3, 2, 1, 0]


def test_entries_of_records_the_results_topic_no_longer_has_are_dropped(store: IndexStore) -> None:
    add(store, entry("msg_1", 3), entry("msg_2", 4), entry("msg_3", 2, partition=1), entry("msg_4", 9, partition=1))
    assert store.prune({0: 4, 1: 5}) == 2
    assert [e.delivery_id for e in store.search(None)] == ["msg_4", "msg_2"]
    assert store.entries == 2
