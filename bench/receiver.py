"""The fallback receiver: a raw asyncio.Protocol HTTP/1.1 keep-alive server on uvloop, as its own process.

``python -m bench.receiver [--mode ok|blackhole] [--record]`` binds 127.0.0.1 on a free port and prints
that port on one line. ``ok`` answers every request ``200 ok``; ``blackhole`` accepts connections, reads
and never answers (an endpoint that times out). With ``--record`` every POST whose body carries
``"sent":<unix seconds>`` adds ``arrival - sent`` to a list that ``GET /__stats`` returns as JSON
(``GET /__stats?reset=1`` also empties it), and the body's ``"id":<n>`` beside it (``ids``); a ``"sent":0`` is not
timed (a warm-up's). In ``ok`` mode a
POST to a path under ``/fail/`` is answered ``500``, one under ``/slow/`` ``200`` after ``--slow-ms`` (the soak's
failing and slow endpoints; the router never pipelines, so a late answer keeps its connection's order).
Requests are read by Content-Length; chunked bodies are not supported (neither aiohttp with a bytes body nor the
router sends them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import cast

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
_FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nfail"
_SENT = b'"sent":'
_ID = b'"id":'


class Stats:
    __slots__ = ("ids", "latencies_ms", "posts", "record", "slow_s")

    def __init__(self, record: bool, slow_s: float = 1.0) -> None:
        self.record = record
        self.slow_s = slow_s
        self.posts = 0
        self.latencies_ms: list[float] = []
        self.ids: list[int] = []

    def response(self, target: bytes) -> bytes:
        body = json.dumps({"posts": self.posts, "latencies_ms": self.latencies_ms, "ids": self.ids}).encode()
        if b"reset=1" in target:
            self.posts = 0
            self.latencies_ms = []
            self.ids = []
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        return head + body


class HttpOk(asyncio.Protocol):
    """Parses pipelined HTTP/1.1 requests by Content-Length and answers each at once."""

    __slots__ = ("_buf", "_stats", "_transport")

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        stats = self._stats
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                break
            if head.startswith(b"post"):
                stats.posts += 1
                if stats.record:
                    _record(stats, bytes(buf[end + 4 : total]))
                if head.startswith(b"post /fail/"):
                    out.append(_FAIL)
                elif head.startswith(b"post /slow/") and self._transport is not None:
                    loop = asyncio.get_running_loop()
                    loop.call_later(stats.slow_s, self._late, b"".join([*out, _OK]))
                    out = []
                else:
                    out.append(_OK)
            elif head.startswith(b"get /__stats"):
                out.append(stats.response(head.split(b" ", 2)[1]))
            else:
                out.append(_OK)
            del buf[:total]
        if out and self._transport is not None:
            self._transport.write(b"".join(out))

    def _late(self, answer: bytes) -> None:
        if self._transport is not None:
            self._transport.write(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _number(body: bytes, field: bytes) -> bytes | None:
    at = body.find(field)
    if at < 0:
        return None
    start = at + len(field)
    stop = start
    while stop < len(body) and body[stop] in b"0123456789.":
        stop += 1
    return body[start:stop]


def _record(stats: Stats, body: bytes) -> None:
    sent, n = _number(body, _SENT), _number(body, _ID)
    try:
        at = float(sent) if sent is not None else None
        ident = int(n) if n is not None else -1
    except ValueError:
        return
    if at is not None and at > 0:
        stats.latencies_ms.append((time.time() - at) * 1000)
        stats.ids.append(ident)


class Blackhole(asyncio.Protocol):
    """Reads and never answers: every request to it runs into the client's timeout."""

    def data_received(self, data: bytes) -> None:
        pass


async def serve(mode: str, record: bool, slow_s: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats(record, slow_s)
    if mode == "blackhole":
        server = await loop.create_server(Blackhole, "127.0.0.1", 0, backlog=1024)
    else:
        server = await loop.create_server(lambda: HttpOk(stats), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__)
    parser.add_argument("--mode", choices=["ok", "blackhole"], default="ok")
    parser.add_argument("--record", action="store_true", help="record send-to-arrival latencies")
    parser.add_argument("--slow-ms", type=float, default=1000, help="how late POSTs under /slow/ are answered")
    args = parser.parse_args()
    import uvloop

    try:
        uvloop.run(serve(args.mode, args.record, args.slow_ms / 1000))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
