"""Safe by default, against the real broker, receivers and daemon: customers' URLs cannot reach the platform's own
network, no input reaches a traceback or a dropped connection, and no secret leaks sideways.

DNS is the one stand-in (``FakeDNS``): it lets a name resolve to 127.0.0.1, where a real receiver listens, without
touching the machine's resolver.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import secrets as secrets_module
import signal
import string
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w
from aiohttp import ClientTimeout, web
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from daemon.admin.api import ROUTES
from daemon.app import App
from tests.helpers import (
    ADMIN_TOKEN,
    SECRET,
    DaemonProcess,
    FakeDNS,
    Proxy,
    Receiver,
    eventually,
    produce,
    read_topic,
    serve,
)
from tests.integration.conftest import Setup, receiver, running, spawn


def _event(n: int, event: str = "lead.created") -> bytes:
    return json.dumps({"event": event, "n": n}).encode()


# --- the network guard, end to end ---


@pytest.mark.parametrize("allowed", [[], ["127.0.0.0/8"]], ids=["guard-default", "range-allowed"])
async def test_a_name_resolving_to_loopback_is_blocked_final_and_dead_lettered_unless_its_range_is_allowed(
    setup: Setup, receivers: list[Receiver], allowed: list[str]
) -> None:
    r = await receiver(receivers)
    dns = FakeDNS({"hooks.example": [["127.0.0.1"]]})
    retry = {"policy": "schedule", "delays_s": [0.5]}
    ep = {"id": "x", "url": f"http://hooks.example:{r.port}/hook", "secret": SECRET, "retry": retry}
    doc = setup.config([ep], [{"endpoint": "x", "events": ["*"]}])
    doc["delivery"]["allowed_networks"] = allowed
    path = setup.write(doc)
    bootstrap = setup.broker.bootstrap
    async with running(path, resolver=dns) as app:
        await produce(bootstrap, setup.topic, [_event(1)])
        (record,) = await read_topic(bootstrap, setup.results, lambda recs: len(recs) >= 1)
        if allowed:
            assert record["status"] == "delivered" and len(r.requests) == 1
            return
        (letter,) = await read_topic(bootstrap, f"{setup.prefix}.dead-letter", lambda recs: len(recs) >= 1)
        await asyncio.sleep(1.5)  # the policy's retry would be due after 0.5 s: none comes
        again = await read_topic(bootstrap, setup.results, lambda recs: len(recs) >= 1)
        blocked = app.metrics.deliveries_blocked.labels("loopback")._value.get()
        retries = app.metrics.retries_scheduled._value.get()
    assert (record["status"], record["http_status"], record["attempt"]) == ("blocked", None, 1)
    assert record["error"] == "blocked: loopback address (not in delivery.allowed_networks)"
    assert (letter["reason"], [a["status"] for a in letter["attempts"]]) == (record["error"], ["blocked"])
    assert (len(again), blocked, retries) == (1, 1, 0)
    assert r.requests == []  # nothing reached the listener on the refused address
    assert "hooks.example" not in json.dumps(record) and "127.0.0.1" not in json.dumps(record)


async def test_with_an_egress_proxy_every_delivery_goes_through_it(setup: Setup, receivers: list[Receiver]) -> None:
    r = await receiver(receivers)
    async with Proxy(credentials="router:s3cret-proxy").running() as proxy:
        doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}])
        doc["delivery"]["proxy_url"] = proxy.url
        path = setup.write(doc)
        async with running(path):
            await produce(setup.broker.bootstrap, setup.topic, [_event(1), _event(2)])
            records = await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 2)
    assert [rec["status"] for rec in records] == ["delivered", "delivered"]
    assert [(method, target) for method, target, _ in proxy.asked] == [("POST", r.url)] * 2
    assert len(r.requests) == 2 and not any("Proxy-Authorization" in req.headers for req in r.requests)


def test_check_config_refuses_a_url_into_the_platform_network_naming_the_field(tmp_path: Path) -> None:
    kafka = {"bootstrap_servers": "127.0.0.1:1", "group_id": "g", "topics": ["t"], "results_topic": "r"}
    doc = {"kafka": kafka, "endpoints": [{"id": "x", "url": "http://169.254.169.254/latest", "secret": SECRET}]}
    path = tmp_path / "router.toml"
    path.write_text(tomli_w.dumps(doc))
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "endpoints[0].url: the host is refused: cloud metadata address (unless delivery.allowed_networks allows "
        "its range)"
    ]


@pytest.mark.parametrize("section", ["delivery", "api"])
async def test_a_reload_that_changes_the_network_allowances_is_refused(
    setup: Setup, receivers: list[Receiver], section: str
) -> None:
    r = await receiver(receivers)
    doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}])
    path = setup.write(doc)
    async with running(path) as app:
        doc.setdefault(section, {})["allowed_networks"] = ["127.0.0.0/8", "10.0.0.0/8"]
        setup.write(doc)
        app.reload()
        await eventually(lambda: app.metrics.config_reloads.labels("error")._value.get() == 1, 10)
        await produce(setup.broker.bootstrap, setup.topic, [_event(1)])
        await r.wait_for(1)  # under the config it had
        assert app.metrics.config_reloads.labels("ok")._value.get() == 0


# --- config loading never shows a traceback ---


def _nested_toml(path: Path, kafka: dict[str, Any], depth: int = 500) -> Path:
    """A config whose kafka table is fine and whose event_type_fields nest ``depth`` inline tables deep."""
    head = "[kafka]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in kafka.items())
    path.write_text(head + "event_type_fields = " + "{a = " * depth + '"x"' + "}" * depth + "\n")
    return path


@pytest.mark.parametrize("command", [["check-config"], ["run", "--config"]])
def test_a_config_nested_500_deep_exits_2_with_the_reason_and_no_traceback(tmp_path: Path, command: list[str]) -> None:
    kafka = {"bootstrap_servers": "127.0.0.1:1", "group_id": "g", "topics": ["t"], "results_topic": "r"}
    path = _nested_toml(tmp_path / "deep.toml", kafka)
    done = subprocess.run(
        [sys.executable, "-m", "daemon", *command, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "not valid TOML: nested too deeply" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


async def test_sighup_with_a_config_nested_500_deep_is_a_refused_reload(
    setup: Setup, receivers: list[Receiver], daemons: list[DaemonProcess]
) -> None:
    r = await receiver(receivers)
    doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}])
    setup.write(doc)
    d = await spawn(daemons, setup)
    _nested_toml(setup.path, doc["kafka"])
    d.signal(signal.SIGHUP)
    await eventually(lambda: d.metric('webhook_router_config_reloads_total{result="error"}'), 10)
    await produce(setup.broker.bootstrap, setup.topic, [_event(1)])
    await r.wait_for(1)  # still delivering under the config it had
    d.signal(signal.SIGTERM)
    assert await d.wait(30) == 0
    log = d.log()
    assert "config reload refused" in log and "not valid TOML: nested too deeply" in log
    assert "Task exception was never retrieved" not in log and "Traceback" not in log


# --- the admin API: every request answered, never a 5xx ---


async def test_every_admin_request_of_the_issue_is_answered_with_a_4xx_naming_the_field(
    setup: Setup, receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await receiver(receivers)
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}])
    doc["admin"]["token_env"] = "ROUTER_ADMIN_TOKEN"
    path = setup.write(doc)
    t = setup.topic
    cases = [
        ("/endpoints/x/replay", '{"from_time": 1e400}', 400, "from_time"),
        ("/endpoints/x/replay", '{"to_time": -1e400, "from_time": 0}', 400, "to_time"),
        ("/endpoints/x/replay", f'{{"topic": "{t}", "partition": 0, "from_offset": -5}}', 400, "from_offset"),
        ("/endpoints/x/replay", f'{{"topic": "{t}", "partition": 7, "from_offset": 0}}', 404, "no partition 7"),
        ("/endpoints/x/replay", '{"topic": "elsewhere", "partition": 0, "from_offset": 0}', 400, "topic"),
        ("/endpoints/x/replay", '{"from_time": "0001-01-01T00:00:00Z"}', 400, "from_time"),
        ("/endpoints/x/replay", '{"from_time": "2026-01-01T00:00:00"}', 400, "from_time"),
        ("/endpoints/x/replay", f'{{"topic": "{t}", "partition": 0, "from_offset": 5, "to_offset": 1}}', 400, "to_off"),
        (
            "/deliveries/msg_x/redeliver",
            f'{{"endpoint_id": "x", "source_topic": "{t}", "source_partition": 1e400, "source_offset": 0}}',
            400,
            "source_partition",
        ),
        (
            "/deliveries/msg_x/redeliver",
            f'{{"endpoint_id": "x", "source_topic": "{t}", "source_partition": 3, "source_offset": 0}}',
            404,
            "no partition",
        ),
        (
            "/deliveries/msg_x/redeliver",
            f'{{"endpoint_id": "x", "source_topic": "{t}", "source_partition": 0, "source_offset": {2**62}}}',
            404,
            "past the end",
        ),
    ]
    async with running(path) as app:
        assert app.components is not None
        base = f"http://127.0.0.1:{app.components.admin.port}"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(headers=auth) as http:
            for route, body, status, names in cases:
                async with http.post(base + route, data=body) as resp:
                    answer = await resp.json()
                assert (resp.status, names in answer["error"]) == (status, True), (route, body, answer)
        assert app.ready()


# --- the admin API fuzzed against the live daemon ---


class Token:
    """A JSON number as written, beyond what Python's json module writes (``1e400``)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _dump(value: Any) -> str:
    if isinstance(value, Token):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value)


