"""Test helpers: real HTTP receivers, a real forward proxy, Kafka produce/read helpers (aiokafka, and librdkafka as an
outside producer), the daemon as a subprocess. No mocks; one stand-in, for DNS (``FakeDNS``).

Which broker the integration tests use:

- by default, a Tansu broker they start (``daemon.tools.embedded``);
- ``WEBHOOK_ROUTER_TEST_KAFKA=1`` (or ``3``): a real Apache Kafka cluster they start (``tests.kafka``): one combined
  node, or three brokers with three controllers;
- ``WEBHOOK_ROUTER_TEST_BOOTSTRAP``: an outside Kafka cluster, with ``WEBHOOK_ROUTER_TEST_KAFKA`` then a JSON object of
  ``[kafka]`` settings (``security_protocol``, ``sasl_*``, ``ssl_*``) saying how to connect to it, for the daemon's
  configs and the tests' own clients alike."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from yarl import URL

from daemon.core.config import KafkaConfig
from daemon.kafka.clients import kafka_client_options

SECRET = "whsec_" + base64.b64encode(b"test-secret-0123456789abcdef").decode()
# The admin token of the tests' daemons: strong enough for check-config (32+ characters, 10+ different ones).
ADMIN_TOKEN = "adm_3f9c1e7a52b84d06a9e2c5f1b7d4308e6a1c9f25"


OUTSIDE_BOOTSTRAP = os.environ.get("WEBHOOK_ROUTER_TEST_BOOTSTRAP") or None


def _test_kafka(value: str) -> tuple[int | None, dict[str, Any]]:
    """``WEBHOOK_ROUTER_TEST_KAFKA``: a number of brokers (the tests start that Kafka cluster), or the outside
    cluster's settings (a JSON object)."""
    value = value.strip()
    if not value:
        return None, {}
    if value.isdigit():
        if int(value) not in (1, 3):
            raise ValueError(f"WEBHOOK_ROUTER_TEST_KAFKA={value}: 1 or 3 brokers, or a JSON object of [kafka] settings")
        return int(value), {}
    settings = json.loads(value)
    if not isinstance(settings, dict):
        raise ValueError("WEBHOOK_ROUTER_TEST_KAFKA: 1 or 3 (brokers), or a JSON object of [kafka] settings")
    return None, settings


# TEST_KAFKA_BROKERS: the size of the Kafka cluster the tests start (None: Tansu, or the outside cluster).
TEST_KAFKA_BROKERS, OUTSIDE_KAFKA = _test_kafka(os.environ.get("WEBHOOK_ROUTER_TEST_KAFKA", ""))
if TEST_KAFKA_BROKERS is not None and OUTSIDE_BOOTSTRAP is not None:
    raise ValueError("WEBHOOK_ROUTER_TEST_KAFKA=N starts a cluster; WEBHOOK_ROUTER_TEST_BOOTSTRAP names one: not both")


