"""daemon.engine.settle at its seam: what each event and each delivery is owed, and when its offset may move.

The writer and the sender are in-memory stand-ins (tests/unit/standins.py); Health, the routing, the
lanes and the offset tracker are the real ones. Kafka's acknowledgements are played by the test.
"""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import pytest
from aiokafka import TopicPartition

from daemon.core.clock import iso_ms
from daemon.core.event import Event
from daemon.core.model import LIVE, REPLAY, RetryRecord, decode_health, decode_retry, encode_retry
from daemon.core.offsets import OffsetTracker, PartitionOffsets
from daemon.core.schemas import Failing, SchemaText, compile_schema
from daemon.core.validate import parse_config
from daemon.core.wire import frame
from daemon.delivery.job import Job
from daemon.delivery.sender import Sender
from daemon.engine.health import Health
from daemon.engine.routing import Routing
from daemon.engine.settle import Settlement
from daemon.observe.metrics import Metrics
from tests.unit.standins import Record, ScriptedSender, Writer, event, nothing_to_read, settle_down

SECRET = "whsec_" + base64.b64encode(b"settle-test-secret-0123456789").decode()
TIERS = [1.0, 5.0, 30.0]
DL = "wr.dead-letter"
HEALTH = "wr.health"


def tier(seconds: float) -> str:
    return f"wr.retry.{seconds:g}s"


@dataclass
class Rig:
    settlement: Settlement
    writer: Writer
    sender: ScriptedSender
    health: Health
    tracker: OffsetTracker
    part: PartitionOffsets
    metrics: Metrics

    def dispatch(self, offset: int, value: bytes | None, topic: str = "events") -> None:
        self.settlement.dispatch(Record(topic, 0, offset, value), self.part)

    def results(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.writer.on(None)]


def endpoint(id: str, **over: Any) -> dict[str, Any]:
    return {"id": id, "url": f"https://{id}.example.com/h", "secret": SECRET, **over}


@asynccontextmanager
async def rig(
    endpoints: list[dict[str, Any]] | None = None,
    subscriptions: list[dict[str, Any]] | None = None,
    status: Any = lambda job: 200,
    sender: Any = None,
    sections: dict[str, dict[str, Any]] | None = None,
    read_back: Any = nothing_to_read,
    load_schemas: Any = None,
    event_types: list[dict[str, Any]] | None = None,
    **retry: Any,
) -> AsyncIterator[Rig]:
    endpoints = endpoints if endpoints is not None else [endpoint("a")]
    if subscriptions is None:
        subscriptions = [{"endpoint": e["id"], "events": ["*"]} for e in endpoints]
    raw: dict[str, Any] = {
        "kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["events"], "results_topic": "results"},
        "retry": {"tiers_s": TIERS, "topic_prefix": "wr", **retry},
        "endpoints": endpoints,
        "subscriptions": subscriptions,
        "event_types": event_types or [],
    }
    for name, section in (sections or {}).items():
        raw[name] = {**raw.get(name, {}), **section}
    config = parse_config(raw, {})
    writer, scripted, metrics = Writer(), ScriptedSender(status=status), Metrics()
    health = Health(cast(Any, writer), HEALTH, metrics)
    settlement = Settlement(
        cast(Any, writer),
        config.retry,
        metrics,
        health,
        cast(Any, sender or scripted),
        Routing(config, {}),
        read_back,
        load_schemas,
    )
    tracker = OffsetTracker()
    try:
        yield Rig(settlement, writer, scripted, health, tracker, tracker.assign(("events", 0)), metrics)
    finally:
        settlement.cancel_timers()
        await settlement.cancel()


# --- what an event is owed ---


async def test_an_unmatched_event_is_done_at_once() -> None:
    async with rig(subscriptions=[{"endpoint": "a", "events": ["order.*"]}]) as r:
        r.dispatch(7, event(1))
        assert r.part.watermark() == 8
        assert r.tracker.in_flight == 0
        assert r.writer.records == []


@pytest.mark.parametrize("value", [None, b"", b"{", b"[1]", b'{"no": "type"}', b'{"event": "a\xff"}'])
async def test_an_invalid_record_is_owed_its_invalid_event_record(value: bytes | None) -> None:
    async with rig() as r:
        r.dispatch(3, value)
        (record,) = r.writer.records
        assert record.json()["status"] == "invalid_event" and record.json()["source_offset"] == 3
        assert r.part.watermark() == 3  # not before Kafka has the record
        r.writer.ack(record)
        assert r.part.watermark() == 4 and r.tracker.in_flight == 0


async def test_an_event_is_owed_one_settlement_per_endpoint() -> None:
    async with rig([endpoint("a"), endpoint("b"), endpoint("c")]) as r:
        r.dispatch(0, event(1))
        await settle_down()
        assert sorted(rec["endpoint_id"] for rec in r.results()) == ["a", "b", "c"]
        first, second, third = r.writer.records
        r.writer.ack(first)
        r.writer.ack(second)
        assert r.part.watermark() == 0
        r.writer.ack(third)
        assert r.part.watermark() == 1