_NUMBERS = st.sampled_from(["1e400", "-1e400", "1e-400", "-0", "0.0", "1E2", "1" * 30]).map(Token)
_TIMES = st.sampled_from(
    [
        "2026-11-23T10:00:00Z",
        "1970-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59+14:00",
        "2026-11-23T10:00:00",
        "2026-13-45T99:00:00Z",
        "yesterday",
        "",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 5),
    st.floats(allow_nan=False),
    _NUMBERS,
    _TIMES,
    st.text(max_size=20),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with any of ``fields`` (well typed or not), maybe a stray one."""
    return st.fixed_dictionaries({}, optional={**fields, "extra": _JSON})


def _bodies(topic: str) -> dict[str, st.SearchStrategy[Any]]:
    """Bodies for each operator route: well formed, well formed but for one hostile value, shaped like the route's
    struct with hostile values anywhere, any JSON, or any bytes."""
    partition = st.integers(-1, 3) | _SCALARS
    offset = st.integers(-6, 6) | st.integers(0, 2**63 + 5) | _SCALARS
    topics = st.sampled_from([topic, topic, "elsewhere", ""]) | _SCALARS
    times = st.sampled_from(["2026-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]) | st.integers(0, 2**45) | _TIMES
    anything = _JSON | st.binary(max_size=40)
    replay = st.one_of(
        st.fixed_dictionaries({"from_time": times}, optional={"to_time": times}),
        st.fixed_dictionaries(
            {"topic": topics, "partition": partition, "from_offset": offset}, optional={"to_offset": offset}
        ),
        _shaped(
            {
                "from_time": times,
                "to_time": times,
                "topic": topics,
                "partition": partition,
                "from_offset": offset,
                "to_offset": offset,
            }
        ),
        anything,
    )
    where = {
        "endpoint_id": st.sampled_from(["x", "x", "nope"]) | _SCALARS,
        "source_topic": topics,
        "source_partition": partition,
        "source_offset": offset,
    }
    near = {
        "endpoint_id": st.just("x"),
        "source_topic": st.just(topic),
        "source_partition": st.integers(0, 2),
        "source_offset": st.integers(-1, 6),
    }
    redeliver = st.one_of(st.fixed_dictionaries(near), st.fixed_dictionaries(where), _shaped(where), anything)
    return {"replay": replay, "redeliver": redeliver, "other": anything}


def _encoded(body: Any) -> bytes:
    return body if isinstance(body, bytes) else _dump(body).encode()


@pytest.fixture
async def admin_api(
    setup: Setup, receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, aiohttp.ClientSession, str]]:
    """A live daemon with the admin token ADMIN_TOKEN, the endpoints API on, endpoint x from its file, tenant acme with
    one endpoint made through the API, and a few events; yields its base URL, a session and the receiver's URL."""
    r = await receiver(receivers)
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("ROUTER_SECRETS_KEY", base64.b64encode(bytes(range(32))).decode())
    doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}])
    doc["admin"]["token_env"] = "ROUTER_ADMIN_TOKEN"
    doc["api"] = {"enabled": True, "secrets_key_env": "ROUTER_SECRETS_KEY", "allowed_networks": ["127.0.0.0/8"]}
    path = setup.write(doc)
    async with running(path) as app, aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        assert app.components is not None
        base = f"http://127.0.0.1:{app.components.admin.port}"
        async with http.post(f"{base}/v1/tenants", json={"id": "acme"}) as resp:
            assert resp.status == 201, await resp.text()
        body = {"tenant": "acme", "url": r.url, "events": ["*"], "allow_http": True}
        async with http.post(f"{base}/v1/endpoints", json=body) as resp:
            assert resp.status == 201, await resp.text()
        await produce(setup.broker.bootstrap, setup.topic, [_event(n) for n in range(3)] + [b"not json"])
        await read_topic(setup.broker.bootstrap, setup.results, lambda recs: len(recs) >= 7)
        yield base, http, r.url
        assert app.ready()  # the daemon is still up and in its group after all of it


