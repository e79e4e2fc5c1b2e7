"""The admin server of an instance of several workers (``process.workers``), on ``admin.listen``: the supervisor's.
Each worker serves its own admin server on a unix socket in the supervisor's private directory; this one answers for
the instance:

- ``/metrics``: every worker's scrape merged (``daemon.observe.aggregate``: no series lost or counted twice), with the
  supervisor's own. A worker that does not answer a scrape is counted as it last was.
- ``/healthz``: the supervisor's event loop, and every worker's (its ``/healthz``); a worker being started again is
  the supervisor's doing, not a hang: it counts as alive (``/readyz`` says it is down). 503 when a loop stands still.
- ``/readyz``: ready when every worker is; the answer lists each worker (pid, ready, why not), and the partitions
  held at a batch that cannot be decoded, of every worker.
- ``GET /endpoints``: asked of every running worker, its in-flight and queued counts summed per endpoint (each worker
  has its own lanes); the rest of each line is the same everywhere (endpoint health follows a topic).
- ``POST /partitions/{topic}/{partition}/skip``: to the worker holding that partition (its ``/readyz`` lists it).
- Everything else (the operator routes, the ``/v1`` API, whatever the workers serve besides): proxied to one worker,
  always the same while it is up (the lowest-numbered with its start-up complete): a write the API acknowledged is
  applied there before it answers (``daemon.kafka.store``), so the next call reads it; the other workers follow the
  same topics (the endpoints topic, the health topic) within moments. That worker is worker 0 whenever it runs, and
  so worker 0 alone keeps a copy of the delivery index from its start (another only while it answers lookups:
  ``daemon.admin.scans``).

A worker checks the admin token itself: the caller's headers go to it as they came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from daemon.admin import web as http
from daemon.core.breaker import CLOSED, HALF_OPEN, OPEN
from daemon.core.errors import Unavailable
from daemon.observe.aggregate import Aggregate
from daemon.observe.metrics import exposition

log = logging.getLogger(__name__)

_PROBE_S = 2.0  # a worker's /healthz and /readyz
_SCRAPE_S = 5.0  # a worker's /metrics
_CONNECT_S = 5.0
_CIRCUITS = (CLOSED, HALF_OPEN, OPEN)  # GET /endpoints: the least closed of the workers' breakers is the endpoint's
# Neither forwarded to a worker nor back: they describe one connection, not the request. Host is forwarded: what the
# worker builds from it (a portal link, the origin a portal form must come from) is the instance's address.
_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                  "transfer-encoding", "upgrade", "content-length"))  # fmt: skip


class Member(Protocol):
    """A worker as the front sees it (``daemon.app.workers.Worker``)."""

    index: int
    socket: Path
    incarnation: int
    started: bool

    @property
    def pid(self) -> int | None: ...

    def down(self) -> str | None: ...


class Answer:
    """A worker's answer to a probe: its status and JSON body, or why there was none."""

    def __init__(self, status: int | None, body: Any = None, error: str | None = None, starting: bool = False) -> None:
        self.status, self.body, self.error, self.starting = status, body, error, starting