async def test_a_skip_is_settled_by_its_record() -> None:
    agora = {"id": "ag", "url": "https://ag.example.com/h", "profile": "agora", "secret": "s"}
    async with rig([agora]) as r:
        r.dispatch(0, event(1, batch_id="b-1"))  # a bulk batch's per-lead event: never delivered
        (record,) = r.writer.records
        assert record.json()["status"] == "skipped_bulk_item"
        assert r.sender.attempts == []
        r.writer.ack(record)
        assert r.part.watermark() == 1


NUMBERED: dict[str, Any] = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer", "maximum": 100}},
}


async def test_an_event_its_schema_refuses_is_validated_once_never_delivered_and_dead_lettered_per_endpoint() -> None:
    catalogue = [{"name": "lead.created", "schema": NUMBERED, "validate": True}]
    async with rig([endpoint("a"), endpoint("b")], event_types=catalogue) as r:
        r.dispatch(0, event(500))  # n over the schema's maximum
        r.dispatch(1, event(5))
        await settle_down()
        assert sorted(a.delivery_id for a in r.sender.attempts) == sorted(
            rec["delivery_id"] for rec in r.results() if rec["source_offset"] == 1)  # fmt: skip
        refused = [rec for rec in r.results() if rec["source_offset"] == 0]
        assert sorted(rec["endpoint_id"] for rec in refused) == ["a", "b"]
        assert {(rec["status"], rec["attempt"], rec["error"]) for rec in refused} == {
            ("invalid_payload", 0, "does not match the schema of 'lead.created': $.n: fails \"maximum\" (100)")
        }
        letters = [rec.json() for rec in r.writer.on(DL)]
        assert sorted(d["endpoint_id"] for d in letters) == ["a", "b"]
        assert all(d["reason"].startswith("invalid_payload: does not match") and d["attempts"] == [] for d in letters)
        assert r.metrics.events_invalid_payload.labels("lead.created")._value.get() == 1  # once per event
        assert r.health.failures("a") == 0  # the event's fault, not the endpoint's
        for record in r.writer.records[:4]:  # the refused event's two results records and two dead letters
            assert r.part.watermark() == 0
            r.writer.ack(record)
        assert r.part.watermark() == 1


async def test_a_catalogue_type_without_validate_or_an_unmatched_event_is_never_validated() -> None:
    catalogue: list[dict[str, Any]] = [
        {"name": "lead.created", "schema": NUMBERED},
        {"name": "x.y", "schema": NUMBERED, "validate": True},
    ]
    async with rig(event_types=catalogue, subscriptions=[{"endpoint": "a", "events": ["lead.*"]}]) as r:
        r.dispatch(0, event(500))  # a schema shown to customers, not enforced
        r.dispatch(1, event(500, "x.y"))  # matches no endpoint: done at once, nothing recorded
        await settle_down()
        assert [rec["status"] for rec in r.results()] == ["delivered"]
        assert r.metrics.events_invalid_payload.labels("x.y")._value.get() == 0


# --- what a delivery is owed after its attempt ---


async def test_a_failed_attempt_with_a_retry_left_is_owed_its_record_and_its_retry_record() -> None:
    ep = endpoint("a", retry={"policy": "schedule", "delays_s": [5]})
    async with rig([ep], status=lambda job: 503) as r:
        r.dispatch(0, event(1))
        await settle_down()
        (result,) = r.writer.on(None)
        (retry,) = r.writer.on(tier(5))
        assert result.json()["status"] == "failed" and result.json()["next_attempt_at"]
        scheduled = decode_retry(retry.value)
        assert (scheduled.attempt, scheduled.delay_ms, scheduled.deferred) == (2, 5000, False)
        r.writer.ack(result)
        assert r.part.watermark() == 0  # the retry record is not in Kafka yet
        r.writer.ack(retry)
        assert r.part.watermark() == 1


@pytest.mark.parametrize(("code", "reason"), [(404, "HTTP 404: final"), (410, "410 Gone"), (500, "no attempts left")])
async def test_a_delivery_that_ends_unsuccessfully_is_owed_its_record_and_its_dead_letter(
    code: int, reason: str
) -> None:
    ep = endpoint("a", retry={"policy": "none"})
    async with rig([ep], status=lambda job: code) as r:
        r.dispatch(0, event(1))
        await settle_down()
        (result,) = [rec for rec in r.writer.on(None) if rec.json()["delivery_id"]]  # beside a 410's endpoint_paused
        (letter,) = r.writer.on(DL)
        assert result.json()["status"] == "dead_lettered"
        assert letter.json()["reason"] == reason and letter.json()["event"] == {"event": "lead.created", "n": 1}
        r.writer.ack(letter)
        assert r.part.watermark() == 0
        r.writer.ack(result)
        assert r.part.watermark() == 1
        assert r.health.is_paused("a") == (code == 410)


