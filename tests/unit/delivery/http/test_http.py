"""daemon.delivery.http against real sockets: scripted HTTP/1.1 servers on 127.0.0.1 that answer as told."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from daemon.core.config import DeliveryConfig, EndpointConfig
from daemon.core.event import Event
from daemon.core.model import BLOCKED, DELIVERED, FAILED, Outcome
from daemon.core.netguard import NetGuard
from daemon.delivery.endpoint import Endpoint
from daemon.delivery.http import Blocked, Client, HeaderError, Route
from daemon.delivery.job import Job
from daemon.delivery.lane import Lane, LaneStats
from daemon.delivery.sender import Sender
from daemon.observe.metrics import Metrics
from tests.helpers import FakeDNS, Proxy, eventually

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Script:
    """A server that reads each request whole and answers with ``answer(n)`` (n counts requests): bytes written at
    once, or a list of pieces written 20 ms apart."""

    def __init__(self, answer: Callable[[int], bytes | list[bytes]], close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after  # close the connection after each answer (without saying so)
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []  # one a connection
        self.port = 0

    @property
    def connections(self) -> int:
        return len(self.writers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answer(len(self.requests))
                for piece in [answer] if isinstance(answer, bytes) else answer:
                    if piece is not answer:
                        await asyncio.sleep(0.02)
                    writer.write(piece)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[URL]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield URL(f"http://127.0.0.1:{self.port}/hook?tenant=a%20b")
        finally:
            server.close()


def _connect_late(c: Client, seconds: float) -> None:
    """The client's connector returns each connection it made ``seconds`` after making it."""
    made = c._connector._create_connection

    async def late(*args: Any, **kwargs: Any) -> Any:
        made_now = await made(*args, **kwargs)
        await asyncio.sleep(seconds)
        return made_now

    c._connector._create_connection = late  # type: ignore[method-assign]


LOOPBACK = NetGuard(["127.0.0.0/8"])  # the scripted servers listen on 127.0.0.1, which the guard refuses by default


def loopback_sender() -> Sender:
    return Sender(Metrics(), Client(LOOPBACK))


@asynccontextmanager
async def client() -> AsyncIterator[Client]:
    c = Client(LOOPBACK)
    try:
        yield c
    finally:
        await c.close()


# --- the request head, serialised once per endpoint ---


async def test_route_serialises_request_line_host_and_headers_once() -> None:
    loop = asyncio.get_running_loop()
    route = Route(URL("https://hooks.example.com:8443/a/b?x=1&y=%20"), {"Content-Type": "application/json"}, loop)
    assert route.head == (
        b"POST /a/b?x=1&y=%20 HTTP/1.1\r\nHost: hooks.example.com:8443\r\nContent-Type: application/json\r\n"
    )
    assert route.key.connection_key.is_ssl


@pytest.mark.parametrize(
    ("url", "line", "host"),
    [
        ("https://example.com", b"POST / HTTP/1.1", b"Host: example.com"),
        ("http://example.com:80/x", b"POST /x HTTP/1.1", b"Host: example.com"),
        ("http://[::1]:8080/x", b"POST /x HTTP/1.1", b"Host: [::1]:8080"),
        ("https://bücher.example/p", b"POST /p HTTP/1.1", b"Host: xn--bcher-kva.example"),
        ("http://h.example/a b", b"POST /a%20b HTTP/1.1", b"Host: h.example"),
    ],
)
async def test_route_host_and_path_as_aiohttp_computes_them(url: str, line: bytes, host: bytes) -> None:
    route = Route(URL(url), {}, asyncio.get_running_loop())
    assert route.head.split(b"\r\n")[:2] == [line, host]


async def test_credentials_in_the_url_become_basic_auth_and_leave_the_request_line() -> None:
    route = Route(URL("https://user:pw@example.com/hook"), {}, asyncio.get_running_loop())
    assert route.head == b"POST /hook HTTP/1.1\r\nHost: example.com\r\nAuthorization: Basic dXNlcjpwdw==\r\n"


# --- exchanges with real servers ---


async def test_request_bytes_on_the_wire() -> None:
    script = Script(lambda n: OK)
    async with script.running() as url, client() as c:
        route = c.route(url, {"User-Agent": "wr/1"})
        reply = await c.post(route, {"webhook-id": "msg_1"}, b'{"a":1}', 4096, 10)
    assert (reply.status, reply.body) == (200, b"ok")
    assert script.requests == [
        b"POST /hook?tenant=a%20b HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nUser-Agent: wr/1\r\nwebhook-id: msg_1\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'.replace(b"PORT", str(script.port).encode())
    ]


