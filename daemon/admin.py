"""The admin HTTP server: /metrics, /healthz (event loop liveness only), /readyz (consumer joined)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.metrics import Metrics

log = logging.getLogger(__name__)

_TICK_S = 0.5
_STALL_S = 5.0


class AdminServer:
    def __init__(self, listen: str, metrics: Metrics, ready: Callable[[], bool]) -> None:
        host, _, port = listen.rpartition(":")
        self._host, self._port = host, int(port)
        self._metrics = metrics
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_tick = time.monotonic()
        self._worst_lag = 0.0
        self.port = 0  # the port actually bound (admin.listen may say 0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/readyz", self._handle_readyz)
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

    async def _handle_readyz(self, request: web.Request) -> web.Response:
        ready = self._ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)
