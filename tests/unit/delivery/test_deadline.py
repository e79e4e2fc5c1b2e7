"""daemon.delivery.deadline: deadlines in slots, swept by one timer, against the running event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from daemon.delivery.deadline import Deadlines


async def test_finishing_in_time_returns_the_result() -> None:
    deadlines = Deadlines()
    assert await deadlines.within(1.0, asyncio.sleep(0.01, result="done")) == "done"
    deadlines.close()


async def test_a_deadline_fires_no_sooner_than_asked_and_at_most_a_tick_later() -> None:
    deadlines = Deadlines(tick_s=0.01)
    loop = asyncio.get_running_loop()
    for seconds in (0.05, 0.123, 0.2):
        started = loop.time()
        with pytest.raises(TimeoutError):
            await deadlines.within(seconds, asyncio.sleep(10))
        took = loop.time() - started
        # Never early, exactly; not late beyond what a busy 2-core machine keeps (far below the 10 s it cuts short).
        assert seconds <= took < seconds + 1.0
    deadlines.close()


async def test_deadlines_of_many_tasks_fire_in_their_own_order() -> None:
    deadlines = Deadlines(tick_s=0.01)
    loop = asyncio.get_running_loop()
    fired: list[float] = []

    async def one(seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await deadlines.within(seconds, asyncio.sleep(10))
        fired.append(seconds)

    started = loop.time()
    # Added longest first: each shorter deadline must re-arm the one timer earlier.
    await asyncio.gather(*(one(s) for s in (0.3, 0.2, 0.1, 0.05)))
    assert fired == [0.05, 0.1, 0.2, 0.3]
    assert loop.time() - started < 0.3 + 1.0  # not late beyond what a busy machine keeps
    deadlines.close()


async def test_a_finished_task_is_never_cancelled_later() -> None:
    deadlines = Deadlines(tick_s=0.01)
    assert await deadlines.within(0.05, asyncio.sleep(0, result=1)) == 1
    await asyncio.sleep(0.1)  # past the deadline: the sweep finds nothing to cancel
    assert await deadlines.within(1.0, asyncio.sleep(0.01, result=2)) == 2
    deadlines.close()


@pytest.mark.parametrize("at_the_deadline", [False, True])
async def test_a_cancellation_from_outside_is_not_mistaken_for_a_timeout(at_the_deadline: bool) -> None:
    deadlines = Deadlines(tick_s=0.01)
    reached = asyncio.Event()

    async def slow() -> None:
        reached.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(deadlines.within(0.01 if at_the_deadline else 10.0, slow()))
    await reached.wait()
    if at_the_deadline:
        time.sleep(0.03)  # blocks the loop: the deadline passes, its timer cannot run yet
        # Both in the same loop turn: the deadline's sweep and a shutdown cancel the task.
        deadlines._sweep(asyncio.get_running_loop())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()


async def test_the_task_goes_on_after_a_timeout() -> None:
    """The timeout is consumed: the task is not left marked as cancelling, and can await again."""
    deadlines = Deadlines(tick_s=0.01)
    with pytest.raises(TimeoutError):
        await deadlines.within(0.02, asyncio.sleep(10))
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert await deadlines.within(1.0, asyncio.sleep(0.01, result="again")) == "again"
    deadlines.close()