async def test_keep_alive_connection_is_reused() -> None:
    script = Script(lambda n: OK)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        for i in range(5):
            assert (await c.post(route, {}, b"x" * i, 4096, 10)).status == 200
    assert (len(script.requests), script.connections) == (5, 1)


async def test_a_burst_s_extra_connections_are_closed_once_a_steady_rate_needs_fewer() -> None:
    """aiohttp 3.14 hands out a host's idle connections oldest first: every pooled connection stays in use at any
    steady rate and none is ever idle long enough to be closed, so a pool keeps its all-time peak (the soak's
    sockets ratcheted up with each burst). Reused newest first, those a burst opened fall idle and are closed."""
    open_now = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                await reader.readexactly(length)
                await asyncio.sleep(0.05 if b"burst" in head else 0)
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        open_now -= 1
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = Client(LOOPBACK, keepalive_s=1.0)
    try:
        base = f"http://127.0.0.1:{port}"
        burst, steady = c.route(URL(base + "/burst"), {}), c.route(URL(base + "/"), {})
        await asyncio.gather(*(c.post(burst, {}, b"{}", 4096, 10) for _ in range(20)))
        assert open_now == 20
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.5  # the idle ones are closed at the cleanup after 1 s idle: within 2 s
        while loop.time() < until:  # one request every 20 ms: oldest first, each of 20 is used every 0.4 s
            assert (await c.post(steady, {}, b"{}", 4096, 10)).status == 200
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the server sees the last FINs
        assert open_now <= 2
    finally:
        await c.close()
        server.close()


async def test_connection_close_answer_is_not_reused() -> None:
    script = Script(lambda n: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", close_after=True)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        for _ in range(3):
            assert (await c.post(route, {}, b"{}", 4096, 10)).status == 200
    assert script.connections == 3


async def test_a_connection_the_server_dropped_while_idle_is_not_used_again() -> None:
    script = Script(lambda n: OK, close_after=True)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        assert (await c.post(route, {}, b"{}", 4096, 10)).status == 200
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection sits in the pool
        assert (await c.post(route, {}, b"{}", 4096, 10)).status == 200
    assert script.connections == 2


async def test_chunked_answer_is_read_whole_and_the_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    script = Script(lambda n: chunked)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        first = await c.post(route, {}, b"{}", 4096, 10)
        await c.post(route, {}, b"{}", 4096, 10)
    assert (first.status, first.body, first.headers["Retry-After"]) == (503, b"abcde", "7")
    assert script.connections == 1


async def test_a_long_answer_is_cut_at_the_limit_and_its_connection_closed() -> None:
    endless = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 5000  # the rest never comes
    script = Script(lambda n: endless if n == 1 else OK)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        reply = await c.post(route, {}, b"{}", 4096, 10)
        assert (await c.post(route, {}, b"{}", 4096, 10)).status == 200
    assert reply.body == b"z" * 4096
    assert script.connections == 2


async def test_a_whole_answer_longer_than_the_limit_is_cut_and_its_connection_kept() -> None:
    """Come whole with its head, the answer is read as it is (no wait on the stream): cut at the limit, and its
    connection reused (the answer ended on the wire)."""
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 6000\r\n\r\n" + b"a" * 3000 + b"b" * 3000
    script = Script(lambda n: whole if n == 1 else OK)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        reply = await c.post(route, {}, b"{}", 4096, 10)
        assert (await c.post(route, {}, b"{}", 4096, 10)).body == b"ok"
    assert reply.body == b"a" * 3000 + b"b" * 1096
    assert script.connections == 1


async def test_interim_100_continue_is_skipped() -> None:
    script = Script(lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    async with script.running() as url, client() as c:
        reply = await c.post(c.route(url, {}), {}, b"{}", 4096, 10)
    assert (reply.status, reply.body) == (200, b"ok")


async def test_garbage_answer_is_a_protocol_error() -> None:
    script = Script(lambda n: b"SMTP ready\r\n\r\n")
    async with script.running() as url, client() as c:
        with pytest.raises(HttpProcessingError):
            await c.post(c.route(url, {}), {}, b"{}", 4096, 10)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", aiohttp.ServerDisconnectedError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", aiohttp.ClientPayloadError),
    ],
    ids=["no answer", "a body cut short"],
)
async def test_server_closing_before_the_answer_ends_is_a_disconnect(answer: bytes, error: type[Exception]) -> None:
    script = Script(lambda n: answer, close_after=True)
    async with script.running() as url, client() as c:
        with pytest.raises(error):
            await c.post(c.route(url, {}), {}, b"{}", 4096, 10)


