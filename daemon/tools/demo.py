"""``webhook-router demo``: an embedded broker, a sample receiver and sample events, every step printed.

Nothing outside this process is needed but the Tansu binary of the ``demo`` extra. The receiver
verifies each Standard Webhooks signature itself, without the router's code, as a real receiver
would. On stdout: ``>> event`` produced, ``-> delivery`` received, ``<- result`` read back from
the results topic. The router logs to stderr as usual.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import itertools
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
from aiohttp import web
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from daemon.app import App
from daemon.core.model import FAILED, INVALID_EVENT, Outcome, decode_outcome
from daemon.core.validate import load_config
from daemon.kafka.clients import producer as kafka_producer
from daemon.kafka.clients import reader
from daemon.tools.embedded import EmbeddedBroker, free_port

LEADS, CALLS, RESULTS = "demo-leads", "demo-calls", "demo-results"
DRAIN_S = 5
Task = asyncio.Task[None]
_SKEW_S = 300  # Standard Webhooks receivers accept about five minutes of clock skew

_CONFIG = """\
endpoints = [
  {{ id = "crm", url = "{base}/crm", secret = "{secret}", timeout_s = 5 }},
  {{ id = "sales", url = "{base}/sales", secret = "{secret}", headers = {{ X-Demo = "sales" }} }},
  {{ id = "audit", url = "{base}/audit", secret = "{secret}", retry = {{ policy = "schedule", delays_s = [1, 2] }} }},
]
subscriptions = [
  {{ endpoint = "crm", events = ["lead.created", "call.completed"] }},  # exact types
  {{ endpoint = "sales", events = ["lead.*"], topics = ["{leads}"] }},  # a prefix, on one topic only
  {{ endpoint = "audit", events = ["*"] }},  # everything
]

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "webhook-router-demo"
topics = ["{leads}", "{calls}"]
results_topic = "{results}"
session_timeout_ms = 6000
heartbeat_interval_ms = 500
commit_interval_ms = 200
enable_idempotence = false  # the demo's broker (Tansu) grants no producer ids: said here rather than found out

[admin]
listen = "127.0.0.1:{admin_port}"

[delivery]
drain_timeout_s = {drain}
allowed_networks = ["127.0.0.0/8"]  # the sample receiver is on 127.0.0.1, which the SSRF guard refuses by default