def client_options(bootstrap: str) -> dict[str, Any]:
    """How the tests' own clients connect: the bootstrap, with the outside cluster's security settings if any."""
    if not OUTSIDE_KAFKA:
        return {"bootstrap_servers": bootstrap}
    names = {"group_id": "tests", "topics": ["tests"], "results_topic": "tests-results"}
    kafka = msgspec.convert({"bootstrap_servers": bootstrap, **names, **OUTSIDE_KAFKA}, KafkaConfig)
    options = kafka_client_options(kafka, os.environ)
    del options["client_id"]
    return options


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A real aiohttp server on 127.0.0.1 that records every request and answers as told."""

    status: int = 200
    statuses: list[int] | None = None  # one per request, in the order they arrive; the last repeats
    retry_after: str | None = None  # sent with non-2xx answers
    delay_s: float = 0.0
    hold: asyncio.Event | None = None  # when set: requests wait until it is set
    requests: list[Request] = field(default_factory=list)
    concurrent: int = 0
    max_concurrent: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._arrived = asyncio.Condition()
        return self

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.requests.append(Request(request.path, dict(request.headers), body, time.time()))
            arrived = len(self.requests)  # this request's place, before any other can arrive
            assert self._arrived is not None
            async with self._arrived:
                self._arrived.notify_all()
            if self.hold is not None:
                await self.hold.wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            status = self.status
            if self.statuses:
                status = self.statuses[min(arrived, len(self.statuses)) - 1]
            headers = {"Retry-After": self.retry_after} if self.retry_after and status >= 300 else None
            return web.Response(status=status, text="ok" if status < 300 else "nope", headers=headers)
        finally:
            self.concurrent -= 1

    async def wait_for(self, count: int, within_s: float = 20.0) -> list[Request]:
        assert self._arrived is not None
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests) >= count), within_s)
        return self.requests


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` on a free port of 127.0.0.1: its runner (clean it up) and its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    return runner, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def produce(
    bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None, partition: int | None = None
) -> None:
    # acks=all: once produced, below the high watermark (readable), also when the followers of three brokers lag.
    producer = AIOKafkaProducer(
        **client_options(bootstrap), acks="all", enable_idempotence=False, linger_ms=5, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=key, partition=partition) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[dict[str, Any]]], bool], within_s: float = 30.0
) -> list[dict[str, Any]]:
    """Read a topic from the start (no group) until ``until(records)`` holds; returns the JSON values."""
    consumer = AIOKafkaConsumer(**client_options(bootstrap), auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        partitions = None
        deadline = time.monotonic() + within_s
        while partitions is None:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
                if partitions is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"topic {topic} never appeared")
                    await asyncio.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        while not until(records):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(records)} records on {topic} and the condition still does not hold")
            batch = await consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for recs in batch.values():
                records.extend(json.loads(r.value) for r in recs)
    finally:
        await consumer.stop()
    return records


async def read_raw(bootstrap: str, topic: str, within_s: float = 10.0) -> list[bytes]:
    """Every value on a topic now (no group), as bytes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        deadline = time.monotonic() + within_s
        idle = 0
        while time.monotonic() < deadline and idle < 3:
            batch = await consumer.getmany(timeout_ms=300)
            got = [r.value for recs in batch.values() for r in recs]
            values += got
            idle = 0 if got else idle + 1
    finally:
        await consumer.stop()
    return values


async def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def eventually(check: Callable[[], Awaitable[object]] | Callable[[], object], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.05)


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


class DaemonProcess:
    """The real ``webhook-router run`` as a subprocess, for tests that send it signals."""

    def __init__(self, config_path: Any, admin_port: int, log_path: Any, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.admin_port = admin_port
        self.log_path = log_path
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, wait_ready: bool = True) -> DaemonProcess:
        import sys

        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--config",
            str(self.config_path),
            stdout=log,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
            env=self.env,
        )
        log.close()
        if wait_ready:
            await eventually(self.ready, 30)
        return self

    async def ready(self) -> bool:
        return await self.get_status("/readyz") == 200

    async def get_status(self, path: str) -> int | None:
        import aiohttp

        if self.proc is not None and self.proc.returncode is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.admin_port}{path}") as r:
                await r.read()
                return r.status
        except aiohttp.ClientError:
            return None

    async def get_json(self, path: str) -> tuple[int | None, Any]:
        """(status, JSON body), or (None, None) while nothing listens yet."""
        import aiohttp

        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.admin_port}{path}") as r:
                return r.status, await r.json()
        except aiohttp.ClientConnectionError:
            return None, None

    async def metrics(self, *names: str) -> str:
        """The daemon's /metrics; with ``names``, the ``name[]`` scrape of those series alone."""
        import aiohttp

        params = [("name[]", name) for name in names]
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.admin_port}/metrics", params=params) as r,
        ):
            assert r.status == 200, await r.text()
            return await r.text()

    async def metric(self, line_prefix: str) -> float:
        for line in (await self.metrics()).splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, within_s: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    async def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()


