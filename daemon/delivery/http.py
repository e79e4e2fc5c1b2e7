"""Webhook POSTs over connections made by aiohttp's connector, answers read by its parser, without a ClientSession.

Two requests to one endpoint differ only in their signature headers and body. ``ClientSession.post``
rebuilds everything else every time (a ``ClientRequest``, a merged ``CIMultiDict`` of headers, a
payload object, a timeout handle, a writer task), which costs about as much CPU as the rest of a
delivery together. Here the request line, ``Host`` and the endpoint's own headers are serialised once
(``Route``), and a request is one write of that head, the per-request headers and the body.

aiohttp keeps the parts that are hard to get right: the ``TCPConnector`` makes each connection (DNS cache, TLS
with verification, a proxy's tunnel, connect errors) and its C parser (llhttp) reads every answer (status line,
headers, chunked or sized bodies, ``Connection: close``). The keep-alive pool is the client's own (``_Pool``, newest
first) and so is the connection's protocol (``_Wire``: a parser and one future an exchange): aiohttp's pool and
``ResponseHandler`` cost about as much CPU again as everything else a request takes. A connection goes back to the
pool only when its answer was read to the end, the whole request was sent (over TLS: handed to TLS, the bytes
below it are not seen), nothing came but the answer and the server keeps it open; otherwise it is aborted.
Every address the connector is about to connect to is vetted just before its socket is made (a
``socket_factory`` on the ``TCPConnector``), on every new connection, whatever the DNS cache holds: an address
``daemon.core.netguard`` refuses is never connected to, and when every address of the URL's host is refused the
exchange raises ``Blocked`` (a name that resolves to a public address once and to a private one the next
time, DNS rebinding, is caught at the second connect). With an egress proxy every request goes through the
proxy instead (absolute-form request line for http://, CONNECT for https://) and the proxy decides.
Redirects are never followed. One timeout bounds the whole exchange (connect, send, answer, body),
kept by ``daemon.delivery.deadline`` rather than by a timer per request. A header name or value holding CR, LF
or NUL is refused (``HeaderError``) before anything is written, as aiohttp's own writer does: nothing
that came from outside (an event type in ``X-Agora-Event``) can add a header or a request.

aiohttp internals this module relies on (``pyproject.toml`` pins aiohttp to the minor release they were
checked on; on an upgrade, check each and run ``tests/unit/delivery/http/test_http.py``, which exercises every one
against real sockets):

1. ``ClientRequest(method, url, loop=, auth=, ssl=)`` builds without a session, and its ``headers["Host"]``
   and ``connection_key`` are what the connector pools by (the Host/IDNA/IPv6/default-port tests).
2. ``TCPConnector.connect(req, traces, timeout)`` returns a ``Connection`` with ``.protocol``, ``.transport`` and
   ``._key``; ``TCPConnector._release_acquired(key, protocol)`` forgets it, and ``Connection._protocol = None``
   gives it away (``Client._open``; the test that the connector keeps nothing); the transport takes the client's
   protocol (``set_protocol``, on asyncio's loop and uvloop alike: the tests run on both); what the server sent
   before that is in the ``ResponseHandler``'s ``_tail`` (the banner test).
3. ``aiohttp.http_parser.HttpResponseParser(protocol, loop, limit, timer=, payload_exception=, read_until_eof=,
   auto_decompress=)``: ``feed_data(data)`` returning ``(messages, upgraded, tail)``, each message a
   ``(RawResponseMessage, StreamReader)`` with ``.code``, ``.headers`` and ``.should_close``, raising
   ``HttpProcessingError`` on a bad answer; ``feed_eof()``, raising on a body cut short and returning a message
   when another answer had begun; ``BaseProtocol``'s flow control for a body's stream
   (``pause_reading``, ``resume_reading``, ``connected``), and ``EMPTY_BODY_STATUS_CODES`` / ``EMPTY_PAYLOAD``
   (the 100-continue, chunked, garbage-answer, pieces, cut-short and disconnect tests).
4. ``StreamReader.read(n)``, ``.read_nowait(n)`` and ``.is_eof()`` (the chunked and cut-at-the-limit tests).
5. ``aiohttp.helpers.TimerNoop`` and ``strip_auth_from_url`` (the Basic-auth test).
6. The exception types raised along the way: ``ClientConnectorError`` (``.os_error``),
   ``ServerDisconnectedError``, ``ClientOSError``, ``ClientPayloadError``, ``ClientSSLError``,
   ``HttpProcessingError`` (``.message``) (the error tests).
7. ``TCPConnector(socket_factory=, resolver=)``: the factory is called with each resolved address's
   ``addrinfo`` just before that socket connects, in the task that called ``connect`` (or one it started,
   which sees its context variables), also for literal IP hosts; ``ClientRequest(proxy=, proxy_auth=)``
   and the connector's CONNECT tunnel for https through a proxy (the guard and proxy tests).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import errno
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.helpers import EMPTY_BODY_STATUS_CODES, TimerNoop, strip_auth_from_url
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpResponseParser, RawResponseMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from daemon.core.netguard import NetGuard, Refusal
from daemon.core.profiles import hop_by_hop
from daemon.delivery.deadline import Deadlines

_NO_TIMEOUT = aiohttp.ClientTimeout()  # the exchange's deadline covers connect, send and response
_TIMER = TimerNoop()
_READ_BUFSIZE = 2**16  # aiohttp's: a body's stream pauses reading past it


# CR, LF and NUL end a header (or the head) early: never written from a name or a value.
_BREAKS = re.compile(r"[\r\n\x00]")


class HeaderError(ValueError):
    """A header name or value that would break the request head."""


class Blocked(Exception):
    """Every address of the URL's host was refused by the network guard: nothing was sent, nothing connected."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


