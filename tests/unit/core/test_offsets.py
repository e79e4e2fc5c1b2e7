"""Offset watermarks: commit up to the lowest event whose outcomes are not all recorded."""

from __future__ import annotations

import random
from collections.abc import Hashable

import pytest

from daemon.core.offsets import NOTE_BYTES, OffsetTracker, PartitionOffsets, Settled

TP = ("leads", 0)
TP1 = ("leads", 1)


def marks(committable: dict[Hashable, tuple[int, str]]) -> dict[Hashable, int]:
    """The watermarks of ``committable`` (without their notes)."""
    return {tp: mark for tp, (mark, _note) in committable.items()}


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_nothing_read_no_watermark() -> None:
    tracker = OffsetTracker()
    part = tracker.assign(TP)
    assert part.watermark() is None
    assert part.next_offset is None
    assert part.committed is None
    assert part.unfinished == 0
    assert marks(tracker.committable()) == {}


def test_assign_returns_the_same_partition_until_revoked() -> None:
    tracker = OffsetTracker()
    part = tracker.assign(TP)
    assert tracker.assign(TP) is part
    assert tracker.partitions == {TP: part}
    assert tracker.revoke(TP) is part
    assert tracker.partitions == {}
    assert tracker.assign(TP) is not part
    assert tracker.revoke(("other", 9)) is None


def test_in_order_completion() -> None:
    tracker = OffsetTracker()
    part = tracker.assign(TP)
    for offset in (10, 11, 12):
        part.add(offset, 1)
    assert part.watermark() == 10
    assert tracker.in_flight == 3
    part.done(10)
    assert part.watermark() == 11
    part.done(11)
    assert part.watermark() == 12
    part.done(12)
    assert part.watermark() == 13
    assert tracker.in_flight == 0
    assert part.unfinished == 0


def test_out_of_order_completion_holds_the_watermark() -> None:
    tracker = OffsetTracker()
    part = tracker.assign(TP)
    for offset in range(5):
        part.add(offset, 1)
    part.done(3)
    part.done(1)
    part.done(4)
    assert part.watermark() == 0
    assert tracker.in_flight == 2
    part.done(0)
    assert part.watermark() == 2
    part.done(2)
    assert part.watermark() == 5
    assert tracker.in_flight == 0


def test_event_owed_several_outcomes_is_done_after_the_last() -> None:
    tracker = OffsetTracker()
    part = tracker.assign(TP)
    part.add(0, 3)
    part.add(1, 1)
    assert tracker.in_flight == 2
    part.done(1)
    part.done(0)
    assert part.watermark() == 0
    assert tracker.in_flight == 1
    part.done(0)
    assert part.watermark() == 0
    assert part.unfinished == 1
    part.done(0)
    assert part.watermark() == 2
    assert tracker.in_flight == 0
    assert part.unfinished == 0


def test_event_owed_nothing_is_done_at_once() -> None:
    calls = Counter()
    tracker = OffsetTracker(on_done=calls)
    part = tracker.assign(TP)
    part.add(0, 0)
    assert part.watermark() == 1
    assert tracker.in_flight == 0
    assert part.unfinished == 0
    part.add(1, 1)
    part.add(2, 0)
    part.add(3, 0)
    assert part.watermark() == 1
    part.done(1)
    assert part.watermark() == 4
    assert calls.calls == 1


def test_gaps_in_offsets() -> None:
    tracker = OffsetTracker()
    part = tracker.assign(TP)
    part.add(100, 1)
    part.add(105, 1)
    part.add(230, 0)
    part.done(100)
    assert part.watermark() == 105
    part.done(105)
    assert part.watermark() == 231


def test_done_for_unknown_or_finished_offset_is_ignored() -> None:
    calls = Counter()
    tracker = OffsetTracker(on_done=calls)
    part = tracker.assign(TP)
    part.add(0, 1)
    part.done(7)
    assert tracker.in_flight == 1
    part.done(0)
    part.done(0)
    assert tracker.in_flight == 0
    assert calls.calls == 1
    assert part.watermark() == 1


def test_in_flight_counts_events_across_partitions() -> None:
    tracker = OffsetTracker()
    a, b = tracker.assign(TP), tracker.assign(TP1)
    a.add(0, 2)
    a.add(1, 1)
    b.add(0, 5)
    b.add(1, 0)
    assert tracker.in_flight == 3
    assert (a.unfinished, b.unfinished) == (2, 1)
    a.done(0)
    assert tracker.in_flight == 3  # event 0 of a is still owed one outcome
    a.done(0)
    assert tracker.in_flight == 2
    for _ in range(5):
        b.done(0)
    assert tracker.in_flight == 1
    a.done(1)
    assert tracker.in_flight == 0


def test_on_done_called_once_per_finished_event() -> None:
    calls = Counter()
    tracker = OffsetTracker(on_done=calls)
    part = tracker.assign(TP)
    part.add(0, 2)
    part.add(1, 1)
    part.done(0)
    assert calls.calls == 0
    part.done(1)
    assert calls.calls == 1
    part.done(0)
    assert calls.calls == 2


