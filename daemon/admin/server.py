"""The admin HTTP server: /metrics, /healthz (event loop liveness only), /readyz (ready, or why not), and the
operator actions of ``daemon.admin.operate`` behind a bearer token. Request bodies are decoded here into the
actions' typed structs; a body that does not fit is a 400 naming the field, and every request is answered.

It starts before Kafka is reached, so that liveness and the reason for not being ready are visible while the
daemon waits for the cluster; the operator actions answer 503 until start-up is complete.

aiohttp logs a request it cannot parse with a quote of the offending line (an over-long or malformed
``Authorization`` header included): ``RedactCredentials``, installed on aiohttp's loggers when the server
starts, replaces every quoted request fragment and every credential in those records before any handler
sees them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.admin.operate import Operator, Redelivery, Replay, SkipRequest, decode_request, read_body
from daemon.core.errors import BadRequest, RouterError
from daemon.observe.metrics import Metrics

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode

log = logging.getLogger(__name__)

_TICK_S = 0.5
_STALL_S = 5.0

# A fragment of a request that aiohttp's parser quotes in its errors: b'...' or bytearray(b'...').
_QUOTED = re.compile(r"""(?:bytearray\()?b(['"])(?:\\.|(?!\1).)*\1\)?""", re.S)
_HEADER = re.compile(r"(?i)\b(authorization|proxy-authorization|cookie|x-api-key)(\s*[:=]\s*)[^\r\n]*")
_SCHEME = re.compile(r"(?i)\b(bearer|basic|digest)(\s+)[^\s'\",;]+")
_AIOHTTP_LOGGERS = ("aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server", "aiohttp.web")


def redact(text: str) -> str:
    """``text`` without quoted request fragments or credentials (header values and ``Bearer``/``Basic`` tokens)."""
    text = _QUOTED.sub("b'<redacted>'", text)
    text = _HEADER.sub(r"\1\2<redacted>", text)
    return _SCHEME.sub(r"\1\2<redacted>", text)


class RedactCredentials(logging.Filter):
    """Rewrites a log record so that neither its message nor its traceback carries a credential or a quoted request
    fragment; the traceback is kept, formatted and redacted (``exc_text``), and the exception object dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: keep the message alone
            message = str(record.msg)
        if record.exc_info is not None and record.exc_info[1] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg, record.args = redact(message), None
        return True


def redact_aiohttp_logs() -> None:
    """Install ``RedactCredentials`` on aiohttp's loggers (once)."""
    for name in _AIOHTTP_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in target.filters):
            target.addFilter(RedactCredentials())


class AdminServer:
    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        not_ready: Callable[[], str | None],
        operator: Callable[[], Operator | None] = lambda: None,
        token: str | None = None,
        routes: Callable[[web.Application], None] | None = None,
    ) -> None:
        """``not_ready()`` says why the daemon is not ready (None: it is); ``operator()`` is None until start-up is
        complete."""
        host, _, port = listen.rpartition(":")
        self._host, self._port = host, int(port)
        self._metrics = metrics
        self._not_ready = not_ready
        self._operator = operator
        self._token = token
        self._routes = routes  # more routes to serve (the endpoints API), added before the app starts
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_tick = time.monotonic()
        self._worst_lag = 0.0
        self.port = 0  # the port actually bound (admin.listen may say 0)

    async def start(self) -> None:
        redact_aiohttp_logs()
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/readyz", self._handle_readyz)
        app.router.add_get("/endpoints", self._guard(self._list_endpoints))
        app.router.add_post("/endpoints/{id}/ping", self._guard(self._ping))
        app.router.add_post("/endpoints/{id}/pause", self._guard(self._pause))
        app.router.add_post("/endpoints/{id}/resume", self._guard(self._resume))
        app.router.add_post("/endpoints/{id}/replay", self._guard(self._replay))
        app.router.add_post("/deliveries/{delivery_id}/redeliver", self._guard(self._redeliver))
        app.router.add_post("/partitions/{topic}/{partition}/skip", self._guard(self._skip))
        if self._routes is not None:
            self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        self._ticker = asyncio.create_task(self._tick(), name="admin-loop-ticker")
        log.info("admin server on http://%s:%d (/metrics /healthz /readyz)", self._host, self.port)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _tick(self) -> None:
        # Measures how late the loop runs a short sleep: a loop stalled by a blocking call shows here.
        while True:
            before = time.monotonic()
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            self._worst_lag = max(0.0, now - before - _TICK_S)
            self._last_tick = now

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        stalled = time.monotonic() - self._last_tick > _STALL_S or self._worst_lag > _STALL_S
        lag_ms = round(self._worst_lag * 1000, 1)
        return web.json_response({"ok": not stalled, "loop_lag_ms": lag_ms}, status=503 if stalled else 200)

    def _guard(self, handler: Handler) -> Handler:
        """Operator actions need ``Authorization: Bearer <admin token>``."""

        async def guarded(request: web.Request) -> web.Response:
            if self._token is None:
                return _error(403, "operator actions are disabled: set admin.token_env")
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                return _error(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
            operator = self._operator()
            if operator is None:
                return _error(503, f"not available yet: {self._not_ready() or 'starting'}")
            try:
                return await handler(request, operator)
            except RouterError as exc:
                return _error(exc.http_status, str(exc))
            except web.HTTPException as exc:  # aiohttp's own answer to the request (not a bug): its status, as JSON
                return _error(exc.status, exc.reason)
            except Exception:  # a bug: answered all the same (a dropped connection tells the operator nothing)
                log.exception("%s %s failed", request.method, request.path)
                return _error(500, "internal error (see the router's log)")

        return guarded

    async def _list_endpoints(self, request: web.Request, op: Operator) -> web.Response:
        return _json({"endpoints": op.endpoints()})

    async def _pause(self, request: web.Request, op: Operator) -> web.Response:
        changed = op.pause(request.match_info["id"])
        return _json({"endpoint_id": request.match_info["id"], "paused": True, "changed": changed})

    async def _resume(self, request: web.Request, op: Operator) -> web.Response:
        changed = op.resume(request.match_info["id"])
        return _json({"endpoint_id": request.match_info["id"], "paused": False, "changed": changed})

    async def _ping(self, request: web.Request, op: Operator) -> web.Response:
        return _json(await op.ping(request.match_info["id"]))

    async def _redeliver(self, request: web.Request, op: Operator) -> web.Response:
        """The delivery where the body says (its results record's coordinates); without a body, where its newest
        results record says, found on the results topic by its id."""
        delivery = request.match_info["delivery_id"]
        raw = await read_body(request)
        where = decode_request(raw, Redelivery) if raw.strip() else await op.locate(delivery)
        return _json(await op.redeliver(delivery, where))

    async def _replay(self, request: web.Request, op: Operator) -> web.Response:
        return _json(await op.replay(request.match_info["id"], await _body(request, Replay)))

    async def _handle_readyz(self, request: web.Request) -> web.Response:
        """Ready or why not; and the partitions held at a batch that cannot be decoded (the others flow, so
        the daemon stays ready: an operator decides whether to skip it)."""
        operator = self._operator()
        stuck = [msgspec.to_builtins(s) for s in operator.stuck()] if operator is not None else []
        reason = self._not_ready()
        if reason is None:
            return web.json_response({"ready": True, "stuck": stuck})
        return web.json_response({"ready": False, "reason": reason, "stuck": stuck}, status=503)

    async def _skip(self, request: web.Request, op: Operator) -> web.Response:
        try:
            partition = int(request.match_info["partition"])
        except ValueError:
            raise BadRequest("partition: must be an integer") from None
        skipped = await op.skip(request.match_info["topic"], partition, await _body(request, SkipRequest))
        return _json(skipped)


Handler = Callable[..., Awaitable[web.Response]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _json(value: Any) -> web.Response:
    return web.Response(body=_encode(value), content_type="application/json")


async def _body(request: web.Request, kind: type[T]) -> T:
    return decode_request(await read_body(request), kind)
