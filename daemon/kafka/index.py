"""The delivery index, read back: every results record of a delivery, found by its delivery id or searched by endpoint,
outcome, event type and time, at any age the results topic still keeps.

The index lives in Kafka (``{retry.topic_prefix}.delivery-index``): the results writer (``daemon.kafka.results``) adds
one entry per results record of a delivery once Kafka has acknowledged that record, with the record's partition and
offset, the entries of one write of results records in one index record (``daemon.core.model.IndexRecord``; a record
of one ``IndexEntry`` is what the index held before, read as well). Kafka cannot look a delivery id up, so the process
that answers lookups reads the topic from its start into a private SQLite database and follows it (the way Kafka
Streams keeps a table: the topic is the truth, the local store a copy rebuilt from it at each start; which process
keeps one: ``daemon.admin.scans``):

- **Local, private, never left behind**: SQLite's private temporary database (``sqlite3.connect("")``): on disk in
  SQLite's temporary directory (``SQLITE_TMPDIR``, else ``/var/tmp`` or ``/tmp``, the first writable), unlinked as soon
  as it is opened, so nothing is left however the process ends; its cache in memory is bounded (``_CACHE_KIB``). One
  thread does every read and write of it, in the order they were asked for, off the event loop.
- **Start-up does not wait for it**: reading the topic to its end runs in the background; until then (and for a
  delivery whose entry has not been read yet) a lookup says the index is behind, and its caller falls back to the
  bounded scan of the results topic (``daemon.kafka.history``).
- **Rebuilt from the results topic** (``rebuild``, ``webhook-router index-rebuild``): for deliveries recorded while
  the index was off, or an index topic lost: an entry for every results record of a delivery, from a time on.
- **Retention**: every ``_PRUNE_EVERY_S``, the entries of records the results topic no longer has (below each
  partition's first offset) are dropped here, so the copy keeps what the results topic keeps; the index topic is
  created with the results topic's ``retention.ms`` (``daemon.kafka.topics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import msgspec
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from daemon.core.model import IndexEntry, IndexRecord, IndexRow, decode_index, decode_outcome, encode_index, index_entry
from daemon.kafka.clients import partitions_of, producer
from daemon.kafka.follow import Follower
from daemon.kafka.readback import read_range
from daemon.kafka.readers import Readers

log = logging.getLogger(__name__)

_CACHE_KIB: Final = 16 * 1024  # SQLite's page cache; the rest of the database stays in its file
_PENDING_BYTES: Final = 1 << 20  # index records read and not yet stored past which a write is started at once
_BEHIND_S: Final = 10.0  # a copy last caught up longer ago than this may lack entries written since
_REBUILD_ENTRIES: Final = 500  # entries an index record written by ``rebuild`` holds at most
_PRUNE_EVERY_S: Final = 600.0
_COLUMNS: Final = ("results_partition, results_offset, delivery_id, endpoint_id, event_type, status, attempt, "
                   "trigger, at_ms, http_status, duration_ms")  # fmt: skip
_SCHEMA: Final = """
CREATE TABLE attempts (
    results_partition INTEGER NOT NULL, results_offset INTEGER NOT NULL, delivery_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL, event_type TEXT, status TEXT NOT NULL, attempt INTEGER NOT NULL, trigger TEXT NOT NULL,
    at_ms INTEGER NOT NULL, http_status INTEGER, duration_ms REAL,
    PRIMARY KEY (results_partition, results_offset)
) WITHOUT ROWID;
CREATE INDEX by_delivery ON attempts (delivery_id);
CREATE INDEX by_endpoint ON attempts (endpoint_id, at_ms);
CREATE INDEX by_time ON attempts (at_ms);
"""  # _COLUMNS in this order
# Every SQL text below is put together from the constant fragments of this module; every value is a parameter.
_INSERT: Final = f"INSERT OR IGNORE INTO attempts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    """Where a page of a search ended: the last entry's time and results position (the next page is older)."""

    at_ms: int
    partition: int
    offset: int


