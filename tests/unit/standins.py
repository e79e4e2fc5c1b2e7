"""Small in-memory stand-ins for the unit tests at a module's seam (never used by integration tests).

- ``Writer`` for ``daemon.kafka.results.ResultsWriter``: keeps every submitted record; the test acknowledges them.
- ``ScriptedSender`` for ``daemon.delivery.sender.Sender``: answers each attempt with the status the test scripts,
  optionally waiting on a gate, without any socket.
- ``Record`` for an aiokafka ``ConsumerRecord``.
- ``nothing_to_read`` for the settlement's read-back (``daemon.kafka.readback.read_one``).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.core.errors import NotFound
from daemon.core.model import BLOCKED, DELIVERED, FAILED, Ack, Indexed, Outcome, decode_outcome
from daemon.delivery.endpoint import Endpoint
from daemon.delivery.job import Job, outcome_for


@dataclass
class Submitted:
    topic: str | None
    key: bytes | None
    value: bytes
    ack: Ack | None
    acked: bool = False

    def outcome(self) -> Outcome:
        return decode_outcome(self.value)

    def json(self) -> Any:
        return json.loads(self.value)


class Writer:
    """Stand-in for ResultsWriter: ``submit`` keeps the record; ``ack_all`` plays Kafka acknowledging them."""

    def __init__(self, indexing: bool = False) -> None:
        self.records: list[Submitted] = []
        self.indexing = indexing  # the delivery index on: results records carry their entries
        self.entries: list[Indexed] = []  # the index entries submitted beside them

    def submit(
        self,
        key: bytes | None,
        value: bytes,
        ack: Ack | None,
        topic: str | None = None,
        index: Indexed | None = None,
    ) -> None:
        self.records.append(Submitted(topic, key, value, ack))
        if index is not None:
            self.entries.append(index)

    def on(self, topic: str | None) -> list[Submitted]:
        """The records for ``topic`` (None: the results topic)."""
        return [r for r in self.records if r.topic == topic]

    def ack(self, record: Submitted) -> None:
        assert not record.acked, "acknowledged twice"
        record.acked = True
        if record.ack is not None:
            record.ack()

    def ack_all(self, rng: random.Random | None = None) -> int:
        """Acknowledge every record not acknowledged yet (in a random order when ``rng`` is given)."""
        pending = [r for r in self.records if not r.acked]
        if rng is not None:
            rng.shuffle(pending)
        for record in pending:
            self.ack(record)
        return len(pending)


@dataclass
class ScriptedSender:
    """Stand-in for Sender: ``status(job)`` gives each attempt's HTTP status (None: a timeout; ``"blocked"``: the
    network guard refused the endpoint's address)."""

    status: Callable[[Job], int | str | None] = lambda job: 200
    gate: asyncio.Event | None = None  # when given, every attempt waits for it
    attempts: list[Job] = field(default_factory=list)
    under_way: int = 0
    most_under_way: int = 0

    async def attempt(self, endpoint: Endpoint, job: Job) -> Outcome:
        self.attempts.append(job)
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
        finally:
            self.under_way -= 1
        code = self.status(job)
        if code == BLOCKED:
            error = "blocked: loopback address"
            return outcome_for(endpoint.id, job, BLOCKED, duration_ms=0.1, error=error, profile=endpoint.profile.name)
        assert not isinstance(code, str)
        ok = code is not None and 200 <= code < 300
        return outcome_for(
            endpoint.id,
            job,
            DELIVERED if ok else FAILED,
            http_status=code,
            duration_ms=1.0,
            error=None if ok else (f"HTTP {code}" if code is not None else "timeout"),
            profile=endpoint.profile.name,
            attempt_id=f"{job.delivery_id}-{job.attempt}",
        )

    async def close(self) -> None:
        pass


@dataclass
class Record:
    """Stand-in for aiokafka's ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = 1_781_294_400_000
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def event(n: int, event_type: str = "lead.created", **extra: Any) -> bytes:
    return json.dumps({"event": event_type, "n": n, **extra}).encode()


async def settle_down(rounds: int = 20) -> None:
    """Let lane workers and callbacks run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def nothing_to_read(topic: str, partition: int, offset: int) -> Any:
    """The settlement's read-back stand-in where a test reads nothing back: every position is missing."""
    raise NotFound(f"no record at {topic}[{partition}]@{offset} (stand-in)")
