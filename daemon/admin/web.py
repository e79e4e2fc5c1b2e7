"""One HTTP layer for every route of the admin server (``/metrics``, ``/healthz``, ``/readyz``, the operator routes and
the ``/v1`` endpoints API): request bodies decoded into typed msgspec structs, every error answered the same way by
one middleware from one root (``RouterError.http_status``), JSON encoded once, bearer tokens read one way.

Every request is answered: a ``RouterError`` with its status and message, aiohttp's own refusals (no route, a method
not allowed, a body over the limit) with theirs, and a bug with a 500 whose traceback goes to the log, never to the
caller. Every error is ``{"error": "..."}``; a 401 carries ``WWW-Authenticate: Bearer``, a 429 and a 503
``Retry-After``.

A handler is cancelled when its client goes away (``handler_cancellation``): a scan of Kafka stops with its caller.
Work that must finish once begun (a delivery attempt and its record) shields itself from that cancellation.

aiohttp logs a request it cannot parse with a quote of the offending line (an over-long or malformed
``Authorization`` header included): ``RedactCredentials``, installed on aiohttp's loggers when a server starts,
replaces every quoted request fragment and every credential in those records before anything is written.

aiohttp's insides this module relies on: ``TCPSite._server`` (its listening sockets: the port actually bound when the
config says 0), covered by tests/integration/test_signals.py and every integration test that starts a daemon on
port 0.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web

from daemon.core.errors import BadRequest, RouterError, TooLarge

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)

MAX_BODY: Final = 1024 * 1024  # bytes of a request body; more is a 413
MAX_AUTHORIZATION: Final = 1024  # characters of an Authorization header that are looked at
SHUTDOWN_S: Final = 1.0  # how long a stopping server lets the requests under way finish before it cancels them
NO_ROUTE: Final = "no route"  # how an answer for a path this server does not serve starts (the CLI looks for it)
_encode = msgspec.json.Encoder().encode
_INTERNAL = "internal error (see the router's log)"


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encode(value), status=status, headers=headers, content_type="application/json")


def html_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A page (the portal's): UTF-8 HTML."""
    return web.Response(text=text, status=status, headers=headers, content_type="text/html", charset="utf-8")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """``{"error": message}``; a 401 says how to authenticate, a 429 and a 503 when to come back."""
    extra = dict(headers or {})
    if status == 401:
        extra.setdefault("WWW-Authenticate", "Bearer")
    elif status in (429, 503):
        extra.setdefault("Retry-After", "1")
    return json_response({"error": message}, status, extra or None)


def decode_request(raw: bytes, kind: type[T]) -> T:
    """A request body (none: ``{}``) as ``kind``; BadRequest naming the field that does not fit."""
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError:
        raise BadRequest("the request body must be a JSON object") from None


async def read_body(request: web.Request) -> bytes:
    """A request's body (none: empty); TooLarge (a 413) for one over the server's ``client_max_size``, which aiohttp
    stops reading at."""
    if not request.can_read_body:
        return b""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"the request body is too large: at most {request.client_max_size:,} bytes") from None


async def body(request: web.Request, kind: type[T]) -> T:
    """The request body decoded as ``kind`` (a msgspec Struct): 400 naming the field, 413 over the limit."""
    return decode_request(await read_body(request), kind)


def bearer(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None when there is none (or the header is absurdly long)."""
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or len(given) > MAX_AUTHORIZATION:
        return None
    return given[7:]


MAX_SCRAPE_NAMES = 256


def scrape_names(request: web.Request) -> list[str]:
    """The ``name[]`` parameters of a ``/metrics`` scrape (Prometheus's ``params``, as prometheus_client's own server
    reads them): only those series are served. BadRequest past ``MAX_SCRAPE_NAMES``."""
    names = request.query.getall("name[]", [])
    if len(names) > MAX_SCRAPE_NAMES:
        raise BadRequest(f"at most {MAX_SCRAPE_NAMES} name[] parameters")
    return names


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route's errors, answered one way."""
    try:
        return await handler(request)
    except RouterError as exc:
        return error_response(exc.http_status, str(exc))
    except web.HTTPException as exc:  # aiohttp's own refusal of the request (not a bug): its status, as JSON
        if exc.status == 404:
            return error_response(404, f"{NO_ROUTE} for {request.method} {request.path}")
        if exc.status == 413:
            return error_response(413, f"the request body is too large: at most {request.client_max_size:,} bytes")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, exc.reason, headers)
    except Exception:  # a bug: answered all the same (a dropped connection tells the caller nothing)
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, _INTERNAL)


def application() -> web.Application:
    """An application whose every route answers through this layer."""
    redact_aiohttp_logs()
    return web.Application(middlewares=[answer_errors], client_max_size=MAX_BODY)


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving ``app``; the runner (``cleanup()`` stops it) and the port actually bound. A request's handler is
    cancelled when its client disconnects, and at ``cleanup()`` once ``SHUTDOWN_S`` have passed (aiohttp's default
    waits a minute for handlers still running: past any orchestrator's grace period). A ``host`` of ``unix:PATH``
    serves on the unix socket PATH instead (a worker's, for its supervisor alone; the port is 0)."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=SHUTDOWN_S
    )
    await runner.setup()
    if host.startswith("unix:"):
        await web.UnixSite(runner, host[5:]).start()
        return runner, 0
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    return runner, sockets[0].getsockname()[1] if sockets else port


class Served:
    """A running admin server: its runner, the port it bound, and how late its event loop runs a short sleep (a loop
    stalled by a blocking call shows here, on ``/healthz``)."""

    TICK_S: Final = 0.5
    STALL_S: Final = 5.0  # a loop this late, or a ticker silent this long, is stalled

    def __init__(self) -> None:
        self.port = 0
        self.worst_lag = 0.0
        self._last_tick = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, app: web.Application, host: str, port: int, name: str) -> int:
        self._runner, self.port = await serve(app, host, port)
        self._ticker = asyncio.create_task(self._tick(), name=f"{name}-loop-ticker")
        return self.port

    @property
    def server(self) -> web.Server | None:
        """aiohttp's server (its handlers and connections), once started."""
        return self._runner.server if self._runner is not None else None

    def stalled(self) -> bool:
        return time.monotonic() - self._last_tick > self.STALL_S or self.worst_lag > self.STALL_S

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            now = time.monotonic()
            self.worst_lag = max(0.0, now - before - self.TICK_S)
            self._last_tick = now


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
