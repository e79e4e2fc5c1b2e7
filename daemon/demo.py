"""``webhook-router demo``: an embedded broker, a sample receiver and sample events, every step printed.

Nothing outside this process is needed but the Tansu binary of the ``demo`` extra. The receiver
checks each Standard Webhooks signature itself, with nothing from the router, as a real receiver
would. Lines on stdout: ``>> event`` produced, ``-> delivery`` received, ``<- result`` read back
from the results topic. The router's own log goes to stderr.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from daemon.app import App
from daemon.config import load_config
from daemon.embedded import EmbeddedBroker
from daemon.match import RoutingTable
from daemon.model import InvalidEvent, Outcome, TypeReader, decode_outcome

LEADS, CALLS, RESULTS = "demo-leads", "demo-calls", "demo-results"
_SKEW_S = 300  # receivers accept about five minutes of clock skew (Standard Webhooks)

_CONFIG = """\
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "webhook-router-demo"
topics = ["{leads}", "{calls}"]
results_topic = "{results}"
session_timeout_ms = 6000
heartbeat_interval_ms = 500
commit_interval_ms = 200

[admin]
listen = "127.0.0.1:0"

[delivery]
drain_timeout_s = 5

[[endpoints]]
id = "crm"
url = "{base}/crm"
secret = "{secret}"
timeout_s = 5

[[endpoints]]
id = "sales"
url = "{base}/sales"
secret = "{secret}"
headers = {{ X-Demo = "sales" }}

[[endpoints]]
id = "audit"
url = "{base}/audit"
secret = "{secret}"

[[subscriptions]]
endpoint = "crm"
events = ["lead.created", "call.completed"]

[[subscriptions]]
endpoint = "sales"
events = ["lead.*"]
topics = ["{leads}"]

[[subscriptions]]
endpoint = "audit"
events = ["*"]
"""


def _say(line: str) -> None:
    print(line, flush=True)


def _samples() -> Iterator[tuple[str, bytes, str]]:
    """(topic, value, label) forever: three event types, and once, fourth, an event that is not JSON."""
    names = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra"]
    n = 0
    while True:
        n += 1
        lead = {"lead_id": 1000 + n, "name": names[n % len(names)]}
        yield LEADS, orjson.dumps({"event": "lead.created", **lead}), "lead.created"
        yield (
            LEADS,
            orjson.dumps({"event": "lead.status_changed", **lead, "status": "contacted"}),
            "lead.status_changed",
        )
        yield (
            CALLS,
            orjson.dumps({"type": "call.completed", "call_id": f"c-{n}", "duration_s": 30 + n}),
            "call.completed",
        )
        if n == 1:
            yield LEADS, b'{"event": "lead.created", "lead_id": ', "(malformed: truncated JSON)"


def verify_signature(key: bytes, msg_id: str, timestamp: str, signatures: str, body: bytes) -> bool:
    """Standard Webhooks: some ``v1,<base64 HMAC-SHA256(id.timestamp.body)>`` entry matches, timestamp recent."""
    if not msg_id or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > _SKEW_S:
        return False
    content = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.digest(key, content, "sha256")).decode()
    return any(
        hmac.compare_digest(entry.removeprefix("v1,"), expected) for entry in signatures.split() if entry[:3] == "v1,"
    )


class SampleReceiver:
    """Webhook receiver on 127.0.0.1: verifies and prints every delivery; ``/audit`` fails every third one."""

    def __init__(self, secret: str) -> None:
        self._key = base64.b64decode(secret.removeprefix("whsec_"))
        self._runner: web.AppRunner | None = None
        self._audit_calls = 0
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base = "http://127.0.0.1:%d" % sock.getsockname()[1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        h = request.headers
        msg_id = h.get("webhook-id", "")
        ok = verify_signature(self._key, msg_id, h.get("webhook-timestamp", ""), h.get("webhook-signature", ""), body)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        event_type = str(doc.get("event") or doc.get("type")) if isinstance(doc, dict) else "?"
        status = 200 if ok else 401
        if ok and request.path == "/audit":
            self._audit_calls += 1
            status = 500 if self._audit_calls % 3 == 0 else 200
        verified = "yes" if ok else "NO"
        _say(
            f"-> delivery  {request.path:<7} {msg_id}  {event_type:<20} signature verified: {verified:<3}  => {status}"
        )
        return web.Response(status=status, text="ok" if status == 200 else "demo failure")


class Tally:
    """Results expected for the events sent so far, and results seen; ``done`` once all are in."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.sent = 0
        self.expected = 0
        self.statuses: Counter[str] = Counter()
        self.done = asyncio.Event()

    def check(self) -> None:
        if self.events and self.sent >= self.events and self.statuses.total() >= self.expected:
            self.done.set()


async def _produce(bootstrap: str, table: RoutingTable, tally: Tally, rate: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=0)
    await producer.start()
    reader = TypeReader()
    try:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for topic, value, label in _samples():
            if tally.events and tally.sent >= tally.events:
                return
            try:
                results = len(table.match(topic, reader.read(value)))
            except InvalidEvent:
                results = 1  # one invalid_event record
            meta = await producer.send_and_wait(topic, value)
            tally.sent += 1
            tally.expected += results
            _say(f">> event     #{tally.sent:<3} {topic}[{meta.partition}]@{meta.offset:<4} {label}")
            tally.check()
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    finally:
        await producer.stop()