class _Vetting:
    """What the guard decided while one exchange connected: the refusals, and how many addresses it let through.

    ``__slots__``: one per exchange that opens a connection.
    """

    __slots__ = ("passed", "refused")

    def __init__(self) -> None:
        self.refused: list[Refusal] = []
        self.passed = 0


# The exchange whose connect the socket factory is serving (happy eyeballs' tasks inherit it).
_VETTING: contextvars.ContextVar[_Vetting] = contextvars.ContextVar("vetting")


def _checked(headers: Mapping[str, str]) -> str:
    """``name: value\r\n`` lines of ``headers``; HeaderError when a name or a value holds CR, LF or NUL."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # Each line brings one CR and one LF of its own: any more came from a name or a value (three C scans).
    count = len(headers)
    if lines.count("\r") != count or lines.count("\n") != count or "\x00" in lines:
        bad = next(name for name, value in headers.items() if _BREAKS.search(name) or _BREAKS.search(value))
        raise HeaderError(f"header {bad[:64]!r}: name or value holds CR, LF or NUL")
    return lines


class Route:
    """One endpoint's target: its pool key (host, port, TLS) and its serialised request head.

    ``__slots__``: read on every request (the hot path).
    """

    __slots__ = ("head", "key", "pool")

    def __init__(
        self,
        url: URL,
        headers: Mapping[str, str],
        loop: asyncio.AbstractEventLoop,
        tls: ssl.SSLContext | bool = True,  # True: the system's CAs, certificates verified
        proxy: URL | None = None,
    ) -> None:
        bare, auth = strip_auth_from_url(url)
        proxy_url, proxy_auth = strip_auth_from_url(proxy) if proxy is not None else (None, None)
        # A ClientRequest is built once per endpoint, only as the connector's key: it carries host,
        # port, TLS settings, the proxy and the Host header exactly as aiohttp would compute them.
        self.key = ClientRequest("POST", bare, loop=loop, auth=auth, ssl=tls, proxy=proxy_url, proxy_auth=proxy_auth)
        self.pool: object = self.key.connection_key  # what the client's pool keeps this endpoint's connections by
        # The endpoint's own headers never carry Host, a hop-by-hop or a Proxy-* header (validation refuses them; an
        # endpoint that got past it all the same is filtered here), whatever their case; its own Authorization
        # replaces the one its URL's credentials make.
        headers = {k: v for k, v in headers.items() if k.lower() != "host" and not hop_by_hop(k)}
        fixed = {"Host": self.key.headers["Host"]}
        if auth is not None and not any(k.lower() == "authorization" for k in headers):
            fixed["Authorization"] = auth.encode()
        target = bare.raw_path_qs
        if proxy_url is not None and not self.key.is_ssl():
            # Plain http through a proxy: the absolute URL in the request line, the proxy's credentials beside it.
            # (https goes through a CONNECT tunnel that the connector opens, with the credentials on the CONNECT.)
            target = str(bare.with_fragment(None))
            if proxy_auth is not None:
                fixed["Proxy-Authorization"] = proxy_auth.encode()
        self.head = f"POST {target} HTTP/1.1\r\n{_checked({**fixed, **headers})}".encode()


class Response:
    """What the router keeps of a response: the status, the headers, and at most ``limit`` bytes of body.

    ``__slots__``: one per request (the hot path).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Wire(BaseProtocol):
    """One keep-alive connection of the client's own pool, its answers parsed by aiohttp's parser (C, llhttp).

    The connector makes the connection (the guard, DNS, TLS, a proxy's tunnel) and forgets it at once: the client
    keeps it, its protocol this one rather than aiohttp's ``ResponseHandler``. ``ResponseHandler`` is built for
    ``ClientSession``: a queue of messages with a future per read, a read timeout timer, and the connector's pool
    around it (a ``Connection`` per request, its release, the pool's bookkeeping): about half of the router's HTTP
    path. Here an exchange writes its request and waits on one future for the final answer's head, and the pool is
    a list per host. Each exchange has a parser of its own (as aiohttp's has), and a connection whose parser saw
    anything after the answer (another answer, or its start: its rest would come as the next request's answer) is
    not reused.
    ``BaseProtocol`` brings aiohttp's flow control for a body read through its stream (``pause_reading``,
    ``resume_reading``, ``connected``).

    ``__slots__``: used on every request (the hot path).
    """

    __slots__ = ("_answer", "_broken", "_close_after", "_open", "_payload", "idle_since")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, every: set[_Wire]) -> None:
        super().__init__(loop)
        self.transport = transport
        self._open = every  # the client's open connections, in use or idle: closed with it
        every.add(self)
        self._answer: asyncio.Future[tuple[RawResponseMessage, StreamReader]] | None = None
        self._payload: StreamReader | None = None  # the body of the answer being read
        self._broken = False  # never to be used again (a protocol error, data while idle, a second answer)
        self._close_after = False  # the answer said Connection: close, or HTTP/1.0
        self.idle_since = 0.0

    def ask(self, parts: tuple[bytes, ...]) -> asyncio.Future[tuple[RawResponseMessage, StreamReader]]:
        """Write one request; the future is the final answer's head and its body's stream."""
        self._parser = HttpResponseParser(
            self,
            self._loop,
            _READ_BUFSIZE,
            timer=_TIMER,
            payload_exception=aiohttp.ClientPayloadError,
            read_until_eof=True,
            auto_decompress=False,
        )
        self._answer = answer = self._loop.create_future()
        self.transport.writelines(parts)  # type: ignore[union-attr]  # taken from the pool only while connected
        return answer

    def reusable(self) -> bool:
        """The answer was read to its end and the connection may carry the next request (call once it was)."""
        if not self.usable() or self._close_after or self._upgraded:
            return False
        if self.transport.get_write_buffer_size():  # type: ignore[union-attr]  # usable: connected
            return False  # an answer before the whole request was sent
        try:  # bytes after the answer that began another (the rest of it would come as the next request's answer)
            return self._parser is None or self._parser.feed_eof() is None
        except Exception:
            return False

    def idle(self, now: float) -> None:
        self._answer = self._payload = self._parser = None
        self.idle_since = now

    def usable(self) -> bool:
        return not self._broken and self.transport is not None and not self.transport.is_closing()

    def abort(self) -> None:
        self._broken = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        parser = self._parser  # an exchange's from its request to its put back: data without one is a broken connection
        if parser is None:
            if data:
                self.abort()  # a server that talks while no request is out: never used again
            return
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except Exception as exc:
            self._fail(exc if isinstance(exc, HttpProcessingError) else HttpProcessingError(message=repr(exc)))
            return
        if upgraded:
            self._upgraded = True
        for message, payload in messages:
            answer = self._answer
            if answer is None or answer.done():
                self._fail(HttpProcessingError(message="an answer no request asked for"))
                return
            code = message.code
            if 100 <= code <= 199 and code != 101:
                continue  # an interim answer (100 Continue): the final one follows
            if message.should_close or self.transport.get_write_buffer_size():  # type: ignore[union-attr]
                self._close_after = True  # asked to close, or answered before the whole request was sent
            if code in EMPTY_BODY_STATUS_CODES:
                payload = EMPTY_PAYLOAD
            self._payload = payload
            answer.set_result((message, payload))

    def _fail(self, exc: BaseException) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        elif self._payload is not None and self._payload.exception() is None and not self._payload.is_eof():
            self._payload.set_exception(exc)
        self.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._broken = True
        self._open.discard(self)
        payload = self._payload
        if self._parser is not None:
            try:
                self._parser.feed_eof()  # ends a body read until the connection closes
            except Exception as underlying:
                if payload is not None and payload.exception() is None:
                    text = f"Response payload is not completed: {underlying!r}"
                    payload.set_exception(aiohttp.ClientPayloadError(text))
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            payload.set_exception(aiohttp.ClientPayloadError("Response payload is not completed"))
        answer = self._answer
        if answer is not None and not answer.done():
            if exc is None:
                answer.set_exception(aiohttp.ServerDisconnectedError())
            elif isinstance(exc, OSError):
                answer.set_exception(aiohttp.ClientOSError(*exc.args))
            else:
                answer.set_exception(exc)
        super().connection_lost(exc)


