"""The operator's commands: a client of a running daemon's admin server and ``/v1`` API, from any host.

Every command reaches an instance by ``--url`` (``http://host:9464``) or by a config's ``admin.listen``
(``--config``); the token comes from the environment variable ``--token-env`` names (default
``WEBHOOK_ROUTER_TOKEN``; with ``--config``, the one ``admin.token_env`` names). Output is a readable table
(or ``key: value`` lines), or the API's JSON with ``--json``. Exit 0 on a 2xx answer, 1 otherwise, 2 for
a usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from daemon.admin.web import NO_ROUTE
from daemon.tools.common import DEFAULT_TOKEN_ENV, UsageError, admin_url, config_at

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
Request = tuple[str, str, dict[str, Any] | None]  # method, path, JSON body

ENDPOINT_ACTIONS = ("list", "get", "create", "update", "delete", "rotate-secret", "attempts", "pause", "resume",
                    "ping", "replay")  # fmt: skip
TOP_LEVEL = {
    "endpoints": "manage endpoints: list, get, create, update, delete, rotate-secret, attempts, pause, resume, "
    "ping, replay",
    "tenants": "manage tenants: create, get, token (a tenant's own API token, shown once)",
    "pause": "pause an endpoint",
    "resume": "resume an endpoint",
    "redeliver": "deliver a past delivery once more (one attempt), by its delivery id",
    "replay": "deliver every matching event of a time or offset range to an endpoint again",
}


def add_commands(sub: Any) -> None:
    """Add the operator's commands to the ``webhook-router`` parser."""
    for name, text in TOP_LEVEL.items():
        op = sub.add_parser(name, help=text + " (through a running daemon)")
        _target_options(op)
        if name == "endpoints":
            op.add_argument("action", choices=ENDPOINT_ACTIONS)
            op.add_argument("id", nargs="?", help="endpoint id (every action but list and create)")
            op.add_argument("--tenant")
            op.add_argument("--status", choices=["active", "paused"])
            op.add_argument("--event-type")
            op.add_argument("--limit", type=int)
            op.add_argument("--after", help="list: the page after this endpoint id (what a page ends with)")
            op.add_argument("--endpoint-url", help="create, update: the endpoint's URL")
            op.add_argument("--events", nargs="+", help="event types or patterns (lead.*, *)")
            op.add_argument("--profile")
            op.add_argument(
                "--secret",
                help="the signing secret (default: generated, shown once); it shows in the "
                "process list and the shell's history: prefer --secret-env",
            )
            op.add_argument("--secret-env", help="the variable holding the signing secret")
            op.add_argument("--header", action="append", default=[], help="NAME=VALUE, repeatable")
            op.add_argument("--description")
            op.add_argument("--set", action="append", default=[], help="FIELD=JSON, e.g. timeout_s=5, repeatable")
            op.add_argument("--version", type=int, help="update: the version expected (409 if it moved)")
            op.add_argument("--grace-s", type=float, help="rotate-secret: how long the old secret keeps signing")
            _range_options(op)
        elif name == "tenants":
            op.add_argument("action", choices=["create", "get", "token"])
            op.add_argument("id", help="tenant id")
        elif name == "redeliver":
            op.add_argument("target", help="the delivery id (delivery_id of the results record, = webhook-id)")
            op.add_argument("--endpoint", help="endpoint_id of the results record (with --topic, --partition and "
                            "--offset: no search of the results topic)")  # fmt: skip
            op.add_argument("--topic", help="source_topic of the results record")
            op.add_argument("--partition", type=int, help="source_partition of the results record")
            op.add_argument("--offset", type=int, help="source_offset of the results record")
            op.add_argument("--attempt", help="attempt_id of the results record (the new one's redelivery_of_id)")
        else:
            op.add_argument("target", help="endpoint id")
            if name == "replay":
                _range_options(op)


def _target_options(op: argparse.ArgumentParser) -> None:
    op.add_argument("--url", help="the daemon's admin address, e.g. http://10.0.0.5:9464 (any instance)")
    op.add_argument("--config", help="or the daemon's config: its admin.listen and admin.token_env")
    op.add_argument("--token-env", help=f"the variable holding the token (default {DEFAULT_TOKEN_ENV})")
    op.add_argument("--json", action="store_true", help="print the API's JSON")


def _range_options(op: argparse.ArgumentParser) -> None:
    op.add_argument("--from-time", help="RFC 3339, e.g. 2026-11-23T10:00:00Z")
    op.add_argument("--to-time", help="RFC 3339")
    op.add_argument("--topic")
    op.add_argument("--partition", type=int)
    op.add_argument("--from-offset", type=int)
    op.add_argument("--to-offset", type=int)


