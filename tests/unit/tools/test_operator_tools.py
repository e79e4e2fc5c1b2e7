"""The operator's pieces at their seams: JSON log lines, the log level's owner, systemd's watchdog interval and a
notify that never blocks, the per-endpoint series' bound, check-config --routes, tail's filters and durations (the
endpoints API answered by a small stand-in server on 127.0.0.1, as tests/unit/standins.py's are)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.cli import main
from daemon.core.config import LogConfig
from daemon.observe import logs
from daemon.observe.metrics import Metrics
from daemon.observe.systemd import notify, watchdog_interval_s
from daemon.tools.common import UsageError
from daemon.tools.watch import Filters, parse_duration
from tests.helpers import NotifySocket, serve

# --- logs ---


def test_a_json_line_is_one_object_with_the_message_its_extra_fields_and_the_traceback() -> None:
    record = logging.LogRecord("daemon.delivery.sender", logging.WARNING, __file__, 1, "two\nlines %s", ("x",), None)
    record.endpoint_id = "crm"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert (
        parsed["msg"] == "two\nlines x"
        and parsed["level"] == "WARNING"
        and parsed["logger"] == "daemon.delivery.sender"
    )
    assert parsed["endpoint_id"] == "crm" and "ValueError: boom" in parsed["exc"]
    assert parsed["ts"].endswith("Z") and time.strptime(parsed["ts"][:19], "%Y-%m-%dT%H:%M:%S")


def test_the_configs_level_applies_unless_the_command_line_gave_one() -> None:
    root = logging.getLogger()
    handlers, level, aiokafka = list(root.handlers), root.level, logging.getLogger("aiokafka").level
    try:
        logs.setup(None)
        logs.apply(LogConfig(level="WARNING", format="json"))
        assert root.level == logging.WARNING
        assert isinstance(root.handlers[-1].formatter, logs.JsonFormatter)
        logs.apply(LogConfig(level="DEBUG"))
        assert root.level == logging.DEBUG and logging.getLogger("aiokafka").level == logging.WARNING
        logs.setup("ERROR")
        logs.apply(LogConfig(level="DEBUG"))
        assert root.level == logging.ERROR
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("aiokafka").setLevel(aiokafka)
        logs._state.handler, logs._state.forced = None, None


def test_delivery_lines_are_sampled_at_the_configured_ratio() -> None:
    levels = {name: logging.getLogger(name).level for name in ("", "aiokafka")}
    try:
        logs.apply(LogConfig(delivery_sample_ratio=0.0))
        assert not any(logs.sampled() for _ in range(1000))
        logs.apply(LogConfig(delivery_sample_ratio=1.0))
        assert all(logs.sampled() for _ in range(1000))
        logs.apply(LogConfig(delivery_sample_ratio=0.1))
        assert 30 < sum(logs.sampled() for _ in range(2000)) < 400
    finally:
        logs.apply(LogConfig())
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# --- systemd ---


def test_the_watchdog_pings_at_half_the_timeout_systemd_asked_this_process_for() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    import os

    assert watchdog_interval_s({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}) == 0.2
    assert watchdog_interval_s({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}) is None  # another process's
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


def test_notify_drops_a_notification_rather_than_block_on_a_full_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = NotifySocket()
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", receiver.path)
        for n in range(200):  # far more than a datagram socket queues (net.unix.max_dgram_qlen)
            notify(f"STATUS={n}")
        got = receiver.read()
        assert got[0] == "STATUS=0" and len(got) < 200
        notify("READY=1")
        assert receiver.read()[-1] == "READY=1"
    finally:
        receiver.close()
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    notify("READY=1")  # logged at DEBUG, never raised


# --- metrics ---


def test_per_endpoint_series_exist_only_for_marked_endpoints_and_go_when_unmarked() -> None:
    metrics = Metrics()
    metrics.mark_endpoints(["a", "b"])
    for endpoint in ("a", "b"):
        metrics.endpoint_attempts.labels(endpoint, "failed").inc()
        metrics.endpoint_duration.labels(endpoint).observe(0.1)
    metrics.mark_endpoints(["b"])
    assert metrics.marked_endpoints == frozenset({"b"})
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert 'endpoint="b"' in text and 'endpoint="a"' not in text
    assert "webhook_router_build_info{" in text and "process_cpu_seconds_total" in text


# --- check-config --routes ---


def test_check_config_routes_says_which_endpoints_each_type_reaches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "whsec_" + "QUJD" * 8
    path = tmp_path / "router.toml"
    path.write_text(f"""
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "g"
topics = ["events", "billing"]
results_topic = "results"

[[endpoints]]
id = "crm"
url = "https://crm.example.com/in"
secret = "{secret}"

[[endpoints]]
id = "audit"
url = "https://audit.example.com/in"
secret = "{secret}"

[[subscriptions]]
endpoint = "crm"
events = ["lead.created"]
topics = ["events"]
where = {{ field = "tenant.id", one_of = ["t1"] }}

[[subscriptions]]
endpoint = "audit"
events = ["lead.*"]

[[subscriptions]]
endpoint = "audit"
events = ["call.ended"]
topics = ["billing"]
where = {{ field = "size", none_of = ["small"] }}
scope = {{ field = "tenant.id", one_of = ["t2"] }}
""")
    assert main(["check-config", "--routes", str(path)]) == 0
    lines = [line.split(None, 2) for line in capsys.readouterr().out.splitlines()[1:]]
    assert lines == [
        ["TOPIC", "EVENT_TYPE", "ENDPOINTS"],
        ["events", "call.ended", "-"],
        ["events", "lead.<other>", "audit"],
        ["events", "lead.created", "audit, crm (if tenant.id one of t1)"],
        ["billing", "call.ended", "audit (if tenant.id one of t2 and size none of small)"],
        ["billing", "lead.<other>", "audit"],
        ["billing", "lead.created", "audit"],
    ]


# --- tail and stats ---


def test_durations_read_as_seconds() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "10m", "2h", "1d", "1.5h")] == [90, 30, 600, 7200, 86400, 5400]
    for bad in ("", "10x", "-5m", "0", "m"):
        with pytest.raises(UsageError):
            parse_duration(bad)


async def test_a_tenant_filter_passes_the_endpoints_the_api_lists_for_it_page_after_page() -> None:
    asked: list[dict[str, Any]] = []

    async def endpoints(request: web.Request) -> web.Response:  # a stand-in for GET /v1/endpoints
        asked.append({**request.query, "auth": request.headers.get("Authorization")})
        if request.query.get("after") is None:
            return web.json_response({"data": [{"id": "e1"}, {"id": "e2"}], "next_after": "e2"})
        return web.json_response({"data": [{"id": "e3"}], "next_after": None})

    app = web.Application()
    app.router.add_get("/v1/endpoints", endpoints)
    runner, api = await serve(app)
    try:
        filters = Filters(set(), {"failed"}, "acme", api, "tok")
        await filters.refresh()
        await filters.refresh()  # within 30 s: not asked again
    finally:
        await runner.cleanup()
    assert asked == [{"tenant": "acme", "auth": "Bearer tok"}, {"tenant": "acme", "after": "e2", "auth": "Bearer tok"}]
    assert filters.passes({"endpoint_id": "e3", "status": "failed"})
    assert not filters.passes({"endpoint_id": "e3", "status": "delivered"})
    assert not filters.passes({"endpoint_id": "other", "status": "failed"})
    assert Filters({"x"}, set(), None, None, None).passes({"endpoint_id": "x", "status": "anything"})