class _Pool:
    """The client's idle keep-alive connections, per connection key (host, port, TLS, proxy), newest first.

    Taken newest first, the connections a steady rate needs stay warm and the rest fall idle: one sweep every
    ``keepalive_s`` closes those idle for ``keepalive_s`` or more (a connection idles at most twice that). Taken
    oldest first (aiohttp's pool), every connection a burst ever opened stays in use at any steady rate, for good.
    ``every`` holds each open connection, idle or in use, for ``close``.
    """

    def __init__(self, keepalive_s: float) -> None:
        self._keepalive = keepalive_s
        self._idle: dict[object, collections.deque[_Wire]] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.every: set[_Wire] = set()

    def take(self, key: object) -> _Wire | None:
        idle = self._idle.get(key)
        while idle:
            wire = idle.pop()
            if wire.usable():
                return wire
            wire.abort()
        return None

    def put(self, key: object, wire: _Wire, loop: asyncio.AbstractEventLoop) -> None:
        wire.idle(loop.time())
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = collections.deque()
        idle.append(wire)
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self._keepalive, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep_handle = None
        oldest = loop.time() - self._keepalive
        for key in list(self._idle):
            idle = self._idle[key]
            while idle and (idle[0].idle_since <= oldest or not idle[0].usable()):
                idle.popleft().abort()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweep_handle = loop.call_later(self._keepalive, self._sweep, loop)

    def close(self) -> None:
        """Every connection aborted, idle or in use (whose exchange then fails, and never puts it back)."""
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for wire in list(self.every):
            wire.abort()
        self.every.clear()
        self._idle.clear()


