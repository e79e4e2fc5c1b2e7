"""Offset watermarks: commit per partition up to the lowest event whose outcomes are not all recorded.

Pure. Deliveries finish out of order; an event is done when every outcome record it is owed has been
acknowledged by Kafka. The committable offset of a partition is its lowest unfinished offset, or the
last offset seen + 1 when nothing is unfinished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Hashable


class PartitionOffsets:
    """Unfinished offsets of one partition, for one assignment of it."""

    __slots__ = ("_order", "_pending", "_sizes", "committed", "next_offset", "owner", "revoked")  # the hot path

    def __init__(self, owner: OffsetTracker) -> None:
        self.owner = owner
        self._pending: dict[int, int] = {}  # offset -> outcomes still owed
        self._sizes: dict[int, int] = {}  # offset -> bytes it holds while unfinished
        self._order: deque[int] = deque()  # unfinished offsets, ascending (records arrive in order)
        self.next_offset: int | None = None  # last offset seen + 1
        self.committed: int | None = None  # last watermark committed
        self.revoked = False  # given up: another consumer owns the partition now

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

    def committable(self, tps: Collection[Hashable] | None = None) -> dict[Hashable, int]:
        """Watermarks that moved since they were last committed (of ``tps`` only, when given)."""
        out: dict[Hashable, int] = {}
        for tp, part in self.partitions.items():
            if tps is not None and tp not in tps:
                continue
            mark = part.watermark()
            if mark is not None and mark != part.committed:
                out[tp] = mark
        return out

    def uncommitted(self) -> dict[Hashable, tuple[int | None, int]]:
        """(last committed offset or None, last read + 1) of each partition read past its last commit: the offsets
        a restart reads again."""
        return {
            tp: (part.committed, part.next_offset)
            for tp, part in self.partitions.items()
            if part.next_offset is not None and part.committed != part.next_offset
        }

    def mark_committed(self, offsets: dict[Hashable, int]) -> None:
        for tp, mark in offsets.items():
            part = self.partitions.get(tp)
            if part is not None:
                part.committed = mark