def test_committable_returns_only_moved_watermarks() -> None:
    tracker = OffsetTracker()
    a, b = tracker.assign(TP), tracker.assign(TP1)
    tracker.assign(("orders", 0))  # nothing read: never committable
    a.add(0, 1)
    b.add(0, 0)
    assert marks(tracker.committable()) == {TP: 0, TP1: 1}
    tracker.mark_committed({TP: (0, ""), TP1: (1, "")})
    assert (a.committed, b.committed) == (0, 1)
    assert marks(tracker.committable()) == {}
    a.done(0)
    assert marks(tracker.committable()) == {TP: 1}
    tracker.mark_committed({TP: (1, "")})
    assert marks(tracker.committable()) == {}
    b.add(1, 1)  # read, not finished: the watermark stays at 1
    assert marks(tracker.committable()) == {}
    b.done(1)
    assert marks(tracker.committable()) == {TP1: 2}


def test_committable_of_some_partitions_only() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP).add(4, 0)
    tracker.assign(TP1).add(9, 0)
    assert marks(tracker.committable([TP1])) == {TP1: 10}
    assert marks(tracker.committable({TP})) == {TP: 5}
    assert marks(tracker.committable([])) == {}
    assert tracker.committable([("nope", 0)]) == {}
    assert marks(tracker.committable()) == {TP: 5, TP1: 10}


def test_mark_committed_ignores_revoked_partitions() -> None:
    tracker = OffsetTracker()
    part = tracker.assign(TP)
    part.add(0, 0)
    tracker.revoke(TP)
    tracker.mark_committed({TP: (1, "")})
    assert part.committed is None
    assert tracker.partitions == {}
    assert marks(tracker.committable()) == {}


def test_revoke_forgets_the_watermark_but_events_count_until_done() -> None:
    # A revoked partition's watermark is no longer ours to commit, but its deliveries are still under
    # way: its unfinished events keep counting against the in-flight cap until they finish.
    calls = Counter()
    tracker = OffsetTracker(on_done=calls)
    a, b = tracker.assign(TP), tracker.assign(TP1)
    a.add(0, 2)
    a.add(1, 1)
    a.add(2, 1)
    b.add(0, 1)
    a.done(1)
    assert tracker.in_flight == 3
    assert calls.calls == 1

    assert tracker.revoke(TP) is a
    assert tracker.partitions == {TP1: b}
    assert tracker.in_flight == 3
    assert calls.calls == 1
    assert marks(tracker.committable()) == {TP1: 0}
    assert tracker.revoke(TP) is None
    assert tracker.in_flight == 3

    # outcomes of the revoked assignment arrive late
    a.done(0)
    assert tracker.in_flight == 3  # event 0 is still owed one outcome
    a.done(0)
    assert tracker.in_flight == 2
    assert calls.calls == 2
    a.done(2)
    assert tracker.in_flight == 1
    assert calls.calls == 3
    for offset in (0, 2, 99):  # already finished or never read: ignored
        a.done(offset)
    assert tracker.in_flight == 1
    assert calls.calls == 3

    # the revoked watermark is never offered for commit, and marking it is ignored
    assert marks(tracker.committable()) == {TP1: 0}
    tracker.mark_committed({TP: (3, "")})
    assert a.committed is None

    b.done(0)
    assert tracker.in_flight == 0
    assert calls.calls == 4
    assert marks(tracker.committable()) == {TP1: 1}


def test_reassigned_partition_starts_fresh() -> None:
    tracker = OffsetTracker()
    old = tracker.assign(TP)
    old.add(5, 1)
    old.add(6, 0)
    tracker.revoke(TP)
    new = tracker.assign(TP)
    assert new is not old
    assert new.watermark() is None
    assert marks(tracker.committable()) == {}
    new.add(5, 1)
    assert tracker.in_flight == 2  # the old assignment's event still counts
    old.done(5)  # late outcome of the old assignment: does not finish the new one's event
    assert tracker.in_flight == 1
    assert new.watermark() == 5
    assert new.unfinished == 1
    new.done(5)
    assert tracker.in_flight == 0
    assert new.watermark() == 6


def _check(part: PartitionOffsets, owed: dict[int, int], last: int) -> None:
    unfinished = [offset for offset, left in owed.items() if left > 0]
    mark = part.watermark()
    expected = min(unfinished) if unfinished else last + 1
    assert mark == expected
    assert part.unfinished == len(unfinished)


@pytest.mark.parametrize("seed", range(8))
def test_random_completion_order(seed: int) -> None:
    rng = random.Random(seed)
    calls = Counter()
    tracker = OffsetTracker(on_done=calls)
    part = tracker.assign(TP)

    owed: dict[int, int] = {}
    offset = rng.randrange(0, 1_000_000)
    for _ in range(1_000):
        owed[offset] = rng.choice((0, 0, 1, 1, 1, 2, 3, 5))
        part.add(offset, owed[offset])
        offset += rng.choice((1, 1, 1, 2, 7))  # compaction and transaction markers leave gaps
    last = max(owed)
    owing = sum(1 for left in owed.values() if left)
    assert tracker.in_flight == owing

    outcomes = [o for o, n in owed.items() for _ in range(n)]
    rng.shuffle(outcomes)
    previous = part.watermark()
    for o in outcomes:
        part.done(o)
        owed[o] -= 1
        _check(part, owed, last)
        mark = part.watermark()
        assert mark is not None and previous is not None
        assert mark >= previous  # never moves back
        previous = mark
        assert tracker.in_flight == sum(1 for left in owed.values() if left)
    assert part.watermark() == last + 1
    assert tracker.in_flight == 0
    assert calls.calls == owing
    assert marks(tracker.committable()) == {TP: last + 1}