def produce_outside(
    bootstrap: str,
    topic: str,
    values: list[bytes | None],
    compression: str = "none",
    headers: list[tuple[str, str | bytes | None]] | None = None,
    key: bytes | None = None,
) -> None:
    """Write records as an outside producer does: librdkafka (``confluent-kafka``), with its codec and headers.

    Blocking (librdkafka's own thread does the work): call it through ``asyncio.to_thread``.
    """
    from confluent_kafka import Producer

    settings = {"bootstrap.servers": bootstrap, "compression.type": compression, "enable.idempotence": False,
                **librdkafka_security()}  # fmt: skip
    producer = Producer({**settings, "linger.ms": 20, "log_level": 3})
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for value in values:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
    left = producer.flush(30)
    if left or failures:
        raise RuntimeError(f"{left} records unsent, failures: {failures}")


def librdkafka_security() -> dict[str, Any]:
    """The outside cluster's security settings (``WEBHOOK_ROUTER_TEST_KAFKA``) in librdkafka's names."""
    names = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanisms",
             "sasl_username": "sasl.username", "ssl_cafile": "ssl.ca.location",
             "ssl_certfile": "ssl.certificate.location", "ssl_keyfile": "ssl.key.location"}  # fmt: skip
    out = {names[k]: v for k, v in OUTSIDE_KAFKA.items() if k in names}
    if "sasl_password_env" in OUTSIDE_KAFKA:
        out["sasl.password"] = os.environ[OUTSIDE_KAFKA["sasl_password_env"]]
    if "ssl_key_password_env" in OUTSIDE_KAFKA:
        out["ssl.key.password"] = os.environ[OUTSIDE_KAFKA["ssl_key_password_env"]]
    if "sasl_oauth_token_file" in OUTSIDE_KAFKA:
        raise NotImplementedError("librdkafka's OAUTHBEARER needs a token callback: not wired for these tests")
    return out


UNDECODABLE = ("fake-gzip", "header-key")


async def produce_undecodable(
    bootstrap: str, topic: str, partition: int, values: list[bytes], how: str = "header-key"
) -> int:
    """Write one record batch that aiokafka cannot decode (its CRC is right): what a corrupt batch, or one in a codec
    the reader lacks, looks like to a consumer. Returns its base offset. ``how``:

    - "fake-gzip": the batch says it is gzip-compressed and is not. Tansu keeps it as it is; Apache Kafka decompresses
      every compressed batch it is sent to validate it, and refuses this one (the producer gets an error).
    - "header-key": every record has a header whose key is not UTF-8. Both brokers keep it (Kafka decodes a header
      key with replacement characters, aiokafka strictly: ``UnicodeDecodeError``).

    Built with aiokafka's batch builder, then its bytes changed and its CRC computed again (Kafka's record batch v2
    layout): no producer writes such a batch on purpose."""
    import struct

    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy as Layout
    from aiokafka.record.util import calc_crc32c

    if how not in UNDECODABLE:
        raise ValueError(f"how: one of {UNDECODABLE}, not {how!r}")
    marker = "\x01not-utf-8\x01"  # as long as its stand-in, and found in no value
    producer = AIOKafkaProducer(**client_options(bootstrap), enable_idempotence=False)
    await producer.start()
    try:
        batch = producer.create_batch()
        for value in values:
            headers = [(marker, b"v")] if how == "header-key" else []
            batch.append(key=None, value=value, timestamp=None, headers=headers)
        raw = bytearray(batch._builder.build())
        at = Layout.ATTRIBUTES_OFFSET
        if how == "fake-gzip":
            (attributes,) = struct.unpack_from(">h", raw, at)
            struct.pack_into(">h", raw, at, attributes | 0x01)  # gzip, says the batch
        else:
            key = marker.encode()
            assert raw.count(key) == len(values)
            raw = bytearray(raw.replace(key, b"\xff" * len(key)))
        struct.pack_into(">I", raw, Layout.CRC_OFFSET, calc_crc32c(bytes(raw[at:])))
        batch._buffer = raw
        del batch._builder
        batch.close()
        meta = await (await producer.send_batch(batch, topic, partition=partition))
        return int(meta.offset)
    finally:
        await producer.stop()