async def test_a_blocked_attempt_is_final_at_once_recorded_blocked_and_dead_lettered() -> None:
    """The network guard refused the address: no retry whatever the policy, the record says `blocked`, the
    dead letter says why, and the endpoint's health hears nothing of it."""
    ep = endpoint("a", retry={"policy": "schedule", "delays_s": [1, 2]}, pause_after_failures=1)
    async with rig([ep], status=lambda job: "blocked") as r:
        r.dispatch(0, event(1))
        await settle_down()
        (result,) = r.writer.on(None)
        (letter,) = r.writer.on(DL)
        assert (result.json()["status"], result.json()["error"]) == ("blocked", "blocked: loopback address")
        assert letter.json()["reason"] == "blocked: loopback address"
        assert [a["status"] for a in letter.json()["attempts"]] == ["blocked"]
        assert not any(rec.topic and ".retry." in rec.topic for rec in r.writer.records)
        assert len(r.sender.attempts) == 1
        assert not r.health.is_paused("a") and r.health.failures("a") == 0
        r.writer.ack(result)
        assert r.part.watermark() == 0
        r.writer.ack(letter)
        assert r.part.watermark() == 1


async def test_a_blocked_operator_attempt_is_recorded_and_never_dead_lettered() -> None:
    async with rig(status=lambda job: "blocked") as r:
        endpoint_a = r.settlement.routing.endpoints["a"]
        job = Job(event=Event(event(1), "lead.created", "events", 0, 5, 0), delivery_id="msg_x", ack=None,
                  trigger=REPLAY, endpoint_id="a")  # fmt: skip
        outcome = await r.settlement.attempt_once(endpoint_a, job)
        (record,) = r.writer.records
        assert outcome.status == record.json()["status"] == "blocked"


async def test_operator_attempts_are_recorded_and_owed_to_no_event() -> None:
    async with rig(status=lambda job: 500) as r:
        endpoint_a = r.settlement.routing.endpoints["a"]
        job = Job(event=Event(event(1), "lead.created", "events", 0, 5, 0), delivery_id="msg_x", ack=None,
                  trigger=REPLAY, endpoint_id="a")  # fmt: skip
        await r.settlement.queue_wait(endpoint_a, job)
        await settle_down()
        (record,) = r.writer.records  # failed, never retried, no dead letter
        assert (record.json()["status"], record.json()["trigger"], record.ack) == ("failed", "replay", None)
        outcome = await r.settlement.attempt_once(endpoint_a, job)
        assert outcome.status == "failed" and len(r.writer.records) == 2
        assert r.tracker.in_flight == 0


# --- paused endpoints and full queues ---


async def test_a_paused_endpoint_skips_and_dead_letters_live_events() -> None:
    async with rig() as r:
        r.health.pause("a", "operator", "by a test")
        r.writer.ack_all()
        before = len(r.writer.records)
        r.dispatch(0, event(1))
        skipped, letter = r.writer.records[before:]
        assert skipped.json()["status"] == "skipped_paused" and letter.topic == DL
        assert r.sender.attempts == []
        r.writer.ack(skipped)
        assert r.part.watermark() == 0
        r.writer.ack(letter)
        assert r.part.watermark() == 1


async def test_a_paused_endpoint_that_holds_defers_without_using_an_attempt() -> None:
    async with rig([endpoint("a", while_paused="hold")]) as r:
        r.health.pause("a", "operator", "by a test")
        r.writer.ack_all()
        before = len(r.writer.records)
        r.dispatch(0, event(1))
        (held,) = r.writer.records[before:]
        scheduled = decode_retry(held.value)
        assert (held.topic, scheduled.attempt, scheduled.deferred) == (tier(30), 1, True)
        r.writer.ack(held)
        assert r.part.watermark() == 1


@pytest.mark.parametrize("while_paused", ["skip", "hold"])
async def test_a_replayed_delivery_to_an_endpoint_paused_meanwhile_is_recorded_skipped_never_attempted_nor_held(
    while_paused: str,
) -> None:
    """A replay is refused while the endpoint is paused (daemon.admin.operate); what it queued before a pause is
    recorded skipped_paused by the lane, owed to no event, neither delivered nor deferred to a tier."""
    async with rig([endpoint("a", while_paused=while_paused)]) as r:
        endpoint_a = r.settlement.routing.endpoints["a"]
        r.health.pause("a", "operator", "paused by an operator")
        before = len(r.writer.records)
        job = Job(event=Event(event(1), "lead.created", "events", 0, 5, 0), delivery_id="msg_x", ack=None,
                  trigger=REPLAY, endpoint_id="a")  # fmt: skip
        await r.settlement.queue_wait(endpoint_a, job)
        await settle_down()
        (record,) = r.writer.records[before:]
        assert (record.topic, record.json()["status"], record.json()["trigger"]) == (None, "skipped_paused", "replay")
        assert record.json()["error"] == "endpoint paused (operator: paused by an operator)"
        assert r.sender.attempts == []