async def test_an_http_1_0_answer_is_not_reused() -> None:
    script = Script(lambda n: b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        for _ in range(2):
            assert (await c.post(route, {}, b"{}", 4096, 10)).body == b"ok"
    assert script.connections == 2


@pytest.mark.parametrize(
    ("extra", "rest"),
    [
        (OK, b""),
        (b"HTTP/1.1 599 Injected\r\nX-Pad: ", b""),
        (b"HTTP/1.1 599 Inj", b"ected\r\nContent-Length: 0\r\n\r\n"),
        (b"HTTP/1.1 103 Early Hints\r\n\r\n", b""),
    ],
    ids=["a second answer", "half an answer", "half an answer, its rest with the next", "an interim one after"],
)
async def test_bytes_after_an_answer_are_never_read_as_the_next_requests_answer(extra: bytes, rest: bytes) -> None:
    """Whatever a server writes after the answer asked for (an answer, an interim one, the start of one whose rest it
    writes once the next request came on that connection) would be read as the next request's answer there: that
    connection is never used again."""
    script: Script = Script(lambda n: OK + extra if n == 1 else rest + OK if script.connections == 1 else OK)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        replies = [await c.post(route, {}, b"{}", 4096, 10) for _ in range(3)]
    assert [(reply.status, reply.body) for reply in replies] == [(200, b"ok")] * 3
    assert script.connections == 2


async def test_an_answer_late_after_an_idle_connection_retires_it() -> None:
    """A server that speaks on an idle connection, even less than a whole answer: the client drops it at once (and
    never reads it as the start of the next request's answer)."""
    script = Script(lambda n: OK)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        assert (await c.post(route, {}, b"{}", 4096, 10)).status == 200
        script.writers[0].write(b"HTTP/1.1 500 Unas")
        await eventually(lambda: not c._pool.every)  # dropped as the bytes came
        assert (await c.post(route, {}, b"{}", 4096, 10)).status == 200
    assert script.connections == 2


async def test_a_body_that_comes_in_pieces_is_read_whole_and_the_connection_kept() -> None:
    """A body written in pieces with pauses: read across several reads of the connection."""
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n", b"a" * 70_000, b"b" * 70_000, b"c" * 60_000]
    script = Script(lambda n: pieces)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        for _ in range(2):
            assert (await c.post(route, {}, b"{}", 1_000_000, 10)).body == b"".join(pieces[1:])
    assert script.connections == 1


async def test_a_body_over_the_streams_high_water_mark_pauses_reading_and_resumes() -> None:
    """300 KB of body in one write: the stream past its mark pauses the transport and the parser (aiohttp's flow
    control), reading the body resumes both; the whole body is read and the connection kept."""
    body = bytes(range(256)) * 1200
    script = Script(lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        for _ in range(2):
            assert (await c.post(route, {}, b"{}", 1_000_000, 10)).body == body
    assert script.connections == 1


async def test_a_connection_made_while_the_client_closes_is_closed_and_carries_nothing() -> None:
    script = Script(lambda n: OK)
    async with script.running() as url:
        c = Client(LOOPBACK)
        _connect_late(c, 0.1)
        exchange = asyncio.create_task(c.post(c.route(url, {}), {}, b"{}", 4096, 10))
        await asyncio.sleep(0.05)
        await c.close()
        with pytest.raises(aiohttp.ClientConnectionError, match="closed"):  # the connector's own check
            await exchange
        await eventually(lambda: all(writer.transport.is_closing() for writer in script.writers))
        assert script.requests == [] and not c._pool.every and len(script.writers) == 1


async def test_the_connector_keeps_nothing_of_the_connections_it_made() -> None:
    """The connector makes each connection and forgets it: its pool and its acquired set stay empty (a connection
    left in them would be closed under the client, or kept for good)."""
    script = Script(lambda n: OK if n % 2 else b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        for _ in range(6):
            assert (await c.post(route, {}, b"{}", 4096, 10)).status == 200
        assert not c._connector._acquired and not c._connector._conns
    assert script.connections == 3


async def test_a_server_that_speaks_before_the_request_is_a_protocol_error() -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 smtp.example ESMTP\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
    try:
        async with client() as c:
            route = c.route(url, {})
            _connect_late(c, 0.05)  # the banner arrives before the connect returns
            with pytest.raises(HttpProcessingError, match="before the request"):
                await c.post(route, {}, b"{}", 4096, 10)
    finally:
        server.close()


async def test_closing_the_client_closes_its_connections_in_use_and_idle() -> None:
    """The connector no longer knows the connections it made: the client closes them itself, those idle and those an
    exchange still uses (whose exchange then ends with the connection closed, never put back in a pool)."""
    script = Script(lambda n: OK if n < 3 else [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok", b"ok"])
    async with script.running() as url:
        c = Client(LOOPBACK)
        route = c.route(url, {})
        await asyncio.gather(*(c.post(route, {}, b"{}", 4096, 10) for _ in range(2)))  # two connections, idle
        exchange = asyncio.create_task(c.post(route, {}, b"{}", 4096, 10))  # one of them in use: half its body read
        while len(script.requests) < 3:
            await asyncio.sleep(0.005)
        await c.close()
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            await exchange
        await eventually(lambda: all(writer.transport.is_closing() for writer in script.writers))
        assert len(script.writers) == 2
        assert not c._pool.every and not c._pool._idle and c._pool._sweep_handle is None


async def test_refused_connection_is_a_connector_error() -> None:
    async with Script(lambda n: OK).running() as url:
        pass  # closed: nothing listens on the port any more
    async with client() as c:
        with pytest.raises(aiohttp.ClientConnectorError):
            await c.post(c.route(url, {}), {}, b"{}", 4096, 10)


# --- what the Sender records of them ---


def _endpoint(url: URL, timeout_s: float = 5.0, **over: Any) -> Endpoint:
    secret = "whsec_" + "QUJD" * 8
    config = EndpointConfig(id="ep", url=str(url), profile="raw", secret=secret, timeout_s=timeout_s, **over)
    return Endpoint(config, DeliveryConfig(), {})


def _job() -> Job:
    return Job(event=Event(b'{"type":"a"}', "a", "t", 0, 1, 0), delivery_id="msg_1", ack=lambda: None)


async def test_sender_records_a_protocol_error_without_the_address() -> None:
    script = Script(lambda n: b"SMTP ready\r\n\r\n")
    async with script.running() as url:
        sender = loopback_sender()
        try:
            outcome = await sender.attempt(_endpoint(url), _job())
        finally:
            await sender.close()
    assert outcome.status == FAILED
    assert outcome.error is not None and outcome.error.startswith("protocol error: ")
    assert "127.0.0.1" not in outcome.error


async def test_sender_times_out_a_server_that_never_answers() -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"  # 3 bytes short: never complete
    script = Script(lambda n: short if n == 1 else OK)
    async with script.running() as url:
        sender = loopback_sender()
        try:
            outcome = await sender.attempt(_endpoint(url, timeout_s=0.3), _job())
            again = await sender.attempt(_endpoint(url), _job())  # the stuck connection is not reused
        finally:
            await sender.close()
    assert (outcome.status, outcome.error) == (FAILED, "timeout: no complete response within 0.3 s")
    assert (again.status, again.response_body) == (DELIVERED, "ok")
    assert script.connections == 2


# --- TLS ---

DATA = Path(__file__).resolve().parents[3] / "data"


@asynccontextmanager
async def tls_receiver() -> AsyncIterator[URL]:
    """A real aiohttp server over TLS with a self-signed certificate for 127.0.0.1 (tests/data)."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"read {len(await request.read())}")

    app = web.Application(client_max_size=2**22)
    app.router.add_post("/hook", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(DATA / "tls-cert.pem", DATA / "tls-key.pem")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield URL(f"https://127.0.0.1:{port}/hook")
    finally:
        await runner.cleanup()


async def test_tls_certificates_are_verified_by_default() -> None:
    async with tls_receiver() as url:
        sender = loopback_sender()
        try:
            outcome = await sender.attempt(_endpoint(url), _job())
        finally:
            await sender.close()
    assert (outcome.status, outcome.error) == (FAILED, "TLS error: handshake or certificate verification failed")


async def test_tls_exchange_with_a_trusted_certificate_carries_large_bodies() -> None:
    trusted = ssl.create_default_context(cafile=DATA / "tls-cert.pem")
    async with tls_receiver() as url, client() as c:
        route = c.route(url, {}, tls=trusted)
        replies = [await c.post(route, {}, b"x" * size, 4096, 10) for size in (0, 300_000, 1_000_000)]
    assert [(r.status, r.body) for r in replies] == [(200, b"read 0"), (200, b"read 300000"), (200, b"read 1000000")]


async def test_an_answer_before_the_whole_request_was_sent_closes_the_connection() -> None:
    """The server answers 413 after the head and never reads the 8 MB body: the connection is not reused."""
    answered, ended = asyncio.Event(), asyncio.Event()
    connections = 0
    handlers: list[asyncio.Task[object]] = []

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        head = await reader.readuntil(b"\r\n\r\n")
        if connections == 1:
            writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
            await writer.drain()
            answered.set()
            await ended.wait()  # the body stays unread: the client's write buffer does not empty
        else:
            length = next(int(v[15:]) for v in head.lower().split(b"\r\n") if v.startswith(b"content-length:"))
            await reader.readexactly(length)
            writer.write(OK)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook")
    try:
        async with client() as c:
            route = c.route(url, {})
            first = await c.post(route, {}, b"x" * 8_000_000, 4096, 10)
            second = await c.post(route, {}, b"{}", 4096, 10)
    finally:
        ended.set()
        server.close()
        await asyncio.gather(*handlers, return_exceptions=True)  # none left for the loop's close (uvloop's refuses)
    assert (first.status, first.body, second.status) == (413, b"big", 200)
    assert answered.is_set() and connections == 2


# --- a lane's pace, for deferrals ---


class _Outcomes:
    """An in-memory stand-in for the settlement: keeps every outcome, holds nothing back."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes

    def settle(self, endpoint: Endpoint, job: Job, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def held_back(self, endpoint: Endpoint, job: Job) -> bool:
        return False

    def circuit(self, endpoint: Endpoint, state: str) -> None:
        pass


async def test_a_lane_estimates_how_long_its_backlog_takes_from_its_attempts() -> None:
    """Against a receiver that never answers: before any attempt ends the pace is the first attempt's age;
    after, the moving average of the attempts' durations (here: the timeout)."""

    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # reads until the client gives up; never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook")
    endpoint = _endpoint(url, timeout_s=0.3, max_concurrency=2)
    sender = loopback_sender()
    done: list[Outcome] = []
    lane = Lane(endpoint, sender, _Outcomes(done), LaneStats())
    try:
        assert lane.drain_s() == 0.0  # nothing known, nothing to do
        for _ in range(6):
            assert lane.put(_job())
        await asyncio.sleep(0.1)
        early = lane.drain_s()
        await asyncio.sleep(0.1)
        later = lane.drain_s()
        assert 0 < early < later  # the first attempt's age: (4 queued + 2 busy) x age / 2
        while not done:
            await asyncio.sleep(0.01)
        # The timeout's duration: never shorter; later only by what a busy machine's loop adds.
        assert 0.3 <= lane.mean_s < 0.3 + 2.0
        assert lane.drain_s() == (lane.queued + lane.busy) * lane.mean_s / 2
    finally:
        await lane.cancel()
        await sender.close()
        server.close()
        for writer in writers:
            writer.close()
            await writer.wait_closed()


# --- nothing from outside breaks the request head ---


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Agora-Event": "lead.created\r\nX-Injected: 1"},
        {"X-Agora-Event": "lead.created\nX-Injected: 1"},
        {"X-Agora-Event": "lead\rcreated"},
        {"X-Agora-Event": "lead\x00created"},
        {"X-Bad\r\nName": "v"},
        {"X-Nul\x00": "v"},
    ],
)
async def test_a_header_holding_cr_lf_or_nul_is_refused_before_anything_is_sent(headers: dict[str, str]) -> None:
    script = Script(lambda n: OK)
    async with script.running() as url, client() as c:
        route = c.route(url, {})
        with pytest.raises(HeaderError):
            await c.post(route, headers, b"{}", 4096, 10)
        with pytest.raises(HeaderError):
            c.route(url, headers)
        reply = await c.post(route, {"X-Agora-Event": "lead.created"}, b"{}", 4096, 10)  # the client is still fine
    assert reply.status == 200
    assert len(script.requests) == 1 and b"X-Injected" not in script.requests[0]
    assert script.connections == 1


async def test_a_sender_records_a_refused_header_as_a_failed_attempt() -> None:
    config = EndpointConfig(id="ep", url="http://127.0.0.1:9/hook", profile="agora", secret="s")
    endpoint = Endpoint(config, DeliveryConfig(), {})
    job = _job()
    job.event.event_type = "lead.created\r\nX-Injected: 1"  # the type reader refuses this; the writer too
    sender = loopback_sender()
    try:
        outcome = await sender.attempt(endpoint, job)
    finally:
        await sender.close()
    assert outcome.status == FAILED
    assert outcome.error is not None and outcome.error.startswith("request not sent: header")


# --- the network guard (SSRF): every address vetted just before its socket connects ---


def _at(url: URL, host: str) -> URL:
    return URL.build(scheme=url.scheme, host=host, port=url.port, path=url.path)


@pytest.mark.parametrize("host", ["127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0"])
async def test_a_literal_refused_address_is_blocked_and_no_connection_reaches_the_listener(host: str) -> None:
    script = Script(lambda n: OK)
    async with script.running() as url:
        guarded = Client()  # the default guard
        try:
            with pytest.raises(Blocked) as caught:
                await guarded.post(guarded.route(_at(url, host), {}), {}, b"{}", 4096, 10)
        finally:
            await guarded.close()
        assert caught.value.refusal.reason in ("loopback", "unspecified")
        assert script.connections == 0
        # The same URL reaches the listener once its range is allowed: the guard was all that stood in the way.
        allowing = Client(NetGuard(["127.0.0.0/8", "0.0.0.0/8"]))
        try:
            reply = await allowing.post(allowing.route(_at(url, host), {}), {}, b"{}", 4096, 10)
        finally:
            await allowing.close()
        assert (reply.status, script.connections) == (200, 1)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link_local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "unique_local"),
        ("fe80::1", "link_local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:a00:1::1", "private"),
    ],
)
async def test_a_name_resolving_to_a_refused_address_is_blocked_before_connecting(address: str, reason: str) -> None:
    script = Script(lambda n: OK)
    async with script.running() as url:
        dns = FakeDNS({"hooks.example": [[address]]})
        guarded = Client(resolver=dns)
        try:
            with pytest.raises(Blocked) as caught:
                await guarded.post(guarded.route(_at(url, "hooks.example"), {}), {}, b"{}", 4096, 10)
        finally:
            await guarded.close()
    assert caught.value.refusal.reason == reason
    assert address not in str(caught.value)
    assert (dns.lookups, script.connections) == (["hooks.example"], 0)


async def test_dns_rebinding_is_caught_at_the_next_connect() -> None:
    """A name answers an allowed address (127.0.0.1 stands in for a public one), then a refused one, then the allowed
    one again; every connect is vetted, so the second attempt is blocked and the listener there sees nothing."""
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    script = Script(lambda n: closing, close_after=True)  # every exchange needs a new connection
    rebound = Script(lambda n: OK)
    async with script.running() as url:
        server = await asyncio.start_server(rebound._serve, "127.0.0.2", url.port)
        dns = FakeDNS({"hooks.example": [["127.0.0.1"], ["127.0.0.2"], ["127.0.0.1"]]})
        c = Client(NetGuard(["127.0.0.1/32"]), resolver=dns, dns_cache_s=None)
        route = c.route(_at(url, "hooks.example"), {})
        try:
            first = await c.post(route, {}, b"{}", 4096, 10)
            with pytest.raises(Blocked) as caught:
                await c.post(route, {}, b"{}", 4096, 10)
            third = await c.post(route, {}, b"{}", 4096, 10)
        finally:
            await c.close()
            server.close()
    assert (first.status, caught.value.refusal.reason, third.status) == (200, "loopback", 200)
    assert (len(dns.lookups), script.connections, rebound.connections) == (3, 2, 0)


async def test_refused_addresses_of_a_name_are_skipped_and_an_allowed_one_is_used() -> None:
    script = Script(lambda n: OK)
    async with script.running() as url:
        dns = FakeDNS({"hooks.example": [["10.0.0.1", "169.254.169.254", "127.0.0.1"]]})
        c = Client(NetGuard(["127.0.0.1/32"]), resolver=dns)
        try:
            reply = await c.post(c.route(_at(url, "hooks.example"), {}), {}, b"{}", 4096, 10)
        finally:
            await c.close()
    assert (reply.status, script.connections) == (200, 1)


async def test_an_allowed_address_that_refuses_the_connection_is_a_connect_error_not_blocked() -> None:
    async with Script(lambda n: OK).running() as url:
        pass  # nothing listens on the port any more
    dns = FakeDNS({"hooks.example": [["10.0.0.1", "127.0.0.1"]]})
    c = Client(NetGuard(["127.0.0.1/32"]), resolver=dns)
    try:
        with pytest.raises(aiohttp.ClientConnectorError):
            await c.post(c.route(_at(url, "hooks.example"), {}), {}, b"{}", 4096, 10)
    finally:
        await c.close()


async def test_a_sender_records_a_blocked_attempt_with_its_reason_and_counts_it() -> None:
    script = Script(lambda n: OK)
    async with script.running() as url:
        metrics = Metrics()
        sender = Sender(metrics)  # the default client: the guard on, nothing allowed
        try:
            outcome = await sender.attempt(_endpoint(url), _job())
        finally:
            await sender.close()
    assert (outcome.status, outcome.http_status, outcome.response_body) == (BLOCKED, None, None)
    assert outcome.error == "blocked: loopback address (not in delivery.allowed_networks)"
    assert metrics.deliveries_blocked.labels("loopback")._value.get() == 1
    blocked = {"outcome": "blocked", "status_class": "blocked"}  # read through the registry: attempts are tallied
    assert metrics.registry.get_sample_value("webhook_router_deliveries_total", blocked) == 1
    assert script.connections == 0


async def test_an_endpoint_of_the_api_meets_its_own_guard_and_never_a_connection_opened_for_the_config_file() -> None:
    """The config file's endpoint may reach 127.0.0.1 (its range is allowed for it); a tenant's endpoint to the very
    same host and port is blocked, although a kept-alive connection there is in the file's pool."""
    script = Script(lambda n: OK)
    async with script.running() as url:
        metrics = Metrics()
        sender = Sender(metrics, Client(LOOPBACK))  # no client of the API's given: its guard allows nothing
        secret = "whsec_" + "QUJD" * 8
        config = EndpointConfig(id="ep", url=str(url), profile="raw", secret=secret)
        platform, tenant = Endpoint(config, DeliveryConfig(), {}), Endpoint(config, DeliveryConfig(), {}, "api")
        try:
            first = await sender.attempt(platform, _job())
            blocked = await sender.attempt(tenant, _job())
            again = await sender.attempt(platform, _job())
        finally:
            await sender.close()
    assert (first.status, again.status, script.connections, len(script.requests)) == (DELIVERED, DELIVERED, 1, 2)
    assert (blocked.status, blocked.http_status, blocked.response_body) == (BLOCKED, None, None)
    assert blocked.error == "blocked: loopback address (not in api.allowed_networks)"
    assert metrics.deliveries_blocked.labels("loopback")._value.get() == 1


async def test_an_endpoint_of_the_api_reaches_what_api_allowed_networks_allows() -> None:
    script = Script(lambda n: OK)
    async with script.running() as url:
        sender = Sender(Metrics(), Client(), api_client=Client(LOOPBACK))  # the other way round
        secret = "whsec_" + "QUJD" * 8
        config = EndpointConfig(id="ep", url=str(url), profile="raw", secret=secret)
        try:
            tenant = await sender.attempt(Endpoint(config, DeliveryConfig(), {}, "api"), _job())
            platform = await sender.attempt(Endpoint(config, DeliveryConfig(), {}), _job())
        finally:
            await sender.close()
    assert (tenant.status, platform.status, len(script.requests)) == (DELIVERED, BLOCKED, 1)
    assert platform.error == "blocked: loopback address (not in delivery.allowed_networks)"


# --- an egress proxy: every request goes through it, and it decides what is reachable ---


async def test_through_a_proxy_plain_http_goes_in_absolute_form_with_the_proxy_credentials() -> None:
    script = Script(lambda n: OK)
    async with script.running() as url, Proxy(credentials="router:pr0xy-pw").running() as proxy:
        c = Client(proxy=URL(proxy.url))  # the default guard, which would refuse 127.0.0.1: the proxy decides now
        try:
            replies = [await c.post(c.route(url, {"X-A": "1"}), {}, b"{}", 4096, 10) for _ in range(2)]
        finally:
            await c.close()
    assert [r.status for r in replies] == [200, 200]
    auth = "Basic " + base64.b64encode(b"router:pr0xy-pw").decode()
    assert proxy.asked == [("POST", str(url), auth)] * 2
    assert all(b"Proxy-Authorization" not in r and r.startswith(b"POST /hook?tenant=a%20b ") for r in script.requests)


async def test_an_endpoints_own_proxy_or_hop_by_hop_headers_never_reach_the_wire_even_past_validation() -> None:
    """Proxy-Authorization of an endpoint's own replaced the router's credentials for the egress proxy. An endpoint
    built from a config that validation never saw (an endpoints topic record written before the header was refused)
    sends none of them: the proxy gets the router's credentials, the receiver no proxy or hop-by-hop header."""
    script = Script(lambda n: OK)
    own = {"Proxy-Authorization": "Basic ZXZpbDpldmls", "proxy-authorization": "Basic ZXZpbDI=",
           "Proxy-Connection": "keep-alive", "connection": "Upgrade", "Upgrade": "h2c", "TE": "trailers",
           "Keep-Alive": "timeout=600", "Trailer": "X-A", "host": "evil.example", "X-Kept": "1"}  # fmt: skip
    async with script.running() as url, Proxy(credentials="router:pr0xy-pw").running() as proxy:
        config = EndpointConfig(id="ep", url=str(url), secret="whsec_" + "QUJD" * 8, headers=own)
        sender = Sender(Metrics(), Client(proxy=URL(proxy.url)))
        try:
            outcome = await sender.attempt(Endpoint(config, DeliveryConfig(), {}), _job())
        finally:
            await sender.close()
    assert (outcome.status, outcome.http_status) == (DELIVERED, 200)
    assert proxy.asked == [("POST", str(url), "Basic " + base64.b64encode(b"router:pr0xy-pw").decode())]
    (request,) = script.requests
    names = [line.split(b":")[0].lower() for line in request.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]]
    assert b"x-kept" in names and names.count(b"host") == 1 and b"upgrade" not in names and b"te" not in names
    assert not [n for n in names if n.startswith(b"proxy-") or n in (b"keep-alive", b"trailer")]
    assert b"evil" not in request


