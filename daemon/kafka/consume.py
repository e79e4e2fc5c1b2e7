"""The consumer: a group over several topics, explicit per-partition commits, backpressure by pausing.

Offsets are committed only up to each partition's lowest unfinished event (see ``offsets``), each with a note of
the offsets above it already settled; a partition assigned reads its last commit's note, and the records it names
are not dispatched again (counted in ``settled_skipped_total``). Above
``max_in_flight_events`` every assigned partition is paused; below half of it they resume. Pauses
are re-applied after each rebalance, because aiokafka forgets them.

A record batch that cannot be decoded (corrupt, or a codec not installed) makes aiokafka's ``getmany`` raise,
and what the same call had already taken from other partitions is lost with it (their positions moved on).
So a failed fetch rewinds every partition to the next record not yet dispatched, then reads them one
partition at a time, a record at a time, to find the partition whose batch fails: that one is held at the
batch's offset (``stuck``: logged with its coordinates, then once a minute, counted, shown by ``/readyz``)
and the others flow. Nothing is skipped silently: an operator skips the batch explicitly (``skip``), after
its raw bytes and coordinates are on the dead-letter topic.

A partition the group has no offset for, or whose committed offset is outside the log (its records deleted by
retention while the group was away, or past the end), starts where ``kafka.auto_offset_reset`` says (the beginning
that is left, or the end), with one log line saying how many events that replays or skips and
``offset_resets_total{consumer, reason}``: never a silent replay of a whole partition.

A topic (or the group) this principal may no longer read (an ACL taken away while the router runs:
TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED) is not a batch that cannot be decoded: nothing is held for an
operator to skip. Its partitions wait where they are (the fetch asked again a second later, not in a hot loop), one
line says so naming the topic or group and what to grant, ``/readyz`` says it while it lasts,
``kafka_refused{what="read"}`` counts them; once fetches have gone ``_REFUSED_CLEAR_S`` without that refusal, one line
says it is over.

A consumer aiokafka can no longer run (one of its background tasks ended: the group's coordination, heartbeat or commit
refresh, or the fetcher; aiokafka starts none of them again, and every fetch after raises the same exception, or
returns nothing for good) is not a batch that cannot be decoded either: nothing is held. It is replaced, as a
rebalance would take its partitions away: what is in flight is drained (``drain_timeout_s``), committed where the old
consumer still can, and a new consumer joins the group, which assigns the partitions again from their last commit.
One error line names the task and its exception, ``consumer_rebuilds_total{consumer}`` counts it, ``/readyz`` says
it while it lasts; a consumer that breaks again soon waits longer before the next (1, 3, 7... up to 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    TopicAuthorizationFailedError,
)

from daemon.core.clock import utc_now_iso
from daemon.core.config import KafkaConfig
from daemon.core.offsets import OffsetTracker, PartitionOffsets, Settled
from daemon.kafka.clients import (
    cancelled_by_caller,
    close_consumer,
    committed_notes,
    consumer_broken,
    discard_consumer,
    fetch_wait_ms,
    group_consumer,
    set_fetch_wait_ms,
)
from daemon.kafka.contact import Throttle, held_note
from daemon.observe.metrics import Metrics

log = logging.getLogger(__name__)

# Takes one record; returns None, or a time (unix ms) before which the record's partition must not be read
# again from that record on (a retry tier whose head is not due yet): the rest of its batch waits too.
Dispatch = Callable[[Any, PartitionOffsets], int | None]
# Awaited with each fetch's records (by partition) before any is dispatched: what dispatch needs that takes I/O (the
# records' writer schemas). It must not raise for a fault it can leave to dispatch (which then holds the partition).
Prepare = Callable[[dict[TopicPartition, list[Any]]], Awaitable[None]]

_POLL_MS = 200
_LAG_INTERVAL_S = 1.0  # the lag gauge is brought up to date this often (a scrape is cheaper than an update)
_FAILED_FETCH_WAIT_S = 1.0
_PROBE_MS = 300  # how long one partition's probe waits for its records after a failed fetch
_STUCK_LOG_S = 60.0
COMMIT_WAIT_S = 5.0  # a commit under way this long (its coordinator moving, or away): /readyz says so
_REFUSALS = (TopicAuthorizationFailedError, GroupAuthorizationFailedError)  # never a batch's fault
_REFUSED_CLEAR_S = 5.0  # a topic refused (TOPIC_AUTHORIZATION_FAILED) is read again once fetches go this long without
# What a rebalance waits for a member beyond its drain on revoke: the commit after the drain, then its JoinGroup.
_REJOIN_AFTER_DRAIN_MS = 10_000
# Looks at the lag in a row (one a second) at which no fetch returned a record while records were ahead, before the
# fetch's wait is doubled, up to _FETCH_WAIT_MAX_MS (``Source._watch_fetches``).
_STARVED_LOOKS = 3
_FETCH_WAIT_MAX_MS = 1_000
_REBUILD_WINDOW_S = 300.0  # rebuilds of a consumer within this long make the next one wait: 2 ** n - 1 seconds
_REBUILD_WAIT_MAX_S = 60.0
_REBUILD_COMMIT_S = 10.0  # what the commit of a broken consumer's partitions may take (it may no longer answer)


class Stuck(msgspec.Struct, frozen=True, kw_only=True):
    """A partition held at a batch that cannot be decoded."""

    topic: str
    partition: int
    offset: int
    error: str
    since: str


class Source:
    """Owns the AIOKafkaConsumer: fetches, hands records to ``dispatch``, commits watermarks."""

    def __init__(
        self,
        kafka: KafkaConfig,
        environ: Any,
        metrics: Metrics,
        dispatch: Dispatch,
        drain_timeout_s: float,
        name: str = "events",
        prepare: Prepare | None = None,
    ) -> None:
        self._kafka = kafka
        self._metrics = metrics
        self._name = name
        self._told_no_commit: set[TopicPartition] = set()  # said once per partition: every rebalance repeats it
        self._fetch_errors_logged = Throttle()
        self._commit_errors_logged = Throttle()
        self._paused_gauge = metrics.fetch_paused.labels(name)
        self._in_flight = metrics.events_in_flight.labels(name)
        self._in_flight_bytes = metrics.events_in_flight_bytes.labels(name)
        self._paused_gauge.set(0)
        # Served from the start (0), so that a rate or an increase over them has a beginning.
        metrics.fetch_errors.labels(name)
        metrics.batches_undecodable.labels(name)
        for reason in ("deleted", "past_end", "no_commit"):
            metrics.offset_resets.labels(name, reason)
        self._skipped_settled = metrics.settled_skipped.labels(name)
        self._dispatch = dispatch
        self._prepare = prepare
        self._drain_timeout_s = drain_timeout_s
        self._progress = asyncio.Event()
        self.offsets = OffsetTracker(on_done=self._on_done)
        self._cap = kafka.max_in_flight_events
        self._low_water = kafka.max_in_flight_events // 2
        self._bytes_cap = kafka.max_in_flight_bytes
        self._bytes_low_water = kafka.max_in_flight_bytes // 2
        self._paused = False
        self._commit_lock = asyncio.Lock()
        self._commit_failing: tuple[float, str] | None = None  # since (monotonic), why: until a commit succeeds
        self._committing_since: float | None = None  # a commit under way (aiokafka waits for a coordinator in it)
        self._commit_under_way: tuple[Any, asyncio.Future[None]] | None = None  # the consumer it goes through
        self.joined = False
        self.stopping = False
        self._lag_labels: set[tuple[str, str]] = set()
        self._high: dict[TopicPartition, int] = {}  # last known high watermarks (the lag during an outage)
        self._fed = False  # a fetch returned records since the last look (``_watch_fetches``)
        # fetching was paused, held, failed, refused, reset or rebalanced since the last look: empty fetches then are
        # no broker's silence (set where each happens; a failed fetch's rewind and hold come after _fetch_failed)
        self._interrupted = False
        self._starved = 0  # looks in a row at which records were ahead and no fetch returned any
        self._reset_to: dict[TopicPartition, int] = {}  # where a reset started a partition nothing was read of yet
        self._fetch_wait = metrics.fetch_max_wait.labels(name)
        self._fetch_wait.set(kafka.fetch_max_wait_ms / 1000)
        self._held: dict[TopicPartition, asyncio.TimerHandle] = {}
        self.stuck: dict[TopicPartition, Stuck] = {}
        self._stuck_gauge = metrics.partitions_stuck.labels(name)
        self._stuck_gauge.set(0)
        self._stuck_logged = Throttle(_STUCK_LOG_S)
        # what is refused -> (since, last refused: monotonic, what to say once it is not)
        self._refused: dict[str, tuple[float, float, str]] = {}
        self._refused_gauge = metrics.kafka_refused.labels("read")
        self._rebuilds = metrics.consumer_rebuilds.labels(name)
        self._rebuilt: list[float] = []  # when this consumer was last replaced (monotonic), within _REBUILD_WINDOW_S
        self._rebuilding: tuple[float, str] | None = None  # since (monotonic), why: while a new consumer is built
        self._environ = environ
        self._rejoin_ms = max(kafka.session_timeout_ms, round(drain_timeout_s * 1000) + _REJOIN_AFTER_DRAIN_MS)
        self._consumer = group_consumer(kafka, environ, self._rejoin_ms)
        self._topics = list(kafka.topics)

    def hears(self, consumer: Any) -> bool:
        """Whether the rebalance callbacks of ``consumer`` are this source's: not once it is being replaced (the new
        one is subscribed, so called back, only as the replacement ends)."""
        return consumer is self._consumer and self._rebuilding is None

    async def start(self) -> None:
        await self._consumer.start()
        self.subscribe(self._topics)

    def subscribe(self, topics: list[str]) -> None:
        self._topics = list(topics)
        self._consumer.subscribe(topics=self._topics, listener=_Listener(self, self._consumer))

    async def stop(self) -> None:
        """Leave the group. Commit first: aiokafka does not call on_partitions_revoked on stop()."""
        self.joined = False
        self._drop_holds()
        await close_consumer(self._consumer)

    # --- the fetch loop ---

    async def run(self) -> None:
        """Fetch and dispatch until ``stopping`` is set. What a fetch under way returns once it is set is not
        dispatched: the shutdown's drain may be over and its commit made, so it would be delivered uncommitted, then
        again by whoever reads the partition next; not dispatched, it is read from the last commit."""
        offsets = self.offsets
        next_lag = time.monotonic()
        max_records = self._kafka.max_poll_records
        while not self.stopping:
            consumer = self._consumer  # a new one once the one before broke (``_mend``)
            # Never fetch more than the cap has room for: the cap on events in flight is exact.
            room = self._cap - offsets.in_flight
            if (room <= 0 or offsets.in_flight_bytes >= self._bytes_cap) and not self._paused:
                self._pause()
            try:
                batches = await consumer.getmany(timeout_ms=_POLL_MS, max_records=max(1, min(max_records, room)))
            except asyncio.CancelledError as exc:
                if cancelled_by_caller():
                    raise
                if not await self._mend():  # aiokafka's own task cancelled: its consumer broken, replaced
                    self._fetch_failed("fetch", exc)
                    await asyncio.sleep(_FAILED_FETCH_WAIT_S)
                continue
            except NoOffsetForPartitionError as exc:
                await self._reset({exc.args[0]: None})
                continue
            except OffsetOutOfRangeError as exc:
                await self._reset(exc.args[0])
                continue
            except _REFUSALS as exc:  # an ACL taken away: nothing was taken from any partition
                for refusal, again in self._refusals(exc):
                    self._read_refused(refusal, again)
                if not await self._mend():  # a refusal that ended the heartbeat: never joined again, once granted
                    await asyncio.sleep(_FAILED_FETCH_WAIT_S)
                continue
            except Exception as exc:  # never the end of the process: what was lost is read again, a bad batch held
                if not await self._mend():  # the consumer broken is replaced (and says so); a batch, isolated
                    self._fetch_failed("fetch", exc)
                    await self._isolate()
                continue
            if self._refused:
                self._read_again()
            await self._prepared(batches)
            if self.stopping:  # asked for while the fetch waited: none of its records is dispatched
                break
            failed = False
            for tp, records in batches.items():
                failed = not self._take(tp, records) or failed
            if failed:
                await asyncio.sleep(_FAILED_FETCH_WAIT_S)
            if self.stuck and self._stuck_logged.ready() is not None:
                log.error("still held at a batch that cannot be decoded: %s (skip it: see docs/kafka.md, "
                          "'Stuck partitions')", "; ".join(_describe(s) for s in self.stuck.values()))  # fmt: skip
            self._in_flight.set(offsets.in_flight)
            self._in_flight_bytes.set(offsets.in_flight_bytes)
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + _LAG_INTERVAL_S
                self._update_lag()
                self._watch_fetches()
                await self._mend()  # a fetcher's task that ended says nothing: its fetches only return no records
            # getmany() does not yield while fetched records wait: let the lanes start on this batch before
            # the next is dispatched (deliveries begin sooner; a lane's pace is known before its queue fills).
            await asyncio.sleep(0)

    async def _prepared(self, batches: dict[TopicPartition, list[Any]]) -> None:
        if self._prepare is None or not batches:
            return
        try:
            await self._prepare(batches)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: what was not prepared waits in dispatch (its partition held), never lost
            self._fetch_failed("preparing a fetch's records", exc)

    def _take(self, tp: TopicPartition, records: list[Any]) -> bool:
        """Dispatch one partition's fetched records. False when one failed (a bug): the partition is read again
        from it later."""
        part = self.offsets.partitions.get(tp)
        if part is None:  # revoked while the batch was on its way
            return True
        taken = skipped = 0
        ok = True
        settled = part.settled
        if records:
            self._fed = True
        for record in records:
            if settled is not None:  # only after an assignment whose last commit noted settled offsets
                if record.offset < settled.end:
                    if settled.skips(record.offset):
                        part.add(record.offset, 0)
                        skipped += 1
                        continue
                else:
                    part.settled = settled = None
            try:
                hold_until = self._dispatch(record, part)
            except Exception as exc:  # a bug: read this record again later rather than skip it
                self._fetch_failed(f"dispatch of {tp.topic}[{tp.partition}]@{record.offset}", exc)
                self._consumer.seek(tp, record.offset)
                ok = False
                break
            if hold_until is not None:
                self._hold(tp, record.offset, hold_until)
                break
            taken += 1
        self._metrics.events_consumed.labels(tp.topic).inc(taken)
        if skipped:
            self._skipped_settled.inc(skipped)
        return ok

    async def _isolate(self) -> None:
        """After a fetch failed: put every partition back at the next record not dispatched yet (the failed call
        may have taken records of other partitions with it), then read them one at a time, a record at a time,
        up to ``max_poll_records`` each: the partition whose batch fails is held there (``stuck``)."""
        consumer = self._consumer
        suspects = sorted(tp for tp in consumer.assignment() if tp not in self.stuck)
        if not suspects:  # every partition held already: no batch of theirs failed this fetch; never a hot loop
            await asyncio.sleep(_FAILED_FETCH_WAIT_S)
            return
        try:
            await self._rewind(suspects)
            for tp in suspects:
                for _ in range(self._kafka.max_poll_records):
                    try:
                        batch = await consumer.getmany(tp, timeout_ms=_PROBE_MS, max_records=1)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        if isinstance(exc, KafkaError) and (exc.retriable or isinstance(exc, _REFUSALS)):
                            raise  # the cluster's (an ACL taken away, too), not the batch's: waited out
                        if consumer_broken(consumer) is not None:
                            return  # the consumer's, not the batch's: the fetch loop replaces it
                        await self._stick(tp, exc)
                        break
                    records = batch.get(tp)
                    if records:
                        await self._prepared(batch)
                    if self.stopping:
                        return
                    if not records or not self._take(tp, records):
                        break
        except KafkaError as exc:  # the cluster itself: waited out, tried again
            self._fetch_failed("rewinding after a failed fetch", exc)
            await asyncio.sleep(_FAILED_FETCH_WAIT_S)

    async def _reset(self, positions: dict[TopicPartition, int | None]) -> None:
        """Start each partition (of ``positions``: the offset the group had, None for none) where
        ``kafka.auto_offset_reset`` says, and say so: one line and ``offset_resets_total`` per partition."""
        self._interrupted = True
        consumer = self._consumer
        where = self._kafka.auto_offset_reset
        for tp, offset in positions.items():
            if tp not in consumer.assignment():
                continue
            try:
                start = (await consumer.beginning_offsets([tp]))[tp]
                end = (await consumer.end_offsets([tp]))[tp]
            except KafkaError as exc:  # the partition asks again at the next fetch
                self._fetch_failed(f"finding where {tp.topic}[{tp.partition}] starts", exc)
                await asyncio.sleep(_FAILED_FETCH_WAIT_S)
                return
            target = start if where == "earliest" else end
            consumer.seek(tp, target)
            self._reset_to[tp] = target
            name = f"{tp.topic}[{tp.partition}]"
            says = f"as kafka.auto_offset_reset = {where!r} says"
            if offset is None:
                reason = "no_commit"  # a new group, or a retry tier nothing has passed through yet: said once
                level = logging.DEBUG if tp in self._told_no_commit else logging.INFO
                self._told_no_commit.add(tp)
                log.log(level, "%s: group %s has no offset for it: reading from %d (the log starts at %d, ends at %d), "
                        "%s", name, self._kafka.group_id, target, start, end, says)  # fmt: skip
            elif offset < start:
                reason = "deleted"
                skipped = f"; {target - start} more skipped" if target > start else ""
                log.warning("%s: the group's offset %d was deleted by retention (the log starts at %d): %d events "
                            "never read%s; reading from %d, %s", name, offset, start, start - offset, skipped, target,
                            says)  # fmt: skip
            else:
                reason = "past_end"
                log.warning("%s: the group's offset %d is past the log's end, %d (the topic made again, or its "
                            "records deleted?): reading from %d, %s", name, offset, end, target, says)  # fmt: skip
            self._metrics.offset_resets.labels(self._name, reason).inc()

    async def _rewind(self, tps: list[TopicPartition]) -> None:
        consumer = self._consumer
        for tp in tps:
            part = self.offsets.partitions.get(tp)
            if part is not None and part.next_offset is not None:
                consumer.seek(tp, part.next_offset)
                continue
            committed = await consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
            else:  # nothing read here yet, nothing committed: from the start (twice rather than never)
                await consumer.seek_to_beginning(tp)

    async def _stick(self, tp: TopicPartition, exc: BaseException) -> None:
        consumer = self._consumer
        offset = await consumer.position(tp)
        consumer.pause(tp)
        consumer.seek(tp, offset)  # drops what aiokafka keeps of the failed batch; read from it once resumed
        stuck = Stuck(topic=tp.topic, partition=tp.partition, offset=offset, error=_error_of(exc), since=utc_now_iso())
        self.stuck[tp] = stuck
        self._stuck_gauge.set(len(self.stuck))
        self._metrics.batches_undecodable.labels(self._name).inc()
        log.error("%s: held there; the other partitions go on (skip it: see docs/kafka.md, 'Stuck partitions')",
                  _describe(stuck))  # fmt: skip

    def skip(self, tp: TopicPartition, offset: int, next_offset: int) -> None:
        """Go past the stuck batch of ``tp`` that starts at ``offset`` (its dead letter is written): read from
        ``next_offset`` on. Raises ValueError when ``tp`` is not stuck there."""
        stuck = self.stuck.get(tp)
        if stuck is None or stuck.offset != offset:
            raise ValueError(f"{tp.topic}[{tp.partition}] is not held at offset {offset}")
        part = self.offsets.partitions.get(tp)
        if part is not None:
            part.add(next_offset - 1, 0)  # the batch's offsets are settled: the watermark may pass them
        self._consumer.seek(tp, next_offset)
        del self.stuck[tp]
        self._stuck_gauge.set(len(self.stuck))
        if not self._paused and tp not in self._held:
            self._consumer.resume(tp)
        log.warning("%s[%d]: the batch at %d skipped by an operator (on the dead-letter topic); reading from %d",
                    tp.topic, tp.partition, offset, next_offset)  # fmt: skip

    def _refusals(self, exc: KafkaError) -> list[tuple[str, str]]:
        """What ``exc`` refuses, and what is said once it no longer does: one per topic (a topic, or the set of them
        that the group's metadata names) or the group."""
        named = exc.args[0] if exc.args else "?"
        names = sorted(named) if isinstance(named, set | list | tuple) else [str(named)]
        if isinstance(exc, GroupAuthorizationFailedError):
            where = "kafka.group_id" if self._name == "events" else "the retry tiers' group"
            return [(f"consumer group {name} ({where}): this principal may not use it (GROUP_AUTHORIZATION_FAILED): "
                     "grant it Read on the group", f"consumer group {name} is used again")
                    for name in names]  # fmt: skip
        setting = "kafka.topics" if self._name == "events" else "retry.topic_prefix: a retry tier"
        return [(f"topic {name} ({setting}): this principal may not read it (TOPIC_AUTHORIZATION_FAILED): grant it "
                 "Read", f"topic {name} is read again") for name in names]  # fmt: skip

    def _read_refused(self, refusal: str, again: str) -> None:
        self._interrupted = True
        self._metrics.fetch_errors.labels(self._name).inc()
        now = time.monotonic()
        if refusal not in self._refused:
            self._refused_gauge.inc()
            log.error("%s: its partitions wait, fetched again every %.0f s (see docs/kafka.md, 'Who may write the "
                      "router's topics')", refusal, _FAILED_FETCH_WAIT_S)  # fmt: skip
        self._refused[refusal] = (self._refused.get(refusal, (now, now, again))[0], now, again)

    def _read_again(self) -> None:
        """The refusals that fetches have gone ``_REFUSED_CLEAR_S`` without: over."""
        now = time.monotonic()
        for refusal, (since, last, again) in list(self._refused.items()):
            if now - last >= _REFUSED_CLEAR_S:
                del self._refused[refusal]
                self._refused_gauge.dec()
                log.info("%s after %.0f s refused", again, last - since)

    def _fetch_failed(self, what: str, exc: BaseException) -> None:
        self._interrupted = True
        self._metrics.fetch_errors.labels(self._name).inc()
        held = self._fetch_errors_logged.ready()
        if held is not None:  # a Kafka error is the cluster's; anything else is a bug, shown with its traceback
            trace = None if isinstance(exc, KafkaError) else exc
            log.error(
                "%s failed (%s: %s); trying again%s", what, type(exc).__name__, exc, held_note(held), exc_info=trace
            )

    def _pause(self) -> None:
        self._interrupted = True
        self._paused = True
        self._paused_gauge.set(1)
        self._consumer.pause(*self._consumer.assignment())
        log.info(
            "%d events (%d bytes) in flight: fetching paused", self.offsets.in_flight, self.offsets.in_flight_bytes
        )

    def _on_done(self) -> None:
        self._progress.set()
        offsets = self.offsets
        if self._paused and offsets.in_flight <= self._low_water and offsets.in_flight_bytes <= self._bytes_low_water:
            self._paused = False
            self._paused_gauge.set(0)
            held = self._held.keys() | self.stuck.keys()
            self._consumer.resume(*(tp for tp in self._consumer.assignment() if tp not in held))
            log.info("%d events in flight: fetching resumed", self.offsets.in_flight)

    def _hold(self, tp: TopicPartition, offset: int, until_ms: int) -> None:
        """Read ``tp`` again from ``offset``, not before ``until_ms`` (its head record is not due yet).

        The records of the batch past ``offset`` were already returned: seek back, then pause.
        """
        self._interrupted = True
        self._consumer.seek(tp, offset)
        self._consumer.pause(tp)
        old = self._held.pop(tp, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, until_ms / 1000 - time.time())
        self._held[tp] = asyncio.get_running_loop().call_later(delay, self._release, tp)

    def _release(self, tp: TopicPartition) -> None:
        self._held.pop(tp, None)
        if not self._paused and tp in self._consumer.assignment() and tp not in self.stuck:
            self._consumer.resume(tp)

    def _drop_holds(self, tps: set[TopicPartition] | None = None) -> None:
        for tp in list(self._held):
            if tps is None or tp in tps:
                self._held.pop(tp).cancel()

    # --- a consumer aiokafka can no longer run ---

    async def _mend(self) -> bool:
        """Replace the consumer if one of aiokafka's background tasks of it ended (``consumer_broken``): True when it
        was (or the daemon began stopping meanwhile)."""
        broken = consumer_broken(self._consumer)
        if broken is None:
            return False
        what, exc = broken
        why = f"aiokafka's {what} task ended: " + (_error_of(exc) if exc is not None else "without an error")
        now = time.monotonic()
        self._rebuilt = [t for t in self._rebuilt if now - t < _REBUILD_WINDOW_S]
        wait = min(_REBUILD_WAIT_MAX_S, 2.0 ** len(self._rebuilt) - 1)
        self._rebuilt.append(now)
        self._rebuilding = (now, why)
        self._rebuilds.inc()
        self._interrupted = True
        before = len(self._rebuilt) - 1
        again = f" ({before} times already in {_REBUILD_WINDOW_S:.0f} s: after {wait:.0f} s)" if before else ""
        trace = None if exc is None or isinstance(exc, KafkaError) else exc
        if isinstance(exc, _REFUSALS):  # said already (``_read_refused``): the group's, not aiokafka's bug
            log.warning("%s: %s; aiokafka would not join the group again once it is granted: a new consumer "
                        "replaces it, which joins (refused until then)%s", self._name, why, again)  # fmt: skip
        else:
            log.error("%s: %s; aiokafka does not start it again: this consumer would fetch and commit "
                      "nothing more. Replacing it with a new one, as a rebalance would: what is in flight is drained "
                      "and committed, the group assigns its partitions again%s", self._name, why, again,
                      exc_info=trace)  # fmt: skip
        try:
            await self._replace(self._consumer, wait)
        finally:
            self._rebuilding = None
        return True

    async def _replace(self, old: Any, wait_s: float) -> None:
        began = time.monotonic()
        held = set(self.offsets.partitions)
        await self.on_revoked(held, _REBUILD_COMMIT_S)
        under_way = self._commit_under_way
        if under_way is not None and under_way[0] is old:  # a commit_every's, waiting on the old consumer for good
            under_way[1].cancel()
        wait_ms = fetch_wait_ms(old)
        await discard_consumer(old)
        await asyncio.sleep(wait_s)  # a shutdown meanwhile cancels it with the fetch loop
        while not self.stopping:
            new = self._consumer = group_consumer(self._kafka, self._environ, self._rejoin_ms)
            try:
                await new.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the cluster away: tried again
                self._fetch_failed(f"starting a new {self._name} consumer", exc)
                await discard_consumer(new)
                await asyncio.sleep(_FAILED_FETCH_WAIT_S)
                continue
            if wait_ms is not None:
                set_fetch_wait_ms(new, wait_ms)
            self.subscribe(self._topics)
            log.info("%s: a new consumer replaced the broken one in %.1f s (its partitions: %s); the group assigns "
                     "them again", self._name, time.monotonic() - began, _names(held) or "none")  # fmt: skip
            return

    # --- commits and draining ---

    async def commit(self, tps: set[TopicPartition] | None = None) -> None:
        """Commit every watermark that moved (of ``tps`` only, when given). Failures are logged and counted."""
        async with self._commit_lock:
            marks = self.offsets.committable(tps)
            if not marks:
                return
            self._committing_since = time.monotonic()
            consumer = self._consumer
            under_way = asyncio.ensure_future(consumer.commit(marks))
            self._commit_under_way = (consumer, under_way)
            try:
                await under_way
            except asyncio.CancelledError:
                if cancelled_by_caller():
                    raise
                self._metrics.commits.labels("error").inc()  # abandoned with the consumer it went through (_replace)
                return
            except Exception as exc:  # a Kafka error, or aiokafka's own on a connection closed under it: tried again
                self._metrics.commits.labels("error").inc()
                if self._commit_failing is None:
                    self._commit_failing = (time.monotonic(), type(exc).__name__)
                held = self._commit_errors_logged.ready()
                if held is not None:  # aiokafka on uvloop raises RuntimeError writing to a transport it saw closed
                    trace = None if isinstance(exc, CommitFailedError | IllegalStateError | KafkaError) else exc
                    log.warning("offset commit failed (%s: %s); will commit again%s", type(exc).__name__, exc,
                                held_note(held), exc_info=trace)  # fmt: skip
                return
            finally:
                self._committing_since = None
                self._commit_under_way = None
            self.offsets.mark_committed(marks)
            self._metrics.commits.labels("ok").inc()
            if self._commit_failing is not None:
                since, why = self._commit_failing
                self._commit_failing = None
                log.info("offset commits of %s go on after %.1f s of failures (%s)", self._name,
                         time.monotonic() - since, why)  # fmt: skip

    def problem(self) -> str | None:
        """Why this consumer's offsets are not committed now (None: they are): a coordinator moving, the group
        rebalancing, the cluster away; or why its topics are not read (refused)."""
        if self._refused:  # first: a consumer replaced because of it is no news to an operator
            refusal, (since, *_) = next(iter(self._refused.items()))
            more = f" (and {len(self._refused) - 1} more)" if len(self._refused) > 1 else ""
            return f"{refusal}{more}; its partitions wait, for {time.monotonic() - since:.0f} s"
        if self._rebuilding is not None:
            since, why = self._rebuilding
            waited = time.monotonic() - since
            return f"the {self._name} consumer broke ({why}): a new one is joining the group, for {waited:.0f} s"
        waiting = time.monotonic() - (self._committing_since or math.inf)
        if waiting >= COMMIT_WAIT_S:
            return f"an offset commit of {self._name} waiting {waiting:.0f} s for the group's coordinator"
        if self._commit_failing is None:
            return None
        since, why = self._commit_failing
        return f"offset commits of {self._name} failing for {time.monotonic() - since:.0f} s ({why}): trying again"

    async def commit_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.commit()

    async def drain(
        self, within_s: float, tps: set[TopicPartition] | None = None, stuck: Callable[[], bool] = lambda: False
    ) -> bool:
        """Wait until no event (of ``tps``, when given) is unfinished. False if ``within_s`` ran out first, or
        ``stuck()`` says that waiting longer cannot help."""
        deadline = time.monotonic() + within_s
        while self._unfinished(tps):
            left = deadline - time.monotonic()
            if left <= 0 or stuck():
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(left, 0.5))
        return True

    def uncommitted(self) -> list[str]:
        """What a restart reads again: per partition, the offsets from the last commit to the last read."""
        out = []
        marks: dict[Any, tuple[int | None, int]] = self.offsets.uncommitted()
        for tp, (committed, end) in sorted(marks.items()):
            start = f"{committed}" if committed is not None else "the group's last commit"
            out.append(f"{tp.topic}[{tp.partition}] from {start} up to {end - 1}")
        return out

    def _unfinished(self, tps: set[TopicPartition] | None) -> int:
        if tps is None:
            return self.offsets.in_flight
        parts = self.offsets.partitions
        return sum(parts[tp].unfinished for tp in tps if tp in parts)

    # --- rebalances ---

    async def on_revoked(self, revoked: set[TopicPartition], commit_within_s: float | None = None) -> None:
        """Drain, commit and forget ``revoked``: a rebalance's, or a broken consumer's (``_replace``: its commit
        bounded by ``commit_within_s``, as the consumer may no longer answer; what is not committed is read again)."""
        self.joined = False
        if not revoked:
            return
        began = time.monotonic()
        if not await self.drain(self._drain_timeout_s, revoked):
            log.warning(
                "revoke: %d events still unfinished after %.0f s; they will be read again by the new owner",
                self._unfinished(revoked),
                self._drain_timeout_s,
            )
        with contextlib.suppress(TimeoutError):  # failed or not, said by commit()
            await asyncio.wait_for(self.commit(revoked), commit_within_s)
        self._forget(revoked)
        log.info("%s: partitions revoked: %s (drained and committed in %.2f s)", self._name, _names(revoked),
                 time.monotonic() - began)  # fmt: skip

    def _forget(self, revoked: set[TopicPartition]) -> None:
        self._drop_holds(revoked)  # whoever reads them next holds them again if they are not due
        for tp in revoked:
            self.stuck.pop(tp, None)  # the next owner finds the batch again
        self._stuck_gauge.set(len(self.stuck))
        for tp in revoked:
            self.offsets.revoke(tp)
            self._remove_lag(tp)
            self._reset_to.pop(tp, None)
        self._interrupted = True

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._interrupted = True
        notes = await self._notes(assigned)
        for tp in assigned:
            part = self.offsets.assign(tp)
            if tp in notes and part.next_offset is None:
                committed, note = notes[tp]
                part.committed, part.note = committed, note
                part.settled = Settled.parse(note, committed)
                if part.settled is not None:
                    log.info("%s[%d]: %d offsets from %d to %d were settled by the last commit: not delivered again",
                             tp.topic, tp.partition, part.settled.count, committed,
                             part.settled.end - 1)  # fmt: skip
        if self._paused and assigned:
            self._consumer.pause(*assigned)
        self.joined = True
        log.info("%s: partitions assigned: %s", self._name, _names(assigned) or "none")

    async def _notes(self, tps: set[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
        """The last commit of each of ``tps`` with its note (none where the cluster does not answer: then every event
        above the committed offset is delivered again, as without notes)."""
        if not tps:
            return {}
        try:
            return await committed_notes(self._consumer, sorted(tps))
        except (KafkaError, OSError) as exc:
            log.info("the notes of the last commits could not be read (%s): what they settled is delivered again",
                     _error_of(exc))  # fmt: skip
            return {}

    def _watch_fetches(self) -> None:
        """Raise the fetch's wait for a broker that answers with nothing while records are ahead.

        A broker that cannot read a partition's records within a fetch's ``max_wait`` may answer with none: Tansu's
        memory store once it holds a few hundred thousand records (every answer empty at 20 ms, full at 500 ms), or a
        read from a remote tier. At the router's 20 ms it then fetched nothing for good, its lag climbing, nothing said
        (a soak on Tansu, 300,000 records in). When for ``_STARVED_LOOKS`` looks in a row (one a second) no fetch
        returned a record, while a partition that may be fetched (not held or stuck) had records ahead of the next
        one to read, and nothing paused, held, failed or rebalanced fetching meanwhile (the in-flight cap pausing and
        resuming every few seconds is not a broker's silence: a first version took it for one on Kafka), the wait is
        doubled, up to ``_FETCH_WAIT_MAX_MS``: one line and ``fetch_max_wait_seconds`` say so. Never lowered again."""
        fed, self._fed = self._fed, False
        interrupted, self._interrupted = self._interrupted, False
        wait_ms = fetch_wait_ms(self._consumer)
        if fed or interrupted or wait_ms is None or wait_ms >= _FETCH_WAIT_MAX_MS or self._paused or self._refused:
            self._starved = 0
            return
        parts = self.offsets.partitions
        ahead: list[tuple[int, str]] = []
        for tp in self._consumer.assignment():
            part, high = parts.get(tp), self._high.get(tp)
            position = part.next_offset if part is not None else None
            if position is None:  # nothing read of it yet: fetched from a reset's target, or from the group's commit
                position = self._reset_to.get(tp, part.committed if part is not None else None)
            if tp in self._held or tp in self.stuck or high is None or position is None or high <= position:
                continue
            ahead.append((high - position, f"{tp.topic}[{tp.partition}]"))
        if not ahead:
            self._starved = 0
            return
        self._starved += 1
        if self._starved < _STARVED_LOOKS:
            return
        longer = min(_FETCH_WAIT_MAX_MS, max(10, wait_ms * 2))
        set_fetch_wait_ms(self._consumer, longer)
        self._fetch_wait.set(longer / 1000)
        ahead.sort(reverse=True)
        more = f" and {len(ahead) - 1} more partitions" if len(ahead) > 1 else ""
        log.warning("%s: fetches answered with no records for %d looks in a row (one a second) while %d records are "
                    "ahead (%s%s): the broker did not read them within the fetch's wait (kafka.fetch_max_wait_ms, now "
                    "%d ms); fetching with %d ms from now on", self._name, self._starved, sum(n for n, _ in ahead),
                    ahead[0][1], more, wait_ms, longer)  # fmt: skip
        self._starved = 0

    def _update_lag(self) -> None:
        """Lag per assigned partition from its high watermark: the last one a fetch reported, so that while the
        cluster is unreachable the gauge keeps the last known lag instead of dropping to nothing. The events'
        partitions report ``consumer_lag_records`` and their committable offset; a retry tier's records are behind
        on purpose (not due yet): they are ``retries_due_later_records``, never lag."""
        consumer = self._consumer
        metrics = self._metrics
        events = self._name == "events"
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                self._high[tp] = high
            else:
                high = self._high.get(tp)
            part = self.offsets.partitions.get(tp)
            mark = part.watermark() if part is not None else None
            if high is None or mark is None:
                continue
            labels = (tp.topic, str(tp.partition))
            self._lag_labels.add(labels)
            if events:
                metrics.consumer_lag.labels(*labels).set(max(0, high - mark))
                metrics.consumer_offset.labels(*labels).set(mark)
            else:
                metrics.retries_due_later.labels(*labels).set(max(0, high - mark))

    def _remove_lag(self, tp: TopicPartition) -> None:
        self._high.pop(tp, None)
        labels = (tp.topic, str(tp.partition))
        if labels in self._lag_labels:
            self._lag_labels.discard(labels)
            gauges = (self._metrics.consumer_lag, self._metrics.consumer_offset) if self._name == "events" else (
                self._metrics.retries_due_later,)  # fmt: skip
            for gauge in gauges:
                gauge.remove(*labels)


def _error_of(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _describe(stuck: Stuck) -> str:
    return (f"{stuck.topic}[{stuck.partition}] at offset {stuck.offset}: a batch that cannot be decoded "
            f"({stuck.error}) since {stuck.since}")  # fmt: skip


def _names(tps: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """The rebalance callbacks of one consumer of ``source``: none once it is being replaced (``Source._replace``
    forgets its partitions itself; a consumer whose fetcher alone had ended still rebalances meanwhile)."""

    def __init__(self, source: Source, consumer: Any) -> None:
        self._source, self._consumer = source, consumer

    def _current(self) -> bool:
        return self._source.hears(self._consumer)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._current():
            await self._source.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._current():
            await self._source.on_assigned(set(assigned))