# Mostly the right token, so that most requests get past it; sometimes anything printable.
_AUTH = st.sampled_from(
    [f"Bearer {ADMIN_TOKEN}"] * 16
    + ["", f"Bearer {ADMIN_TOKEN[:-1]}", f"Bearer {ADMIN_TOKEN} ", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, "*"]
)
_ANY_AUTH = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_PATH_PARTS = st.sampled_from(["x", "x", "acme", "nope", "x%2F..", "%00", "a" * 300, "msg_0123"])


def _v1_bodies(receiver_url: str) -> st.SearchStrategy[Any]:
    """Bodies for the endpoints API: an endpoint's fields (well formed or hostile, private URLs included), a tenant,
    a rotation, any JSON or bytes."""
    urls = st.sampled_from([receiver_url, "https://hooks.example.com/x", "http://169.254.169.254/", "http://127.1/",
                            "http://[::ffff:10.0.0.1]/", "ftp://x", ""]) | _SCALARS  # fmt: skip
    events = st.lists(st.sampled_from(["*", "lead.*", "nope.*", "a*b", ""]) | _SCALARS, max_size=3) | _SCALARS
    endpoint = _shaped({"tenant": st.sampled_from(["acme", "nope"]) | _SCALARS, "url": urls, "events": events,
                        "allow_http": st.booleans() | _SCALARS, "profile": st.sampled_from(["crm", "x"]) | _SCALARS,
                        "timeout_s": st.integers(-1, 200) | _SCALARS, "secret": _SCALARS,
                        "headers": st.dictionaries(st.text(max_size=10), _SCALARS, max_size=2) | _SCALARS,
                        "version": _SCALARS, "description": _SCALARS})  # fmt: skip
    others = _shaped({"id": st.sampled_from(["acme", "new-1"]) | _SCALARS, "secret": _SCALARS, "grace_s": _SCALARS})
    return endpoint | others | _JSON | st.binary(max_size=40)


