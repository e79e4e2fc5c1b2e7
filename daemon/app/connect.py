"""Start-up tried again while the Kafka cluster cannot be reached or refuses for now: capped back-off that waits on
the stop event, each attempt's resources closed before the next, one log line per throttle window."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from daemon.core.errors import KafkaRefused, reason_of
from daemon.kafka.contact import Throttle, held_note

T = TypeVar("T")
Attempt = Callable[[contextlib.AsyncExitStack], Coroutine[Any, Any, T]]

log = logging.getLogger(__name__)

# Attempts are this far apart: doubling from the first, capped.
BACKOFF_S = 0.5
BACKOFF_MAX_S = 10.0
# What a start-up attempt may fail with and be tried again: the cluster unreachable, slow, or refusing for now.
RETRIABLE = (KafkaError, OSError, TimeoutError, KafkaRefused)


async def until_connected(
    startup: Attempt[T],
    stack: contextlib.AsyncExitStack,
    stop: asyncio.Event,
    where: str,
    status: Callable[[str], None],
) -> T | None:
    """``startup(attempt_stack)`` until it succeeds; the successful attempt's stack is handed to ``stack``. None when
    ``stop`` is set first (a running attempt is cancelled); errors that waiting cannot fix (a topic whose settings
    would lose data) propagate. ``status`` is told why it waits."""
    backoff = BACKOFF_S
    logged = Throttle()
    attempts = 0
    while not stop.is_set():
        attempts += 1
        attempt = contextlib.AsyncExitStack()
        try:
            built = await unless_stopped(startup(attempt), stop)
        except RETRIABLE as exc:
            await attempt.aclose()
            reason = reason_of(exc)
            status(f"waiting for Kafka at {where} ({reason})")
            held = logged.ready()
            if held is not None:
                log.warning("Kafka at %s: %s; trying again in %.1f s (attempt %d)%s", where, reason, backoff,
                            attempts, held_note(held))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)
            continue
        except BaseException:
            await attempt.aclose()
            raise
        if built is None:
            await attempt.aclose()
            return None
        stack.push_async_exit(attempt)
        if attempts > 1:
            log.info("Kafka at %s reached after %d attempts", where, attempts)
        return built
    return None


async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """Run ``work`` unless ``stop`` is set first (then it is cancelled, and the answer is None)."""
    task = asyncio.create_task(work, name="startup")
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, *RETRIABLE):
        await task
    return None
