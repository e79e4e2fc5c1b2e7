"""One-shot operator actions, outside the consume loop: a test delivery to one endpoint (``ping``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

import orjson
from aiokafka import AIOKafkaProducer

from daemon.config import Config, resolve
from daemon.consume import kafka_client_options
from daemon.deliver import Endpoint, Job, Sender
from daemon.errors import NotFound
from daemon.metrics import Metrics
from daemon.model import PING, Event, Outcome, encode_outcome


class UnknownEndpoint(NotFound):
    pass


def endpoint_of(config: Config, endpoint_id: str, environ: Mapping[str, str]) -> Endpoint:
    endpoints = resolve(config).endpoints
    for ep in endpoints:
        if ep.id == endpoint_id:
            return Endpoint(ep, config.delivery, environ)
    known = ", ".join(e.id for e in endpoints) or "none"
    raise UnknownEndpoint(f"no endpoint {endpoint_id!r} (known: {known})")


def test_event(endpoint: Endpoint) -> Event:
    """The profile's test event (``ping``, ``webhook_test``, ...), as if it had arrived on Kafka now."""
    sample = dict(endpoint.profile.test_event)
    event_type = str(sample.get("event") or sample.get("type"))
    return Event(orjson.dumps(sample), event_type, None, None, None, int(time.time() * 1000))


def ping_job(endpoint: Endpoint) -> Job:
    """One test delivery: the profile's test event under a fresh delivery id, never retried."""
    return Job(event=test_event(endpoint), delivery_id="msg_" + uuid.uuid4().hex, ack=lambda: None, trigger=PING)


async def ping(config: Config, endpoint_id: str, environ: Mapping[str, str]) -> Outcome:
    """Send the profile's test event once (no retry) and record the outcome on the results topic."""
    endpoint = endpoint_of(config, endpoint_id, environ)
    job = ping_job(endpoint)
    sender = Sender(Metrics())
    try:
        outcome = await sender.attempt(endpoint, job)
    finally:
        await sender.close()
    producer = AIOKafkaProducer(
        acks="all" if config.kafka.results_acks == "all" else 1,
        enable_idempotence=config.kafka.enable_idempotence,
        **kafka_client_options(config.kafka, environ),
    )
    await producer.start()
    try:
        await producer.send_and_wait(config.kafka.results_topic, encode_outcome(outcome), key=endpoint.id.encode())
    finally:
        await producer.stop()
    return outcome