@pytest.mark.timeout(600)
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_the_admin_api_fuzzed_answers_every_request_and_never_with_a_5xx(
    admin_api: tuple[str, aiohttp.ClientSession, str], setup: Setup, data: st.DataObject
) -> None:
    """The operator routes and the endpoints API (/v1), with hostile bodies, path parts and tokens."""
    base, http, receiver_url = admin_api
    bodies = _bodies(setup.topic)
    if data.draw(st.booleans(), label="v1"):
        method, template, handler, _ = data.draw(st.sampled_from(ROUTES), label="route")
        name = handler.__name__
        target = re.sub(r"\{[a-z_]+\}", lambda _: data.draw(_PATH_PARTS, label="part"), template)
        route = f"v1 {name}"
        body = data.draw(bodies[name] if name in bodies else _v1_bodies(receiver_url), label="body")
    else:
        endpoint = data.draw(_PATH_PARTS, label="endpoint")
        route = data.draw(st.sampled_from(["replay", "redeliver", "ping", "pause", "resume", "list"]), label="route")
        body = data.draw(bodies.get(route, bodies["other"]), label="body")
        method, target = "POST", f"/endpoints/{endpoint}/{route}"
        if route == "redeliver":
            target = f"/deliveries/{data.draw(_PATH_PARTS, label='delivery')}/redeliver"
        elif route == "list":
            method, target = "GET", "/endpoints"
    auth = data.draw(_AUTH, label="authorization")
    headers = {"Authorization": auth if auth != "*" else data.draw(_ANY_AUTH, label="any authorization")}
    url = URL(base + target, encoded=True)
    async with http.request(method, url, data=_encoded(body), headers=headers, timeout=ClientTimeout(total=60)) as r:
        text = await r.text()
    event(f"{route} {r.status}")  # what the examples reached (pytest --hypothesis-show-statistics)
    assert r.status < 500, (method, target, body, r.status, text)
    if r.status >= 400:
        assert "error" in json.loads(text)