class IndexStore:
    """The index's local copy: one table of entries, unique by results position (an entry written twice is kept
    once). Not thread-safe: one thread uses it (``DeliveryIndex``'s)."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)  # "": SQLite's private temporary database
        self._db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode = OFF")  # a private copy rebuilt at each start: nothing to roll back
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.executescript(_SCHEMA)
        self._page_size: int = self._db.execute("PRAGMA page_size").fetchone()[0]
        self.entries = 0  # held (an entry read twice is held once)
        self.bytes = self._size()  # of its file

    def _size(self) -> int:
        return int(self._db.execute("PRAGMA page_count").fetchone()[0]) * self._page_size

    def close(self) -> None:
        self._db.close()

    def add(self, values: list[bytes]) -> int:
        """Store the entries of these index records; returns how many were readable (a record that is not is
        logged and left out). An entry held already (the same results position) is kept as it was."""
        rows: list[IndexRow] = []
        for value in values:
            try:
                rows += decode_index(value)
            except msgspec.DecodeError as exc:
                log.warning("a record of the delivery index could not be read (%s): left out", exc)
        self._db.execute("BEGIN")
        added = self._db.executemany(_INSERT, rows).rowcount
        self._db.execute("COMMIT")
        self.entries += added
        self.bytes = self._size()
        return len(rows)

    def attempts(self, delivery_id: str, endpoint_ids: Collection[str] | None) -> list[IndexEntry]:
        """Every entry of a delivery, oldest first, to one of ``endpoint_ids`` (None: to any endpoint)."""
        where, args = _scoped("delivery_id = ?", [delivery_id], endpoint_ids)
        return self._select(f"{where} ORDER BY at_ms, results_partition, results_offset", args)

    def search(
        self,
        endpoint_ids: Collection[str] | None,
        *,
        status: str | None = None,
        event_type: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        before: Cursor | None = None,
        limit: int = 100,
    ) -> list[IndexEntry]:
        """The newest ``limit`` entries (older than ``before``) of ``endpoint_ids`` (None: every endpoint) with this
        outcome, event type and time (unix ms, inclusive bounds), newest first."""
        clauses: list[str] = ["1 = 1"]
        args: list[Any] = []
        for column, value in (("status", status), ("event_type", event_type)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since_ms is not None:
            clauses.append("at_ms >= ?")
            args.append(since_ms)
        if until_ms is not None:
            clauses.append("at_ms <= ?")
            args.append(until_ms)
        if before is not None:
            clauses.append("(at_ms, results_partition, results_offset) < (?, ?, ?)")
            args += [before.at_ms, before.partition, before.offset]
        where, args = _scoped(" AND ".join(clauses), args, endpoint_ids)
        order = "ORDER BY at_ms DESC, results_partition DESC, results_offset DESC"
        return self._select(f"{where} {order} LIMIT ?", [*args, limit])

    def prune(self, starts: Mapping[int, int]) -> int:
        """Drop the entries of results records below their partition's first offset (``starts``: partition -> the
        first offset the results topic still has); returns how many."""
        dropped = 0
        for partition, start in starts.items():
            dropped += self._db.execute("DELETE FROM attempts WHERE results_partition = ? AND results_offset < ?",
                                        (partition, start)).rowcount  # fmt: skip
        self.entries -= dropped
        self.bytes = self._size()  # its pages kept for the entries to come: a file does not shrink
        return dropped

    def _select(self, where: str, args: list[Any]) -> list[IndexEntry]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM attempts WHERE {where}", args).fetchall()  # noqa: S608
        return [
            IndexEntry(partition=r[0], offset=r[1], delivery_id=r[2], endpoint_id=r[3], event_type=r[4], status=r[5],
                       attempt=r[6], trigger=r[7], at_ms=r[8], http_status=r[9], duration_ms=r[10])
            for r in rows
        ]  # fmt: skip


def _scoped(where: str, args: list[Any], endpoint_ids: Collection[str] | None) -> tuple[str, list[Any]]:
    """``where`` limited to the entries of ``endpoint_ids`` (None: no limit), however many they are."""
    if endpoint_ids is None:
        return where, args
    ids = msgspec.json.encode(sorted(endpoint_ids)).decode()
    return f"{where} AND endpoint_id IN (SELECT value FROM json_each(?))", [*args, ids]  # noqa: S608


class DeliveryIndex:
    """The delivery index of this instance: reads ``topic`` from its start in the background, then follows it, and
    keeps the entries of ``results_topic``'s records that are still there. ``stop()`` is safe twice."""

    def __init__(self, topic: str, results_topic: str, client_options: Mapping[str, Any]) -> None:
        self.topic = topic
        self._results_topic = results_topic
        self._follower = Follower(topic, client_options, self._apply, "delivery-index")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delivery-index")
        self._store: IndexStore | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._writing: asyncio.Future[int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.caught_up = False  # everything the topic held when this instance started has been read
        self._caught_up = asyncio.Event()
        self.read = 0  # entries read (one held already counts again)

    async def start(self) -> None:
        """Open the local store and start reading the topic (returns at once: ``caught_up`` says when it is done)."""
        self._store = await self._call(IndexStore)
        self._tasks = [asyncio.create_task(self._catch_up(), name="delivery-index"),
                       asyncio.create_task(self._prune_every(_PRUNE_EVERY_S), name="delivery-index-prune")]  # fmt: skip

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._follower.stop()
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await self._call(store.close)
        self._executor.shutdown(wait=False)

    async def read_to_end(self) -> None:
        """Wait until ``caught_up``."""
        await self._caught_up.wait()

    def behind(self) -> str | None:
        """Why a delivery may be missing from the index although it is in the results topic (None: it is not behind,
        beyond what was written in the last moments)."""
        if self._store is None:
            return "the delivery index is not open"
        if not self.caught_up:
            return f"the delivery index is still being read from its topic ({self.read:,} entries so far)"
        records, seconds = self._follower.lag()
        if seconds is None or seconds > _BEHIND_S:
            return f"the delivery index is behind its topic ({records:,} records known and not read yet)"
        return None

    def lag(self) -> tuple[int, float]:
        """(records, seconds) this copy is behind its topic (``daemon.kafka.follow.Behind``; seconds infinite until
        it has first read the topic to its end)."""
        records, seconds = self._follower.lag()
        return records, math.inf if seconds is None else seconds

    def size(self) -> tuple[int, int]:
        """(entries, bytes) this copy holds (its file's bytes)."""
        store = self._store
        return (store.entries, store.bytes) if store is not None else (0, 0)

    async def attempts(self, delivery_id: str, endpoint_ids: Collection[str] | None) -> list[IndexEntry]:
        """Every entry of a delivery to one of ``endpoint_ids`` (None: to any endpoint), oldest first."""
        store = self._open()
        self._write_pending()
        found: list[IndexEntry] = await self._call(store.attempts, delivery_id, endpoint_ids)
        return found

    async def search(self, endpoint_ids: Collection[str] | None, **filters: Any) -> list[IndexEntry]:
        """``IndexStore.search`` of everything read so far."""
        store = self._open()
        self._write_pending()
        found: list[IndexEntry] = await self._call(lambda: store.search(endpoint_ids, **filters))
        return found

    def _open(self) -> IndexStore:
        if self._store is None:
            raise RuntimeError("the delivery index is not open")
        return self._store

    def _apply(self, record: Any) -> None:
        if record.value is not None:
            self._pending.append(record.value)
            self._pending_bytes += len(record.value)
            if self._pending_bytes >= _PENDING_BYTES:
                self._write_pending()

    def _write_pending(self) -> None:
        """Hand what was read and not stored yet to the store's thread (in order: a query asked after sees it)."""
        if self._pending and self._store is not None:
            values, self._pending, self._pending_bytes = self._pending, [], 0
            self._writing = self._call(self._store.add, values)
            self._writing.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.read += future.result()

    async def _catch_up(self) -> None:
        started = time.monotonic()
        try:
            await self._follower.start()
        except Exception:  # the follower retries what Kafka says to retry: this is a bug or a refusal for good
            log.exception("the delivery index stopped reading %s: lookups fall back to the bounded scan", self.topic)
            raise
        self._write_pending()
        if self._writing is not None:
            await asyncio.shield(self._writing)
        self.caught_up = True
        self._caught_up.set()
        log.info("delivery index read: %d entries in %.1f s, following %s", self.read, time.monotonic() - started,
                 self.topic)  # fmt: skip
        while True:  # what the follower reads comes in fetches: stored within a second, or sooner when many
            await asyncio.sleep(1.0)
            self._write_pending()

    async def _prune_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                dropped = await self.prune()
            except KafkaError as exc:  # the next round asks again
                log.warning("delivery index: the results topic's first offsets not known (%s: %s)",
                            type(exc).__name__, exc)  # fmt: skip
                continue
            if dropped:
                log.info("delivery index: %d entries of records past the results topic's retention dropped", dropped)

    async def prune(self) -> int:
        """Drop the entries of results records the results topic no longer has; returns how many."""
        consumer, store = self._follower.consumer, self._open()
        tps = [TopicPartition(self._results_topic, p) for p in await partitions_of(consumer, self._results_topic)]
        starts = await consumer.beginning_offsets(tps) if tps else {}
        return int(await self._call(store.prune, {tp.partition: offset for tp, offset in starts.items()}))

    def _call(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


async def rebuild(client_options: Mapping[str, Any], results_topic: str, index_topic: str, since_ms: int = 0) -> int:
    """Write an index entry for every results record of a delivery on ``results_topic`` recorded since ``since_ms``
    (unix ms) up to its end as of now, as the results writer would have (to the index partition of the same number,
    the record's Kafka timestamp as its time); returns how many. Entries already there are written again: every
    instance keeps one of each (by position)."""
    readers = Readers(client_options)
    writer = producer(client_options, acks="all", linger_ms=50, max_batch_size=512 * 1024)
    await writer.start()
    written = 0
    try:
        parts = sorted(await writer.partitions_for(index_topic))
        pending: dict[int, list[IndexRow]] = {}  # results partition -> entries not written yet
        sends = []

        async def write(partition: int) -> None:
            rows = pending.pop(partition)
            sends.append(await writer.send(index_topic, encode_index(IndexRecord(entries=rows)),
                                           partition=parts[partition % len(parts)]))  # fmt: skip

        async with contextlib.aclosing(read_range(readers, [results_topic], since_ms=since_ms)) as records:
            async for record in records:
                try:
                    entry = index_entry(decode_outcome(record.value), record.timestamp) if record.value else None
                except msgspec.DecodeError:
                    continue  # not a results record of the router's
                if entry is None:
                    continue
                rows = pending.setdefault(record.partition, [])
                rows.append((record.partition, record.offset, *entry))
                written += 1
                if len(rows) >= _REBUILD_ENTRIES:
                    await write(record.partition)
                if len(sends) >= 100:
                    await asyncio.gather(*sends)
                    sends.clear()
        for partition in list(pending):
            await write(partition)
        await asyncio.gather(*sends)
    finally:
        await writer.stop()
        await readers.stop()
    return written
