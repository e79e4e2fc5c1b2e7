"""The one door to aiokafka: every Kafka client of the router is built here, and every use of aiokafka's insides
is here, so that an aiokafka upgrade touches this file (and the tests named below) only.

The consumers (events, retry tiers, health, endpoints, read-backs, ``tail``), the producer (``RouterProducer``) and the
admin client are all built from ``kafka_client_options``, so a security setting reaches each of them or none.

aiokafka's insides this module relies on (checked on every upgrade of the pin in pyproject.toml):

- ``AIOKafkaConsumer._client`` (its ``AIOKafkaClient``): ``force_metadata_update()`` when a topic's partitions are
  not known yet (``partitions_of``, ``refresh_metadata``), ``cluster.leader_for_partition`` and ``send`` for a raw
  Fetch request (``fetch_raw``), ``close()`` to finish a close that a cancelled fetch cut short;
  tests/integration/test_kafka_clients.py and tests/integration/test_stuck_partitions.py (the raw batch of a
  partition held at an undecodable batch), tests/integration/test_outages.py (closing while the broker is gone).
- ``AIOKafkaConsumer._coordinator.fetch_committed_offsets`` (``committed_notes``: the metadata of a commit, which
  ``committed()`` leaves out): tests/integration/test_settled_notes.py.
- ``AIOKafkaConsumer._fetcher`` and its ``_pending_tasks`` (``close_consumer``): tests/integration/test_outages.py.
- ``AIOKafkaConsumer._closed``, ``_coordinator`` with its ``_closing``, ``_coordination_task``, ``_heartbeat_task``
  and ``_commit_refresh_task``, ``_fetcher`` with its ``_closed`` and ``_fetch_task`` (``consumer_broken``: a
  background task of aiokafka's that ended, which aiokafka never starts again), ``_client.close()``
  (``discard_consumer``): tests/integration/test_consumer_broken.py.
- ``Fetcher._fetch_max_wait_ms``, which the fetcher reads for each Fetch request it builds (``fetch_wait_ms``,
  ``set_fetch_wait_ms``: a broker that answers with nothing within the wait gets a longer one):
  tests/unit/kafka/test_consume.py.
- ``aiokafka.protocol.fetch.FetchRequest`` (version 4, a plain Fetch answered with the batch's bytes untouched):
  tests/integration/test_stuck_partitions.py.
- ``AIOKafkaConnection.send`` and ``_send_sasl_token`` themselves, wrapped (``_broken_as_kafka_says``): a write on
  a connection its broker reset raises ``KafkaConnectionError`` under uvloop as under asyncio, reading its
  ``_writer``, ``_host``, ``_port``: tests/unit/kafka/test_clients.py.
- ``aiokafka.conn.create_conn``, ``AIOKafkaConnection.send`` and ``close`` with a ``MetadataRequest``, its answer's
  ``to_object()`` (``ClusterProbe``: every broker asked over a connection of the probe's own):
  tests/unit/kafka/test_writes.py, tests/integration/test_brokers_lost.py (a broker hung, two of three away),
  tests/integration/test_outages.py.
- ``AIOKafkaAdminClient._send_request_to_node`` with a ``MetadataRequest`` (``await_topics``: each broker asked
  itself whether it has a topic just created): tests/integration/test_topics.py (a first start logs no error).
- ``AIOKafkaAdminClient._send_request`` with a ``MetadataRequest`` that creates nothing, and
  ``_send_request_to_node`` with an empty ``FetchRequest`` (``not_authorized``):
  tests/integration/test_kafka_security.py (topics the principal may not describe, or not read).
- ``aiokafka.conn.create_conn`` and ``AIOKafkaConnection.send`` with ``SaslHandShakeRequest`` and
  ``SaslAuthenticateRequest`` (``refused``: a handshake of its own, to say why the cluster refuses the credentials):
  tests/integration/test_kafka_security.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import AIOKafkaConnection, CloseReason, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaConnectionError,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.admin import SaslAuthenticateRequest, SaslHandShakeRequest
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.metadata import MetadataRequest

from daemon.core.config import KafkaConfig
from daemon.core.errors import ConfigError, KafkaRefused

log = logging.getLogger(__name__)


def _broken_as_kafka_says(write: Any) -> Any:
    """aiokafka's ``AIOKafkaConnection.send`` (or ``_send_sasl_token``), for a connection its broker reset: the
    connection still says it is connected (its reader has an error, not an end) and the write fails. aiokafka turns
    an ``OSError`` of the write into a ``KafkaConnectionError`` and closes the connection; uvloop's transport raises
    ``RuntimeError`` instead ("the handler is closed"), which went past aiokafka as a bug of its own: from the group's
    heartbeat it killed the heartbeat's task, every fetch after raised it, and each partition was held as if at a
    batch that cannot be decoded (a broker killed under load, CI of 2026-12-06); from a SASL handshake it would end the
    connect with it. Here it is what aiokafka makes of the same failure."""

    @functools.wraps(write)
    def wrapped(conn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return write(conn, *args, **kwargs)
        except RuntimeError as exc:
            writer = conn._writer
            if writer is None or not writer.transport.is_closing():
                raise
            conn.close(reason=CloseReason.CONNECTION_BROKEN)
            raise KafkaConnectionError(f"Connection at {conn._host}:{conn._port} broken: {exc}") from exc

    return wrapped


AIOKafkaConnection.send = _broken_as_kafka_says(AIOKafkaConnection.send)
AIOKafkaConnection._send_sasl_token = _broken_as_kafka_says(AIOKafkaConnection._send_sasl_token)


def kafka_client_options(kafka: KafkaConfig, environ: Any) -> dict[str, Any]:
    """Connection settings shared by every Kafka client the router makes: the consumers, the producer and the admin
    client (all of them take exactly these keyword arguments). ``daemon.core.validate`` has made sure the combination
    is complete (files exist, variables are set)."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    mechanism = kafka.sasl_mechanism
    if mechanism == "OAUTHBEARER":
        options["sasl_mechanism"] = mechanism
        options["sasl_oauth_token_provider"] = FileTokenProvider(str(kafka.sasl_oauth_token_file))
    elif mechanism:
        options["sasl_mechanism"] = mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password_env:
            options["sasl_plain_password"] = environ[kafka.sasl_password_env]
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        # Without a password, an encrypted key fails to load rather than have OpenSSL prompt on a terminal.
        password = environ[kafka.ssl_key_password_env] if kafka.ssl_key_password_env else _no_password
        options["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile, password=password
        )
    return options


