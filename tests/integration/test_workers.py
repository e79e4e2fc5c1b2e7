"""``process.workers``: the real ``webhook-router run`` as a supervisor of worker processes, against the real broker and
real receivers: every event delivered once across the workers, one /metrics that counts what the receivers got,
SIGHUP to every worker (a config refused once, by the supervisor), SIGTERM drained within the deadline, a worker
killed and started again with nothing lost, /readyz false while it is down, systemd hearing the supervisor only, and
a pause or an endpoint of the API made through one worker followed by the other, and the delivery index kept by
worker 0 only (the one that answers the instance's lookups)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import (
    ADMIN_TOKEN,
    SECRET,
    DaemonProcess,
    NotifySocket,
    Receiver,
    committed,
    env_with,
    eventually,
    produce,
    produce_undecodable,
    read_topic,
)
from tests.integration.conftest import Setup, receiver, spawn
from tests.integration.test_signals import produce_keyed

KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WR_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("WR_SECRETS_KEY", KEY)


def _config(setup: Setup, endpoints: list[dict[str, Any]], events: list[str] | None = None, workers: int = 2,
            **kafka: Any) -> dict[str, Any]:  # fmt: skip
    subscriptions = [{"endpoint": e["id"], "events": events or ["*"]} for e in endpoints]
    config = setup.config(endpoints, subscriptions, **kafka)
    config["process"] = {"workers": workers}
    config["admin"]["token_env"] = "WR_ADMIN_TOKEN"
    return config


async def _readyz(d: DaemonProcess) -> dict[str, Any]:
    _, body = await d.get_json("/readyz")
    assert isinstance(body, dict)
    return body


def _admin_socket(pid: int) -> str:
    """A worker's admin socket, from its command line (``--admin-socket PATH``)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("--admin-socket") + 1]


async def _workers(d: DaemonProcess) -> list[int]:
    """The workers' process ids, as /readyz lists them."""
    pids = [w["pid"] for w in (await _readyz(d))["workers"]]
    assert all(isinstance(p, int) for p in pids), pids
    return pids