# --- secrets planted at random and searched for everywhere the router writes ---

_URL_SAFE = string.ascii_letters + string.digits + "-._~"  # written alike in URLs, JSON and msgpack: a leak shows as is
# Random enough never to stand in the router's own output by chance (a field name, a topic, a base64 signature).
_SECRET = st.text(_URL_SAFE, min_size=10, max_size=40).filter(
    lambda s: len(set(s)) >= 6 and set(s) & set("-._~") and any(c.isdigit() for c in s) and any(c.isalpha() for c in s)
)
_WHSEC = st.binary(min_size=24, max_size=64).map(lambda key: "whsec_" + base64.b64encode(key).decode())


class Echo:
    """A real receiver that answers with what it got (headers and body as JSON) after ``pad`` bytes, so that the
    router's 4096-byte cut may fall inside a secret: ``/echo/{pad}`` answers 200, ``/fail/{pad}`` 500, ``/long/0``
    200 with the request's Authorization in a response header over 8 KiB (the router's parser quotes it)."""

    def __init__(self) -> None:
        self.port = 0
        self.seen = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Echo:
        app = web.Application()
        app.router.add_post("/{kind}/{pad}", self._answer)
        self._runner, base = await serve(app)
        self.port = int(base.rsplit(":", 1)[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        self.seen += 1
        echoed = json.dumps({"headers": dict(request.headers), "body": (await request.read()).decode()})
        kind, pad = request.match_info["kind"], int(request.match_info["pad"])
        if kind == "long":
            return web.Response(text="ok", headers={"X-Echo": request.headers.get("Authorization", "") + "A" * 9000})
        return web.Response(text="x" * pad + echoed, status=500 if kind == "fail" else 200)


class Captured(logging.Handler):
    """Every log record, formatted with its traceback, as the daemon's log would have it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def _read_raw(bootstrap: str, topics: list[str]) -> list[bytes]:
    """Every record value of ``topics`` up to their ends now (bytes: the tiers are msgpack)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        # The metadata of every topic: Kafka's answer at start-up names none (Tansu's names them all).
        await consumer._client.force_metadata_update()
        assert all(consumer.partitions_for_topic(t) for t in topics), "every topic exists"
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)  # Tansu: the last batch's base offset + 1 at least
        values: list[bytes] = []
        for tp in tps:
            consumer.seek(tp, 0)
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=500)
            values += [r.value for records in batch.values() for r in records if r.value]
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return values
    finally:
        await consumer.stop()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    e = await Echo().start()
    yield e
    await e.stop()