async def test_a_held_delivery_comes_back_when_the_hold_ends_and_is_then_skipped_and_dead_lettered() -> None:
    """A paused endpoint that holds does so for retry.max_hold_s from its pause at most (it cycled every held delivery
    through the tiers forever): a held delivery comes back no later than the hold's end, and one that comes back
    after it is settled as a skipping endpoint's, recorded skipped_paused and dead-lettered."""
    async with rig([endpoint("a", while_paused="hold")], max_hold_s=10) as r:
        r.health.observe("a", ok=False, gone=None, threshold=1)  # it pauses itself
        since = r.health.paused_since_ms("a")
        assert since is not None
        r.writer.ack_all()
        before = len(r.writer.records)
        r.dispatch(0, event(1))
        (held,) = r.writer.records[before:]
        scheduled = decode_retry(held.value)
        assert (held.topic, scheduled.deferred) == (tier(5), True)  # not the 30 s recheck: the hold ends first
        assert since + 10_000 <= scheduled.due_ms <= since + 11_000  # never before the hold's end
        r.writer.ack(held)
        (own,) = r.writer.on(HEALTH)
        r.health.apply(decode_health(own.value), own.value)  # its pause read back, then one as if 10 s older
        state = r.health.states["a"]
        r.health.apply(msgspec.structs.replace(state, since=iso_ms(int(time.time() * 1000) - 10_000)))
        job = Job(event=Event(event(1), "lead.created", "events", 0, 0, 0), delivery_id="msg_1", ack=None,
                  endpoint_id="a")  # fmt: skip
        assert r.settlement.held_back(r.settlement.routing.endpoints["a"], job)
        skipped, letter = r.writer.records[before + 1 :]
        assert skipped.json()["status"] == "skipped_paused" and r.sender.attempts == []
        assert skipped.json()["error"] == (
            "endpoint paused (failures: 1 consecutive failed deliveries) for longer than retry.max_hold_s (10 s): "
            "no longer held"
        )
        assert (letter.topic, letter.json()["reason"]) == (DL, "endpoint paused for longer than retry.max_hold_s")


async def test_a_full_queue_defers_beside_another_endpoint_with_work() -> None:
    gate = asyncio.Event()
    endpoints = [endpoint("slow", max_concurrency=1, queue_size=1), endpoint("busy", max_concurrency=1)]
    subscriptions = [{"endpoint": "slow", "events": ["*"]}, {"endpoint": "busy", "events": ["other"]}]
    async with rig(endpoints, subscriptions) as r:
        r.sender.gate = gate
        r.dispatch(0, event(0, "other"))  # busy and slow both have work now
        for offset in range(1, 4):
            r.dispatch(offset, event(offset))
        await settle_down()
        deferred = [decode_retry(rec.value) for rec in r.writer.records if rec.topic and ".retry." in rec.topic]
        assert [d.offset for d in deferred] and all(d.deferred and d.attempt == 1 for d in deferred)
        assert r.metrics.deliveries_deferred._value.get() == len(deferred)
        gate.set()
        await settle_down(100)
        r.writer.ack_all()
        assert r.part.watermark() == 4 and r.tracker.in_flight == 0


# --- the whole promise: an offset moves only once everything it is owed is in Kafka ---


async def attempted_all(r: Rig, within_s: float = 30.0) -> None:
    """Until no lane has work left. An endpoint answered 429 is paced in real time from its recent throughput, so a
    fixed number of loop turns is not enough on a busy machine (the bound only keeps a broken lane from hanging)."""
    deadline = time.monotonic() + within_s
    await settle_down(200)
    while any(lane.busy or lane.queued for lane in r.settlement._lanes.values()):
        assert time.monotonic() < deadline, "lanes still busy"
        await asyncio.sleep(0.01)
    await settle_down(200)


@pytest.mark.parametrize("seed", range(8))
async def test_offsets_move_exactly_when_everything_owed_is_acknowledged(seed: int) -> None:
    rng = random.Random(seed)
    statuses = [200, 200, 200, 404, 410, 429, 500, None]
    endpoints = [
        endpoint("a", retry={"policy": "schedule", "delays_s": [5, 30]}),
        endpoint("b", retry={"policy": "none"}),
        endpoint("c"),
    ]
    subscriptions = [
        {"endpoint": "a", "events": ["lead.*"]},
        {"endpoint": "b", "events": ["lead.created"]},
        {"endpoint": "c", "events": ["*"]},
    ]
    async with rig(endpoints, subscriptions, status=lambda job: rng.choice(statuses)) as r:
        values = [
            rng.choice([event(n), event(n, "lead.updated"), event(n, "call.ended"), b"{broken"]) for n in range(40)
        ]
        for offset, value in enumerate(values):
            r.dispatch(offset, value)
        await attempted_all(r)
        assert r.tracker.in_flight > 0
        pending = [rec for rec in r.writer.records if not rec.acked]
        held_back = pending.pop(rng.randrange(len(pending)))  # one record Kafka never acknowledges
        rng.shuffle(pending)
        for rec in pending:
            r.writer.ack(rec)
        assert r.tracker.in_flight == 1
        mark = r.part.watermark()
        assert mark is not None and mark < len(values)
        r.writer.ack(held_back)
        assert r.tracker.in_flight == 0 and r.part.watermark() == len(values)


# --- back from a tier ---