def _no_password() -> str:
    return ""


# What an idempotent producer answers once the cluster no longer takes its producer id and sequence (fenced: another
# producer took its epoch, or the broker lost its state): it sends nothing more, a new producer id is needed.
FENCED = (ProducerFenced, InvalidProducerEpoch, OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerIdMapping)
_STOP_FENCED_S = 5.0  # how long the close of a fenced producer may take (what it still holds fails at once)


@contextlib.contextmanager
def _refusal_unlogged(when: bool) -> Iterator[None]:
    """aiokafka's sender logs a refused InitProducerId as an ERROR before raising it; where the refusal is expected
    and said once by the router ("auto"), the sender's ERROR records during the start are dropped."""
    sender = logging.getLogger("aiokafka.producer.sender")
    drop = _DropErrors()
    if when:
        sender.addFilter(drop)
    try:
        yield
    finally:
        sender.removeFilter(drop)


class _DropErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


class RouterProducer:
    """The daemon's producer (results, retries, dead letters, health, endpoints), as ``kafka`` asks for it, behind one
    reference that every holder keeps: ``renew()`` replaces a fenced producer by a new one in place.

    ``kafka.enable_idempotence``: "auto" (the default) makes it idempotent when ``results_acks`` is "all" and the
    cluster grants a producer id, else plain (acks as ``results_acks`` says) with ``refused`` saying why; ``true``
    makes a refusal a ``ConfigError`` naming the setting; ``false`` never asks. What is asked of the cluster is the
    protocol's own InitProducerId, never which broker it is. Everything else (``send``, ``send_batch``,
    ``create_batch``, ``partitions_for``, ``client``...) is the current AIOKafkaProducer's."""

    def __init__(self, kafka: KafkaConfig, environ: Any, **settings: Any) -> None:
        self._kafka = kafka
        self._options = {**settings, **kafka_client_options(kafka, environ)}
        wanted = kafka.enable_idempotence
        self.idempotent = wanted is True or (wanted == "auto" and kafka.results_acks == "all")
        self.refused: str | None = None  # why the cluster refused an idempotent producer ("auto" went without)
        self._current = self._make()

    def _make(self) -> AIOKafkaProducer:
        kafka = self._kafka
        acks = "all" if kafka.results_acks == "all" else 1
        return AIOKafkaProducer(acks=acks, enable_idempotence=self.idempotent,
                                request_timeout_ms=kafka.produce_timeout_ms, **self._options)  # fmt: skip

    async def start(self) -> None:
        producer = self._current
        try:
            with _refusal_unlogged(self.idempotent and self._kafka.enable_idempotence == "auto"):
                await producer.start()
        except KafkaError as exc:
            if not self.idempotent or exc.retriable:
                raise
            await producer.stop()
            reason = f"{type(exc).__name__}: {exc}"
            if self._kafka.enable_idempotence is True:
                raise ConfigError([f"kafka.enable_idempotence: the cluster refused an idempotent producer ({reason}); "
                                   'set it to "auto" or false']) from exc  # fmt: skip
            self.idempotent, self.refused = False, reason
            producer = self._current = self._make()
            await producer.start()  # the cluster's own errors (unreachable, credentials refused) propagate from here
            log.warning("the cluster refused an idempotent producer (%s): results, retries and dead letters are "
                        "written with acks=%s, without idempotence (a send tried again may write a record twice; "
                        "kafka.enable_idempotence = false says so without asking)", reason,
                        self._kafka.results_acks)  # fmt: skip

    async def renew(self) -> None:
        """A new producer (a new producer id) in place of the current one, which is closed: what it still held fails
        (its senders send it again through the new one)."""
        new = self._make()
        await new.start()
        old, self._current = self._current, new
        try:
            await asyncio.wait_for(old.stop(), _STOP_FENCED_S)
        except (TimeoutError, KafkaError) as exc:
            log.debug("closing the fenced producer: %r", exc)

    async def stop(self) -> None:
        await self._current.stop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current, name)


