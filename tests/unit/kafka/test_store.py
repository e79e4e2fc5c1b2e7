"""daemon.kafka.store at its seam with Kafka: what a writer is told when Kafka does not take a write, or takes it and
this instance does not read it back. The producer is a small in-memory stand-in; the Follower is real but never
started (nothing is read back), so no broker is needed."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

import daemon.kafka.store
from daemon.core.errors import KafkaUnavailable
from daemon.core.registry import TenantRecord, signed
from daemon.core.secretbox import Keyring
from daemon.kafka.store import Store
from daemon.observe.metrics import Metrics


class Producer:
    """A stand-in for AIOKafkaProducer.send_and_wait: fails, hangs, or acknowledges at offset 7."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def send_and_wait(self, topic: str, value: bytes | None, key: bytes) -> Any:
        if self.mode == "fail":
            raise KafkaTimeoutError()
        if self.mode == "hang":
            await asyncio.Event().wait()
        return SimpleNamespace(partition=0, offset=7)


def store(mode: str) -> Store:
    keys = Keyring(os.urandom(32))
    return Store("wr.endpoints", {"bootstrap_servers": "127.0.0.1:1"}, Producer(mode), lambda *a: None, keys, Metrics())


@pytest.fixture(autouse=True)
def _short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.kafka.store, "_WRITE_TIMEOUT_S", 0.2)


@pytest.mark.parametrize(("mode", "said"), [
    ("fail", "tenant/acme not written: Kafka did not acknowledge it (KafkaTimeoutError); try again"),
    ("hang", "tenant/acme not written: Kafka did not acknowledge it (no answer within 0.2 s); try again"),
    ("ack", "version 1 of tenant/acme was written but this instance has not read it back yet: read it before "
            "writing again"),
])  # fmt: skip
async def test_a_write_kafka_did_not_take_or_that_was_not_read_back_is_a_503_saying_which(mode: str, said: str) -> None:
    s = store(mode)
    try:
        with pytest.raises(KafkaUnavailable) as refused:
            await s.write(TenantRecord(id="acme", version=1, created_at="2026-11-28T00:00:00Z"))
    finally:
        await s.stop()
    assert (refused.value.http_status, str(refused.value)) == (503, said)


async def test_the_store_says_how_far_behind_the_topic_it_is_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    s = store("ack")
    try:
        for lag, said in [
            ((0, 9.9), None),
            ((0, 10.0), None),
            ((3, 12.4), "behind the endpoints topic wr.endpoints (last caught up 12 s ago, 3 records known unread; "
                        "more than api.max_token_lag_s = 10 s)"),
            ((0, None), "behind the endpoints topic wr.endpoints (not caught up yet, 0 records known unread; more "
                        "than api.max_token_lag_s = 10 s)"),
        ]:  # fmt: skip
            monkeypatch.setattr(s._follower, "lag", lambda lag=lag: lag)
            assert s.lagging(10) == said
    finally:
        await s.stop()


async def test_the_first_read_keeps_no_outcome_per_record_and_a_write_after_it_learns_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer waits for the outcome of its own record; none can wait during the first read (the API is made after
    it), so a million records read at the start keep nothing each (it cost 2.5 % of the read)."""
    s = store("ack")

    def applied(offset: int) -> Any:
        record = TenantRecord(id=f"t{offset}", version=1, created_at="2026-11-28T00:00:00Z")
        return SimpleNamespace(key=f"tenant/t{offset}".encode(), value=signed(record, s._keyring), partition=0,
                               offset=offset)  # fmt: skip

    async def read_to_the_end() -> int:
        for offset in range(1_000):
            s._apply(applied(offset))
        return 1_000

    monkeypatch.setattr(s._follower, "start", read_to_the_end)
    try:
        assert await s.start() == 1_000
        assert len(s.directory.tenants) == 1_000 and len(s._outcomes) == 0
        s._apply(applied(1_000))  # read after the start: a writer of this instance may wait for it
        assert s._outcomes == {(0, 1_000): True}
    finally:
        await s.stop()
