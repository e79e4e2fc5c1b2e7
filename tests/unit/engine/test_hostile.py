"""Nothing a record contains escapes as an exception: random bytes, random JSON, deep nesting and random
headers go through reading, matching, conditions, skips and rendering for every profile, and through the
settlement's dispatch (writer and sender are the in-memory stand-ins of tests/unit/standins.py)."""

from __future__ import annotations

import json
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.core.config import DeliveryConfig, EndpointConfig, SubscriptionConfig, WhereConfig
from daemon.core.errors import InvalidEvent, RenderError
from daemon.core.event import Event, TypeReader
from daemon.core.match import RoutingTable
from daemon.core.offsets import OffsetTracker
from daemon.core.profiles import PROFILES, skip_for
from daemon.core.validate import parse_config
from daemon.delivery.endpoint import Endpoint
from daemon.engine.health import Health
from daemon.engine.routing import Routing
from daemon.engine.settle import Settlement
from daemon.observe.metrics import Metrics
from tests.unit.standins import Record, ScriptedSender, Writer, nothing_to_read, settle_down

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
type_names = st.sampled_from(["lead.created", "leads.bulk_created", "message_received", "lead.create", "ping"])
events = st.builds(
    lambda t, extra, key: {key: t, **extra},
    type_names | st.text(max_size=30),
    st.dictionaries(
        st.sampled_from(["batch_id", "payload", "data", "agentPlatform", "tenant", "timestamp", "id"]), json_values
    ),
    st.sampled_from(["event", "type"]),
)


def _deep(depth: int) -> bytes:
    return b'{"event":"x","a":' + b"[" * depth + b"]" * depth + b"}"


values = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda e: json.dumps(e).encode(), events),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(_deep, st.integers(min_value=1, max_value=5000)),
    st.builds(lambda e, junk: json.dumps(e).encode()[:-1] + junk, events, st.binary(max_size=5)),
    st.none(),
)
headers = st.lists(
    st.tuples(st.sampled_from(["ce_type", "ce_id", "ce_source", "traceparent", "x"]), st.binary(max_size=60)),
    max_size=4,
)
readers = [TypeReader(), TypeReader("meta.kind"), TypeReader(None, "id"), TypeReader(max_bytes=1024)]
WHERE = WhereConfig(field="tenant", one_of=["t1"])
TABLE = RoutingTable(
    [SubscriptionConfig(endpoint=name, events=["*"], where=WHERE) for name in PROFILES],
    {name: profile.catalogue for name, profile in PROFILES.items()},
)


def _endpoint(profile: str) -> Endpoint:
    kind = PROFILES[profile].key_source
    secret = "whsec_QUJDREVGR0g=" if kind == "whsec" else ("s" if kind == "text" else None)
    config = EndpointConfig(id=profile, url="https://x.example.com/h", profile=profile, secret=secret)
    return Endpoint(config, DeliveryConfig(), {})


ENDPOINTS = [_endpoint(name) for name in PROFILES]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values, header_list=headers)
def test_reading_matching_and_rendering_never_raise_anything_but_invalid_event(
    value: bytes | None, header_list: list[tuple[str, bytes]]
) -> None:
    for reader in readers:
        try:
            event = reader.event(Record("t", 0, 1, value, headers=tuple(header_list)))
        except InvalidEvent:
            continue
        assert isinstance(event, Event) and event.event_type and event.key
        TABLE.match("t", event.event_type).select(event.decoded)
        for endpoint in ENDPOINTS:
            skip_for(endpoint.profile, event.decoded(), event.event_type)
            try:
                body = endpoint.render(event)
            except RenderError:  # a per-endpoint render failure: the attempt records it, final
                continue
            assert isinstance(body, bytes)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(values, headers), min_size=1, max_size=10))
async def test_dispatch_settles_or_records_every_record(
    batch: list[tuple[bytes | None, list[tuple[str, bytes]]]],
) -> None:
    raw: dict[str, Any] = {
        "kafka": {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "r"},
        "endpoints": [
            {"id": "agora", "url": "https://a.example.com/h", "profile": "agora", "secret": "s"},
            {"id": "crm", "url": "https://c.example.com/h", "profile": "crm", "secret": "s"},
            {"id": "sw", "url": "https://s.example.com/h", "secret": "whsec_QUJDREVGR0g="},
        ],
        "subscriptions": [
            {"endpoint": "agora", "events": ["*"], "where": {"field": "tenant", "none_of": ["x"]}},
            {"endpoint": "crm", "events": ["*"]},
            {"endpoint": "sw", "events": ["*"]},
        ],
    }
    config = parse_config(raw, {})
    writer, metrics = Writer(), Metrics()
    health = Health(cast(Any, writer), "h", metrics)
    settlement = Settlement(cast(Any, writer), config.retry, metrics, health, cast(Any, ScriptedSender()),
                            Routing(config, {}), nothing_to_read)  # fmt: skip
    tracker = OffsetTracker()
    part = tracker.assign(("t", 0))
    try:
        for offset, (value, header_list) in enumerate(batch):
            settlement.dispatch(Record("t", 0, offset, value, headers=tuple(header_list)), part)
        await settle_down(100)
        writer.ack_all()
        await settle_down(20)
        writer.ack_all()
        assert tracker.in_flight == 0 and part.watermark() == len(batch)  # every record settled, none stuck
    finally:
        settlement.cancel_timers()
        await settlement.cancel()
