"""A record batch that cannot be decoded holds only its partition, is reported, and is skipped only on purpose
(its raw bytes and coordinates go to the dead-letter topic first). The daemon runs as a real process.

Two kinds of batch aiokafka cannot decode (``tests.helpers.produce_undecodable``): one whose records have a header key
that is not UTF-8, which both brokers keep; and one that says it is gzip-compressed and is not, which Tansu keeps and
Apache Kafka refuses (it decompresses every compressed batch it is sent): on Kafka that test shows the refusal."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
from aiokafka.errors import UnknownError

from tests.helpers import (
    ADMIN_TOKEN,
    SECRET,
    UNDECODABLE,
    DaemonProcess,
    Receiver,
    committed,
    eventually,
    produce,
    produce_undecodable,
    read_topic,
)
from tests.integration.conftest import BROKER_KIND, Setup, receiver, spawn

pytestmark = pytest.mark.tansu_smoke  # also run against Tansu in CI (make smoke-tansu)


def ev(partition: int, n: int) -> bytes:
    return json.dumps({"event": "lead.created", "p": partition, "n": n}).encode()


@pytest.mark.parametrize("setup", [2], indirect=True)
@pytest.mark.parametrize("how", UNDECODABLE)
async def test_an_undecodable_batch_holds_its_partition_until_an_operator_skips_it(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("WR_ADMIN_TOKEN", ADMIN_TOKEN)
    r = await receiver(receivers)
    doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}])
    doc["admin"]["token_env"] = "WR_ADMIN_TOKEN"
    setup.write(doc)
    bootstrap = setup.broker.bootstrap
    for n in range(3):
        await produce(bootstrap, setup.topic, [ev(0, n)], partition=0)
    if how == "fake-gzip" and BROKER_KIND == "kafka":
        # Kafka decompresses the batch to validate it ("ZipException: Not in GZIP format" in its log) and answers
        # UNKNOWN_SERVER_ERROR: such a batch never reaches its log, and the partition reads on past it.
        with pytest.raises(UnknownError):
            await produce_undecodable(bootstrap, setup.topic, 0, [ev(0, 90), ev(0, 91)], how)
        await produce(bootstrap, setup.topic, [ev(0, 3)], partition=0)
        d = await spawn(daemons, setup)
        await r.wait_for(4)
        assert {json.loads(q.body)["n"] for q in r.requests} == {0, 1, 2, 3}
        assert await d.metric('webhook_router_partitions_stuck{consumer="events"}') == 0
        return
    bad = await produce_undecodable(bootstrap, setup.topic, 0, [ev(0, 90), ev(0, 91)], how)
    assert bad == 3
    for n in range(3, 6):
        await produce(bootstrap, setup.topic, [ev(0, n)], partition=0)
    for n in range(3):
        await produce(bootstrap, setup.topic, [ev(1, n)], partition=1)
    d = await spawn(daemons, setup)
    await r.wait_for(6)  # partition 1 whole, partition 0 up to the bad batch

    def got() -> set[tuple[int, int]]:
        return {(json.loads(q.body)["p"], json.loads(q.body)["n"]) for q in r.requests}

    assert got() == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}
    base = f"http://127.0.0.1:{setup.admin_port}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        async with http.get(f"{base}/readyz") as resp:
            ready = await resp.json()
        assert resp.status == 200 and ready["ready"]  # the other partitions flow: still ready
        (stuck,) = ready["stuck"]
        assert (stuck["topic"], stuck["partition"], stuck["offset"]) == (setup.topic, 0, 3)
        expected = {"fake-gzip": "BadGzipFile: Not a gzipped file", "header-key": "UnicodeDecodeError: 'utf-8' codec"}
        assert stuck["error"].startswith(expected[how]), stuck
        assert await d.metric('webhook_router_partitions_stuck{consumer="events"}') == 1
        await eventually(lambda: _committed(bootstrap, setup, {0: 3, 1: 3}), 10)  # up to the batch, never past it
        await asyncio.sleep(0.5)
        assert await _committed(bootstrap, setup, {0: 3, 1: 3})

        async with http.post(f"{base}/partitions/{setup.topic}/0/skip", json={"offset": 2}) as resp:
            assert (resp.status, (await resp.json())["error"]) == (409, f"offset: {setup.topic}[0] is held at 3, not 2")
        async with http.post(f"{base}/partitions/{setup.topic}/0/skip", json={"offset": 3}) as resp:
            skipped = await resp.json()
            assert resp.status == 200, skipped
        assert (skipped["source_offset"], skipped["next_offset"]) == (3, 5)

    await r.wait_for(9)
    assert got() >= {(0, 3), (0, 4), (0, 5)} and (0, 90) not in got()
    letters = await read_topic(bootstrap, f"{setup.prefix}.dead-letter", lambda recs: len(recs) >= 1)
    (letter,) = letters
    raw = base64.b64decode(letter["raw"])
    assert len(raw) == letter["raw_bytes"] and (letter["source_partition"], letter["source_offset"]) == (0, 3)
    await eventually(lambda: _committed(bootstrap, setup, {0: 8, 1: 3}), 10)
    assert d.alive()
    assert await d.metric('webhook_router_partitions_stuck{consumer="events"}') == 0


async def _committed(bootstrap: str, setup: Setup, expected: dict[int, int]) -> bool:
    marks: dict[int, Any] = await committed(bootstrap, setup.group, setup.topic, 2)
    return marks == expected