def retry_record(due_in_ms: int, tier_due_in_ms: int, now_ms: int, endpoint_id: str = "a") -> bytes:
    return encode_retry(
        RetryRecord(
            delivery_id="msg_1", endpoint_id=endpoint_id, attempt=2, due_ms=now_ms + due_in_ms,
            tier_due_ms=now_ms + tier_due_in_ms, delay_ms=5000, trigger=LIVE, event_type="lead.created",
            topic="events", partition=0, offset=9, time_ms=now_ms, value=event(1),
        )
    )  # fmt: skip


def take(r: Rig, value: bytes, offset: int = 0) -> int | None:
    return r.settlement.take(Record(tier(5), 0, offset, value), r.part)


async def test_a_tier_record_not_let_out_yet_holds_its_partition() -> None:
    async with rig() as r:
        now = int(time.time() * 1000)
        assert take(r, retry_record(60_000, 30_000, now)) == now + 30_000
        assert r.part.watermark() is None and r.writer.records == []


async def test_a_tier_record_due_later_hops_to_a_shorter_tier() -> None:
    async with rig() as r:
        assert take(r, retry_record(20_000, -1, int(time.time() * 1000))) is None
        (hop,) = r.writer.records
        assert hop.topic == tier(5)  # 20 s still to go: the 5 s tier
        assert r.part.watermark() == 0
        r.writer.ack(hop)
        assert r.part.watermark() == 1


async def test_a_due_tier_record_goes_to_its_lane_and_is_settled_by_the_attempt() -> None:
    async with rig() as r:
        assert take(r, retry_record(-5, -5, int(time.time() * 1000))) is None
        await settle_down()
        (result,) = r.writer.records
        assert (result.json()["status"], result.json()["attempt"]) == ("delivered", 2)
        r.writer.ack(result)
        assert r.part.watermark() == 1


async def test_a_tier_record_of_an_endpoint_that_left_is_dead_lettered() -> None:
    async with rig() as r:
        take(r, retry_record(-5, -5, int(time.time() * 1000), endpoint_id="gone"))
        (letter,) = r.writer.records
        assert (letter.topic, letter.json()["reason"]) == (DL, "endpoint no longer configured")


async def test_an_unreadable_tier_record_is_skipped() -> None:
    async with rig() as r:
        assert take(r, b"\x00garbage") is None
        assert r.part.watermark() == 1 and r.writer.records == []


# --- records too large for their topics ---


async def test_a_retry_record_too_large_keeps_the_coordinates_instead_of_the_event() -> None:
    ep = endpoint("a", retry={"policy": "schedule", "delays_s": [5]})
    async with rig([ep], status=lambda job: 503, max_record_bytes=10_000) as r:
        r.dispatch(3, event(1, pad="x" * 20_000))
        await settle_down()
        (retry,) = r.writer.on(tier(5))
        scheduled = decode_retry(retry.value)
        assert (scheduled.value, scheduled.value_omitted) == (b"", True)
        assert (scheduled.topic, scheduled.partition, scheduled.offset) == ("events", 0, 3)
        assert len(retry.value) < 10_000
        r.dispatch(4, event(2))  # a small one keeps its body
        await settle_down()
        assert decode_retry(r.writer.on(tier(5))[1].value).value == event(2)


async def test_a_dead_letter_too_large_names_where_the_event_is() -> None:
    ep = endpoint("a", retry={"policy": "none"})
    async with rig([ep], status=lambda job: 500, max_record_bytes=10_000) as r:
        r.dispatch(3, event(1, pad="x" * 20_000))
        await settle_down()
        (letter,) = r.writer.on(DL)
        assert letter.json()["event"] is None
        assert letter.json()["event_omitted"] == "too large for a dead-letter record: read it at events[0]@3"


async def test_in_flight_bytes_are_the_unfinished_events_values() -> None:
    async with rig() as r:
        r.dispatch(0, event(1, pad="x" * 1000))
        r.dispatch(1, b"{broken")
        held = len(event(1, pad="x" * 1000))
        await settle_down()
        assert r.tracker.in_flight_bytes == held  # an invalid record holds nothing once its record is queued
        r.writer.ack_all()
        assert r.tracker.in_flight_bytes == 0


async def test_a_body_that_cannot_be_built_is_final_for_that_endpoint_and_says_nothing_of_its_health() -> None:
    lt = {"id": "lt", "url": "https://lt.example.com/h", "profile": "leadterra"}
    sender = Sender(Metrics())  # the real one: it renders before it would connect, and never connects here
    try:
        async with rig([lt], sender=sender) as r:
            deep = b'{"event":"reply.received","a":' + b"[" * 300 + b"]" * 300 + b"}"
            r.dispatch(0, deep)
            await settle_down(50)
            result, letter = r.writer.on(None)[0], r.writer.on(DL)[0]
            assert result.json()["status"] == "dead_lettered" and "could not be built" in result.json()["error"]
            assert letter.json()["reason"].startswith("the leadterra body could not be built")
            assert r.health.failures("lt") == 0
    finally:
        await sender.close()


# --- endpoints managed at run time ---


