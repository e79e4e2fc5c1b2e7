"""The results writer: the one path by which outcome records reach Kafka.

Callers ``submit`` a record with a callback; one task sorts what is submitted by partition, and each partition's
records are handed to the producer in batches, in the order they were submitted, one batch at a time: the next once
Kafka acknowledged the one before (then the callbacks of its records run). A batch whose send fails goes back in front
of its partition's records and is sent again after a back-off, never dropped nor overtaken: its source offsets stay
uncommitted until it lands. Partitions never wait on each other: a partition whose leader does not answer holds its own
records only, and every other partition's results are written meanwhile (aiokafka's ``send_batch`` waits, up to the
producer's request timeout, while a batch of the same partition is queued in it: one partition's wait must not stall
the writer).

A results record of a delivery may carry its delivery index entry (``daemon.core.model.Indexed``): once Kafka has
acknowledged a write of results records, the entries of those it placed go, with their positions, in one index record
(``IndexRecord``: one record and one encoding for the write, not for each entry), queued for the index partition of
the same number as the results partition (modulo the index's partitions: every attempt of a delivery is in one results
partition, so its entries stay in their order), batched with the other records like any other; nothing waits on it.

A producer the cluster fenced (an idempotent producer whose id or sequence it no longer takes: ``clients.FENCED``)
sends nothing more: the writer has it renewed (a new producer id, ``RouterProducer.renew``), logs it once, and sends
what failed again through the new one. ``problem()`` says, for ``/readyz``, while a renewal is under way or while
the records of some partitions have waited ``STALLED_S`` without any acknowledgement, naming those partitions.

A topic this principal may no longer write (an ACL taken away while the router runs: TOPIC_AUTHORIZATION_FAILED) is
said once, naming the topic, its setting and what to grant, counted in ``kafka_refused{what="write"}`` and given to
``/readyz`` until a record of it is acknowledged again (its records are sent again every ``_RETRY_BACKOFF_S``
meanwhile, as any failed send). On an idempotent producer the refused sends leave a gap in its sequence of that
partition, which the broker answers OUT_OF_ORDER_SEQUENCE_NUMBER once the topic is writable again: a fenced producer,
renewed as above.

While the cluster is unreachable, records wait here until it is back. What waits is bounded by the
consumers' cap on events in flight (``kafka.max_in_flight_events``, each event owing at most two records
per endpoint it matched) plus health changes and operator actions; ``results_pending`` shows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from aiokafka.partitioner import DefaultPartitioner

from daemon.core.model import Ack, Indexed, IndexRecord, encode_index
from daemon.kafka.clients import FENCED
from daemon.kafka.contact import Throttle, held_note
from daemon.observe.metrics import Metrics

log = logging.getLogger(__name__)

# topic, key, value, ack, its index entry, the results partition of an index record (None: any other record)
_Item = tuple[str, bytes | None, bytes, Ack | None, Indexed | None, int | None]

_BATCH = 2_000
_RETRY_BACKOFF_S = 1.0
STALLED_S = 5.0  # a partition's records waiting this long with none acknowledged meanwhile: /readyz says so
_LISTED = 5  # partitions named in a problem; the rest are counted


class _Lane:
    """The records bound for one partition: ``items`` wait in submission order; ``sending`` is the batch handed to the
    producer and not acknowledged yet (at most one), ``backoff`` is True while a failed batch waits to be sent again.
    ``waiting`` counts the lane's records not acknowledged yet; ``since`` is its last acknowledgement, or when records
    started waiting in it after it had none."""

    __slots__ = ("backoff", "items", "partition", "sending", "since", "topic", "waiting")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.items: deque[_Item] = deque()
        self.sending: list[_Item] | None = None
        self.backoff = False
        self.waiting = 0
        self.since = 0.0

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"


class ResultsWriter:
    def __init__(self, producer: Any, topic: str, metrics: Metrics, index_topic: str | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._index_topic = index_topic
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._outstanding = 0  # submitted, not yet acknowledged
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._handing: set[asyncio.Task[None]] = set()  # batches being handed to the producer, partitions asked for
        self._timers: set[asyncio.TimerHandle] = set()
        self._partitions: dict[str, dict[bytes | None, Any]] = {}  # topic -> key -> partition (None: all of them)
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._held: dict[str, deque[_Item]] = {}  # topic -> its records, while its partitions are asked for
        self._partitioner = DefaultPartitioner()
        self._round_robin = 0
        self._failures_logged = Throttle()
        self._renewal: asyncio.Task[None] | None = None
        self._fenced: str | None = None
        self._refused: dict[str, float] = {}  # topic -> refused since (monotonic)
        self._refused_gauge = metrics.kafka_refused.labels("write")
        metrics.results_pending.set_function(lambda: self._outstanding)
        metrics.producer_idempotent.set(int(getattr(producer, "idempotent", False)))  # a RouterProducer's

    @property
    def outstanding(self) -> int:
        return self._outstanding

    @property
    def indexing(self) -> bool:
        """True when results records' index entries are written (the delivery index is on)."""
        return self._index_topic is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="results-writer")

    def submit(
        self,
        key: bytes | None,
        value: bytes,
        ack: Ack | None,
        topic: str | None = None,
        index: Indexed | None = None,
    ) -> None:
        """Queue one record (for the results topic unless ``topic`` says otherwise); ``ack`` runs once Kafka
        has acknowledged it (None: nothing waits on it). ``index``: the results record's index entry, written once
        the record is acknowledged (left out where the index is off)."""
        self._outstanding += 1
        self._idle.clear()
        self._queue.append((topic or self._topic, key, value, ack, index if self._index_topic else None, None))
        self._wakeup.set()

    async def flush(self, within_s: float) -> bool:
        """Wait until every submitted record is acknowledged. False if ``within_s`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
        except TimeoutError:
            return False
        return True

    def problem(self) -> str | None:
        """Why results are not written now (None: they are, or nothing waits): a renewal of the producer, or the
        partitions whose records have waited ``STALLED_S`` without an acknowledgement (the others are written)."""
        if self._refused:
            topic, since = next(iter(self._refused.items()))
            more = f" (and {len(self._refused) - 1} more topics)" if len(self._refused) > 1 else ""
            return f"{self._refusal(topic)}{more}; its records wait, for {time.monotonic() - since:.0f} s"
        if self._fenced is not None:
            return f"the producer of results was fenced ({self._fenced}): a new one is starting"
        now = time.monotonic()
        stalled = [lane for lane in self._lanes.values() if lane.waiting and now - lane.since >= STALLED_S]
        if not stalled:
            return None
        stalled.sort(key=lambda lane: lane.since)
        names = ", ".join(lane.name for lane in stalled[:_LISTED])
        more = f" and {len(stalled) - _LISTED} more" if len(stalled) > _LISTED else ""
        waiting = sum(lane.waiting for lane in stalled)
        return f"{waiting} records for {names}{more} waiting {now - stalled[0].since:.0f} s for Kafka's acknowledgement"

    async def stop(self) -> None:
        """Stop feeding the producer. Records not yet acknowledged are left unacknowledged."""
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        tasks = [*self._handing, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._handing.clear()
        self._task = None

    async def _run(self) -> None:
        queue, lanes = self._queue, self._lanes
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while queue:
                # Everything queued (up to _BATCH records) onto its partition's lane, then each lane that can send
                # hands its batch: one send per partition, not one coroutine and one partitioner call per record.
                now = time.monotonic()
                for _ in range(min(len(queue), _BATCH)):
                    item = queue.popleft()
                    cache = self._partitions.get(item[0])
                    if cache is None:  # the topic's partitions not known yet: its records wait for them, in order
                        self._unknown(item)
                        continue
                    where = (item[0], self._partition(cache, item[1], item[5]))
                    lane = lanes.get(where)
                    if lane is None:
                        lane = lanes[where] = _Lane(*where)
                    if not lane.waiting:
                        lane.since = now
                    lane.waiting += 1
                    lane.items.append(item)
                for lane in lanes.values():
                    if lane.items and lane.sending is None and not lane.backoff:
                        self._hand(lane, waited=False)
                await asyncio.sleep(0)  # let deliveries and heartbeats run between large batches

    def _unknown(self, item: _Item) -> None:
        """Hold a record of a topic whose partitions are not known yet, asking for them once (in a task: the cluster
        may take its time, and the other topics' records go on meanwhile); once known, the topic's held records go
        back to the head of the queue in their order."""
        topic = item[0]
        held = self._held.get(topic)
        if held is None:
            held = self._held[topic] = deque()
            task = asyncio.create_task(self._learn_partitions(topic), name="results-partitions")
            self._handing.add(task)
            task.add_done_callback(self._handing.discard)
        held.append(item)

    async def _learn_partitions(self, topic: str) -> None:
        while True:
            try:
                found = sorted(await self._producer.partitions_for(topic))
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the cluster away, the topic not there (yet): asked again
                if (held := self._failures_logged.ready()) is not None:
                    log.warning("the partitions of %s are not known (%s: %s); asking again in %.0f s%s", topic,
                                type(exc).__name__, exc, _RETRY_BACKOFF_S, held_note(held))  # fmt: skip
                await asyncio.sleep(_RETRY_BACKOFF_S)
        self._partitions[topic] = {None: found}
        self._queue.extendleft(reversed(self._held.pop(topic)))
        self._wakeup.set()

    def _partition(self, cache: dict[bytes | None, Any], key: bytes | None, results_partition: int | None) -> int:
        """The partition a record goes to (``cache``: its topic's, ``None`` holding the partitions): an index entry's
        is the one of its results record's number (modulo the index's partitions); Kafka's default partitioner for a
        key, round-robin without one."""
        if results_partition is not None:
            parts = cache[None]
            return int(parts[results_partition % len(parts)])
        if key is None:
            parts = cache[None]
            self._round_robin += 1
            return int(parts[self._round_robin % len(parts)])
        found = cache.get(key)
        if found is None:
            parts = cache[None]
            found = cache[key] = int(self._partitioner(key, parts, parts))
        return int(found)

    def _hand(self, lane: _Lane, waited: bool) -> None:
        """Hand the lane's next batch (the records at its head that fit one) to the producer, in a task of its own:
        ``send_batch`` may wait (for the partition's metadata, for room), and only this lane waits with it. A batch of
        records that ``waited`` behind the one before is closed, so it is sent without lingering again."""
        items = lane.items
        batch = self._producer.create_batch()
        included: list[_Item] = []
        while items and len(included) < _BATCH:
            item = items[0]
            if batch.append(key=item[1], value=item[2], timestamp=None) is None:
                break
            included.append(items.popleft())
        if included:
            if waited:
                batch.close()
            send = self._send_batch(lane, batch, included)
        else:  # larger than a batch: the producer's own path
            included.append(items.popleft())
            send = self._send_alone(lane, included)
        lane.sending = included
        task = asyncio.create_task(send, name="results-send")
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)

    async def _send_batch(self, lane: _Lane, batch: Any, items: list[_Item]) -> None:
        try:
            future = await self._producer.send_batch(batch, lane.topic, partition=lane.partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(lane, items, exc)
            return
        future.add_done_callback(lambda f: self._sent(f, lane, items))

    async def _send_alone(self, lane: _Lane, items: list[_Item]) -> None:
        item = items[0]
        try:
            future = await self._producer.send(lane.topic, item[2], key=item[1], partition=lane.partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(lane, items, exc)
            return
        future.add_done_callback(lambda f: self._sent(f, lane, items))

    def _sent(self, future: asyncio.Future[Any], lane: _Lane, items: list[_Item]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._failed(lane, items, exc)
            return
        n = len(items)
        self._metrics.results_written.inc(n)
        if self._refused:
            self._written_again(lane.topic)
        if self._index_topic is not None:
            self._index(future.result(), items)
        lane.sending = None
        lane.waiting -= n
        lane.since = time.monotonic()
        self._outstanding -= n
        if self._outstanding == 0:
            self._idle.set()
        for item in items:
            ack = item[3]
            if ack is not None:
                ack()
        if lane.items and not lane.backoff:
            self._hand(lane, waited=True)

    def _index(self, sent: Any, items: list[_Item]) -> None:
        """Queue the index record of records just acknowledged: one send's records are at consecutive offsets from
        the first one's (``sent.offset``), in the order they were appended. It is smaller than they were together
        (each entry holds a part of its record's fields), so it fits where they did."""
        topic = self._index_topic
        if topic is None:
            return
        rows = [(sent.partition, sent.offset + i, *e) for i, item in enumerate(items) if (e := item[4]) is not None]
        if rows:
            self._outstanding += 1
            self._queue.append((topic, None, encode_index(IndexRecord(entries=rows)), None, None, sent.partition))
            self._wakeup.set()

    def _refusal(self, topic: str) -> str:
        setting = "kafka.results_topic" if topic == self._topic else "retry.topic_prefix"
        return (
            f"topic {topic} ({setting}): this principal may not write it (TOPIC_AUTHORIZATION_FAILED): grant it Write"
        )

    def _write_refused(self, topic: str) -> None:
        if topic not in self._refused:
            self._refused[topic] = time.monotonic()
            self._refused_gauge.inc()
            log.error("%s: its records wait, sent again every %.0f s (see docs/kafka.md, 'Who may write the router's "
                      "topics')", self._refusal(topic), _RETRY_BACKOFF_S)  # fmt: skip

    def _written_again(self, topic: str) -> None:
        since = self._refused.pop(topic, None)
        if since is not None:
            self._refused_gauge.dec()
            log.info("writes to %s go on after %.0f s refused", topic, time.monotonic() - since)

    def _failed(self, lane: _Lane, items: list[_Item], exc: BaseException) -> None:
        """A batch not written: back in front of its lane, in its order, sent again after a back-off (the lane's
        later records wait behind it: nothing overtakes it)."""
        self._metrics.results_errors.inc(len(items))
        if isinstance(exc, TopicAuthorizationFailedError):
            self._write_refused(lane.topic)
        if isinstance(exc, FENCED) and self._fenced is None:
            self._fenced = type(exc).__name__
            log.warning("the producer of results was fenced (%s: %s): starting a new one; what it held is sent again",
                        type(exc).__name__, exc)  # fmt: skip
            self._renewal = asyncio.create_task(self._renew(), name="renew-producer")
        held = self._failures_logged.ready()
        if held is not None:
            log.warning("%d records for %s not written (%s: %s); sending them again in %.0f s%s", len(items),
                        lane.name, type(exc).__name__, exc, _RETRY_BACKOFF_S, held_note(held))  # fmt: skip
        lane.items.extendleft(reversed(items))
        lane.sending = None
        lane.backoff = True
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def again() -> None:
            self._timers.discard(timer)
            lane.backoff = False
            if lane.items and lane.sending is None:
                self._hand(lane, waited=True)

        timer = loop.call_later(_RETRY_BACKOFF_S, again)
        self._timers.add(timer)

    async def _renew(self) -> None:
        started = time.monotonic()
        while True:
            try:
                await self._producer.renew()
                break
            except KafkaError as exc:  # the cluster away meanwhile: tried again
                log.debug("starting a new producer: %r", exc)
                await asyncio.sleep(_RETRY_BACKOFF_S)
        log.info("a new producer of results took over after %.1f s", time.monotonic() - started)
        self._fenced = None