@pytest.mark.parametrize("seed", range(8))
def test_random_reads_interleaved_with_completions(seed: int) -> None:
    rng = random.Random(1_000 + seed)
    tracker = OffsetTracker()
    part = tracker.assign(TP)
    owed: dict[int, int] = {}
    outstanding: list[int] = []  # one entry per outcome still owed
    next_offset = 0
    committed: tuple[int | None, str] = (None, "")
    while next_offset < 1_000 or outstanding:
        if next_offset < 1_000 and (not outstanding or rng.random() < 0.5):
            n = rng.choice((0, 1, 1, 2, 4))
            owed[next_offset] = n
            part.add(next_offset, n)
            outstanding.extend([next_offset] * n)
            next_offset += 1
        else:
            o = outstanding.pop(rng.randrange(len(outstanding)))
            part.done(o)
            owed[o] -= 1
        _check(part, owed, next_offset - 1)
        if rng.random() < 0.1:
            moved = tracker.committable()
            mark, note = part.watermark(), part.settled_note()
            assert mark is not None
            assert moved == ({} if (mark, note) == committed else {TP: (mark, note)})
            _check_note(note, mark, owed, next_offset)
            _check_note(part.settled_note(limit=40), mark, owed, next_offset)
            tracker.mark_committed(moved)
            committed = (mark, note)
        assert tracker.in_flight == sum(1 for left in owed.values() if left)
    assert part.watermark() == 1_000
    assert tracker.in_flight == 0


def _check_note(note: str, mark: int, owed: dict[int, int], next_offset: int) -> None:
    """The note says exactly which offsets from ``mark`` to its end are settled, and ends no later than the reads."""
    settled = Settled.parse(note, mark)
    if settled is None:
        assert note == ""
        return
    assert mark < settled.end <= next_offset and len(note) <= NOTE_BYTES
    said = [offset for offset in range(mark, settled.end) if settled.skips(offset)]
    assert said == [offset for offset in range(mark, settled.end) if owed[offset] == 0]
    assert settled.count == len(said) > 0


def test_a_note_names_the_settled_offsets_above_the_watermark_as_the_unfinished_runs() -> None:
    part = OffsetTracker().assign(TP)
    for offset in range(100, 110):
        part.add(offset, 1)
    for offset in (101, 102, 105, 108):
        part.done(offset)
    assert part.watermark() == 100
    note = part.settled_note()
    assert note == "settled1 10 0,3-4,6-7,9"
    settled = Settled.parse(note, 100)
    assert settled is not None and settled.count == 4 and settled.end == 110
    assert [o for o in range(100, 110) if settled.skips(o)] == [101, 102, 105, 108]
    assert settled.skips(105) and not settled.skips(106)  # asked in order, then again (a partition held and re-read)


def test_a_note_too_long_ends_before_the_runs_that_do_not_fit_and_never_claims_more() -> None:
    part = OffsetTracker().assign(TP)
    for offset in range(1_000):
        part.add(offset, 1)
    for offset in range(1, 1_000, 2):
        part.done(offset)  # every other one settled: 500 runs of one
    note = part.settled_note(limit=100)
    settled = Settled.parse(note, 0)
    assert settled is not None and len(note) <= 100 and 0 < settled.end < 1_000
    assert [o for o in range(settled.end) if settled.skips(o)] == list(range(1, settled.end, 2))


def test_no_note_when_nothing_above_the_watermark_is_settled_and_none_read_from_what_is_not_ours() -> None:
    part = OffsetTracker().assign(TP)
    assert part.settled_note() == ""  # nothing read
    part.add(0, 1)
    part.add(1, 1)
    assert part.settled_note() == ""  # all unfinished
    part.done(0)
    part.done(1)
    assert part.settled_note() == ""  # all finished: the watermark says it all
    for note in ("", "some other tool's metadata", "settled1 x 0", "settled1 0 ", "settled2 5 0", "settled1 5 0-x"):
        assert Settled.parse(note, 7) is None, note


def test_uncommitted_names_what_a_restart_reads_again() -> None:
    tracker = OffsetTracker()
    read_only = tracker.assign("read")
    for offset in range(5):
        read_only.add(offset, 1)
    done = tracker.assign("done")
    done.add(0, 0)
    tracker.mark_committed(tracker.committable())
    untouched = tracker.assign("untouched")
    assert untouched.next_offset is None
    read_only.done(0)
    read_only.done(1)
    tracker.mark_committed(tracker.committable())  # 2 is the watermark now: 2, 3, 4 are read again
    assert tracker.uncommitted() == {"read": (2, 5)}