class Front:
    def __init__(
        self,
        listen: str,
        members: Sequence[Member],
        own: CollectorRegistry,
        aggregate: Aggregate,
        not_ready: Callable[[], str | None],
        scrape_failed: Callable[[int], None] = lambda index: None,
    ) -> None:
        """``own``: the supervisor's metrics; ``not_ready()``: why the supervisor itself is not (shutting down), or
        None; ``scrape_failed(index)``: a worker's ``/metrics`` could not be read."""
        host, _, port = listen.rpartition(":")
        self._host, self._port = host, int(port)
        self._members = members
        self._own = own
        self._aggregate = aggregate
        self._not_ready = not_ready
        self._scrape_failed = scrape_failed
        self._sessions: dict[Path, aiohttp.ClientSession] = {}
        self._served = http.Served()
        self.port = 0

    async def start(self) -> None:
        app = http.application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/endpoints", self._endpoints)
        app.router.add_post("/partitions/{topic}/{partition}/skip", self._skip)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self.port = await self._served.start(app, self._host, self._port, "front")
        log.info("admin server of %d workers on http://%s:%d (/metrics /healthz /readyz; the rest to a worker)",
                 len(self._members), self._host, self.port)  # fmt: skip

    async def stop(self) -> None:
        await self._served.stop()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    def _session(self, member: Member) -> aiohttp.ClientSession:
        session = self._sessions.get(member.socket)
        if session is None or session.closed:
            connector = aiohttp.UnixConnector(path=str(member.socket))
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_S)
            session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
            self._sessions[member.socket] = session
        return session

    async def _ask(self, member: Member, path: str, within_s: float, headers: Any = None) -> Answer:
        """GET ``path`` of a running worker: its status and JSON body, or why it did not answer."""
        if member.pid is None:
            return Answer(None, error=member.down() or "not running")
        try:
            session = self._session(member)
            timeout = aiohttp.ClientTimeout(total=within_s)
            async with session.get(f"http://worker{path}", timeout=timeout, headers=headers) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if not member.socket.exists():
                return Answer(None, error=f"starting (pid {member.pid})", starting=True)
            return Answer(None, error=f"its admin server did not answer {path} ({type(exc).__name__}: {exc})")
        try:
            body = json.loads(raw) if resp.content_type == "application/json" else raw.decode(errors="replace")
        except ValueError:
            body = None
        return Answer(resp.status, body)

    async def _each(self, path: str, within_s: float, headers: Any = None) -> list[Answer]:
        return list(await asyncio.gather(*(self._ask(m, path, within_s, headers) for m in self._members)))

    # --- the instance's own routes ---

    async def _metrics(self, request: web.Request) -> web.Response:
        async def scrape(member: Member) -> None:
            pid, incarnation = member.pid, member.incarnation
            if pid is None:
                return
            answer = await self._ask(member, "/metrics", _SCRAPE_S)
            if answer.starting:  # nothing to read yet
                return
            try:
                if answer.status != 200 or not isinstance(answer.body, str):
                    raise ValueError(answer.error or f"answered {answer.status}")
                self._aggregate.observe(str(member.index), incarnation, answer.body)
            except ValueError as exc:
                self._scrape_failed(member.index)
                log.warning("worker %d's /metrics could not be read (%s): its last scrape is served", member.index,
                            exc)  # fmt: skip

        names = http.scrape_names(request)
        if names:
            body = await self._metrics_only(names)
        else:
            await asyncio.gather(*(scrape(m) for m in self._members))
            body = self._aggregate.render(generate_latest(self._own).decode())
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _metrics_only(self, names: list[str]) -> str:
        """The series ``names`` alone: each worker asked for those only (a scraper polling one counter often costs
        the workers that counter, not every family), merged as a full scrape is, none of it kept."""
        path = "/metrics?" + urlencode([("name[]", name) for name in names])
        scrapes: dict[str, tuple[int, str]] = {}

        async def ask(member: Member) -> None:
            incarnation = member.incarnation
            answer = await self._ask(member, path, _SCRAPE_S)
            if answer.status == 200 and isinstance(answer.body, str):
                scrapes[str(member.index)] = (incarnation, answer.body)

        await asyncio.gather(*(ask(m) for m in self._members))
        try:
            return self._aggregate.render_only(names, scrapes, exposition(self._own, names).decode())
        except ValueError as exc:
            raise Unavailable(f"a worker's /metrics could not be read ({exc})") from None

    async def _healthz(self, request: web.Request) -> web.Response:
        stalled = self._served.stalled()
        workers = []
        ok = not stalled
        for member, answer in zip(self._members, await self._each("/healthz", _PROBE_S), strict=True):
            # Not running (being started again), or not serving yet (its start-up): the supervisor's to see to.
            alive = answer.status == 200 or (answer.status is None and (member.pid is None or answer.starting))
            line: dict[str, Any] = {"worker": member.index, "pid": member.pid, "ok": alive}
            if isinstance(answer.body, dict) and "loop_lag_ms" in answer.body:
                line["loop_lag_ms"] = answer.body["loop_lag_ms"]
            if answer.error is not None:
                line["state"] = answer.error
            workers.append(line)
            ok = ok and alive
        body = {"ok": ok, "loop_lag_ms": round(self._served.worst_lag * 1000, 1), "workers": workers}
        return http.json_response(body, 200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        workers, stuck, reasons = [], [], []
        for member, answer in zip(self._members, await self._each("/readyz", _PROBE_S), strict=True):
            body = answer.body if isinstance(answer.body, dict) else {}
            ready = answer.status == 200
            reason = None if ready else str(body.get("reason") or answer.error or f"answered {answer.status}")
            line: dict[str, Any] = {"worker": member.index, "pid": member.pid, "ready": ready}
            if reason is not None:
                line["reason"] = reason
                reasons.append(f"worker {member.index}: {reason}")
            workers.append(line)
            stuck += [{**s, "worker": member.index} for s in body.get("stuck") or () if isinstance(s, dict)]
        itself = self._not_ready()
        if itself is not None:
            reasons.insert(0, itself)
        if not reasons:
            return http.json_response({"ready": True, "stuck": stuck, "workers": workers})
        why = "; ".join(reasons)
        return http.json_response({"ready": False, "reason": why, "stuck": stuck, "workers": workers}, 503)

    async def _endpoints(self, request: web.Request) -> web.StreamResponse:
        """``GET /endpoints`` of every running worker, the counts of each one's lanes summed."""
        headers = _forwarded(request)
        running = [m for m in self._members if m.pid is not None and m.started]
        if not running:
            return await self._proxy(request)
        answers = await asyncio.gather(*(self._ask(m, "/endpoints", 30.0, headers) for m in running))
        failed = next((a for a in answers if a.status != 200 or not isinstance(a.body, dict)), None)
        if failed is not None:
            if failed.status is None:
                raise Unavailable(f"a worker did not answer: {failed.error}")
            error = failed.body.get("error") if isinstance(failed.body, dict) else None
            return http.error_response(failed.status, str(error or f"a worker answered {failed.status}"))
        merged: dict[str, dict[str, Any]] = {}
        for answer in answers:
            for line in answer.body.get("endpoints", ()):
                held = merged.get(line["id"])
                if held is None:
                    merged[line["id"]] = dict(line)
                    continue
                for counter in ("in_flight", "queued"):
                    held[counter] = held.get(counter, 0) + line.get(counter, 0)
                if _CIRCUITS.index(line.get("circuit", "closed")) > _CIRCUITS.index(held.get("circuit", "closed")):
                    held["circuit"] = line["circuit"]
        return http.json_response({"endpoints": list(merged.values())})

    async def _skip(self, request: web.Request) -> web.StreamResponse:
        """To the worker holding the partition at an undecodable batch (the one that can skip it)."""
        topic, partition = request.match_info["topic"], request.match_info["partition"]
        for member, answer in zip(self._members, await self._each("/readyz", _PROBE_S), strict=True):
            body = answer.body if isinstance(answer.body, dict) else {}
            for held in body.get("stuck") or ():
                if isinstance(held, dict) and held.get("topic") == topic and str(held.get("partition")) == partition:
                    return await self._forward(request, member)
        return await self._proxy(request)

    # --- everything else: to one worker ---

    def target(self) -> Member | None:
        """The worker that answers for the instance: the lowest-numbered with its start-up complete; else the
        lowest-numbered running (it says why it cannot yet)."""
        running = [m for m in self._members if m.pid is not None]
        return next((m for m in running if m.started), running[0] if running else None)

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        member = self.target()
        if member is None:
            raise Unavailable("no worker is running: " + "; ".join(f"worker {m.index}: {m.down()}"
                                                                   for m in self._members))  # fmt: skip
        return await self._forward(request, member)

    async def _forward(self, request: web.Request, member: Member) -> web.StreamResponse:
        body = await http.read_body(request)
        session = self._session(member)
        try:
            upstream = await session.request(
                request.method, f"http://worker{request.rel_url}", headers=_forwarded(request), data=body or None
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise Unavailable(f"worker {member.index} did not answer ({type(exc).__name__}: {exc})") from None
        async with upstream:
            headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP or k.lower() == "content-length"
            }
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            await response.prepare(request)
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):  # either side gone: nothing to tell
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            return response


def _forwarded(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