[retry]
tiers_s = [1, 5]
topic_prefix = "demo"
partitions = 1
"""


_say = functools.partial(print, flush=True)


def _samples() -> Iterator[tuple[str, bytes, str, int]]:
    """(topic, value, label, results) without end: three event types in turn and, once, one that is not JSON.

    ``results`` is how many results records the event gets under ``_CONFIG``: one per subscribed
    endpoint, or one ``invalid_event`` record.
    """
    names = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra"]
    for n in itertools.count(1):
        lead = {"lead_id": 1000 + n, "name": names[n % len(names)]}
        yield LEADS, orjson.dumps({"event": "lead.created", **lead}), "lead.created", 3
        yield LEADS, orjson.dumps({"event": "lead.status_changed", **lead, "to": "contacted"}), "lead.status_changed", 2
        yield CALLS, orjson.dumps({"type": "call.completed", "call_id": f"c-{n}", "secs": 30 + n}), "call.completed", 2
        if n == 1:
            yield LEADS, b'{"event": "lead.created", "lead_id": ', "(malformed: truncated JSON)", 1


def verify_signature(key: bytes, msg_id: str, timestamp: str, signatures: str, body: bytes) -> bool:
    """Standard Webhooks: a recent timestamp, and a ``v1,<base64 HMAC-SHA256(id.timestamp.body)>`` entry matching."""
    if not msg_id or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > _SKEW_S:
        return False
    expected = base64.b64encode(hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, "sha256")).decode()
    entries = [entry[3:] for entry in signatures.split() if entry.startswith("v1,")]
    return any(hmac.compare_digest(entry, expected) for entry in entries)


class SampleReceiver:
    """Webhook receiver on 127.0.0.1: verifies and prints each delivery; ``/audit`` fails every third one."""

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
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body, h = await request.read(), request.headers
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
        _say(f"-> delivery  {request.path:<7} {msg_id}  {event_type:<20} signature verified: {verified}  => {status}")
        return web.Response(status=status, text="ok" if status == 200 else "demo failure")


def _settles(o: Outcome) -> bool:
    """True for the last record of one delivery (or of an event that could not be routed): not a retry to come."""
    if o.status == INVALID_EVENT:
        return True
    return o.delivery_id is not None and not (o.status == FAILED and o.next_attempt_at)


def _describe(o: Outcome) -> str:
    what = f"HTTP {o.http_status}" if o.http_status is not None else (o.error or "-")
    took = f"{o.duration_ms:5.1f} ms" if o.duration_ms is not None else ""
    source = f"{o.source_topic}[{o.source_partition}]@{o.source_offset}" if o.source_topic else ""
    line = f"<- result    {o.status:<13} {o.endpoint_id or '-':<6} {o.event_type or '-':<20} {what:<9} {took:>8}"
    line += f"  attempt {o.attempt}  {source}" if o.delivery_id else f"  {source}"
    return line + (f"  (retry at {o.next_attempt_at[11:23]})" if o.next_attempt_at else "")


class Demo:
    """The events sent, the results expected and seen, and ``stop``: set by a signal, or once all results are in."""

    def __init__(self, events: int, rate: float) -> None:
        self.events, self.rate = events, rate
        self.sent = self.expected = self.settled = self.signals = 0
        self.statuses: Counter[str] = Counter()
        self.stop = asyncio.Event()
        self.finishing = asyncio.Event()

    def on_signal(self, name: str) -> None:
        self.signals += 1
        if self.signals > 1:
            _say(f"== {name} again: exiting now")
            os._exit(1)  # the broker goes too: it is sent SIGTERM when its parent dies
        _say(f"== {name}: stopping; the router drains its deliveries first (at most {DRAIN_S} s; again to force)")
        self.stop.set()

    def exited(self, task: Task) -> None:
        """A task ended: stop the demo, unless it is the producer done with its events."""
        if task.cancelled() or task.exception() is not None or task.get_name() != "demo-events":
            self.stop.set()

    def _check(self) -> None:
        if self.events and self.sent >= self.events and self.settled >= self.expected:
            self.stop.set()

    async def produce(self, bootstrap: str) -> None:
        producer = kafka_producer({"bootstrap_servers": bootstrap}, enable_idempotence=False, linger_ms=0)
        await producer.start()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            for topic, value, label, expected in _samples():
                if self.events and self.sent >= self.events:
                    return
                meta = await producer.send_and_wait(topic, value)
                self.sent += 1
                self.expected += expected
                _say(f">> event     #{self.sent:<3} {topic}[{meta.partition}]@{meta.offset:<4} {label}")
                self._check()
                next_at += 1 / self.rate
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            await producer.stop()

    async def read_results(self, bootstrap: str) -> None:
        """Print each results record, read from the start without a group; once ``finishing``, up to the end."""
        tp = TopicPartition(RESULTS, 0)
        consumer = reader({"bootstrap_servers": bootstrap}, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([tp])
            end: int | None = None
            while end is None or await consumer.position(tp) < end:
                for records in (await consumer.getmany(tp, timeout_ms=200)).values():
                    for record in records:
                        outcome = decode_outcome(record.value)
                        self.statuses[outcome.status] += 1
                        self.settled += _settles(outcome)
                        _say(_describe(outcome))
                self._check()
                if self.finishing.is_set() and end is None:
                    end = (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()


async def _until_gone(port: int) -> None:
    """Return once nothing listens on the broker's port any more."""
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.close()
        await asyncio.sleep(0.2)


