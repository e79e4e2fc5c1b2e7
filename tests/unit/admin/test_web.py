"""daemon.admin.web, the one HTTP layer, on a real AdminServer on 127.0.0.1: errors answered one way, and a stopping
server that does not wait on a request still under way."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from daemon.admin.server import AdminServer
from daemon.admin.web import MAX_SCRAPE_NAMES, NO_ROUTE, SHUTDOWN_S
from daemon.core.errors import Conflict
from daemon.observe.metrics import Metrics


def _routes(started: asyncio.Event) -> object:
    async def forever(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(3600)
        return web.Response()

    async def conflict(request: web.Request) -> web.Response:
        raise Conflict("version: the endpoint is at version 2, not 1")

    async def bug(request: web.Request) -> web.Response:
        raise ZeroDivisionError("a bug")

    def install(app: web.Application) -> None:
        app.router.add_get("/forever", forever)
        app.router.add_get("/conflict", conflict)
        app.router.add_get("/bug", bug)

    return install


async def test_every_error_is_answered_as_json_with_its_status() -> None:
    server = AdminServer("127.0.0.1:0", Metrics(), lambda: None, routes=_routes(asyncio.Event()))  # type: ignore[arg-type]
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            for path, method, status, starts in (
                ("/conflict", "GET", 409, "version: the endpoint is at version 2"),
                ("/bug", "GET", 500, "internal error"),
                ("/nowhere", "GET", 404, NO_ROUTE),
                ("/conflict", "DELETE", 405, "Method Not Allowed"),
                ("/endpoints", "GET", 403, "operator actions are disabled"),
            ):
                async with http.request(method, base + path) as resp:
                    assert (resp.status, resp.content_type) == (status, "application/json"), path
                    assert (await resp.json())["error"].startswith(starts), path
    finally:
        await server.stop()


async def test_a_stopping_server_cancels_a_request_still_under_way_instead_of_waiting_a_minute() -> None:
    started = asyncio.Event()
    server = AdminServer("127.0.0.1:0", Metrics(), lambda: None, routes=_routes(started))  # type: ignore[arg-type]
    await server.start()
    async with aiohttp.ClientSession() as http:
        request = asyncio.create_task(http.get(f"http://127.0.0.1:{server.port}/forever"))
        await asyncio.wait_for(started.wait(), 10)
        begun = time.monotonic()
        await server.stop()
        took = time.monotonic() - begun
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    # Never before the grace it gives; well under aiohttp's default minute, with room for a busy machine.
    assert SHUTDOWN_S <= took < SHUTDOWN_S + 20


async def test_metrics_serves_the_series_a_scrape_names_alone_and_refuses_too_many_names() -> None:
    metrics = Metrics()
    metrics.attempts.add("delivered", "2xx", 0.01)
    server = AdminServer("127.0.0.1:0", metrics, lambda: None)
    await server.start()
    base = f"http://127.0.0.1:{server.port}/metrics"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base, params=[("name[]", "webhook_router_deliveries_total")]) as resp:
                assert resp.status == 200
                lines = [line for line in (await resp.text()).splitlines() if not line.startswith("#")]
            assert lines == ['webhook_router_deliveries_total{outcome="delivered",status_class="2xx"} 1.0']
            async with http.get(base) as resp:
                assert "process_resident_memory_bytes" in await resp.text()  # no name[]: everything
            async with http.get(base, params=[("name[]", f"n{i}") for i in range(MAX_SCRAPE_NAMES + 1)]) as resp:
                assert resp.status == 400 and "name[]" in (await resp.json())["error"]
    finally:
        await server.stop()
