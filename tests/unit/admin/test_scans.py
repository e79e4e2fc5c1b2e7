"""daemon.admin.scans.Scans and its copy of the delivery index: kept from the start where the instance's lookups are
answered, kept on demand elsewhere (opened by the first lookup or search, the scan answering meanwhile; closed once
idle, never while a lookup uses it), and its lag and size shown by the metrics (0 where no copy is kept).

At the seam: ``DeliveryIndex`` and the bounded scan (``find_delivery``) are in-memory stand-ins here (both read Kafka);
what they stand in for is tested against a real broker in tests/integration/test_delivery_index.py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection
from typing import Any, ClassVar

import pytest

from daemon.admin import scans as scans_module
from daemon.admin.scans import Scans
from daemon.core.config import Config
from daemon.core.model import IndexEntry
from daemon.core.validate import parse_config
from daemon.observe.metrics import Metrics

KAFKA = {"bootstrap_servers": "k:9092", "group_id": "g", "topics": ["t"], "results_topic": "results"}
DELIVERY = "msg_" + "0" * 32


class Index:
    """Stand-in for DeliveryIndex: no entries; ``gate``, when set, holds every lookup until it is set."""

    opened: ClassVar[list[Index]] = []
    gate: ClassVar[asyncio.Event | None] = None

    def __init__(self, topic: str, results_topic: str, client_options: Any) -> None:
        self.topic, self.results_topic = topic, results_topic
        self.started = self.stopped = False
        Index.opened.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def attempts(self, delivery_id: str, endpoint_ids: Collection[str] | None) -> list[IndexEntry]:
        if Index.gate is not None:
            await Index.gate.wait()
        return []

    async def search(self, endpoint_ids: Collection[str] | None, **filters: Any) -> list[IndexEntry]:
        return []

    def behind(self) -> str | None:
        return "the delivery index is still being read from its topic (0 entries so far)"

    def lag(self) -> tuple[int, float]:
        return 7, math.inf

    def size(self) -> tuple[int, int]:
        return 1_234, 56_789


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    Index.opened, Index.gate = [], None
    monkeypatch.setattr(scans_module, "DeliveryIndex", Index)

    async def scanned(*args: Any) -> list[bytes]:
        return []

    monkeypatch.setattr(scans_module, "find_delivery", scanned)


def held(scans: Scans) -> object:
    """The copy the scans keep now (a stand-in here)."""
    return scans.index


def config() -> Config:
    return parse_config({"kafka": KAFKA}, {})


async def test_the_process_answering_lookups_keeps_its_copy_from_the_start() -> None:
    scans = Scans({}, config, keep=0)
    await scans.start("p.delivery-index")
    try:
        (index,) = Index.opened
        assert held(scans) is index and index.started and index.results_topic == "results"
        await scans.delivery(None, DELIVERY, None)
        assert Index.opened == [index]
    finally:
        await scans.stop()
    assert index.stopped and scans.index is None


async def test_a_copy_kept_on_demand_is_opened_by_the_first_lookup_while_the_scan_answers_it() -> None:
    scans = Scans({}, config, keep=0)
    await scans.start("p.delivery-index", on_demand=True)
    try:
        assert (Index.opened, scans.index) == ([], None)
        found = await scans.delivery("acme", DELIVERY, ["ep"])
        (index,) = Index.opened
        assert (found.by, found.note) == ("scan", index.behind())
        assert held(scans) is index and index.started
        assert await scans.search(None, None) == ([], index.behind())  # the same copy
        assert Index.opened == [index]
    finally:
        await scans.stop()
    assert index.stopped


async def test_a_copy_kept_on_demand_is_closed_once_idle_never_during_a_lookup_and_opened_again_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scans_module, "ON_DEMAND_IDLE_S", 0.2)
    scans = Scans({}, config, keep=0)
    await scans.start("p.delivery-index", on_demand=True)
    try:
        Index.gate = asyncio.Event()
        lookup = asyncio.create_task(scans.delivery(None, DELIVERY, None))
        await asyncio.sleep(0.6)  # idle for longer than the bound, but one lookup is under way
        (first,) = Index.opened
        assert held(scans) is first and not first.stopped
        Index.gate.set()
        await lookup

        async def closed() -> None:
            while not first.stopped:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(closed(), 10)
        assert scans.index is None
        await scans.delivery(None, DELIVERY, None)
        (_, again) = Index.opened
        assert held(scans) is again and again.started
    finally:
        await scans.stop()


async def test_without_the_index_nothing_is_opened_and_a_lookup_says_it_is_off() -> None:
    scans = Scans({}, config, keep=0)
    await scans.start(None, on_demand=True)
    try:
        found = await scans.delivery(None, DELIVERY, None)
        assert (found.by, found.note) == ("scan", "the delivery index is off (api.delivery_index = false)")
        assert Index.opened == []
    finally:
        await scans.stop()


async def test_the_metrics_show_the_copys_lag_and_size_and_0_where_none_is_kept() -> None:
    metrics = Metrics()
    scans = Scans({}, config, keep=0)
    await scans.start("p.delivery-index", on_demand=True, metrics=metrics)
    names = ("behind_records", "behind_seconds", "entries", "bytes")

    def read() -> list[float | None]:
        return [metrics.registry.get_sample_value(f"webhook_router_delivery_index_{name}") for name in names]

    try:
        assert read() == [0, 0, 0, 0]
        await scans.delivery(None, DELIVERY, None)
        assert read() == [7, math.inf, 1_234, 56_789]
    finally:
        await scans.stop()
    assert read() == [0, 0, 0, 0]
