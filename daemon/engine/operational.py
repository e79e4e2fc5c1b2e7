"""Operational events: the router's own news (an endpoint paused, resumed, its circuit opened or closed, created,
updated, deleted, a secret rotated, a delivery dead-lettered), each with who did it, written to the topic
``{retry.topic_prefix}.operational``.

The router reads that topic back with its events (``kafka.topics`` and this one) and delivers each record to the
endpoints ``[operational] endpoints`` names (the platform's own, of the config file), signed as each endpoint signs
(Standard Webhooks by default), retried and recorded like any delivery; no subscription of the routing table ever
matches it (``daemon.engine.settle`` routes the topic by itself). Written first, then delivered: an event the router
announces survives a crash of the instance that announced it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec
import orjson

from daemon.core.clock import utc_now_iso
from daemon.core.config import KafkaConfig, OperationalConfig
from daemon.core.profiles import pattern_matches
from daemon.kafka.results import ResultsWriter

log = logging.getLogger(__name__)

# Who did it (``data.actor``): the platform (the admin token, the operator, the config file), the router itself
# (failures, a contract's answer, its circuit breaker), or a tenant (``tenant:<id>``, with its own token).
ACTOR_ADMIN: Final = "admin"
ACTOR_ROUTER: Final = "router"

EVENT_TYPES: Final = (
    "endpoint.paused", "endpoint.resumed", "endpoint.circuit_opened", "endpoint.circuit_closed", "endpoint.created",
    "endpoint.updated", "endpoint.deleted", "secret.rotated", "delivery.dead_lettered",
)  # fmt: skip


def tenant_actor(tenant: str) -> str:
    return f"tenant:{tenant}"


class Operational:
    """Announces the router's own events on the operational topic (nothing when ``[operational]`` is off)."""

    def __init__(self, writer: ResultsWriter | None, topic: str, config: OperationalConfig) -> None:
        self._writer = writer
        self.topic = topic
        self.config = config

    def topics(self, kafka: KafkaConfig) -> KafkaConfig:
        """The events consumer's settings: its topics and, when it is on, the operational topic."""
        if self._writer is None or not self.config.enabled:
            return kafka
        return msgspec.structs.replace(kafka, topics=[*kafka.topics, self.topic])

    def emit(self, kind: str, endpoint_id: str, actor: str, **data: Any) -> None:
        """One operational event (``kind``: one of ``EVENT_TYPES``) about ``endpoint_id`` (``data``: what else it
        says; None values left out)."""
        writer, config = self._writer, self.config
        if writer is None or not config.enabled or not any(pattern_matches(p, kind) for p in config.events):
            return
        if kind == "delivery.dead_lettered" and endpoint_id in self.config.endpoints:
            return  # the platform's own operational endpoint failing: never announced to itself
        body = {"endpoint_id": endpoint_id, "actor": actor, **{k: v for k, v in data.items() if v is not None}}
        value = orjson.dumps({"type": kind, "timestamp": utc_now_iso(), "data": body})
        writer.submit(endpoint_id.encode(), value, None, topic=self.topic)