class Client:
    """Sends POSTs over one pooled connector; owned by one event loop.

    ``guard`` vets every address before a connection is made to it (the default refuses every private,
    loopback, link-local... range: ``daemon.core.netguard``). With ``proxy`` (``http://[user:pw@]host:port``)
    every request goes through that proxy and the guard is the proxy's: the router connects only to it.
    ``resolver`` is aiohttp's (the system's, through a thread) unless given; ``dns_cache_s`` None turns
    the connector's DNS cache off.
    """

    def __init__(
        self,
        guard: NetGuard | None = None,
        *,
        proxy: URL | None = None,
        resolver: AbstractResolver | None = None,
        dns_cache_s: float | None = 300,
        keepalive_s: float = 15.0,
    ) -> None:
        # Its loop, looked up once (on Python 3.11 each lookup is a getpid system call); aiohttp's connector needs one.
        self._loop = asyncio.get_running_loop()
        self._guard = guard if guard is not None else NetGuard()
        self._proxy = proxy
        self._vets = proxy is None
        self._connector = aiohttp.TCPConnector(  # makes connections; the client pools them itself (_Pool)
            keepalive_timeout=keepalive_s,
            limit=0,
            limit_per_host=0,
            use_dns_cache=dns_cache_s is not None,
            ttl_dns_cache=int(dns_cache_s) if dns_cache_s is not None else None,
            enable_cleanup_closed=True,
            resolver=resolver,
            socket_factory=self._socket if self._vets else None,
        )
        self._deadlines = Deadlines()
        self._pool = _Pool(keepalive_s)

    def route(self, url: URL, headers: Mapping[str, str], tls: ssl.SSLContext | bool = True) -> Route:
        return Route(url, headers, self._loop, tls, self._proxy)

    def _socket(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """The connector's socket factory: a socket for an address the guard lets through; OSError for any other,
        before anything is connected (the error text names no address)."""
        family, type_, proto, _, address = addr_info
        refusal = self._guard.refusal(address[0])
        vetting = _VETTING.get(None)
        if refusal is not None:
            if vetting is not None:
                vetting.refused.append(refusal)
            raise OSError(errno.EACCES, f"refused by the network guard: {refusal.text}")
        if vetting is not None:
            vetting.passed += 1
        return socket.socket(family, type_, proto)

    async def post(
        self, route: Route, headers: Mapping[str, str], body: bytes, limit: int, timeout_s: float
    ) -> Response:
        """One exchange, at most ``limit`` bytes of the answer kept. Raises TimeoutError after ``timeout_s``,
        HeaderError before connecting, Blocked when the guard refused every address of the host, and aiohttp's
        ClientError, HttpProcessingError or OSError as aiohttp does."""
        return await self._deadlines.within(timeout_s, self._exchange(route, headers, body, limit))

    async def _connect(self, route: Route) -> Connection:
        if not self._vets:
            return await self._connector.connect(route.key, [], _NO_TIMEOUT)
        vetting = _Vetting()
        token = _VETTING.set(vetting)
        try:
            return await self._connector.connect(route.key, [], _NO_TIMEOUT)
        except OSError:
            # Blocked only when no address was let through: one that was and failed to connect is a connect error.
            if vetting.refused and not vetting.passed:
                raise Blocked(vetting.refused[0]) from None
            raise
        finally:
            _VETTING.reset(token)

    async def _open(self, route: Route) -> _Wire:
        """A new connection made by the connector, which then forgets it: the client's own pool keeps it."""
        conn = await self._connect(route)
        handler, transport = conn.protocol, conn.transport
        if handler is not None:
            self._connector._release_acquired(conn._key, handler)  # pooled here, never by the connector
        conn._protocol = None  # given away: neither released nor closed with the Connection
        if handler is None or transport is None or transport.is_closing():
            raise aiohttp.ServerDisconnectedError()
        if handler._tail:  # the server spoke before any request: not HTTP as the router speaks it
            transport.abort()
            raise HttpProcessingError(message="the server sent bytes before the request")
        wire = _Wire(self._loop, transport, self._pool.every)
        transport.set_protocol(wire)
        return wire

    async def _exchange(self, route: Route, headers: Mapping[str, str], body: bytes, limit: int) -> Response:
        extra = _checked(headers)
        wire = self._pool.take(route.pool) or await self._open(route)
        try:
            answer = wire.ask((route.head, b"%sContent-Length: %d\r\n\r\n" % (extra.encode(), len(body)), body))
            message, payload = await answer
            # An answer that came whole with its head (most do) is read as it is, without waiting on the stream.
            content = payload.read_nowait(limit) if payload.is_eof() else await _read_at_most(payload, limit)
        except BaseException:
            wire.abort()
            raise
        status = message.code
        if status == 101 or not payload.is_eof() or not wire.reusable():
            # An upgrade, an answer longer than we read, one that said Connection: close, or one that came before
            # the whole request was sent (the rest would reach the server as the start of the next request).
            wire.abort()
        else:
            self._pool.put(route.pool, wire, self._loop)
        return Response(status, message.headers, content)

    async def close(self) -> None:
        self._deadlines.close()
        self._pool.close()
        await self._connector.close()


async def _read_at_most(stream: StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