def probe_timeout_s(contact_timeout_s: float) -> float:
    """How long one probe of the cluster may take (``ClusterProbe``'s asks, ``contact.Contact``'s wait for it)."""
    return max(0.5, min(5.0, contact_timeout_s / 2))


class ClusterProbe:
    """Whether the cluster answers, and what it says of the partitions of ``topics``: each call asks every broker
    (those the bootstrap servers name until one answers) for their metadata, over connections of the probe's own,
    each ask given at most ``probe_timeout_s``; True as soon as one broker answered.

    Its own connections, because a broker takes one request of a connection at a time: on the producer's, a metadata
    request waits behind ``acks=all`` writes held for their replicas, or behind a write to a broker that stopped
    answering, and the cluster would seem silent while two brokers of three are fine. A broker whose ask is still
    pending (hung) is not asked again before it ends: it costs the others nothing.

    A broker the cluster stops listing (a broker that stopped answering its controller is fenced and left out) is
    still asked, and named by ``silent``, until it answers again or has been silent for ``_FORGET_S``.

    ``partitions()``: (topic, partition, leader or -1, replicas, in-sync replicas) of each partition of ``topics`` from
    the latest answer; ``brokers()``: how many brokers it lists; ``silent(min_s)``: the brokers that have not answered
    for ``min_s`` seconds or more, with how long."""

    def __init__(self, kafka: KafkaConfig, environ: Any, topics: list[str]) -> None:
        options = kafka_client_options(kafka, environ)
        self._settings = {k: v for k, v in options.items() if k not in ("bootstrap_servers", "client_id")}
        self._client_id = kafka.client_id
        self._topics = list(topics)
        self._timeout_s = probe_timeout_s(kafka.contact_timeout_s)
        self._bootstrap: dict[int | str, tuple[str, int]] = {}
        for server in kafka.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            self._bootstrap[server.strip()] = (host.strip("[]"), int(port))
        self._brokers: dict[int | str, tuple[str, int]] = {}  # node id -> (host, port), from the latest answer
        self._known: dict[int | str, tuple[str, int]] = {}  # those, and those it listed before that are still silent
        self._conns: dict[int | str, Any] = {}
        self._asks: dict[int | str, asyncio.Task[bool]] = {}
        self._answered: dict[int | str, float] = {}  # node -> monotonic time of its latest answer
        self._seen: dict[int | str, float] = {}  # node -> when it was first listed (silent from then until it answers)
        self._partitions: list[tuple[str, int, int, int, int]] = []

    async def __call__(self) -> bool:
        for node, (host, port) in (self._known or self._bootstrap).items():
            if node not in self._asks:
                ask = self._asks[node] = asyncio.create_task(self._ask(node, host, port), name=f"kafka-probe-{node}")
                ask.add_done_callback(functools.partial(self._asked, node))
        pending = set(self._asks.values())
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not ask.cancelled() and ask.result() for ask in done):
                return True
        return False

    def _asked(self, node: int | str, ask: asyncio.Task[bool]) -> None:
        if self._asks.get(node) is ask:
            del self._asks[node]

    async def _ask(self, node: int | str, host: str, port: int) -> bool:
        request = MetadataRequest(self._topics, allow_auto_topic_creation=False)
        try:
            async with asyncio.timeout(self._timeout_s):
                conn = self._conns.get(node)
                if conn is None or not conn.connected():
                    conn = self._conns[node] = await create_conn(host, port, client_id=self._client_id,
                        request_timeout_ms=int(self._timeout_s * 1000), **self._settings)  # fmt: skip
                answer = (await conn.send(request)).to_object()
            brokers = metadata_brokers(answer)
            if not brokers:  # not an answer (aiokafka takes a refused OAUTHBEARER token for an accepted one)
                raise KafkaError("a metadata answer listing no broker")
        except Exception as exc:  # no answer, whatever the reason (cancelled: BaseException, not caught)
            log.debug("probe of broker %s at %s:%d: %r", node, host, port, exc)
            if (conn := self._conns.pop(node, None)) is not None:
                conn.close()  # a new connection next time: this one may hold requests a hung broker never answers
            return False
        self._learn(node, brokers, answer)
        return True

    def _learn(self, node: int | str, brokers: dict[int | str, tuple[str, int]], answer: dict[str, Any]) -> None:
        now = time.monotonic()
        self._answered[node] = now
        if isinstance(node, int) and node not in brokers:
            return  # a broker that does not list itself (fenced, catching up after a restart): its view may be stale
        for new in brokers.keys() - self._known.keys():
            self._seen.setdefault(new, now)
        unlisted = {n for n in self._known if n not in brokers}
        forgotten = {n for n in unlisted if now - self._answered.get(n, -_FORGET_S) < 1.0
                     or now - self._last_answer(n) >= _FORGET_S}  # fmt: skip
        self._known = {**{n: a for n, a in self._known.items() if n not in forgotten}, **brokers}
        for gone in [n for n in self._conns if n not in self._known]:  # the bootstrap servers', once ids are known
            self._conns.pop(gone).close()
        self._brokers = brokers
        self._partitions = metadata_partitions(answer)

    def partitions(self) -> list[tuple[str, int, int, int, int]]:
        return self._partitions

    def brokers(self) -> int:
        return len(self._brokers)

    def silent(self, min_s: float) -> list[tuple[str, float]]:
        now = time.monotonic()
        return [
            (f"broker {node} at {host}:{port}", now - self._last_answer(node))
            for node, (host, port) in sorted(self._known.items(), key=str)
            if now - self._last_answer(node) >= min_s
        ]

    def _last_answer(self, node: int | str) -> float:
        return self._answered.get(node, self._seen.get(node, time.monotonic()))

    async def close(self) -> None:
        asks = list(self._asks.values())
        for ask in asks:
            ask.cancel()
        await asyncio.gather(*asks, return_exceptions=True)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