async def run_demo(events: int, rate: float) -> int:
    """Run until ``events`` events all have their results recorded (0: until SIGINT/SIGTERM); the exit code."""
    if events < 0 or rate <= 0:
        print("demo: --events must be >= 0 and --rate > 0", file=sys.stderr)
        return 2
    demo = Demo(events, rate)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, demo.on_signal, sig.name)
    try:
        with tempfile.TemporaryDirectory(prefix="webhook-router-demo-") as tmp:
            return await _run(demo, Path(tmp))
    except (OSError, RuntimeError, KafkaError) as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(demo: Demo, tmp: Path) -> int:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    async with contextlib.AsyncExitStack() as stack:
        broker = EmbeddedBroker(log_path=tmp / "tansu.log")
        await broker.start()
        stack.push_async_callback(broker.stop)
        await broker.create_topics([LEADS, CALLS, RESULTS])
        receiver = SampleReceiver(secret)
        await receiver.start()
        stack.push_async_callback(receiver.stop)
        path, admin_port = tmp / "router.toml", free_port()
        fields = {"leads": LEADS, "calls": CALLS, "results": RESULTS, "drain": DRAIN_S, "secret": secret}
        text = _CONFIG.format(bootstrap=broker.bootstrap, base=receiver.base, admin_port=admin_port, **fields)
        path.write_text(text, encoding="utf-8")
        config = load_config(path)
        _say(f"== broker    Tansu on {broker.bootstrap} (log {tmp / 'tansu.log'})")
        _say(f"== receiver  {receiver.base}: /crm, /sales, /audit (/audit answers 500 to every third delivery)")
        _say(f"== router    {len(config.endpoints)} endpoints, {len(config.subscriptions)} subscriptions: {path}")
        _say(f"==           metrics on http://127.0.0.1:{admin_port}/metrics")
        _say(f"== sending   {demo.rate:g} events/s until {f'{demo.events} events' if demo.events else 'Ctrl-C'}")

        reader = asyncio.create_task(demo.read_results(broker.bootstrap), name="demo-results")
        app = App(config, config_path=path)
        serve = asyncio.create_task(app.serve(install_signals=False), name="demo-router")
        producing = asyncio.create_task(demo.produce(broker.bootstrap), name="demo-events")
        for task in (reader, serve, producing):
            task.add_done_callback(demo.exited)
        await demo.stop.wait()
        return await _shut_down(demo, app, broker.port, serve, producing, reader)


async def _shut_down(demo: Demo, app: App, port: int, serve: Task, producing: Task, reader: Task) -> int:
    """Stop producing, let the router drain, print what it recorded meanwhile; bounded even if the broker died."""
    producing.cancel()
    app.request_stop()
    gone = asyncio.create_task(_until_gone(port))
    await asyncio.wait([serve, gone], timeout=DRAIN_S + 10, return_when=asyncio.FIRST_COMPLETED)
    if serve.done() and not gone.done():
        demo.finishing.set()
        await asyncio.wait([reader, gone], timeout=5, return_when=asyncio.FIRST_COMPLETED)
    broker_gone = gone.done()
    gone.cancel()
    if broker_gone:
        # A terminal's Ctrl-C reaches Tansu too: with the broker gone, there is nothing left to drain into.
        _say("== the broker has stopped too: stopping without draining")
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stuck = not serve.done() and not broker_gone
    for task in (producing, serve, reader):
        task.cancel()
    await asyncio.wait([producing, serve, reader], timeout=10)
    failed = [t for t in (serve, producing, reader) if t.done() and not t.cancelled() and t.exception()]
    for task in [] if broker_gone else failed:
        print(f"demo: {task.get_name()} failed: {task.exception()!r}", file=sys.stderr)
    if stuck:
        print(f"demo: the router did not stop within {DRAIN_S + 10} s", file=sys.stderr)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(demo.statuses.items())) or "none"
    _say(f"== done      {demo.sent} events sent, {demo.statuses.total()} results ({counts})")
    return 1 if stuck or (failed and not broker_gone) else 0