class FakeDNS(AbstractResolver):
    """A stand-in for DNS (aiohttp's resolver interface). ``answers`` maps a name to its answers (each a list of
    addresses), given in turn, one per lookup, the last one repeating: several answers play DNS rebinding. Unknown
    names fail as a name that does not resolve."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self._answers = answers
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        turns = self._answers.get(host)
        if turns is None:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        answer = turns[min(sum(1 for h in self.lookups if h == host), len(turns) - 1)]
        self.lookups.append(host)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
            }
            for address in answer
        ]

    async def close(self) -> None:
        pass


class Proxy:
    """A real forward HTTP proxy on 127.0.0.1, as an egress proxy (smokescreen) is used: plain http requests in
    absolute form (forwarded one per connection) and CONNECT tunnels for https. Records what it was asked; with
    ``credentials`` ("user:password") it answers 407 to requests without them."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.asked: list[tuple[str, str, str | None]] = []  # (method, target, Proxy-Authorization)
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        auth = f"{self.credentials}@" if self.credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *lines = head.split("\r\n")
            headers = dict(h.split(": ", 1) for h in lines if h)
            method, target, _ = line.split(" ")
            given = headers.pop("Proxy-Authorization", None)
            self.asked.append((method, target, given))
            expected = "Basic " + base64.b64encode(self.credentials.encode()).decode() if self.credentials else None
            if given != expected:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            url = URL(target)
            body = await reader.readexactly(int(headers.get("Content-Length", "0")))
            headers["Connection"] = "close"
            forwarded = f"{method} {url.raw_path_qs} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items()
            )
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
            up_writer.write(forwarded.encode("latin-1") + b"\r\n" + body)
            answer = await up_reader.readuntil(b"\r\n\r\n")
            length = [int(h[15:]) for h in answer.lower().split(b"\r\n") if h.startswith(b"content-length:")]
            answer += await up_reader.readexactly(length[0]) if length else await up_reader.read()
            writer.write(answer.replace(b"\r\n", b"\r\nConnection: close\r\n", 1))  # one request per connection
            up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class NotifySocket:
    """A stand-in for systemd's notify socket: a real unix datagram socket that keeps what the daemon sends."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="wr-notify-", dir="/tmp")  # short: unix socket paths are limited
        self.path = f"{self.dir}/notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def read(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.sock.recv(65536).decode())
        return self.messages

    def follow(self) -> None:
        """Read each datagram as it arrives (the socket's queue holds only a few: a full one drops notifications)."""
        asyncio.get_running_loop().add_reader(self.sock, self.read)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()
        with contextlib.suppress(OSError):
            Path(self.path).unlink()
            Path(self.dir).rmdir()


def _of_the_daemon(o: object) -> bool:
    module = type(o).__module__  # a metaclass's may be a descriptor
    return isinstance(module, str) and module.startswith("daemon.")


@contextlib.contextmanager
def cycles_left() -> Iterator[list[str]]:
    """The daemon's objects that only the cyclic collector would free, of what the block builds and lets go (a frozen
    state holding a cycle is never freed): the automatic collector is off inside; on leaving, the names of the daemon's
    types a full pass finds unreachable are put in the list.

    Only what the block builds: every object of the daemon's that exists on entering is held until the check is done,
    so that an earlier test's garbage whose last reference the event loop lets go inside the block (a test's cycle that
    the session's loop held until one of the next test's awaits) is not taken for this block's. Build what the check is
    about inside the block."""
    found: list[str] = []
    gc.collect()
    earlier = [o for o in gc.get_objects() if _of_the_daemon(o)]
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(type(o).__qualname__ for o in gc.garbage if _of_the_daemon(o))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        del earlier
        gc.enable()