_FORGET_S = 3600.0  # a broker no longer listed, silent this long: decommissioned, no longer asked nor named


def metadata_brokers(answer: Mapping[str, Any]) -> dict[int | str, tuple[str, int]]:
    """The brokers a metadata answer (``to_object()``) lists: node id -> (host, port)."""
    return {b["node_id"]: (b["host"], b["port"]) for b in answer.get("brokers", ())}


def metadata_partitions(answer: Mapping[str, Any]) -> list[tuple[str, int, int, int, int]]:
    """(topic, partition, leader or -1, replicas, in-sync replicas) of each partition a metadata answer lists."""
    return [
        (t["topic"], p["partition"], p["leader"] if p["leader"] is not None else -1, len(p["replicas"]), len(p["isr"]))
        for t in answer.get("topics", ())
        if not t["error_code"]
        for p in t["partitions"]
    ]


async def committed_notes(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, tuple[int, str]]:
    """The group's committed offset and its metadata of each of ``tps`` that has one (``AIOKafkaConsumer.committed``
    gives the offset alone: aiokafka's ``_coordinator.fetch_committed_offsets`` gives both)."""
    found = await consumer._coordinator.fetch_committed_offsets(tps)
    return {tp: (meta.offset, meta.metadata or "") for tp, meta in found.items() if meta.offset >= 0}


