"""The results writer: the one path by which outcome records reach Kafka.

Callers ``submit`` a record with a callback; one task feeds the producer without awaiting each send
and runs the callback once Kafka acknowledged the record. A record whose send fails is sent again
after a back-off, never dropped: its source offset stays uncommitted until it lands.

A results record of a delivery may carry its delivery index entry (``daemon.core.model.Indexed``): once Kafka has
acknowledged a write of results records, the entries of those it placed go, with their positions, in one index record
(``IndexRecord``: one record and one encoding for the write, not for each entry), queued for the index partition of
the same number as the results partition (modulo the index's partitions: every attempt of a delivery is in one results
partition, so its entries stay in their order), batched with the other records like any other; nothing waits on it.

A producer the cluster fenced (an idempotent producer whose id or sequence it no longer takes: ``clients.FENCED``)
sends nothing more: the writer has it renewed (a new producer id, ``RouterProducer.renew``), logs it once, and sends
what failed again through the new one. ``problem()`` says, for ``/readyz``, while a renewal is under way or while
records have waited ``STALLED_S`` without any acknowledgement.

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
STALLED_S = 5.0  # records waiting this long with none acknowledged meanwhile: /readyz says so


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
        self._timers: set[asyncio.TimerHandle] = set()
        self._partitions: dict[str, dict[bytes | None, Any]] = {}  # topic -> key -> partition (None: all of them)
        self._partitioner = DefaultPartitioner()
        self._round_robin = 0
        self._failures_logged = Throttle()
        self._progress_at = time.monotonic()  # the last acknowledgement, or the submit that ended an idle time
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
        if not self._outstanding:
            self._progress_at = time.monotonic()
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
        """Why results are not written now (None: they are, or nothing waits)."""
        if self._refused:
            topic, since = next(iter(self._refused.items()))
            more = f" (and {len(self._refused) - 1} more topics)" if len(self._refused) > 1 else ""
            return f"{self._refusal(topic)}{more}; its records wait, for {time.monotonic() - since:.0f} s"
        if self._fenced is not None:
            return f"the producer of results was fenced ({self._fenced}): a new one is starting"
        waited = time.monotonic() - self._progress_at
        if self._outstanding and waited >= STALLED_S:
            return f"{self._outstanding} records waiting {waited:.0f} s for Kafka's acknowledgement"
        return None

    async def stop(self) -> None:
        """Stop feeding the producer. Records not yet acknowledged are left unacknowledged."""
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while queue:
                # One batch per partition for everything queued (up to _BATCH records): one send per batch,
                # not one coroutine and one partitioner call per record.
                groups: dict[tuple[str, int], list[_Item]] = {}
                for _ in range(min(len(queue), _BATCH)):
                    item = queue.popleft()
                    cache = self._partitions.get(item[0])
                    if cache is None:  # the topic's first record: its partitions asked for once
                        cache = self._partitions[item[0]] = {None: sorted(await self._producer.partitions_for(item[0]))}
                    groups.setdefault((item[0], self._partition(cache, item[1], item[5])), []).append(item)
                for (topic, partition), items in groups.items():
                    await self._send(topic, partition, items)
                await asyncio.sleep(0)  # let deliveries and heartbeats run between large batches

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

    async def _send(self, topic: str, partition: int, items: list[_Item]) -> None:
        producer = self._producer
        batch = producer.create_batch()
        included: list[_Item] = []
        for item in items:
            if batch.append(key=item[1], value=item[2], timestamp=None) is None:
                if included:
                    await self._send_batch(batch, topic, partition, included)
                batch, included = producer.create_batch(), []
                if batch.append(key=item[1], value=item[2], timestamp=None) is None:
                    await self._send_alone(topic, partition, item)  # larger than a batch: the producer's own path
                    continue
            included.append(item)
        if included:
            await self._send_batch(batch, topic, partition, included)

    async def _send_alone(self, topic: str, partition: int, item: _Item) -> None:
        try:
            future = await self._producer.send(topic, item[2], key=item[1], partition=partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(item, exc)
            return
        future.add_done_callback(lambda f: self._sent(f, [item]))

    async def _send_batch(self, batch: Any, topic: str, partition: int, items: list[_Item]) -> None:
        try:
            future = await self._producer.send_batch(batch, topic, partition=partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for item in items:
                self._failed(item, exc)
            return
        future.add_done_callback(lambda f: self._sent(f, items))

    def _sent(self, future: asyncio.Future[Any], items: list[_Item]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            for item in items:
                self._failed(item, exc)
            return
        self._metrics.results_written.inc(len(items))
        if self._refused:
            self._written_again(items[0][0])
        if self._index_topic is not None:
            self._index(future.result(), items)
        self._progress_at = time.monotonic()
        self._outstanding -= len(items)
        if self._outstanding == 0:
            self._idle.set()
        for item in items:
            ack = item[3]
            if ack is not None:
                ack()

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

    def _failed(self, item: _Item, exc: BaseException) -> None:
        self._metrics.results_errors.inc()
        if isinstance(exc, TopicAuthorizationFailedError):
            self._write_refused(item[0])
        if isinstance(exc, FENCED) and self._fenced is None:
            self._fenced = type(exc).__name__
            log.warning("the producer of results was fenced (%s: %s): starting a new one; what it held is sent again",
                        type(exc).__name__, exc)  # fmt: skip
            self._renewal = asyncio.create_task(self._renew(), name="renew-producer")
        held = self._failures_logged.ready()
        if held is not None:
            log.warning(
                "record for %s not written (%s: %s); sending it again in %.0f s%s",
                item[0],
                type(exc).__name__,
                exc,
                _RETRY_BACKOFF_S,
                held_note(held),
            )
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def again() -> None:
            self._timers.discard(timer)
            self._queue.append(item)
            self._wakeup.set()

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