@pytest.fixture
async def captured() -> AsyncIterator[Captured]:
    handler, root = Captured(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("aiokafka").setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)


def _planted_config(setup: Setup, echo: Echo, s: dict[str, str], pads: list[int], port: int = 0) -> dict[str, Any]:
    base = f"127.0.0.1:{echo.port}"
    endpoints: list[dict[str, Any]] = [
        {"id": "sw", "url": f"http://{s['user']}:{s['password']}@{base}/echo/{pads[0]}", "secret": s["whsec"],
         "headers": {"Authorization": f"Bearer {s['bearer']}", "X-Api-Key": s["api_key"]}},
        {"id": "crm", "url": f"http://{base}/echo/{pads[1]}", "profile": "crm", "secret": s["crm"]},
        {"id": "cc", "url": f"http://{base}/fail/{pads[2]}", "profile": "convocore", "secret": s["convocore"]},
        {"id": "hdr", "url": f"http://{base}/long/0", "secret": s["whsec2"], "retry": {"policy": "none"},
         "headers": {"Authorization": f"Bearer {s['bearer2']}"}},
    ]  # fmt: skip
    subscriptions = [
        {"endpoint": "sw", "events": ["lead.created"]},
        {"endpoint": "crm", "events": ["lead.create"]},
        {"endpoint": "cc", "events": ["agent_created"]},
        {"endpoint": "hdr", "events": ["lead.created"]},
    ]
    doc = setup.config(endpoints, subscriptions)
    doc["admin"]["token_env"] = "ROUTER_ADMIN_TOKEN"
    if port:  # the running daemon's (a new one needs a restart)
        doc["admin"]["listen"] = f"127.0.0.1:{port}"
    return doc


@pytest.fixture
async def planted(
    setup: Setup, echo: Echo, captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[App, str]]:
    admin_token = "adm-" + secrets_module.token_urlsafe(24)
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", admin_token)
    first = {
        k: f"first-{k}-0123456789" for k in ("user", "password", "bearer", "api_key", "crm", "convocore", "bearer2")
    }
    first |= {"whsec": SECRET, "whsec2": SECRET}
    setup.write(_planted_config(setup, echo, first, [0, 0, 0]))
    async with running(setup.path) as app:
        yield app, admin_token