async def test_a_route_keeps_the_routers_own_headers_whatever_the_case_of_an_endpoints() -> None:
    loop = asyncio.get_running_loop()
    proxy = URL("http://router:pw@proxy.internal:3128")
    route = Route(URL("http://user:s3cret@hooks.example.com/in"), {"proxy-authorization": "Basic ZXZpbA==",
                  "HOST": "evil.example", "authorization": "Bearer evil", "Upgrade": "h2c", "X-A": "1"}, loop,
                  proxy=proxy)  # fmt: skip
    head = route.head.decode()
    assert head == (
        "POST http://hooks.example.com/in HTTP/1.1\r\nHost: hooks.example.com\r\n"
        f"Proxy-Authorization: Basic {base64.b64encode(b'router:pw').decode()}\r\n"
        "authorization: Bearer evil\r\nX-A: 1\r\n"  # its own Authorization is the endpoint's to choose
    )


async def test_through_a_proxy_https_goes_through_a_connect_tunnel() -> None:
    trusted = ssl.create_default_context(cafile=DATA / "tls-cert.pem")
    async with tls_receiver() as url, Proxy().running() as proxy:
        c = Client(proxy=URL(proxy.url))
        try:
            reply = await c.post(c.route(url, {}, tls=trusted), {}, b"x" * 1000, 4096, 10)
        finally:
            await c.close()
    assert (reply.status, reply.body) == (200, b"read 1000")
    assert proxy.asked == [("CONNECT", f"127.0.0.1:{url.port}", None)]


async def test_a_proxy_that_refuses_is_an_answer_from_the_proxy() -> None:
    script = Script(lambda n: OK)
    async with script.running() as url, Proxy(credentials="router:right").running() as proxy:
        c = Client(proxy=URL(proxy.url.replace("right", "wrong")))
        try:
            reply = await c.post(c.route(url, {}), {}, b"{}", 4096, 10)
        finally:
            await c.close()
    assert (reply.status, script.requests) == (407, [])