def producer(client_options: Mapping[str, Any], **settings: Any) -> AIOKafkaProducer:
    """A producer of the demo's and the operator tools' own (the daemon's is ``make_producer``)."""
    return AIOKafkaProducer(**settings, **client_options)


def admin_client(client_options: Mapping[str, Any]) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options)


async def await_topics(admin: AIOKafkaAdminClient, names: list[str], within_s: float) -> list[str]:
    """Wait until every broker of the cluster has each of ``names`` with a leader for every partition, at most
    ``within_s``; returns the names some broker still lacks then (empty when all are in place). Kafka answers
    CreateTopics once its controller has the topics, before its brokers do: a client asking a broker about a topic
    just created may hear it does not exist (aiokafka logs that as an error, then asks again)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    lacking = list(names)
    while True:
        try:
            brokers = [broker["node_id"] for broker in (await admin.describe_cluster())["brokers"]]
            lacking = []
            for node_id in brokers:
                request = MetadataRequest(names, allow_auto_topic_creation=False)
                answer = (await admin._send_request_to_node(node_id, request)).to_object()
                known = {t["topic"] for t in answer["topics"] if not t["error_code"] and t["partitions"]
                         and all(p["leader"] >= 0 for p in t["partitions"])}  # fmt: skip
                lacking += [name for name in names if name not in known and name not in lacking]
        except (KafkaError, OSError, TimeoutError) as exc:
            log.debug("asking the brokers about %s: %r", names, exc)
        if not lacking or loop.time() > deadline:
            return lacking
        await asyncio.sleep(0.1)


async def not_authorized(
    admin: AIOKafkaAdminClient, topics: list[str], groups: list[str], read: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Of ``topics`` and ``groups``, those the cluster's authorizer hides from this principal (no Describe ACL):
    TOPIC_AUTHORIZATION_FAILED to a metadata request (one that creates nothing), GROUP_AUTHORIZATION_FAILED to
    FindCoordinator; and of ``read`` (topics among ``topics``), those it may describe but not read: an empty fetch of
    partition 0 answered TOPIC_AUTHORIZATION_FAILED. Returns (hidden topics, unreadable topics, hidden groups)."""
    denied = TopicAuthorizationFailedError.errno
    request = MetadataRequest(topics, allow_auto_topic_creation=False)
    answer = (await admin._send_request(request)).to_object()
    hidden = [t["topic"] for t in answer["topics"] if t["error_code"] == denied]
    unreadable = []
    for t in answer["topics"]:
        leader = next((p["leader"] for p in t["partitions"] if p["partition"] == 0), -1)
        if t["topic"] in read and not t["error_code"] and leader >= 0:
            fetch = FetchRequest(0, 0, 1, 0, [(t["topic"], [(0, 0, 1)])])
            response = await admin._send_request_to_node(leader, fetch)
            if any(code == denied for _topic, parts in response.topics for _p, code, *_rest in parts):
                unreadable.append(t["topic"])
    refused_groups = []
    for group in groups:
        try:
            await admin.find_coordinator(group)
        except GroupAuthorizationFailedError:
            refused_groups.append(group)
    return hidden, unreadable, refused_groups


def group_consumer(kafka: KafkaConfig, environ: Any, rebalance_timeout_ms: int) -> AIOKafkaConsumer:
    """A member of ``kafka.group_id`` that commits only what it is told to (the events' and the retry tiers'), given
    ``rebalance_timeout_ms`` to rejoin the group in a rebalance (aiokafka's default, ``session_timeout_ms``, is often
    shorter than a drain on revoke: a member still draining then is dropped from the group and its commit refused).

    It never moves a position itself (``auto_offset_reset="none"``): a partition the group has no offset for, or
    whose offset is outside the log, raises ``NoOffsetForPartitionError`` or ``OffsetOutOfRangeError`` from
    ``getmany``, and ``daemon.kafka.consume`` starts it where ``kafka.auto_offset_reset`` says, saying so (aiokafka
    would do it silently)."""
    return AIOKafkaConsumer(
        group_id=kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset="none",
        max_poll_records=kafka.max_poll_records,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        rebalance_timeout_ms=rebalance_timeout_ms,
        **kafka_client_options(kafka, environ),
    )