async def _worker_metrics(pid: int) -> str:
    """A worker's own /metrics, read on its admin socket."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=_admin_socket(pid))) as session,
        session.get("http://worker/metrics") as resp,
    ):
        return await resp.text()


def _value(scrape: str, series: str) -> float:
    """The sum of the samples whose ``name{labels}`` starts with ``series``."""
    total = 0.0
    for line in scrape.splitlines():
        if line.startswith(series) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


DELIVERED = 'webhook_router_deliveries_total{outcome="delivered"'


@pytest.mark.parametrize("setup", [4], indirect=True)
async def test_two_workers_share_the_partitions_and_deliver_every_event_once_counted_once(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    total = 400
    r = await receiver(receivers)
    setup.write(_config(setup, [{"id": "sink", "url": r.url, "secret": SECRET}]))
    d = await spawn(daemons, setup)
    assert d.proc is not None
    pids = await _workers(d)
    assert len(set(pids)) == 2 and d.proc.pid not in pids
    await produce_keyed(setup.broker.bootstrap, setup.topic, total)

    await r.wait_for(total, within_s=60)

    def delivered(records: list[dict[str, Any]]) -> bool:
        return sum(1 for rec in records if rec["status"] == "delivered") >= total

    records = await read_topic(setup.broker.bootstrap, setup.results, delivered, within_s=60)
    assert sorted(json.loads(q.body)["n"] for q in r.requests) == list(range(total))  # each once: no duplicate
    assert sum(1 for rec in records if rec["status"] == "delivered") == total

    async def counted() -> bool:
        return _value(await d.metrics(), DELIVERED) == total

    async def settled() -> bool:  # every outcome acknowledged: nothing in flight
        return _value(await d.metrics(), "webhook_router_events_in_flight{") == 0

    await eventually(counted, 20)
    await eventually(settled, 20)
    scrape = await d.metrics()
    assert _value(scrape, f'webhook_router_events_consumed_total{{topic="{setup.topic}"}}') == total
    assert _value(scrape, "webhook_router_results_written_total") >= total
    # Each worker delivered its own partitions' events: the instance's count is their sum, not twice anything.
    own = [_value(await _worker_metrics(pid), DELIVERED) for pid in pids]
    assert all(n > 0 for n in own) and sum(own) == total, own
    # A scrape of one series (name[]): the workers asked for it alone, merged the same, nothing else served.
    only = await d.metrics("webhook_router_deliveries_total")
    assert _value(only, DELIVERED) == total
    assert {line.split("{")[0] for line in only.splitlines() if not line.startswith("#")} == {
        "webhook_router_deliveries_total"
    }, only

    async def partitions(pid: int) -> int:
        return len(re.findall(r"^webhook_router_consumer_offset\{", await _worker_metrics(pid), re.M))

    async def two_each() -> bool:  # the partition gauges are set every 5 s
        return [await partitions(pid) for pid in pids] == [2, 2]

    await eventually(two_each, 20)
    scrape = await d.metrics()
    assert len(re.findall(r"^webhook_router_consumer_offset\{", scrape, re.M)) == 4  # one series per partition
    for worker in ("0", "1", "supervisor"):
        assert f'process_resident_memory_bytes{{worker="{worker}"}}' in scrape
    assert _value(scrape, "webhook_router_workers_ready") == 2
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed: apt-get install prometheus (make test does)"
    linted = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def _reloads(scrape: str, worker: str, result: str) -> float:
    return _value(scrape, f'webhook_router_config_reloads_total{{result="{result}",worker="{worker}"}}')


@pytest.mark.parametrize("setup", [2], indirect=True)
async def test_sighup_reaches_every_worker_and_a_refused_config_is_refused_once_by_the_supervisor(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    a, b = await receiver(receivers), await receiver(receivers)
    config = _config(setup, [{"id": "a", "url": a.url, "secret": SECRET}])
    config["endpoints"].append({"id": "b", "url": b.url, "secret": SECRET})
    setup.write(config)
    d = await spawn(daemons, setup)
    bootstrap = setup.broker.bootstrap
    await produce(bootstrap, setup.topic, [b"{}"], partition=0)  # warm: both partitions' owners are in the group

    config["subscriptions"].append({"endpoint": "b", "events": ["*"]})
    setup.write(config)
    d.signal(signal.SIGHUP)

    async def reloaded() -> bool:
        scrape = await d.metrics()
        return all(_reloads(scrape, w, "ok") == 1 for w in ("0", "1", "supervisor"))

    await eventually(reloaded, 20)
    events = [json.dumps({"event": "lead.created", "n": n}).encode() for n in range(2)]
    for partition in (0, 1):  # one partition per worker: both took the new subscription
        await produce(bootstrap, setup.topic, [events[partition]], partition=partition)
    await b.wait_for(2)
    assert sorted(json.loads(q.body)["n"] for q in b.requests) == [0, 1]

    broken: dict[str, Any] = json.loads(json.dumps(config))
    broken["endpoints"][1]["timeout_s"] = 500
    setup.write(broken)
    d.signal(signal.SIGHUP)

    async def refused() -> bool:
        return _reloads(await d.metrics(), "supervisor", "error") == 1

    await eventually(refused, 20)
    scrape = await d.metrics()
    for worker in ("0", "1"):  # no worker heard of it
        assert _reloads(scrape, worker, "error") == 0 and _reloads(scrape, worker, "ok") == 1
    log = d.log()
    assert log.count("endpoints[1].timeout_s: must be <= 120") == 1, log
    assert log.count("config reload refused") == 1
    assert f"keeping the running config (no worker was told): {setup.path}" in log  # the operator's file
    assert (await _readyz(d))["ready"] is True

    d.signal(signal.SIGTERM)
    assert await d.wait(30) == 0, d.log()


@pytest.mark.parametrize("setup", [2], indirect=True)
async def test_sigterm_drains_every_worker_within_the_deadline_and_commits(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    total = 3000
    r = await receiver(receivers, delay_s=0.01)
    config = _config(setup, [{"id": "sink", "url": r.url, "secret": SECRET, "max_concurrency": 8}],
                     max_in_flight_events=500)  # fmt: skip
    config["delivery"]["drain_timeout_s"] = 5
    setup.write(config)
    d = await spawn(daemons, setup)
    pids = await _workers(d)
    bootstrap = setup.broker.bootstrap
    await produce_keyed(bootstrap, setup.topic, total)
    await r.wait_for(300, within_s=60)

    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    code = await d.wait(30)
    took = time.monotonic() - sent
    assert code == 0, d.log()
    assert took < 5 + 5, f"took {took:.1f} s with a 5 s drain deadline"
    log = d.log()
    assert log.count("shutdown in") == 3, log  # each worker's, then the supervisor's
    assert "worker 0 exited with code 0, worker 1 exited with code 0" in log
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()

    offsets = await committed(bootstrap, setup.group, setup.topic, partitions=2)
    assert all((o or 0) > 0 for o in offsets.values()), offsets  # both workers committed what they drained
    need = {(p, o) for p, c in offsets.items() for o in range(c or 0)}

    def covered(records: list[dict[str, Any]]) -> bool:
        return need <= {(rec["source_partition"], rec["source_offset"]) for rec in records}

    await read_topic(bootstrap, setup.results, covered, within_s=30)
    assert sum(c or 0 for c in offsets.values()) < total  # it stopped mid-stream


@pytest.mark.parametrize("setup", [4], indirect=True)
async def test_a_killed_worker_is_started_again_logged_and_nothing_is_lost(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    total = 2000
    r = await receiver(receivers, delay_s=0.002)
    config = _config(setup, [{"id": "sink", "url": r.url, "secret": SECRET, "max_concurrency": 16}],
                     max_in_flight_events=200)  # fmt: skip
    setup.write(config)
    d = await spawn(daemons, setup)
    first = await _workers(d)
    await produce_keyed(setup.broker.bootstrap, setup.topic, total)
    await r.wait_for(total // 4, within_s=60)

    os.kill(first[1], signal.SIGKILL)

    async def down() -> bool:
        status, body = await d.get_json("/readyz")
        return status == 503 and not body["workers"][1]["ready"] and body["workers"][0]["ready"]

    await eventually(down, 10)
    body = await _readyz(d)
    assert body["reason"].startswith("worker 1: "), body

    async def back() -> bool:
        status, body = await d.get_json("/readyz")
        return status == 200 and body["workers"][1]["pid"] not in (None, first[1])

    await eventually(back, 60)
    assert (await _workers(d))[0] == first[0], "the other worker ran on"
    assert f"worker 1 (pid {first[1]}) was killed by signal 9 (SIGKILL)" in d.log()

    def delivered(records: list[dict[str, Any]]) -> bool:
        return len({rec["delivery_id"] for rec in records if rec["status"] == "delivered"}) >= total

    await read_topic(setup.broker.bootstrap, setup.results, delivered, within_s=120)
    assert {json.loads(q.body)["n"] for q in r.requests} == set(range(total))  # duplicates only: the kill's
    scrape = await d.metrics()
    assert _value(scrape, 'webhook_router_worker_restarts_total{worker="1"}') == 1
    assert _value(scrape, DELIVERED) <= len(r.requests)  # what the killed worker had not been scraped for is lost


async def test_systemd_hears_the_supervisor_only_ready_once_every_worker_is_then_stopping_and_the_watchdog(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers, delay_s=1.5)  # the drain waits for a delivery this long: several pings
    setup.write(_config(setup, [{"id": "a", "url": r.url, "secret": SECRET}]))
    notify = NotifySocket()
    notify.follow()
    try:
        env = env_with(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")  # a ping every 0.2 s
        d = await spawn(daemons, setup, wait_ready=False, env=env)
        await eventually(lambda: "READY=1" in notify.read(), 30)
        assert d.proc is not None
        log = d.log()  # READY once every worker's start-up is complete (as one process's READY: its start-up's)
        ran = [log.index(f"daemon.app.supervisor: worker {w} ready (pid") for w in (0, 1)]
        assert max(ran) < log.index("all 2 workers ready"), log
        d.signal(signal.SIGHUP)
        await eventually(lambda: notify.read().count("READY=1") == 2, 20)
        await produce(setup.broker.bootstrap, setup.topic, [b'{"event": "lead.created", "id": "drained"}'])
        await eventually(lambda: r.concurrent == 1, 60)  # a delivery under way: the drain waits for it
        d.signal(signal.SIGTERM)
        assert await d.wait(30) == 0, d.log()
        messages = notify.read()
    finally:
        notify.close()
    states = [m for m in messages if not m.startswith(("STATUS=", "WATCHDOG="))]
    assert states[0] == "READY=1" and states[2:] == ["READY=1", "STOPPING=1"], states
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", states[1]), states
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert "STATUS=running: 2 workers" in statuses
    assert not any("consumer group" in s or "Kafka" in s for s in statuses), "a worker's own status reached systemd"
    assert messages.index("WATCHDOG=1") < messages.index("READY=1")
    assert messages[messages.index("STOPPING=1") :].count("WATCHDOG=1") >= 2, "and through the drain (1.5 s)"
    assert len(r.requests) == 1 and r.concurrent == 0  # the delivery under way was finished, not cut


def _op(port: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


@pytest.mark.parametrize("setup", [2], indirect=True)
async def test_a_pause_and_an_endpoint_of_the_api_made_through_the_supervisor_reach_every_worker_and_worker_0_indexes(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    a, b = await receiver(receivers), await receiver(receivers)
    config = _config(setup, [{"id": "a", "url": a.url, "secret": SECRET}])
    config["api"] = {"enabled": True, "secrets_key_env": "WR_SECRETS_KEY", "allowed_networks": ["127.0.0.0/8"]}
    setup.write(config)
    d = await spawn(daemons, setup)
    bootstrap = setup.broker.bootstrap

    async def each_partition(n: int) -> None:  # partition 0 and 1 are one worker's each
        for partition in (0, 1):
            await produce(bootstrap, setup.topic, [json.dumps({"event": "lead.created", "n": n + partition}).encode()],
                          partition=partition)  # fmt: skip

    async def paused(worker: str) -> float:
        return _value(await d.metrics(), f'webhook_router_endpoints_paused{{reason="operator",worker="{worker}"}}')

    async with _op(setup.admin_port) as http:
        async with http.post("/endpoints/a/pause") as resp:
            assert (resp.status, (await resp.json())["changed"]) == (200, True)
        await eventually(lambda: _both(paused), 20)  # worker 1 follows the health topic worker 0 wrote
        await each_partition(0)

        def skipped(records: list[dict[str, Any]]) -> bool:
            return {r["source_partition"] for r in records if r["status"] == "skipped_paused"} == {0, 1}

        await read_topic(bootstrap, setup.results, skipped)
        assert a.requests == []

        async with http.get("/endpoints") as resp:
            (line,) = (await resp.json())["endpoints"]  # every worker's list, merged: one line
            assert (resp.status, line["id"], line["paused"]) == (200, "a", True)
        async with http.post("/endpoints/a/resume") as resp:
            assert resp.status == 200
        await eventually(lambda: _neither(paused), 20)
        await each_partition(10)
        await a.wait_for(2)
        assert sorted(json.loads(q.body)["n"] for q in a.requests) == [10, 11]

        async with http.post("/v1/tenants", json={"id": "acme"}) as resp:
            assert resp.status == 201, await resp.text()
        body = {"tenant": "acme", "url": b.url, "events": ["lead.*"], "allow_http": True}
        async with http.post("/v1/endpoints", json=body) as resp:
            created = await resp.json()
            assert resp.status == 201, created
        async with http.get(f"/v1/endpoints/{created['id']}") as resp:
            assert resp.status == 200  # the same worker answers: it applied its write before it answered
        await each_partition(20)
        await b.wait_for(2)
        assert sorted(json.loads(q.body)["n"] for q in b.requests) == [20, 21]  # both workers deliver to it
        async with http.get("/v1/nothing-here") as resp:  # a path no one serves: the worker's answer, proxied
            assert resp.status == 404 and (await resp.json())["error"].startswith("no route")

        # The delivery index: worker 0, which answers the instance's lookups, keeps a copy; worker 1 keeps none.
        delivery = b.requests[0].headers["webhook-id"]

        async def indexed() -> bool:
            async with http.get(f"/v1/deliveries/{delivery}") as resp:
                return resp.status == 200 and (await resp.json())["found_by"] == "index"

        await eventually(indexed, 20)
        scrape = await d.metrics()
        assert _value(scrape, 'webhook_router_delivery_index_entries{worker="0"}') >= 4  # 10, 11, 20, 21
        assert _value(scrape, 'webhook_router_delivery_index_bytes{worker="0"}') > 0
        assert _value(scrape, 'webhook_router_delivery_index_entries{worker="1"}') == 0
        assert _value(scrape, 'webhook_router_delivery_index_bytes{worker="1"}') == 0


async def _both(paused: Callable[[str], Awaitable[float]]) -> bool:
    return await paused("0") == 1 and await paused("1") == 1


async def _neither(paused: Callable[[str], Awaitable[float]]) -> bool:
    return await paused("0") == 0 and await paused("1") == 0


@pytest.mark.parametrize("setup", [2], indirect=True)
async def test_a_skip_goes_to_the_worker_that_holds_the_partition(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers)
    setup.write(_config(setup, [{"id": "x", "url": r.url, "secret": SECRET}]))
    bootstrap = setup.broker.bootstrap
    for partition in (0, 1):
        assert await produce_undecodable(bootstrap, setup.topic, partition, [b"{}"]) == 0
        await produce(
            bootstrap, setup.topic, [json.dumps({"event": "e", "p": partition}).encode()], partition=partition
        )
    d = await spawn(daemons, setup)

    async def both_stuck() -> bool:
        return len((await _readyz(d))["stuck"]) == 2

    await eventually(both_stuck, 30)
    stuck = (await _readyz(d))["stuck"]
    assert {s["worker"] for s in stuck} == {0, 1}, stuck  # one partition each: each worker holds its own
    async with _op(setup.admin_port) as http:
        for partition in (0, 1):
            async with http.post(f"/partitions/{setup.topic}/{partition}/skip", json={"offset": 0}) as resp:
                assert resp.status == 200, await resp.text()
    await r.wait_for(2)
    assert {json.loads(q.body)["p"] for q in r.requests} == {0, 1}


async def test_a_worker_whose_event_loop_stands_still_fails_healthz_then_is_killed_and_started_again(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers)
    setup.write(_config(setup, [{"id": "a", "url": r.url, "secret": SECRET}]))
    d = await spawn(daemons, setup, env=env_with(WATCHDOG_USEC="4000000"))  # the workers' watchdog: 4 s
    first = await _workers(d)
    status, health = await d.get_json("/healthz")
    assert status == 200 and [w["ok"] for w in health["workers"]] == [True, True], health

    os.kill(first[0], signal.SIGSTOP)  # its event loop (the whole process) stands still

    async def unhealthy() -> bool:
        status, health = await d.get_json("/healthz")
        return status == 503 and [w["ok"] for w in health["workers"]] == [False, True]

    await eventually(unhealthy, 10)

    async def replaced() -> bool:
        status, body = await d.get_json("/readyz")
        return status == 200 and body["workers"][0]["pid"] not in (None, first[0])

    await eventually(replaced, 60)
    log = d.log()
    assert f"worker 0 (pid {first[0]}): no watchdog ping for" in log
    assert f"worker 0 (pid {first[0]}) was killed by signal 9 (SIGKILL)" in log  # a stopped process ignores SIGABRT
    assert (await _workers(d))[1] == first[1]
    assert (await d.get_json("/healthz"))[0] == 200


async def test_workers_that_cannot_start_with_their_topics_stop_the_instance_with_exit_2(
    setup: Setup, daemons: list[DaemonProcess]
) -> None:
    config = _config(setup, [])
    config["retry"]["create_topics"] = False  # its health topic does not exist: no worker may start
    setup.write(config)
    d = await spawn(daemons, setup, wait_ready=False)
    assert await d.wait(60) == 2, d.log()
    log = d.log()
    assert "and retry.create_topics = false" in log
    assert re.search(r"worker \d exited with code 2 \(its config or its topics were refused", log), log


async def test_the_portal_through_the_supervisor_links_to_it_and_takes_its_own_forms(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers)
    config = _config(setup, [])
    config["api"] = {
        "enabled": True,
        "secrets_key_env": "WR_SECRETS_KEY",
        "tenant_field": "tenant",
        "allowed_networks": ["127.0.0.0/8"],
    }
    config["portal"] = {"enabled": True}
    setup.write(config)
    await spawn(daemons, setup)
    base = f"http://127.0.0.1:{setup.admin_port}"
    async with _op(setup.admin_port) as http:
        async with http.post("/v1/tenants", json={"id": "acme"}) as resp:
            assert resp.status == 201, await resp.text()
        body = {"tenant": "acme", "url": r.url, "events": ["lead.*"], "allow_http": True}
        async with http.post("/v1/endpoints", json=body) as resp:
            created = await resp.json()
            assert resp.status == 201, created
            endpoint = created["id"]
        async with http.post("/v1/tenants/acme/portal-links", json={}) as resp:
            url = (await resp.json())["url"]
    assert url.startswith(f"{base}/portal/"), url  # the address the platform asked at, not a worker's socket
    async with aiohttp.ClientSession() as browser:
        async with browser.get(url) as resp:
            assert resp.status == 200, await resp.text()
        async with browser.get(f"{url}endpoints/{endpoint}") as resp:
            page = await resp.text()
            assert resp.status == 200, page
        (csrf,) = set(re.findall(r'name="csrf" value="([^"]+)"', page))
        form = {"csrf": csrf}
        async with browser.post(f"{url}endpoints/{endpoint}/pause", data=form, headers={"Origin": base},
                                allow_redirects=False) as resp:  # fmt: skip
            answer = await resp.text()
            assert resp.status == 200 and "Endpoint paused" in answer, answer  # the portal's own form: taken
        elsewhere = {"Origin": "http://elsewhere.example"}
        async with browser.post(f"{url}endpoints/{endpoint}/resume", data=form, headers=elsewhere,
                                allow_redirects=False) as resp:  # fmt: skip
            assert resp.status == 403  # another site's: refused, as without workers
