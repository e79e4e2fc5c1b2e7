"""The delivery index against a live daemon, broker and receivers: a delivery made before 100,000 others (far past the
scan's bound) is found by its id, through the index, and redelivered; searched by endpoint, outcome, event type and
time; another tenant's delivery is the same 404 as one that never was, by every path; a delivery the index has no entry
for (made while it was off) is found by the bounded scan, which the answer says; a restart reads the index again from
its topic, and ``webhook-router index-rebuild`` writes the entries the index lacks from the results topic.

The 100,000 other deliveries are written as the router writes them, without their HTTP requests: results records of
the same endpoint (so the old one sits 100,000 records deep in its endpoint's results partition) and each one's index
entry, pointing at where its results record landed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from daemon.app import App
from daemon.cli import main
from daemon.core.model import IndexRecord, IndexRow, encode_index
from daemon.kafka.clients import producer as make_producer
from daemon.kafka.history import find_delivery
from daemon.kafka.readers import Readers
from tests.helpers import Receiver, client_options, eventually, produce, read_topic
from tests.integration.conftest import Setup, parts, receiver, running
from tests.integration.test_endpoints_api import Client, _environment, api, api_config, ev  # noqa: F401
from tests.integration.test_scan_bounds import endpoint, tenants

OTHERS = 100_000


def indexed(setup: Setup, **api_settings: Any) -> dict[str, Any]:
    doc = api_config(setup)
    doc["api"].update({"max_scan_records": 1_000, **api_settings})  # the scan's least bound: the index must answer
    return doc


async def delivered(c: Client, r: Receiver, count: int) -> str:
    """The webhook-id of the receiver's ``count``-th request, once its results record is indexed (or scanned)."""
    requests = await r.wait_for(count)
    delivery_id = requests[count - 1].headers["webhook-id"]

    async def found() -> bool:
        return (await c.call("GET", f"/v1/deliveries/{delivery_id}"))[0] == 200

    await eventually(found, 20)
    return delivery_id