def reader(client_options: Mapping[str, Any], auto_offset_reset: str = "none", **settings: Any) -> AIOKafkaConsumer:
    """A consumer outside any group that commits nothing: assigned partitions, read by position or time.

    ``auto_offset_reset="none"`` (the default) never moves a position outside the log: a read from past the end must
    not silently become a read of the whole partition."""
    return AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset=auto_offset_reset, **settings, **client_options)


async def refresh_metadata(consumer: AIOKafkaConsumer) -> bool:
    """Ask the cluster for its metadata now (a topic just created, partitions added); False when it did not answer."""
    return bool(await consumer._client.force_metadata_update())


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of ``topic`` (asked for when not known yet); empty when the cluster has no such topic."""
    found = consumer.partitions_for_topic(topic)
    if not found:
        await refresh_metadata(consumer)
        found = consumer.partitions_for_topic(topic)
    return set(found or ())


async def fetch_raw(consumer: AIOKafkaConsumer, topic: str, partition: int, offset: int, max_bytes: int) -> bytes:
    """The record set a plain Fetch from ``offset`` answers, as the partition's leader keeps it (nothing decoded or
    decompressed). Raises ``LookupError`` naming what is missing, or the broker's error for the partition."""
    from aiokafka.errors import for_code

    client = consumer._client
    tp = TopicPartition(topic, partition)
    await client.force_metadata_update()
    leader = client.cluster.leader_for_partition(tp)
    if leader is None or leader == -1:
        raise LookupError(f"no leader for {topic}[{partition}]")
    request = FetchRequest(500, 1, max_bytes, 0, [(topic, [(partition, offset, max_bytes)])])
    response = await client.send(leader, request)
    for _topic, partitions in response.topics:
        for answered, error_code, _high, *part_data in partitions:
            if answered != partition:
                continue
            if error_code:
                raise LookupError(f"{topic}[{partition}]@{offset}: {for_code(error_code).__name__}")
            return bytes(part_data[-1] or b"")
    raise LookupError(f"no answer for {topic}[{partition}]")


async def refused(kafka: KafkaConfig, environ: Any, within_s: float = 10.0) -> str | None:
    """Why the cluster refuses this router's TLS client certificate, its trust of the cluster's certificate, or its
    SASL credentials, naming the setting to look at; from a handshake of its own with the first bootstrap server that
    answers. None when they are taken, or when no server answers at all (not a refusal: the clients' own attempts say
    so). aiokafka's bootstrap only logs a refusal (then answers 'Unable to bootstrap'), the broker's TLS alert comes
    to it as a closed connection, and it takes a refused OAUTHBEARER token for an accepted one (it never reads the
    broker's answer to the token): hence a handshake of our own. Nothing secret is in the answer."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    options = kafka_client_options(kafka, environ)
    for server in kafka.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            async with asyncio.timeout(within_s):
                if "ssl_context" in options and (why := await _tls_refused(kafka, host, int(port), options)):
                    return why
                return await _sasl_refused(kafka, host, int(port), options) if kafka.sasl_mechanism else None
        except _Unanswered:
            continue
    return None


async def check_credentials(kafka: KafkaConfig, environ: Any) -> None:
    """Raises ``KafkaRefused`` (naming the setting) when the cluster refuses this router's credentials."""
    if (why := await refused(kafka, environ)) is not None:
        raise KafkaRefused(why)


class _Unanswered(Exception):
    """This server did not answer (unreachable, timed out, closed): ask the next."""