def run_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        base, token = _target(args, environ)
        request = _request(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    status, text = asyncio.run(_exchange(args, base, token, request))
    if status == 0:
        print(text, file=sys.stderr)
        return EXIT_FAILURE
    _show(args, status, text)
    return EXIT_OK if 200 <= status < 300 else EXIT_FAILURE


async def _exchange(args: argparse.Namespace, base: str, token: str, request: Request) -> tuple[int, str]:
    """The answer to ``request``; when it is one of ``/v1`` and the daemon does not serve that API (``[api]`` is not
    enabled: a 404 saying there is no route), the answer of the admin server's own operator route that does
    the same, which every daemon serves. (0, why) when the command needs the API, or the daemon cannot be reached."""
    method, path, body = request
    status, text, served = await _call(method, base + path, token, body)
    if served or not path.startswith("/v1/"):
        return status, text
    try:
        method, path, body = _admin_request(args)
    except UsageError as exc:
        return 0, f"{exc}: the daemon at {base} does not serve the endpoints API (/v1; [api] enabled = false)"
    status, text, _ = await _call(method, base + path, token, body)
    if path == "/endpoints" and status == 200:
        text = _admin_page(args, text)
    return status, text


def _admin_request(args: argparse.Namespace) -> Request:
    """The admin server's route for an operator command (``/endpoints/...``, ``/deliveries/...``); UsageError for a
    command, or an option, that only the ``/v1`` API serves."""
    command = args.command
    action = args.action if command == "endpoints" else command
    target = args.id if command == "endpoints" else args.target
    if command == "endpoints" and action == "list":
        given = [f"--{name.replace('_', '-')}" for name in ("tenant", "event_type") if getattr(args, name)]
        if given:
            raise UsageError(f"endpoints list {' '.join(given)} needs the endpoints API")
        return "GET", "/endpoints", None
    if action in ("pause", "resume", "ping"):
        return "POST", f"/endpoints/{target}/{action}", None
    if action == "replay":
        return "POST", f"/endpoints/{target}/replay", _range(args)
    if command == "redeliver":
        return "POST", f"/deliveries/{target}/redeliver", None  # no body: the daemon finds the delivery by its id
    name = f"endpoints {action}" if command == "endpoints" else command
    raise UsageError(f"{name} needs the endpoints API")


def _admin_page(args: argparse.Namespace, text: str) -> str:
    """``GET /endpoints``'s answer with each row's ``status`` (active or paused), filtered and paged as ``endpoints
    list`` asks (``--status``, ``--after``, ``--limit``), in id order."""
    rows = sorted(json.loads(text)["endpoints"], key=lambda row: str(row["id"]))
    for row in rows:
        row["status"] = "paused" if row.get("paused") else "active"
    rows = [r for r in rows if (args.status is None or r["status"] == args.status) and r["id"] > (args.after or "")]
    limit = args.limit or len(rows)
    page: dict[str, Any] = {"endpoints": rows[:limit]}
    if len(rows) > limit:
        page["next_after"] = rows[limit - 1]["id"]
    return json.dumps(page)


def _target(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str]:
    token_env = args.token_env or DEFAULT_TOKEN_ENV
    if args.url:
        base = args.url.rstrip("/")
    elif args.config:
        config = config_at(args.config, environ)
        base = admin_url(config)
        token_env = args.token_env or config.admin.token_env or DEFAULT_TOKEN_ENV
    else:
        raise UsageError("give --url (the daemon's admin address) or --config")
    token = environ.get(token_env)
    if not token:
        raise UsageError(f"no token: set {token_env} (or name another variable with --token-env)")
    return base, token


def _request(args: argparse.Namespace) -> Request:
    command = args.command
    if command in ("pause", "resume"):
        return "POST", f"/v1/endpoints/{args.target}/{command}", None
    if command == "replay":
        return "POST", f"/v1/endpoints/{args.target}/replay", _range(args)
    if command == "redeliver":
        located = (args.endpoint, args.topic, args.partition, args.offset)
        if all(v is not None for v in located):
            body = {"endpoint_id": args.endpoint, "source_topic": args.topic, "source_partition": args.partition,
                    "source_offset": args.offset, "attempt_id": args.attempt}  # fmt: skip
            return "POST", f"/deliveries/{args.target}/redeliver", body
        return "POST", f"/v1/deliveries/{args.target}/redeliver", None
    if command == "tenants":
        if args.action == "create":
            return "POST", "/v1/tenants", {"id": args.id}
        if args.action == "token":
            return "POST", f"/v1/tenants/{args.id}/tokens", None
        return "GET", f"/v1/tenants/{args.id}", None
    return _endpoints_request(args)


def _endpoints_request(args: argparse.Namespace) -> Request:
    action, endpoint_id = args.action, args.id
    if action == "list":
        query = {"tenant": args.tenant, "status": args.status, "event_type": args.event_type, "limit": args.limit,
                 "after": args.after}  # fmt: skip
        given = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return "GET", "/v1/endpoints" + (f"?{given}" if given else ""), None
    if action == "create":
        body = _fields(args)
        if "url" not in body or "events" not in body:
            raise UsageError("create needs --endpoint-url and --events")
        return "POST", "/v1/endpoints", body
    if not endpoint_id:
        raise UsageError(f"{action} needs the endpoint id")
    path = f"/v1/endpoints/{endpoint_id}"
    if action == "get":
        return "GET", path, None
    if action == "delete":
        return "DELETE", path, None
    if action == "update":
        body = _fields(args)
        if args.version is not None:
            body["version"] = args.version
        return "PATCH", path, body
    if action == "rotate-secret":
        body = {k: v for k, v in {"secret": _secret(args), "grace_s": args.grace_s}.items() if v is not None}
        return "POST", path + "/rotate-secret", body
    if action == "attempts":
        return "GET", path + "/attempts" + (f"?limit={args.limit}" if args.limit else ""), None
    if action == "replay":
        return "POST", path + "/replay", _range(args)
    return "POST", f"{path}/{action}", None  # pause, resume, ping


def _secret(args: argparse.Namespace) -> str | None:
    if args.secret_env is None:
        return args.secret  # type: ignore[no-any-return]
    if args.secret is not None:
        raise UsageError("give --secret or --secret-env, not both")
    value = os.environ.get(args.secret_env)
    if not value:
        raise UsageError(f"--secret-env: {args.secret_env} is not set")
    return value


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    given = {"tenant": args.tenant, "url": args.endpoint_url, "events": args.events, "profile": args.profile,
             "secret": _secret(args), "description": args.description}  # fmt: skip
    for key, value in given.items():
        if value is not None:
            body[key] = value
    if args.header:
        body["headers"] = dict(_pair(h, "--header") for h in args.header)
    for item in args.set:
        key, raw = _pair(item, "--set")
        try:
            body[key] = json.loads(raw)
        except ValueError:
            body[key] = raw
    return body


def _pair(item: str, option: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"{option} takes NAME=VALUE, not {item!r}")
    return key, value


def _range(args: argparse.Namespace) -> dict[str, Any]:
    spec = {"from_time": args.from_time, "to_time": args.to_time, "topic": args.topic, "partition": args.partition,
            "from_offset": args.from_offset, "to_offset": args.to_offset}  # fmt: skip
    return {k: v for k, v in spec.items() if v is not None}


async def _call(method: str, url: str, token: str, body: dict[str, Any] | None) -> tuple[int, str, bool]:
    """(status, body, whether the daemon serves the route: all but a 404 saying it has no route for the path);
    (0, why, True) when the daemon cannot be reached."""
    timeout = aiohttp.ClientTimeout(total=600)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.request(method, url, json=body, headers=headers) as resp:
                text = await resp.text()
                return resp.status, text, resp.status != 404 or not _no_route(text)
        except aiohttp.ClientError as exc:
            return 0, f"cannot reach the daemon at {url}: {type(exc).__name__}", True


def _no_route(text: str) -> bool:
    """Whether a 404's body says the path is not served at all (not that what it names does not exist)."""
    try:
        error = json.loads(text).get("error", "")
    except (ValueError, AttributeError):
        return True  # not the router's JSON: not a route of it
    return isinstance(error, str) and error.startswith(NO_ROUTE)


_COLUMNS = {
    "endpoints": ("id", "tenant", "status", "paused_by", "profile", "events", "url", "version"),
    "attempts": ("timestamp", "status", "http_status", "attempt", "duration_ms", "delivery_id", "error"),
    "admin": (
        "id",
        "status",
        "paused_by",
        "reason",
        "profile",
        "consecutive_failures",
        "in_flight",
        "queued",
        "max_concurrency",
    ),
}


def _show(args: argparse.Namespace, status: int, text: str) -> None:
    if args.json or not text:
        print(text)
        return
    try:
        answer = json.loads(text)
    except ValueError:
        print(text)
        return
    out = sys.stdout if 200 <= status < 300 else sys.stderr
    if isinstance(answer, dict) and isinstance(answer.get("data"), list):
        kind = "attempts" if getattr(args, "action", None) == "attempts" else "endpoints"
        print(table(answer["data"], _COLUMNS[kind]), file=out)
        if answer.get("next_after"):
            print(f"(more: --after {answer['next_after']})", file=out)
    elif isinstance(answer, dict) and isinstance(answer.get("endpoints"), list):  # the admin server's list
        print(table(answer["endpoints"], _COLUMNS["admin"]), file=out)
        if answer.get("next_after"):
            print(f"(more: --after {answer['next_after']})", file=out)
    elif isinstance(answer, dict):
        width = max((len(k) for k in answer), default=0)
        for key, value in answer.items():
            print(f"{key:<{width}}  {_cell(value)}", file=out)
    else:
        print(text, file=out)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as an aligned text table with a header line."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
