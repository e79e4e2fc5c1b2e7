"""The producer of results, retries and dead letters: idempotent (acks=all) where the cluster grants a producer id,
which Apache Kafka does; Tansu refuses InitProducerId (UnknownError), so there ``enable_idempotence = "auto"`` (the
default) writes without it, saying so once, and ``true`` stops the start naming the setting."""

from __future__ import annotations

import logging

import pytest

from tests.helpers import SECRET, DaemonProcess, Receiver, produce
from tests.integration.conftest import BROKER_KIND, Setup, receiver, running, spawn


async def test_auto_is_idempotent_where_the_cluster_grants_it_and_says_once_where_it_does_not(
    setup: Setup, receivers: list[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    r = await receiver(receivers)
    setup.write(setup.config([{"id": "a", "url": r.url, "secret": SECRET}], [{"endpoint": "a", "events": ["*"]}]))
    async with running(setup.path) as app:
        await produce(setup.broker.bootstrap, setup.topic, [b'{"event": "x"}'])
        await r.wait_for(1)
        idempotent = app.metrics.producer_idempotent._value.get()
    refused = [rec for rec in caplog.records if "refused an idempotent producer" in rec.getMessage()]
    if BROKER_KIND == "kafka":
        assert idempotent == 1 and refused == []
    else:  # Tansu: InitProducerId answered UnknownError
        assert idempotent == 0 and len(refused) == 1 and refused[0].levelno == logging.WARNING
        assert "UnknownError" in refused[0].getMessage()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]  # aiokafka's own refusal line too


@pytest.mark.skipif(BROKER_KIND != "tansu", reason="Apache Kafka grants idempotent producers: nothing is refused")
async def test_true_on_a_cluster_that_refuses_it_stops_the_start_naming_the_setting(
    setup: Setup, daemons: list[DaemonProcess]
) -> None:
    setup.write(setup.config([], [], enable_idempotence=True))
    d = await spawn(daemons, setup, wait_ready=False)
    assert await d.wait(30) == 2
    assert "cannot start: kafka.enable_idempotence: the cluster refused an idempotent producer" in d.log(), d.log()
    assert "Traceback" not in d.log()
