"""Fewer duplicates after a crash: each offset commit carries a note of the offsets above it already settled, and the
next owner of the partition does not deliver those again. Apache Kafka keeps a commit's metadata (up to
``offset.metadata.max.bytes``, 4,096 by default); Tansu keeps none (it answers an empty string), so there the events
above the committed offset are all delivered again, as before."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.helpers import SECRET, DaemonProcess, Receiver, produce, read_topic
from tests.integration.conftest import BROKER_KIND, Setup, receiver, spawn


async def test_what_the_last_commit_noted_as_settled_is_not_delivered_again_after_a_kill(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    stuck = await receiver(receivers, hold=asyncio.Event())  # never answers: the first event stays unfinished
    fast = await receiver(receivers)
    endpoints: list[dict[str, Any]] = [
        {"id": "stuck", "url": stuck.url, "secret": SECRET, "timeout_s": 120},
        {"id": "fast", "url": fast.url, "secret": SECRET},
    ]
    subscriptions = [{"endpoint": "stuck", "events": ["held"]}, {"endpoint": "fast", "events": ["*"]}]
    setup.write(setup.config(endpoints, subscriptions))
    d = await spawn(daemons, setup)
    values = [json.dumps({"event": "held" if n == 0 else "tick", "n": n}).encode() for n in range(100)]
    await produce(setup.broker.bootstrap, setup.topic, values)
    await fast.wait_for(100)
    await stuck.wait_for(1)
    # Every fast delivery's results record acknowledged (so settled), then ten commit intervals (100 ms): the
    # watermark stays at 0, the last commit's note says 1..99 are settled.
    fast_settled = lambda rs: sum(r["endpoint_id"] == "fast" for r in rs) >= 100  # noqa: E731
    await read_topic(setup.broker.bootstrap, setup.results, fast_settled)
    await asyncio.sleep(1.0)
    await d.kill()

    again = await spawn(daemons, setup)
    await stuck.wait_for(2)  # the unfinished event is delivered again, whatever the broker
    if BROKER_KIND == "kafka":
        await fast.wait_for(101)
        await asyncio.sleep(1.0)  # anything else would arrive by now
        assert [json.loads(r.body)["n"] for r in fast.requests[100:]] == [0]
        assert await again.metric('webhook_router_settled_skipped_total{consumer="events"}') == 99
        assert "99 offsets from 0 to 99 were settled by the last commit: not delivered again" in again.log()
    else:  # Tansu keeps no commit metadata: every event above the committed offset is delivered again
        await fast.wait_for(200)
        assert sorted(json.loads(r.body)["n"] for r in fast.requests[100:]) == list(range(100))
        assert await again.metric('webhook_router_settled_skipped_total{consumer="events"}') == 0