async def write_others(setup: Setup, endpoint_id: str, count: int) -> None:
    """``count`` deliveries of ``lead.updated`` to ``endpoint_id`` that failed with a 500, as the router records them:
    results records keyed by the endpoint, then their index entries with where each landed, 500 a record (the router
    writes one record for each write of results records)."""
    options = client_options(setup.broker.bootstrap)
    producer: AIOKafkaProducer = make_producer(options, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        delivery_ids = []
        sends = []
        now_ms = int(time.time() * 1000)
        for n in range(count):
            delivery_id = "msg_" + uuid.uuid4().hex
            value = json.dumps({
                "delivery_id": delivery_id, "endpoint_id": endpoint_id, "event_type": "lead.updated", "attempt": 1,
                "status": "failed", "http_status": 500, "duration_ms": 1.0, "response_body": "", "error": None,
                "source_topic": setup.topic, "source_partition": 0, "source_offset": n, "trigger": "live",
                "timestamp": "2026-12-05T00:00:00.000Z",
            }).encode()  # fmt: skip
            sends.append(await producer.send(setup.results, value, key=endpoint_id.encode()))
            delivery_ids.append(delivery_id)
        index_topic = f"{setup.prefix}.delivery-index"
        partitions = sorted(await producer.partitions_for(index_topic))
        rows: list[IndexRow] = []
        for delivery_id, sent in zip(delivery_ids, sends, strict=True):
            landed = await sent
            rows.append((landed.partition, landed.offset, delivery_id, endpoint_id, "lead.updated", "failed", 1, "live",
                         now_ms, 500, None))  # fmt: skip
            if len(rows) == 500 or delivery_id == delivery_ids[-1]:
                index_partition = partitions[landed.partition % len(partitions)]
                await producer.send(index_topic, encode_index(IndexRecord(entries=rows)), partition=index_partition)
                rows = []
        await producer.flush()
    finally:
        await producer.stop()


async def made_old(app: App, setup: Setup, c: Client, r: Receiver, endpoint_id: str, event: bytes) -> str:
    """The delivery id of ``event``, delivered to ``endpoint_id`` (at ``r``, its first request) before ``OTHERS``
    deliveries of the same endpoint, once this instance's index has read all of them."""
    await produce(setup.broker.bootstrap, setup.topic, [event])
    old = await delivered(c, r, 1)
    await write_others(setup, endpoint_id, OTHERS)
    index = parts(app).operator.scans.index
    assert index is not None
    await eventually(lambda: index.read >= OTHERS + 1, 60)
    return old


def index_metrics(app: App) -> dict[str, float | None]:
    read = app.metrics.registry.get_sample_value
    return {
        n: read(f"webhook_router_delivery_index_{n}") for n in ("entries", "bytes", "behind_records", "behind_seconds")
    }


async def test_a_delivery_made_before_100000_others_is_found_by_id_through_the_index_and_redelivered(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    async with running(setup.write(indexed(setup))) as app, api(setup.admin_port) as c:
        acme, _ = await tenants(c)
        acme_ep = await endpoint(c, "acme", r.url)
        old = await made_old(app, setup, acme, r, acme_ep, ev(n=1))

        # The metrics say what the copy holds, and that it is not behind (after the 100,000 were read).
        async def caught_up() -> bool:
            shown = index_metrics(app)
            return shown["behind_records"] == 0 and (shown["behind_seconds"] or 0) < 10

        await eventually(caught_up, 20)
        shown = index_metrics(app)
        assert shown["entries"] == OTHERS + 1
        assert (shown["bytes"] or 0) > (OTHERS + 1) * 50  # about 100 bytes an entry with SQLite's indexes

        # The bounded scan alone does not reach it: 100,000 newer records of its endpoint's partition stand before it.
        assert await find_delivery(Readers(client_options(setup.broker.bootstrap)), setup.results, old, 1_000) == []

        for caller in (acme, c):  # its tenant, and the platform
            status, answer = await caller.call("GET", f"/v1/deliveries/{old}")
            assert status == 200, answer
            assert (answer["found_by"], answer["note"]) == ("index", None)
            ((attempt,),) = [answer["data"]]
            assert (attempt["delivery_id"], attempt["endpoint_id"], attempt["status"]) == (old, acme_ep, "delivered")

        status, answer = await acme.call("GET", f"/v1/deliveries?event_type=lead.created&endpoint_id={acme_ep}")
        assert status == 200, answer
        assert [e["delivery_id"] for e in answer["data"]] == [old]
        status, answer = await acme.call("GET", "/v1/deliveries?status=delivered")
        assert [e["delivery_id"] for e in answer["data"]] == [old]
        status, answer = await acme.call("GET", "/v1/deliveries?status=failed&limit=200")
        assert len(answer["data"]) == 200 and answer["next_before"] is not None
        status, page = await acme.call("GET", f"/v1/deliveries?status=failed&limit=200&before={answer['next_before']}")
        assert status == 200 and len(page["data"]) == 200
        assert not {e["delivery_id"] for e in page["data"]} & {e["delivery_id"] for e in answer["data"]}

        status, outcome = await acme.call("POST", f"/v1/deliveries/{old}/redeliver")
        assert (status, outcome["status"], outcome["trigger"]) == (200, "delivered", "redelivery"), outcome
        again = (await r.wait_for(2))[1]
        assert again.headers["webhook-id"] == old  # the same delivery, once more
        assert len(r.requests) == 2

        async def both_attempts() -> bool:
            answer = (await acme.call("GET", f"/v1/deliveries/{old}"))[1]
            return [a["trigger"] for a in answer["data"]] == ["live", "redelivery"]

        await eventually(both_attempts, 20)  # side by side, oldest first


async def test_another_tenants_delivery_is_the_same_404_as_one_that_never_was_by_every_path(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    async with running(setup.write(indexed(setup))), api(setup.admin_port) as c:
        acme, globex = await tenants(c)
        acme_ep = await endpoint(c, "acme", r.url)
        await endpoint(c, "globex", r.url)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1)])
        theirs = await delivered(acme, r, 1)
        never = "msg_" + "0" * 32

        for path in ("/v1/deliveries/{}", "/v1/deliveries/{}/redeliver"):
            method = "POST" if path.endswith("redeliver") else "GET"
            status, answer = await globex.call(method, path.format(theirs))
            unknown = await globex.call(method, path.format(never))
            assert (status, unknown[0]) == (404, 404), answer
            assert answer["error"] == unknown[1]["error"].replace(never, theirs)
        assert (await globex.call("GET", f"/v1/deliveries?endpoint_id={acme_ep}"))[0] == 404
        status, answer = await globex.call("GET", "/v1/deliveries")
        assert (status, answer["data"]) == (200, [])
        assert (await globex.call("GET", "/v1/deliveries?tenant=acme"))[0] == 404
        assert len(r.requests) == 1  # nothing redelivered

        async def listed() -> bool:  # its tenant sees it once the index has read its entry (the scan found it first)
            status, answer = await acme.call("GET", "/v1/deliveries")
            assert status == 200, answer
            return [e["delivery_id"] for e in answer["data"]] == [theirs]

        await eventually(listed, 20)
        status, answer = await globex.call("GET", "/v1/deliveries")  # and the other tenant still nothing
        assert (status, answer["data"]) == (200, [])