async def test_an_endpoint_put_at_run_time_is_routed_to_at_once_and_a_dropped_one_no_more() -> None:
    from daemon.core.config import EndpointConfig, SubscriptionConfig

    async with rig() as r:
        config = EndpointConfig(id="ep_api", url="https://api.example.com/h", secret=SECRET)
        r.settlement.put(config, SubscriptionConfig(endpoint="ep_api", events=["call.*"]))
        r.dispatch(0, event(1, "call.ended"))
        await settle_down()
        assert [rec.json()["endpoint_id"] for rec in r.writer.on(None)] == ["a", "ep_api"]
        changed = EndpointConfig(id="ep_api", url="https://api.example.com/other", secret=SECRET)
        r.settlement.put(changed, SubscriptionConfig(endpoint="ep_api", events=["lead.*"]))
        assert r.settlement.routing.endpoints["ep_api"].config.url.endswith("/other")
        r.settlement.drop("ep_api")
        r.dispatch(1, event(2, "call.ended"))
        await settle_down()
        assert [rec.json()["endpoint_id"] for rec in r.writer.on(None)] == ["a", "ep_api", "a"]
        with pytest.raises(ValueError, match="defined in the config file"):
            r.settlement.put(EndpointConfig(id="a", url="https://x.example.com/h", secret=SECRET),
                             SubscriptionConfig(endpoint="a", events=["*"]))  # fmt: skip


async def test_a_drop_of_an_id_of_the_config_file_leaves_its_endpoint_and_lane_alone() -> None:
    """The feed drops a record of the endpoints topic it cannot route (here: its id is the file's): the file's
    endpoint keeps its lane (what it has queued is not retired) and its routes."""
    async with rig() as r:
        r.dispatch(0, event(1))
        lane = r.settlement._lanes["a"]
        r.settlement.drop("a")
        assert r.settlement._lanes.get("a") is lane and "a" in r.settlement.routing.endpoints
        r.dispatch(1, event(2))
        await settle_down()
        assert [rec.json()["endpoint_id"] for rec in r.writer.on(None)] == ["a", "a"]


async def test_the_endpoints_gauge_is_read_off_the_routing_in_use_when_scraped() -> None:
    """Not set at each record of a first read (a million sets, about 2 % of it): read when /metrics is scraped, from
    the routing in use, across puts, drops and a reload."""
    from daemon.core.config import EndpointConfig, SubscriptionConfig

    async with rig() as r:
        r.settlement.expose(r.metrics)

        def shown() -> float | None:
            return r.metrics.registry.get_sample_value("webhook_router_endpoints")

        assert shown() == 1  # the config file's
        for n in range(3):
            config = EndpointConfig(id=f"ep_{n}", url="https://api.example.com/h", secret=SECRET)
            r.settlement.put(config, SubscriptionConfig(endpoint=f"ep_{n}", events=["*"]))
        assert shown() == 4
        r.settlement.drop("ep_1")
        assert shown() == 3
        routing = r.settlement.routing
        reloaded = Routing(routing.config, {}, routing)
        r.settlement.use(reloaded)
        r.settlement.drop("ep_0")
        assert shown() == 2


async def test_a_lane_without_work_for_a_while_is_closed_and_comes_back_with_work() -> None:
    async with rig() as r:
        r.dispatch(0, event(1))
        await settle_down()
        assert r.settlement.load("a") == (0, 0) and "a" in r.settlement._lanes
        sweeper = asyncio.create_task(r.settlement.retire_idle_every(0.05))
        try:
            for _ in range(100):
                if "a" not in r.settlement._lanes:
                    break
                await asyncio.sleep(0.02)
            assert "a" not in r.settlement._lanes  # no task left for an idle endpoint
            assert r.settlement.routing.endpoints.built == 0  # nor a prepared Endpoint
            r.dispatch(1, event(2))
            await settle_down()
            assert len(r.writer.on(None)) == 2  # a new lane for the next delivery
        finally:
            sweeper.cancel()


