"""daemon.kafka.index.IndexStore, the delivery index's local copy (a real SQLite private database): a delivery's
entries by its id, scoped to the caller's endpoints; searches by endpoint, outcome, event type and time, a page at a
time; records of many entries and the one-entry records written before them both read; an entry read twice kept once
and counted once; entries of records the results topic no longer has dropped; the copy's size."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.core.model import IndexEntry, IndexRecord, IndexRow, encode_index
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


def row(e: IndexEntry) -> IndexRow:
    return (e.partition, e.offset, e.delivery_id, e.endpoint_id, e.event_type, e.status, e.attempt, e.trigger, e.at_ms,
            e.http_status, e.duration_ms)  # fmt: skip


def record(*entries: IndexEntry) -> bytes:
    """An index record as the results writer writes it."""
    return encode_index(IndexRecord(entries=[row(e) for e in entries]))


def add(store: IndexStore, *entries: IndexEntry) -> int:
    return store.add([record(e) for e in entries])


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
    assert store.add([record(entry("msg_1", 3)), record(entry("msg_1", 3), entry("msg_2", 4)), b"{not json"]) == 3
    assert len(store.attempts("msg_1", None)) == 1
    assert store.entries == 2


def test_a_record_of_many_entries_and_the_one_entry_records_written_before_are_both_read(store: IndexStore) -> None:
    many = record(entry("msg_1", 3), entry("msg_2", 4, attempt=2, status="failed", http_status=500, duration_ms=1.5))
    before = encode_index(entry("msg_3", 7, partition=2, event_type=None))  # one IndexEntry, as the index held before
    assert b'"delivery_id"' in before and b'"entries"' not in before
    assert store.add([many, before]) == 3
    assert [(e.delivery_id, e.partition, e.offset, e.status, e.http_status, e.duration_ms)
            for e in store.search(None)] == [("msg_3", 2, 7, "delivered", None, None),
                                             ("msg_2", 0, 4, "failed", 500, 1.5),
                                             ("msg_1", 0, 3, "delivered", None, None)]  # fmt: skip
    assert store.attempts("msg_3", None)[0].event_type is None
    assert store.add([b'{"entries": [[0, 1, "msg_4"]]}', b'{"delivery_id": "msg_5"}']) == 0  # neither: left out


def test_the_copys_size_is_its_entries_and_the_bytes_of_its_file(store: IndexStore) -> None:
    empty = store.bytes
    assert (store.entries, empty > 0) == (0, True)
    store.add(
        [record(*[entry(f"msg_{n}", n) for n in range(start, start + 1_000)]) for start in range(0, 5_000, 1_000)]
    )
    assert store.entries == 5_000
    assert store.bytes > empty + 5_000 * 50  # about 100 bytes an entry with its indexes
    store.prune({0: 4_000})
    assert store.entries == 1_000


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