async def _tls_refused(kafka: KafkaConfig, host: str, port: int, options: Mapping[str, Any]) -> str | None:
    """A TLS handshake and one ApiVersions request: the broker's TLS alert, or our refusal of its certificate."""
    client_id = kafka.client_id.encode()
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id  # ApiVersions v0, correlation id 1
    try:
        reader_, writer = await asyncio.open_connection(host, port, ssl=options["ssl_context"], server_hostname=host)
        try:
            writer.write(struct.pack(">i", len(body)) + body)
            await writer.drain()
            await reader_.readexactly(4)
        finally:
            writer.close()
    except ssl.SSLCertVerificationError as exc:
        trusted = f"kafka.ssl_cafile ({kafka.ssl_cafile})" if kafka.ssl_cafile else "the system's trust store (set " \
            "kafka.ssl_cafile to the cluster's CA)"  # fmt: skip
        return f"{trusted}: the cluster's certificate does not verify ({exc.verify_message})"
    except ssl.SSLError as exc:
        alert = (exc.reason or "").lower()
        if "alert" not in alert:
            return f"kafka.security_protocol {kafka.security_protocol}: the TLS handshake failed ({exc.reason or exc})"
        alert = alert.split("alert_", 1)[-1].replace("_", " ")
        if kafka.ssl_certfile is None:
            return f"kafka.ssl_certfile: the cluster wants a client certificate (its TLS alert: {alert})"
        return (f"kafka.ssl_certfile ({kafka.ssl_certfile}): the cluster refused the client certificate (its TLS "
                f"alert: {alert}): is it signed by a CA the cluster trusts, and valid now?")  # fmt: skip
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise _Unanswered from exc
    return None


async def _sasl_refused(kafka: KafkaConfig, host: str, port: int, options: Mapping[str, Any]) -> str | None:
    """A SASL handshake as the clients make it (OAUTHBEARER's done here, reading the broker's answer to the token)."""
    mechanism = kafka.sasl_mechanism
    oauth = mechanism == "OAUTHBEARER"
    settings = {k: v for k, v in options.items() if k not in ("bootstrap_servers", "client_id")}
    if oauth:  # the connection without SASL; the exchange below
        settings = {"ssl_context": options.get("ssl_context"), "security_protocol": "SSL"
                    if kafka.security_protocol == "SASL_SSL" else "PLAINTEXT"}  # fmt: skip
    try:
        conn = await create_conn(host, port, client_id=kafka.client_id, request_timeout_ms=5000, **settings)
    except UnsupportedSaslMechanismError as exc:
        return f"kafka.sasl_mechanism: {exc}"
    except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
        return (f"kafka.sasl_username {kafka.sasl_username!r}, kafka.sasl_password_env {kafka.sasl_password_env}: the "
                f"cluster refused the {mechanism} credentials ({_text_of(exc)})")  # fmt: skip
    except (KafkaError, OSError) as exc:
        raise _Unanswered from exc
    try:
        if not oauth:
            return None
        where = f"kafka.sasl_oauth_token_file ({kafka.sasl_oauth_token_file})"
        handshake = await conn.send(SaslHandShakeRequest(mechanism))
        if handshake.error_code:
            return f"kafka.sasl_mechanism: the cluster does not enable OAUTHBEARER ({handshake.enabled_mechanisms})"
        try:
            token = await options["sasl_oauth_token_provider"].token()
        except (OSError, ValueError) as exc:
            return f"{where}: {exc}"
        answer = await conn.send(SaslAuthenticateRequest(f"n,,\x01auth=Bearer {token}\x01\x01".encode()))
        if not answer.error_code and not answer.sasl_auth_bytes:
            return None
        detail = answer.error_message or ""
        if answer.sasl_auth_bytes:  # the broker's error (RFC 7628): answered with a lone 0x01 to end the exchange
            detail = answer.sasl_auth_bytes.decode(errors="replace")
            final = await conn.send(SaslAuthenticateRequest(b"\x01"))
            detail += f"; {final.error_message}" if final.error_message else ""
        return f"{where}: the cluster refused the token ({detail})"
    except (KafkaError, OSError) as exc:
        raise _Unanswered from exc
    finally:
        conn.close()


