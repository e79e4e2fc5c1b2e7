"""The operator's commands (``webhook-router endpoints list|pause|resume|ping|replay``, ``pause``, ``resume``,
``redeliver``, ``replay``) through ``--config``, against one live daemon with the endpoints API off and one with it
on: each works against either, for endpoints of the config file and, with the API on, of the API."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from typing import Any

import pytest

from tests.helpers import ADMIN_TOKEN, SECRET, Receiver, produce, read_topic
from tests.integration.conftest import Setup, receiver, running

ADMIN = ADMIN_TOKEN


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WR_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("WR_SECRETS_KEY", base64.b64encode(os.urandom(32)).decode())


async def _cli(setup: Setup, *argv: str) -> tuple[int, str, str]:
    """``webhook-router ARGV --config PATH`` as a process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *argv, "--config", str(setup.path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def _ok(setup: Setup, *argv: str) -> str:
    code, out, err = await _cli(setup, *argv)
    assert code == 0, (argv, out, err)
    return out


def _status_of(listing: str, endpoint_id: str) -> str:
    """The STATUS cell of an endpoint's row in a list's table."""
    header, *rows = listing.splitlines()
    column = header.split().index("STATUS")
    (row,) = [r.split() for r in rows if r.split()[0] == endpoint_id]
    return row[column]


@pytest.mark.parametrize("api_on", [False, True], ids=["api-off", "api-on"])
async def test_every_operator_command_works_with_the_api_off_and_on(
    api_on: bool, setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    doc = setup.config([{"id": "static", "url": r.url, "secret": SECRET}], [{"endpoint": "static", "events": ["*"]}])
    doc["admin"]["token_env"] = "WR_ADMIN_TOKEN"
    if api_on:
        doc["api"] = {"enabled": True, "secrets_key_env": "WR_SECRETS_KEY", "allowed_networks": ["127.0.0.0/8"]}
    async with running(setup.write(doc)):
        ids = ["static"]
        if api_on:
            await _ok(setup, "tenants", "create", "acme")
            out = await _ok(setup, "endpoints", "create", "--tenant", "acme", "--endpoint-url", r.url,
                            "--events", "*", "--set", "allow_http=true", "--json")  # fmt: skip
            ids.append(json.loads(out)["id"])
        await produce(setup.broker.bootstrap, setup.topic, [json.dumps({"event": "lead.created"}).encode()])
        await r.wait_for(len(ids))

        def delivered(records: list[dict[str, Any]]) -> bool:
            return {x["endpoint_id"] for x in records if x["status"] == "delivered"} >= set(ids)

        records = await read_topic(setup.broker.bootstrap, setup.results, delivered)
        first = {x["endpoint_id"]: x for x in records if x["status"] == "delivered" and x["trigger"] == "live"}

        listing = await _ok(setup, "endpoints", "list")
        assert all(_status_of(listing, i) == "active" for i in ids), listing
        for endpoint_id in ids:
            sent = len(r.requests)
            await _ok(setup, "pause", endpoint_id)
            assert _status_of(await _ok(setup, "endpoints", "list"), endpoint_id) == "paused"
            await _ok(setup, "resume", endpoint_id)
            assert _status_of(await _ok(setup, "endpoints", "list"), endpoint_id) == "active"
            await _ok(setup, "endpoints", "pause", endpoint_id)
            assert endpoint_id in await _ok(setup, "endpoints", "list", "--status", "paused")
            await _ok(setup, "endpoints", "resume", endpoint_id)
            assert endpoint_id not in await _ok(setup, "endpoints", "list", "--status", "paused")

            pinged = json.loads(await _ok(setup, "endpoints", "ping", endpoint_id, "--json"))
            assert (pinged["status"], pinged["trigger"]) == ("delivered", "ping")

            record = first[endpoint_id]
            by_id = json.loads(await _ok(setup, "redeliver", record["delivery_id"], "--json"))
            assert (by_id["status"], by_id["trigger"], by_id["delivery_id"], by_id["redelivery_of_id"]) == (
                "delivered", "redelivery", record["delivery_id"], record["attempt_id"])  # fmt: skip
            where = ("--endpoint", endpoint_id, "--topic", record["source_topic"], "--partition",
                     str(record["source_partition"]), "--offset", str(record["source_offset"]))  # fmt: skip
            by_place = json.loads(await _ok(setup, "redeliver", record["delivery_id"], *where, "--json"))
            assert (by_place["status"], by_place["trigger"]) == ("delivered", "redelivery")

            offsets = ("--topic", setup.topic, "--partition", "0", "--from-offset", "0")
            replayed = json.loads(await _ok(setup, "replay", endpoint_id, *offsets, "--json"))
            assert replayed == {"scanned": 1, "matched": 1, "complete": True}
            replayed = json.loads(await _ok(setup, "endpoints", "replay", endpoint_id, *offsets, "--json"))
            assert replayed == {"scanned": 1, "matched": 1, "complete": True}
            await r.wait_for(sent + 5)  # a ping, two redeliveries, two replays

        code, _, err = await _cli(setup, "pause", "nope")
        assert code == 1 and "no endpoint 'nope'" in err
        code, _, err = await _cli(setup, "redeliver", "msg_" + "0" * 32)
        assert code == 1 and "no delivery" in err
        if not api_on:  # what only the API does says so
            code, _, err = await _cli(setup, "endpoints", "get", "static")
            assert code == 1 and "endpoints get needs the endpoints API" in err, err
