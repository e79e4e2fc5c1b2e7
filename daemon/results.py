"""The results writer: the one path by which outcome records reach Kafka.

Callers ``submit`` a record with a callback; one task feeds the producer without awaiting each send
and runs the callback once Kafka acknowledged the record. A record whose send fails is sent again
after a back-off, never dropped: its source offset stays uncommitted until it lands.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from daemon.metrics import Metrics

log = logging.getLogger(__name__)

Ack = Callable[[], None]
_Item = tuple[str, bytes | None, bytes, Ack]

_BATCH = 2_000
_RETRY_BACKOFF_S = 1.0


class ResultsWriter:
    def __init__(self, producer: Any, topic: str, metrics: Metrics) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._outstanding = 0  # submitted, not yet acknowledged
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="results-writer")

    def submit(self, key: bytes | None, value: bytes, ack: Ack, topic: str | None = None) -> None:
        """Queue one record (for the results topic unless ``topic`` says otherwise); ``ack`` runs once Kafka
        has acknowledged it."""
        self._outstanding += 1
        self._idle.clear()
        self._queue.append((topic or self._topic, key, value, ack))
        self._wakeup.set()

    async def flush(self, within_s: float) -> bool:
        """Wait until every submitted record is acknowledged. False if ``within_s`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop feeding the producer. Records not yet acknowledged are left unacknowledged."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        send = self._producer.send
        queue = self._queue
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            sent = 0
            while queue:
                item = queue.popleft()
                topic, key, value, _ = item
                try:
                    future = await send(topic, value, key=key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(item, exc)
                    continue
                future.add_done_callback(lambda f, item=item: self._sent(f, item))
                sent += 1
                if sent % _BATCH == 0:
                    await asyncio.sleep(0)  # let deliveries and heartbeats run between large batches

    def _sent(self, future: asyncio.Future[Any], item: _Item) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._failed(item, exc)
            return
        self._metrics.results_written.inc()
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()
        item[3]()

    def _failed(self, item: _Item, exc: BaseException) -> None:
        self._metrics.results_errors.inc()
        log.warning(
            "results record not written (%s: %s); sending again in %.0f s", type(exc).__name__, exc, _RETRY_BACKOFF_S
        )
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def again() -> None:
            self._timers.discard(timer)
            self._queue.append(item)
            self._wakeup.set()

        timer = loop.call_later(_RETRY_BACKOFF_S, again)
        self._timers.add(timer)
