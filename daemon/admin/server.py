"""The admin HTTP server: /metrics, /healthz (event loop liveness only), /readyz (ready, or why not), and the
operator actions of ``daemon.admin.operate`` behind the admin token; the ``/v1`` API (``daemon.admin.api``) is added
to it when enabled. Every route answers through ``daemon.admin.web`` (typed bodies, one error mapping).

It starts before Kafka is reached, so that liveness and the reason for not being ready are visible while the
daemon waits for the cluster; the operator actions answer 503 until start-up is complete.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from daemon.admin import web as http
from daemon.admin.operate import Operator, Redelivery, Replay, SkipRequest
from daemon.core.errors import BadRequest, Forbidden, Unauthorized, Unavailable
from daemon.observe.metrics import Metrics

log = logging.getLogger(__name__)

OperatorHandler = Callable[[web.Request, Operator], Awaitable[Any]]


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
        """``listen``: ``host:port``, or ``unix:PATH`` (a worker's, which its supervisor reaches). ``not_ready()`` says
        why the daemon is not ready (None: it is); ``operator()`` is None until start-up is complete."""
        host, _, port = listen.rpartition(":") if not listen.startswith("unix:") else (listen, "", "0")
        self._host, self._port = host, int(port)
        self._metrics = metrics
        self._not_ready = not_ready
        self._operator = operator
        self._token = token
        self._routes = routes  # more routes to serve (the endpoints API), added before the app starts
        self._served = http.Served()
        self.port = 0  # the port actually bound (admin.listen may say 0)

    async def start(self) -> None:
        app = http.application()
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
        self.port = await self._served.start(app, self._host, self._port, "admin")
        where = self._host if self._host.startswith("unix:") else f"http://{self._host}:{self.port}"
        log.info("admin server on %s (/metrics /healthz /readyz)", where)

    async def stop(self) -> None:
        await self._served.stop()

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        body = self._metrics.exposition(http.scrape_names(request))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        stalled = self._served.stalled()
        lag_ms = round(self._served.worst_lag * 1000, 1)
        return http.json_response({"ok": not stalled, "loop_lag_ms": lag_ms}, 503 if stalled else 200)

    def _guard(self, handler: OperatorHandler) -> http.Handler:
        """An operator action: the admin token is required, and start-up complete; its answer as JSON."""

        async def guarded(request: web.Request) -> web.Response:
            if self._token is None:
                raise Forbidden("operator actions are disabled: set admin.token_env")
            given = http.bearer(request) or ""
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                raise Unauthorized("a valid bearer token is required")
            operator = self._operator()
            if operator is None:
                raise Unavailable(f"not available yet: {self._not_ready() or 'starting'}")
            return http.json_response(await handler(request, operator))

        return guarded

    async def _list_endpoints(self, request: web.Request, op: Operator) -> Any:
        return {"endpoints": op.endpoints()}

    async def _pause(self, request: web.Request, op: Operator) -> Any:
        changed = op.pause(request.match_info["id"])
        return {"endpoint_id": request.match_info["id"], "paused": True, "changed": changed}

    async def _resume(self, request: web.Request, op: Operator) -> Any:
        changed = op.resume(request.match_info["id"])
        return {"endpoint_id": request.match_info["id"], "paused": False, "changed": changed}

    async def _ping(self, request: web.Request, op: Operator) -> Any:
        return await op.ping(request.match_info["id"])

    async def _redeliver(self, request: web.Request, op: Operator) -> Any:
        """The delivery where the body says (its results record's coordinates); without a body, where its newest
        results record says, found on the results topic by its id."""
        delivery = request.match_info["delivery_id"]
        raw = await http.read_body(request)
        where = http.decode_request(raw, Redelivery) if raw.strip() else await op.locate(delivery)
        return await op.redeliver(delivery, where)

    async def _replay(self, request: web.Request, op: Operator) -> Any:
        return await op.replay(request.match_info["id"], await http.body(request, Replay))

    async def _handle_readyz(self, request: web.Request) -> web.Response:
        """Ready or why not; and the partitions held at a batch that cannot be decoded (the others flow, so
        the daemon stays ready: an operator decides whether to skip it)."""
        operator = self._operator()
        stuck = [msgspec.to_builtins(s) for s in operator.stuck()] if operator is not None else []
        reason = self._not_ready()
        if reason is None:
            return http.json_response({"ready": True, "stuck": stuck})
        return http.json_response({"ready": False, "reason": reason, "stuck": stuck}, 503)

    async def _skip(self, request: web.Request, op: Operator) -> Any:
        try:
            partition = int(request.match_info["partition"])
        except ValueError:
            raise BadRequest("partition: must be an integer") from None
        return await op.skip(request.match_info["topic"], partition, await http.body(request, SkipRequest))
