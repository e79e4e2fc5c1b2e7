"""Offset watermarks: commit per partition up to the lowest event whose outcomes are not all recorded.

Pure. Deliveries finish out of order; an event is done when every outcome record it is owed has been
acknowledged by Kafka. The committable offset of a partition is its lowest unfinished offset, or the
last offset seen + 1 when nothing is unfinished.

An offset cannot skip a hole, but what is settled above it can ride along: each commit carries, in its metadata,
a note of the offsets above the watermark that were settled then (``settled_note``: where the note ends, and the
unfinished offsets below that, as runs). The next owner of the partition (this process after a crash, or another
member) reads it back (``Settled``) and does not deliver those again: what a crash repeats is what was settled
since the last commit, and what was under way. The note is bounded (``NOTE_BYTES``; Kafka keeps 4,096 bytes by
default, ``offset.metadata.max.bytes``): where the unfinished runs do not fit, it ends earlier, never claims more.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Hashable

NOTE_BYTES = 2_000  # the most a commit's note of settled offsets takes
_NOTE = "settled1 "  # a note's version: another form of note is not read


class Settled:
    """What a commit's note says: every offset from the committed one up to ``end`` (excluded) is settled, but those in
    ``runs`` (ascending, inclusive (first, last) pairs). ``skips`` is asked of a partition's records in their order
    (in constant time; one asked from further back starts over)."""

    __slots__ = ("_at", "_runs", "end", "start")

    def __init__(self, start: int, end: int, runs: list[tuple[int, int]]) -> None:
        self.start = start
        self.end = end
        self._runs = runs
        self._at = 0  # the first run not wholly below the records asked about so far

    @classmethod
    def parse(cls, note: str | None, committed: int) -> Settled | None:
        """The note of the commit of ``committed``; None when it says nothing (or is not a note of ours)."""
        if not note or not note.startswith(_NOTE):
            return None
        try:
            span, _, text = note[len(_NOTE) :].partition(" ")
            runs = []
            for run in filter(None, text.split(",")):
                first, _, last = run.partition("-")
                runs.append((committed + int(first), committed + int(last or first)))
            end = committed + int(span)
        except ValueError:
            return None
        return cls(committed, end, runs) if end > committed else None

    @property
    def count(self) -> int:
        """How many offsets it says are settled."""
        return self.end - self.start - sum(last - first + 1 for first, last in self._runs)

    def skips(self, offset: int) -> bool:
        """Whether the record at ``offset`` (at least the committed one, below ``end``) was settled already."""
        runs, at = self._runs, self._at
        if at and offset <= runs[at - 1][1]:  # asked again from further back (a partition read again): from the top
            at = 0
        while at < len(runs) and runs[at][1] < offset:
            at += 1
        self._at = at
        return not (at < len(runs) and runs[at][0] <= offset)


class PartitionOffsets:
    """Unfinished offsets of one partition, for one assignment of it."""

    __slots__ = ("_order", "_pending", "_sizes", "committed", "next_offset", "note", "owner", "revoked", "settled")

    def __init__(self, owner: OffsetTracker) -> None:
        self.owner = owner
        self._pending: dict[int, int] = {}  # offset -> outcomes still owed
        self._sizes: dict[int, int] = {}  # offset -> bytes it holds while unfinished
        self._order: deque[int] = deque()  # unfinished offsets, ascending (records arrive in order)
        self.next_offset: int | None = None  # last offset seen + 1
        self.committed: int | None = None  # last watermark committed
        self.revoked = False  # given up: another consumer owns the partition now
        self.note = ""  # and the note committed with it
        self.settled: Settled | None = None  # what the last commit before this assignment says was settled above it

    @property
    def unfinished(self) -> int:
        return len(self._pending)

    def add(self, offset: int, owed: int, size: int = 0) -> None:
        """Record that ``offset`` was read and is owed ``owed`` outcomes (0: done already), holding ``size``
        bytes (its value) until then."""
        self.next_offset = offset + 1
        if owed > 0:
            self._pending[offset] = owed
            self._order.append(offset)
            owner = self.owner
            owner.in_flight += 1
            if size:
                self._sizes[offset] = size
                owner.in_flight_bytes += size

    def done(self, offset: int) -> None:
        """One outcome of ``offset`` is recorded. Safe to call after the partition was revoked.

        An event of a revoked partition still counts as in flight until it finishes: its deliveries
        are still under way and still hold memory, so the cap keeps counting them.
        """
        left = self._pending.get(offset)
        if left is None:
            return
        if left > 1:
            self._pending[offset] = left - 1
            return
        del self._pending[offset]
        owner = self.owner
        owner.in_flight -= 1
        size = self._sizes.pop(offset, 0)
        if size:
            owner.in_flight_bytes -= size
        owner.on_done()

    def watermark(self) -> int | None:
        """The offset to commit: the lowest unfinished one, else the next to read; None before any read."""
        order, pending = self._order, self._pending
        while order and order[0] not in pending:
            order.popleft()
        return order[0] if order else self.next_offset

    def settled_note(self, limit: int = NOTE_BYTES) -> str:
        """The note of the offsets above ``watermark()`` that are settled, for the commit's metadata (empty when there
        are none): ``settled1 <span> <runs>``, the span and the unfinished runs relative to the watermark."""
        mark, end = self.watermark(), self.next_offset
        if mark is None or end is None or end <= mark + 1:
            return ""
        pending = self._pending
        spans: list[list[int]] = []  # the unfinished offsets as [first, last] runs, ascending
        left = len(pending)  # unfinished offsets not walked yet, all of them from here to ``end``
        for offset in self._order:
            if offset in pending:
                last = end - 1 if left == end - offset else offset  # every one from here on unfinished: one run
                if spans and offset == spans[-1][1] + 1:
                    spans[-1][1] = last
                else:
                    spans.append([offset, last])
                if last != offset:  # the walk ends: at the in-flight cap, 10,000 offsets walked at every commit
                    break
                left -= 1
        runs: list[str] = []
        size = len(_NOTE) + 12  # the span, generously
        span = end - mark
        for first, last in spans:
            run = str(first - mark) if first == last else f"{first - mark}-{last - mark}"
            if size + len(run) + 1 > limit:  # the note ends where the runs stop fitting
                span = first - mark
                break
            runs.append(run)
            size += len(run) + 1
        settled = span - sum(last - first + 1 for first, last in spans[: len(runs)])
        return f"{_NOTE}{span} {','.join(runs)}" if settled > 0 else ""


class OffsetTracker:
    """Partitions by topic-partition key; the count of unfinished events across all of them."""

    def __init__(self, on_done: Callable[[], None] = lambda: None) -> None:
        self.partitions: dict[Hashable, PartitionOffsets] = {}
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.on_done = on_done

    def assign(self, tp: Hashable) -> PartitionOffsets:
        part = self.partitions.get(tp)
        if part is None:
            part = self.partitions[tp] = PartitionOffsets(self)
        return part

    def revoke(self, tp: Hashable) -> PartitionOffsets | None:
        """Forget the partition: its watermark is no longer ours to commit."""
        part = self.partitions.pop(tp, None)
        if part is not None:
            part.revoked = True
        return part

    def committable(self, tps: Collection[Hashable] | None = None) -> dict[Hashable, tuple[int, str]]:
        """Watermarks, with their notes of what is settled above them, that moved since they were last committed (of
        ``tps`` only, when given)."""
        out: dict[Hashable, tuple[int, str]] = {}
        for tp, part in self.partitions.items():
            if tps is not None and tp not in tps:
                continue
            mark = part.watermark()
            if mark is None:
                continue
            note = part.settled_note()
            if mark != part.committed or note != part.note:
                out[tp] = (mark, note)
        return out

    def uncommitted(self) -> dict[Hashable, tuple[int | None, int]]:
        """(last committed offset or None, last read + 1) of each partition read past its last commit: the offsets
        a restart reads again."""
        return {
            tp: (part.committed, part.next_offset)
            for tp, part in self.partitions.items()
            if part.next_offset is not None and part.committed != part.next_offset
        }

    def mark_committed(self, offsets: dict[Hashable, tuple[int, str]]) -> None:
        for tp, (mark, note) in offsets.items():
            part = self.partitions.get(tp)
            if part is not None:
                part.committed, part.note = mark, note