def _describe(o: Outcome) -> str:
    source = f"({o.source_topic}[{o.source_partition}]@{o.source_offset})"
    if o.endpoint_id is None:
        return f"<- result    {o.status:<13} {'-':<6} {'-':<20} {o.error} {source}"
    http = f"HTTP {o.http_status}" if o.http_status is not None else (o.error or "-")
    took = f"{o.duration_ms:.1f} ms" if o.duration_ms is not None else "-"
    return f"<- result    {o.status:<13} {o.endpoint_id:<6} {o.event_type or '-':<20} {http:<9} {took:>9}  {source}"


async def _read_results(bootstrap: str, tally: Tally, finishing: asyncio.Event) -> None:
    """Print every results record, from the beginning, without a group; once ``finishing``, up to the end."""
    tp = TopicPartition(RESULTS, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([tp])
        end: int | None = None
        while end is None or await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=200)).values():
                for record in records:
                    outcome = decode_outcome(record.value)
                    tally.statuses[outcome.status] += 1
                    _say(_describe(outcome))
            tally.check()
            if finishing.is_set() and end is None:
                end = (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def _until_over(stop: asyncio.Event, done: asyncio.Event, *tasks: asyncio.Task[None]) -> None:
    """Until a signal, all results in, or one of ``tasks`` failed (the producer may finish early: fine)."""
    waits = {asyncio.create_task(stop.wait()), asyncio.create_task(done.wait())}
    pending: set[asyncio.Task[Any]] = {*waits, *tasks}
    try:
        while True:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t in waits or t.cancelled() or t.exception() for t in finished):
                return
    finally:
        for wait in waits:
            wait.cancel()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_demo(events: int, rate: float) -> int:
    """Run the demo until ``events`` events all have their results (0: until SIGINT/SIGTERM). Exit code."""
    if events < 0 or rate <= 0:
        print("demo: --events must be >= 0 and --rate > 0", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(name: str) -> None:
        if not stop.is_set():
            _say(f"== {name}: stopping (the router drains its deliveries first, at most 5 s)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        with tempfile.TemporaryDirectory(prefix="webhook-router-demo-") as tmp:
            return await _run(Path(tmp), Tally(events), rate, stop)
    except (OSError, RuntimeError, KafkaError) as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(tmp: Path, tally: Tally, rate: float, stop: asyncio.Event) -> int:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    async with contextlib.AsyncExitStack() as stack:
        broker = EmbeddedBroker(log_path=tmp / "tansu.log")
        await broker.start()
        stack.push_async_callback(broker.stop)
        await broker.create_topics([LEADS, CALLS, RESULTS])
        _say(f"== broker    Tansu on {broker.bootstrap} (log: {tmp / 'tansu.log'})")
        receiver = SampleReceiver(secret)
        await receiver.start()
        stack.push_async_callback(receiver.stop)
        _say(f"== receiver  {receiver.base}  (/crm, /sales; /audit answers 500 to every third delivery)")
        finishing = asyncio.Event()
        reader = asyncio.create_task(_read_results(broker.bootstrap, tally, finishing), name="demo-results")
        stack.push_async_callback(_cancel, reader)

        path = tmp / "router.toml"
        fields = {"leads": LEADS, "calls": CALLS, "results": RESULTS, "base": receiver.base, "secret": secret}
        path.write_text(_CONFIG.format(bootstrap=broker.bootstrap, **fields), encoding="utf-8")
        config = load_config(path)
        app = App(config, config_path=path)
        serve = asyncio.create_task(app.serve(install_signals=False), name="demo-router")
        producing: asyncio.Task[None] | None = None
        try:
            while not (hasattr(app, "source") and app.source.joined) and not serve.done() and not stop.is_set():
                await asyncio.sleep(0.05)
            if not serve.done() and not stop.is_set():
                admin = f"http://127.0.0.1:{app.admin.port}/metrics" if app.admin else "-"
                _say(f"== router    {len(config.endpoints)} endpoints, {len(config.subscriptions)} subscriptions")
                _say(f"==           config {path}, admin {admin}")
                until = f"{tally.events} events" if tally.events else "Ctrl-C"
                _say(f"== sending   {rate:g} events/s until {until}")
                table = RoutingTable(config.subscriptions)
                producing = asyncio.create_task(_produce(broker.bootstrap, table, tally, rate), name="demo-events")
                await _until_over(stop, tally.done, serve, producing)
        finally:
            if producing is not None:
                await _cancel(producing)
            app.request_stop()
            with contextlib.suppress(Exception):
                await serve
        if producing is not None and producing.done() and not producing.cancelled() and producing.exception():
            print(f"demo: producing failed: {producing.exception()}", file=sys.stderr)
        if serve.exception() is not None:
            print(f"demo: the router failed: {serve.exception()}", file=sys.stderr)
            return 1
        finishing.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 5)
        counts = ", ".join(f"{n} {status}" for status, n in sorted(tally.statuses.items())) or "none"
        _say(f"== done      {tally.sent} events sent, {tally.statuses.total()} results ({counts})")
    return 0
