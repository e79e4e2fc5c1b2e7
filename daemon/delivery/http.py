"""Webhook POSTs over aiohttp's connection pool and response parser, without a ClientSession per request.

Two requests to one endpoint differ only in their signature headers and body. ``ClientSession.post``
rebuilds everything else every time (a ``ClientRequest``, a merged ``CIMultiDict`` of headers, a
payload object, a timeout handle, a writer task), which costs about as much CPU as the rest of a
delivery together. Here the request line, ``Host`` and the endpoint's own headers are serialised once
(``Route``), and a request is one write of that head, the per-request headers and the body.

aiohttp keeps the parts that are hard to get right: the ``TCPConnector`` (keep-alive pool, DNS cache,
TLS with verification, connect errors), and ``ResponseHandler`` with its C parser for the response
(status line, headers, chunked or sized bodies, ``Connection: close``). A connection goes back to the
pool only when its response was read to the end, the whole request was sent and the server keeps it
open; otherwise it is aborted.
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
checked on; on an upgrade, check each and run ``tests/unit/delivery/test_http.py``, which exercises every one
against real sockets):

1. ``ClientRequest(method, url, loop=, auth=, ssl=)`` builds without a session, and its ``headers["Host"]``
   and ``connection_key`` are what the connector pools by (the Host/IDNA/IPv6/default-port tests).
2. ``TCPConnector.connect(req, traces, timeout)`` returns a ``Connection`` with ``.protocol``
   (a ``ResponseHandler``), ``.transport``, ``.release()`` and ``.close()`` (the keep-alive tests).
3. ``ResponseHandler.set_response_params(timer=, read_until_eof=, auto_decompress=)`` and
   ``await ResponseHandler.read()`` returning ``(RawResponseMessage, StreamReader)``; ``message.code`` and
   ``message.headers``; ``EofStream`` when the server closes without an answer (the 100-continue,
   garbage-answer and disconnect tests).
4. ``StreamReader.read(n)``, ``.read_nowait(n)`` and ``.is_eof()`` (the chunked and cut-at-the-limit tests).
5. ``aiohttp.helpers.TimerNoop`` and ``strip_auth_from_url`` (the Basic-auth test).
6. The exception types raised along the way: ``ClientConnectorError`` (``.os_error``),
   ``ServerDisconnectedError``, ``ClientSSLError``, ``HttpProcessingError`` (``.message``) (the error tests).
7. ``TCPConnector(socket_factory=, resolver=)``: the factory is called with each resolved address's
   ``addrinfo`` just before that socket connects, in the task that called ``connect`` (or one it started,
   which sees its context variables), also for literal IP hosts; ``ClientRequest(proxy=, proxy_auth=)``
   and the connector's CONNECT tunnel for https through a proxy (the guard and proxy tests).
8. ``TCPConnector._release(key, protocol, should_close=)`` appends to the deque ``_conns[key]`` of
   ``(protocol, time)``, which ``_get`` takes from the left (``_NewestFirst``: the burst test).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.helpers import TimerNoop, strip_auth_from_url
from aiohttp.streams import EofStream, StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from daemon.core.netguard import NetGuard, Refusal
from daemon.core.profiles import hop_by_hop
from daemon.delivery.deadline import Deadlines

_NO_TIMEOUT = aiohttp.ClientTimeout()  # the exchange's deadline covers connect, send and response
_TIMER = TimerNoop()


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

    __slots__ = ("head", "key")

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


class _NewestFirst(aiohttp.TCPConnector):
    """A ``TCPConnector`` that hands out a host's idle connections newest first.

    aiohttp 3.14 takes them oldest first (``_get``: ``popleft``) and puts them back at the end: at any steady rate
    every pooled connection is used in turn and none stays idle for ``keepalive_timeout``, so a pool keeps the most
    connections a burst ever opened, for good (an hour's soak at 2,000 events/s over 1,000 endpoints of one host
    ratcheted from 2,580 to 2,732 sockets). Put back at the front instead, the connections a steady rate needs
    stay warm and the rest fall idle and are closed by the connector's own cleanup after ``keepalive_timeout``.
    """

    def _release(self, key: Any, protocol: ResponseHandler, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        conns = self._conns.get(key)
        if conns and conns[-1][0] is protocol:
            conns.rotate(1)  # the one just put back, last, to the front where _get takes from: O(1)


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
        self._guard = guard if guard is not None else NetGuard()
        self._proxy = proxy
        self._vets = proxy is None
        self._connector = _NewestFirst(
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

    def route(self, url: URL, headers: Mapping[str, str], tls: ssl.SSLContext | bool = True) -> Route:
        return Route(url, headers, asyncio.get_running_loop(), tls, self._proxy)

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

    async def _exchange(self, route: Route, headers: Mapping[str, str], body: bytes, limit: int) -> Response:
        extra = _checked(headers)
        conn = await self._connect(route)
        try:
            protocol, transport = conn.protocol, conn.transport
            if protocol is None or transport is None or transport.is_closing():
                raise aiohttp.ServerDisconnectedError()
            protocol.set_response_params(timer=_TIMER, read_until_eof=True, auto_decompress=False)
            transport.writelines((route.head, b"%sContent-Length: %d\r\n\r\n" % (extra.encode(), len(body)), body))
            status, message_headers, payload = await _response(protocol)
            # An answer that came whole with its head (most do) is read as it is, without waiting on the stream.
            content = payload.read_nowait(limit) if payload.is_eof() else await _read_at_most(payload, limit)
        except BaseException:
            _discard(conn)
            raise
        if status == 101 or not payload.is_eof() or transport.get_write_buffer_size():
            # An upgrade, an answer longer than we read, or one that came before the whole request was
            # sent (the rest would reach the server as the start of the next request): never reused.
            _discard(conn)
        else:
            conn.release()
        return Response(status, message_headers, content)

    async def close(self) -> None:
        self._deadlines.close()
        await self._connector.close()


def _discard(conn: Connection) -> None:
    """Close a connection abandoned mid-exchange at once: ``close()`` alone would keep a socket open for as
    long as a receiver that stopped reading leaves the rest of the request unsent."""
    if conn.transport is not None:
        conn.transport.abort()
    conn.close()


async def _response(protocol: ResponseHandler) -> tuple[int, CIMultiDictProxy[str], StreamReader]:
    while True:
        try:
            message, payload = await protocol.read()
        except EofStream:
            raise aiohttp.ServerDisconnectedError() from None
        if not 100 <= message.code <= 199 or message.code == 101:  # skip interim responses (100 Continue)
            return message.code, message.headers, payload


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