@pytest.mark.timeout(600)
@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.generate],  # a failure shows its example; shrinking a live daemon's run takes minutes
)
@given(
    planted_secrets=st.fixed_dictionaries(
        {
            "user": _SECRET,
            "password": _SECRET,
            "bearer": _SECRET,
            "api_key": _SECRET,
            "crm": _SECRET,
            "convocore": _SECRET,
            "bearer2": _SECRET,
            "whsec": _WHSEC,
            "whsec2": _WHSEC,
        }
    ),
    pads=st.lists(st.integers(0, 4200) | st.integers(3900, 4096), min_size=3, max_size=3),
)
async def test_secrets_planted_at_random_are_found_nowhere(
    planted: tuple[App, str],
    setup: Setup,
    echo: Echo,
    captured: Captured,
    planted_secrets: dict[str, str],
    pads: list[int],
) -> None:
    """Each example reloads the config with fresh secrets (signing secrets, secrets the profile injects into bodies,
    URL credentials, custom header values), delivers to receivers that echo every request (cut at 4096 bytes
    anywhere), fail, or quote the request's Authorization in an over-long response header, sends the admin API an
    Authorization header over 8 KiB, and searches the results, dead-letter, retry and health topics, the log, the
    metrics and the endpoints API for any of them."""
    app, admin_token = planted
    assert app.components is not None
    port = app.components.admin.port
    s = planted_secrets
    reloads = app.metrics.config_reloads.labels("ok")._value.get()
    setup.write(_planted_config(setup, echo, s, pads, port))
    app.reload()
    await eventually(lambda: app.metrics.config_reloads.labels("ok")._value.get() > reloads, 10)
    bootstrap = setup.broker.bootstrap
    seen = echo.seen
    await produce(
        bootstrap,
        setup.topic,
        [
            b'{"event": "lead.created", "payload": {"n": 1}}',
            b'{"event": "lead.create", "id_space": "s1", "payload": {"n": 1}}',
            b'{"type": "agent_created", "payload": {}}',
        ],
    )
    await eventually(lambda: echo.seen >= seen + 4, 20)
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {admin_token}"}
        async with http.get(f"http://127.0.0.1:{port}/endpoints", headers=auth) as resp:
            listing = await resp.text()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            metrics = await resp.text()
        for token in (admin_token, s["bearer"]):
            huge = {"Authorization": f"Bearer {token}{'A' * 9000}"}
            async with http.get(f"http://127.0.0.1:{port}/endpoints", headers=huge) as resp:
                assert resp.status == 400
    topics = [setup.results, *(f"{setup.prefix}.{t}" for t in ("dead-letter", "health"))]
    topics += [f"{setup.prefix}.retry.{tier:g}s" for tier in (0.5, 1, 2, 4, 8, 30, 300)]

    def settled(records: list[dict[str, Any]]) -> bool:
        final = {"delivered", "dead_lettered"}
        return len({r["endpoint_id"] for r in records if r.get("status") in final and r["timestamp"] >= since}) >= 4

    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    await read_topic(bootstrap, setup.results, settled)
    written = b"\n".join(await _read_raw(bootstrap, topics))
    text = written.decode("utf-8", "replace") + listing + metrics + "\n".join(captured.lines)
    basic = base64.b64encode(f"{s['user']}:{s['password']}".encode()).decode()
    for name, secret in [*s.items(), ("basic", basic), ("admin token", admin_token)]:
        assert secret not in text, f"{name} found"
    assert "***" in written.decode("utf-8", "replace")  # the echoes were recorded, masked


async def test_a_body_over_the_size_limit_is_a_413_on_both_surfaces_and_logs_no_traceback(
    setup: Setup, receivers: list[Receiver], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    r = await receiver(receivers)
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("ROUTER_SECRETS_KEY", base64.b64encode(b"k" * 32).decode())
    doc = setup.config([{"id": "x", "url": r.url, "secret": SECRET}], [{"endpoint": "x", "events": ["*"]}])
    doc["admin"]["token_env"] = "ROUTER_ADMIN_TOKEN"
    doc["api"] = {"enabled": True, "secrets_key_env": "ROUTER_SECRETS_KEY", "allowed_networks": ["127.0.0.0/8"]}
    huge = b'{"from_time": "' + b"9" * 50_000_000 + b'"}'  # 50 MB
    async with running(setup.write(doc)) as app:
        assert app.components is not None
        base = f"http://127.0.0.1:{app.components.admin.port}"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        with caplog.at_level(logging.INFO):
            async with aiohttp.ClientSession(headers=auth) as http:
                await http.post(base + "/v1/tenants", json={"id": "acme"})
                async with http.post(base + "/v1/endpoints", json={"tenant": "acme", "url": r.url, "events": ["*"],
                                                                   "allow_http": True}) as resp:  # fmt: skip
                    api_id = (await resp.json())["id"]
                requests = [("POST", "/endpoints/x/replay"), ("POST", "/deliveries/msg_x/redeliver"),
                            ("POST", "/partitions/t/0/skip"), ("POST", "/v1/endpoints/x/replay"),
                            ("POST", "/v1/endpoints"), ("PATCH", f"/v1/endpoints/{api_id}"), ("POST", "/v1/tenants"),
                            ("POST", f"/v1/endpoints/{api_id}/rotate-secret")]  # fmt: skip
                for method, route in requests:
                    async with http.request(method, base + route, data=io.BytesIO(huge)) as resp:
                        answer = await resp.json()
                    assert (resp.status, "too large" in answer["error"]) == (413, True), (route, answer)
        assert app.ready()
    logged = [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info or rec.exc_text]
    assert logged == [], [rec.getMessage() for rec in logged]
