"""Records as outside producers write them (librdkafka through confluent-kafka): every codec, headers, null
keys and values, and hostile records among good ones. The daemon runs as a real process: none of it may
stop it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.helpers import SECRET, DaemonProcess, Receiver, produce_outside, read_topic
from tests.integration.conftest import Setup, receiver, spawn

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def _ev(n: int, **extra: Any) -> bytes:
    return json.dumps({"event": "lead.created", "n": n, **extra}).encode()


async def test_every_codec_with_headers_and_null_keys_is_delivered(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers)
    setup.write(setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}]))
    d = await spawn(daemons, setup)
    headers: list[tuple[str, str | bytes | None]] = [
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("h", b"\x00\xff"),
    ]
    for i, codec in enumerate(CODECS):
        values: list[bytes | None] = [_ev(10 * i + j, codec=codec) for j in range(3)]
        await asyncio.to_thread(produce_outside, setup.broker.bootstrap, setup.topic, values, codec, headers)
    await r.wait_for(3 * len(CODECS))
    codecs = sorted(json.loads(req.body)["codec"] for req in r.requests)
    assert codecs == sorted(c for c in CODECS for _ in range(3))
    assert d.alive()


HOSTILE: list[bytes | None] = [
    b'{"event":"lead.\xff"}',  # invalid UTF-8 in the type
    b'{"event":"x","a":' + b"[" * 1000 + b"]" * 1000 + b"}",  # deep nesting
    b'{"event":"lead.created","name":"\xc3\x28"}',  # invalid UTF-8 elsewhere
    None,  # a null value
    b"\x00\x01\x02",
]


@pytest.mark.parametrize("field", [None, "meta.kind"])
async def test_hostile_records_are_recorded_and_the_stream_moves_on(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess], field: str | None
) -> None:
    r = await receiver(receivers)
    kafka = {"event_type_fields": {setup.topic: field}} if field else {}
    setup.write(
        setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}], **kafka)
    )
    d = await spawn(daemons, setup)

    def good(n: int) -> bytes:
        return json.dumps({"event": "lead.created", "meta": {"kind": "lead.created"}, "n": n}).encode()

    values: list[bytes | None] = []
    for i, bad in enumerate(HOSTILE):
        values += [good(i), bad]
    values.append(good(len(HOSTILE)))
    await asyncio.to_thread(produce_outside, setup.broker.bootstrap, setup.topic, values, "zstd")
    total = len(values)
    records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= total)
    assert sorted(json.loads(req.body)["n"] for req in r.requests) == list(range(len(HOSTILE) + 1))
    invalid = [rec for rec in records if rec["status"] == "invalid_event"]
    assert len(invalid) == len(HOSTILE)
    assert all(rec["error"] for rec in invalid)
    assert d.alive() and await d.ready()