def _text_of(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("[Error") and ": " in text else text


class FileTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """SASL/OAUTHBEARER: the token is read from a file on every login, so a sidecar that refreshes the file
    refreshes the router's credentials without a restart."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def token(self) -> str:
        text = await asyncio.to_thread(Path(self.path).read_text, encoding="utf-8")
        token = text.strip()
        if not token:
            raise ValueError(f"kafka.sasl_oauth_token_file {self.path} is empty")
        return token

    def __repr__(self) -> str:  # the token itself is never shown
        return f"FileTokenProvider({self.path!r})"


def fetch_wait_ms(consumer: Any) -> int | None:
    """How long ``consumer``'s fetches wait for records at most, in ms (None before it started: no fetcher yet)."""
    fetcher = getattr(consumer, "_fetcher", None)
    wait = getattr(fetcher, "_fetch_max_wait_ms", None)
    return wait if isinstance(wait, int) else None


def set_fetch_wait_ms(consumer: Any, wait_ms: int) -> None:
    """Make ``consumer``'s next fetches wait up to ``wait_ms`` for records (a started consumer: ``fetch_wait_ms``)."""
    consumer._fetcher._fetch_max_wait_ms = wait_ms


def consumer_broken(consumer: AIOKafkaConsumer) -> tuple[str, BaseException | None] | None:
    """Which of aiokafka's background tasks of ``consumer`` ended, and with what (None: cancelled, or returned); None
    when none did (or the consumer is closed, or not started).

    aiokafka never starts these again, and the consumer goes on as if it could fetch and commit: the group's
    coordination task, once ended, has ``getmany`` raise its exception for good; a heartbeat or commit
    refresh task ended by an exception has the coordination task hand that exception to every ``getmany`` after it
    (the member's heartbeats stop: the group drops it); the fetcher's task, once ended, fetches nothing more and says
    nothing. A heartbeat task that returned (the member left the group) is started again by the next join: not
    broken."""
    coordinator, fetcher = consumer._coordinator, consumer._fetcher
    if consumer._closed or coordinator is None or fetcher is None or coordinator._closing.done() or fetcher._closed:
        return None
    for what, task, runs_until_closed in _background_tasks(consumer):
        if task is None or not task.done():
            continue
        if task.cancelled():
            if runs_until_closed:
                return what, None
            continue
        exc = task.exception()
        if exc is not None or runs_until_closed:
            return what, exc
    return None


def _background_tasks(consumer: AIOKafkaConsumer) -> list[tuple[str, asyncio.Task[Any] | None, bool]]:
    """aiokafka's tasks of a started ``consumer``: what each is, the task (None: not running now), and whether it runs
    until the consumer closes (else aiokafka starts it again: the heartbeat at a join, the commit refresh at an
    assignment)."""
    coordinator, fetcher = consumer._coordinator, consumer._fetcher
    tasks: list[tuple[str, asyncio.Task[Any] | None, bool]] = []
    if coordinator is not None:
        tasks += [
            ("coordination", coordinator._coordination_task, True),
            ("heartbeat", coordinator._heartbeat_task, False),
            ("commit refresh", coordinator._commit_refresh_task, False),
        ]
    if fetcher is not None:
        tasks.append(("fetcher", fetcher._fetch_task, True))
    return tasks


async def discard_consumer(consumer: AIOKafkaConsumer, within_s: float = 10.0) -> None:
    """Close a consumer ``consumer_broken`` found broken, whatever state its tasks are in: its ``stop()`` re-raises
    the exception that ended its fetcher's task, and may wait on a coordinator that no longer answers. Whatever its
    close left running after ``within_s`` (a LeaveGroup unanswered, a fetcher never closed, a heartbeat) is cancelled,
    and its connections are closed in any case: aiokafka's client has no closed state, and a task of it left running
    would open new ones (or keep a member in the group)."""
    try:
        try:
            await asyncio.wait_for(close_consumer(consumer), within_s)
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
        except Exception as exc:  # what ended it, raised again by its close; or the close's time out
            log.debug("closing a broken consumer: %s: %s", type(exc).__name__, exc)
        fetcher = consumer._fetcher
        tasks = [task for _, task, _ in _background_tasks(consumer)]
        tasks += fetcher._pending_tasks if fetcher is not None else ()
        left = [task for task in tasks if task is not None and not task.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=within_s)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(consumer._client.close())


def cancelled_by_caller() -> bool:
    """Whether a CancelledError caught is a cancellation of the task that awaits, rather than one of aiokafka's own
    tasks, cancelled, re-raised out of what it awaited."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def close_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, also when the cluster is gone.

    aiokafka 0.14's ``Fetcher.close()`` cancels its fetch tasks and awaits each one; a task cancelled while it
    waits out a failed fetch (a broker down) re-raises that cancellation out of ``stop()``, which then never closes
    the client's connections. That cancellation is not ours: finish the close it abandoned.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if cancelled_by_caller():
            raise
        log.debug("consumer stop interrupted by a cancelled fetch: finishing it")
        fetcher = consumer._fetcher
        pending = list(getattr(fetcher, "_pending_tasks", ()))
        for fetch in pending:
            fetch.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await consumer._client.close()