async def test_the_sweep_of_idle_lanes_gives_the_allocators_free_pages_back_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a burst freed goes back to the system (``heap.give_back``), at each sweep, off the loop."""
    import daemon.engine.settle

    given: list[str] = []
    monkeypatch.setattr(daemon.engine.settle, "give_back", lambda: given.append(threading.current_thread().name))
    async with rig() as r:
        sweeper = asyncio.create_task(r.settlement.retire_idle_every(0.02))
        try:
            for _ in range(200):
                if len(given) >= 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            sweeper.cancel()
    assert len(given) >= 3 and threading.main_thread().name not in given


async def test_an_endpoint_is_prepared_only_once_it_has_work() -> None:
    async with rig(endpoints=[endpoint("a"), endpoint("b")], subscriptions=[
        {"endpoint": "a", "events": ["lead.*"]}, {"endpoint": "b", "events": ["call.*"]},
    ]) as r:  # fmt: skip
        endpoints = r.settlement.routing.endpoints
        assert len(endpoints) == 2 and endpoints.built == 0 and "b" in endpoints
        r.dispatch(0, event(1, "lead.created"))
        await settle_down()
        assert endpoints.built == 1 and r.settlement.load("b") == (0, 0)


async def test_a_put_that_changes_nothing_keeps_the_lane_and_a_change_retires_it() -> None:
    from daemon.core.config import EndpointConfig, SubscriptionConfig

    async with rig() as r:
        config = EndpointConfig(id="ep_api", url="https://api.example.com/h", secret=SECRET)
        subscription = SubscriptionConfig(endpoint="ep_api", events=["*"])
        r.settlement.put(config, subscription)
        r.dispatch(0, event(1))
        await settle_down()
        lane = r.settlement._lanes["ep_api"]
        r.settlement.put(EndpointConfig(id="ep_api", url="https://api.example.com/h", secret=SECRET), subscription)
        assert r.settlement._lanes["ep_api"] is lane and r.settlement.routing.endpoints["ep_api"] is lane.endpoint
        r.settlement.put(EndpointConfig(id="ep_api", url="https://api.example.com/h2", secret=SECRET), subscription)
        assert "ep_api" not in r.settlement._lanes
        r.dispatch(1, event(2))
        await settle_down()
        assert r.settlement._lanes["ep_api"].endpoint.config.url.endswith("/h2")


async def test_a_put_that_no_endpoint_could_be_built_from_is_refused_and_changes_nothing() -> None:
    from daemon.core.config import EndpointConfig, SubscriptionConfig

    async with rig() as r:
        bad = EndpointConfig(id="ep_api", url="https://api.example.com/h", secret_env="UNSET_SECRET")
        with pytest.raises(ValueError, match="UNSET_SECRET"):
            r.settlement.put(bad, SubscriptionConfig(endpoint="ep_api", events=["*"]))
        assert "ep_api" not in r.settlement.routing.endpoints
        r.dispatch(0, event(1))
        await settle_down()
        assert [rec.json()["endpoint_id"] for rec in r.writer.on(None)] == ["a"]


# --- records in the Schema Registry wire format ---

FRAMED: dict[str, dict[str, Any]] = {
    "kafka": {"value_formats": {"events": "schema-registry"}},
    "schema_registry": {"url": "http://sr.test:8081"},
}
JSON_SCHEMA = SchemaText(kind="JSON", text='{"title": "Lead"}')


async def test_a_record_whose_schema_cannot_be_had_holds_its_partition_owing_nothing_until_it_can() -> None:
    async with rig(sections=FRAMED) as r:
        now = int(time.time() * 1000)
        schemas = r.settlement.routing.schemas
        schemas.put(8, Failing("the Schema Registry could not give schema id 8: HTTP 503", now + 5000))
        record = Record("events", 0, 3, frame(8, event(1)))
        assert r.settlement.dispatch(record, r.part) == now + 5000
        assert r.writer.records == [] and r.part.watermark() is None and r.tracker.in_flight == 0
        assert r.metrics.events_waiting_for_schema.labels("events")._value.get() == 1
        schemas.put(8, compile_schema(JSON_SCHEMA))  # the registry answered
        assert r.settlement.dispatch(record, r.part) is None
        await settle_down()
        (result,) = r.results()
        assert result["status"] == "delivered"
        assert r.sender.attempts[0].event.value == event(1)


async def test_a_schema_not_fetched_yet_holds_the_partition_briefly() -> None:
    async with rig(sections=FRAMED) as r:
        before = int(time.time() * 1000)
        hold = r.settlement.dispatch(Record("events", 0, 0, frame(8, event(1))), r.part)
        assert hold is not None and before + 100 <= hold <= int(time.time() * 1000) + 1000
        assert r.writer.records == []


async def test_prepare_fetches_the_schema_ids_of_the_framed_topics_records_only() -> None:
    asked: list[set[int]] = []

    async def load(ids: set[int]) -> None:
        asked.append(ids)

    sections: dict[str, dict[str, Any]] = {
        **FRAMED,
        "kafka": {"topics": ["events", "plain"], "value_formats": {"events": "auto"}},
    }
    async with rig(sections=sections, load_schemas=load) as r:
        await r.settlement.prepare({
            TopicPartition("events", 0): [Record("events", 0, 0, frame(5, b"{}")), Record("events", 0, 1, b"{}"),
                                          Record("events", 0, 2, frame(6, b"{}")), Record("events", 0, 3, None)],
            TopicPartition("plain", 0): [Record("plain", 0, 0, frame(7, b"{}"))],
        })  # fmt: skip
        assert asked == [{5, 6}]
        await r.settlement.prepare({TopicPartition("plain", 0): [Record("plain", 0, 0, frame(7, b"{}"))]})
        assert asked == [{5, 6}]  # nothing to fetch: not called


async def test_a_read_back_whose_schema_cannot_be_had_waits_in_the_tiers_instead_of_a_dead_letter() -> None:
    async def read_back(topic: str, partition: int, offset: int) -> Record:
        return Record(topic, partition, offset, frame(8, event(1)))

    async def load(ids: set[int]) -> None:
        r.settlement.routing.schemas.put(8, Failing("down", int(time.time() * 1000) + 60_000))

    async with rig(sections=FRAMED, read_back=read_back, load_schemas=load) as r:
        now = int(time.time() * 1000)
        retry = decode_retry(retry_record(-5, -5, now))
        retry.value, retry.value_omitted = b"", True
        take(r, encode_retry(retry))
        await settle_down(50)
        assert r.writer.on(DL) == []
        (deferred,) = [decode_retry(rec.value) for rec in r.writer.records]
        assert deferred.value_omitted and deferred.deferred and deferred.attempt == 2


async def test_an_endpoint_put_at_run_time_is_built_as_the_apis_and_one_of_the_file_as_the_files() -> None:
    """Which network guard an endpoint meets follows where it comes from, across a reload too (the sender gives the
    API's endpoints the client of api.allowed_networks)."""
    from daemon.core.config import EndpointConfig, SubscriptionConfig

    async with rig() as r:
        config = EndpointConfig(id="ep_api", url="https://a.example.com/h", secret=SECRET)
        r.settlement.put(config, SubscriptionConfig(endpoint="ep_api", events=["*"]))
        r.dispatch(0, event(1))
        await settle_down()
        routing = r.settlement.routing
        assert (routing.endpoints["ep_api"].managed, routing.endpoints["a"].managed) == ("api", "config")
        reloaded = Routing(routing.config, {}, routing)
        r.settlement.use(reloaded)
        assert (reloaded.endpoints["ep_api"].managed, reloaded.endpoints["a"].managed) == ("api", "config")
        r.settlement.drop("ep_api")
        assert "ep_api" not in reloaded.endpoints.configs and "ep_api" not in reloaded.dynamic  # nothing of it left
        assert reloaded.endpoints.managed("ep_api") == "api"  # an id it does not hold: the stricter guard


# --- ordered delivery per key ---


def keyed(r: Rig, offset: int, key: bytes, n: int) -> None:
    r.settlement.dispatch(Record("events", 0, offset, event(n, key=key.decode()), key=key), r.part)


async def test_an_ordered_endpoint_delivers_each_key_one_at_a_time_in_offset_order_while_other_keys_flow() -> None:
    """k1's first delivery fails once: k1's next two wait behind it (its retry waits here, not on a tier), k2's go
    meanwhile; the offsets of k1's are not finished until delivered, so the watermark stays at k1's first."""
    tries: dict[int, int] = {}

    def status(job: Job) -> int:
        n = job.event.decoded()["n"]
        tries[n] = tries.get(n, 0) + 1
        return 500 if n == 0 and tries[n] == 1 else 200

    ordered = endpoint("a", ordering="key", max_concurrency=8, retry={"policy": "schedule", "delays_s": [0.2]})
    async with rig([ordered], status=status) as r:
        for offset, (key, n) in enumerate([(b"k1", 0), (b"k2", 1), (b"k1", 2), (b"k2", 3), (b"k1", 4)]):
            keyed(r, offset, key, n)
        await settle_down(100)
        r.writer.ack_all()
        attempted = [j.event.decoded()["n"] for j in r.sender.attempts]
        assert attempted == [0, 1, 3]  # k1 waits on its retry; k2 in order, one at a time
        assert r.part.watermark() == 0 and r.writer.on(tier(0.5)) == []
        async with asyncio.timeout(5):
            while len(r.sender.attempts) < 6:
                await asyncio.sleep(0.01)
                r.writer.ack_all()
        await settle_down(50)
        r.writer.ack_all()
        attempted = [j.event.decoded()["n"] for j in r.sender.attempts]
        assert attempted == [0, 1, 3, 0, 2, 4]
        assert r.part.watermark() == 5


@pytest.mark.parametrize("when", ["dead_letter", "release"])
async def test_a_key_whose_delivery_fails_for_good_dead_letters_what_waits_behind_it_or_releases_it(
    when: str,
) -> None:
    ordered = endpoint("a", ordering="key", retry={"policy": "none"}, when_key_fails=when)
    async with rig([ordered], status=lambda job: 500 if job.event.decoded()["n"] == 0 else 200) as r:
        for offset, n in enumerate(range(3)):
            keyed(r, offset, b"k1", n)
        await settle_down(100)
        r.writer.ack_all()
        letters = [(x.json()["source_offset"], x.json()["reason"]) for x in r.writer.on(DL)]
        attempted = [j.event.decoded()["n"] for j in r.sender.attempts]
        if when == "dead_letter":
            assert attempted == [0]
            assert letters == [(0, "no attempts left"), (1, "behind a dead-lettered delivery of its key"),
                               (2, "behind a dead-lettered delivery of its key")]  # fmt: skip
        else:
            assert attempted == [0, 1, 2] and letters == [(0, "no attempts left")]
        assert r.part.watermark() == 3


async def test_a_revoked_partitions_deliveries_waiting_for_their_key_go_to_its_new_owner_not_here() -> None:
    gate = asyncio.Event()
    ordered = endpoint("a", ordering="key")
    async with rig([ordered]) as r:
        r.sender.gate = gate
        keyed(r, 0, b"k1", 0)
        keyed(r, 1, b"k1", 1)
        await settle_down()
        r.tracker.revoke(("events", 0))
        gate.set()
        await settle_down(100)
        assert [j.event.decoded()["n"] for j in r.sender.attempts] == [0]
        r.writer.ack_all()
        assert r.tracker.in_flight == 0  # the one left behind is no longer counted here