async def test_a_delivery_the_index_lacks_is_found_by_the_scan_which_says_so_and_a_restart_rebuilds_the_index(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    with_index = indexed(setup)
    without = {**with_index, "api": {**with_index["api"], "delivery_index": False}}
    async with running(setup.write(with_index)), api(setup.admin_port) as c:
        acme, _ = await tenants(c)
        await endpoint(c, "acme", r.url)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1)])
        first = await delivered(acme, r, 1)
    async with running(setup.write(without)), api(setup.admin_port) as c:
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=2)])
        second = await delivered(c, r, 2)  # recorded while the index is off: no entry
        status, answer = await c.call("GET", f"/v1/deliveries/{first}")
        assert (status, answer["found_by"]) == (200, "scan")
        assert answer["note"] == "the delivery index is off (api.delivery_index = false)"
        status, answer = await c.call("GET", "/v1/deliveries")
        assert status == 409 and "api.delivery_index = false" in answer["error"]
    async with running(setup.write(with_index)) as app, api(setup.admin_port) as c:
        index = parts(app).operator.scans.index
        assert index is not None
        await eventually(lambda: index.caught_up, 20)  # read again from the topic at the start
        status, answer = await c.call("GET", f"/v1/deliveries/{first}")
        assert (status, answer["found_by"], answer["note"]) == (200, "index", None)
        status, answer = await c.call("GET", f"/v1/deliveries/{second}")
        assert (status, answer["found_by"], answer["note"]) == (200, "scan", None)  # up to date, without an entry
        assert [a["delivery_id"] for a in answer["data"]] == [second]
        status, answer = await c.call("GET", "/v1/deliveries")
        assert [e["delivery_id"] for e in answer["data"]] == [first]  # a search is the index's alone

        # Rebuilt from the results topic (the command, as an operator runs it): both, the first one's entry kept once.
        assert await asyncio.to_thread(main, ["index-rebuild", "--config", str(setup.path)]) == 0
        await eventually(lambda: index.read >= 3, 20)  # the first one's entry, then both again
        status, answer = await c.call("GET", f"/v1/deliveries/{second}")
        assert (status, answer["found_by"]) == (200, "index")
        status, answer = await c.call("GET", "/v1/deliveries")
        assert [e["delivery_id"] for e in answer["data"]] == [second, first]


async def test_an_instance_keeping_its_copy_on_demand_reads_the_index_from_its_first_lookup_on(
    setup: Setup, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    async with running(setup.write(indexed(setup, delivery_index_copy="on_demand"))) as app, api(setup.admin_port) as c:
        acme, _ = await tenants(c)
        await endpoint(c, "acme", r.url)
        await produce(setup.broker.bootstrap, setup.topic, [ev(n=1)])
        await read_topic(setup.broker.bootstrap, setup.results, lambda records: any(
            rec["status"] == "delivered" for rec in records))  # fmt: skip
        assert parts(app).operator.scans.index is None  # written (by this instance), not read
        assert index_metrics(app) == {"entries": 0, "bytes": 0, "behind_records": 0, "behind_seconds": 0}
        delivery = r.requests[0].headers["webhook-id"]
        status, answer = await acme.call("GET", f"/v1/deliveries/{delivery}")  # the first lookup opens the copy
        assert (status, answer["found_by"]) == (200, "scan"), answer  # the scan answers until it is read
        assert "the delivery index is still being read from its topic" in answer["note"]
        index = parts(app).operator.scans.index
        assert index is not None
        await eventually(lambda: index.caught_up, 20)

        async def by_index() -> bool:
            status, answer = await acme.call("GET", f"/v1/deliveries/{delivery}")
            return status == 200 and (answer["found_by"], answer["note"]) == ("index", None)

        await eventually(by_index, 20)
        assert index_metrics(app)["entries"] == 1
