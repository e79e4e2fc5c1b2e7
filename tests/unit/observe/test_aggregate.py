"""The instance's /metrics under workers (``daemon.observe.aggregate``): worker expositions merged with no series lost
and none counted twice, each family by its rule, and counters that never go down across a worker's restart."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.observe.aggregate import RULES, Aggregate, merge, parse, render, rule
from daemon.observe.metrics import Metrics, SupervisorMetrics


def scrape(setup: Callable[[Metrics], object] = lambda m: None) -> str:
    metrics = Metrics()
    setup(metrics)
    return generate_latest(metrics.registry).decode()


def samples(text: str) -> dict[str, float]:
    """Every sample as ``name{labels}`` (labels sorted) -> value."""
    out = {}
    for family in parse(text):
        for (name, labels), value in family.samples.items():
            out[name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"] = value
    return out


def merged(*workers: str, own: str = "") -> dict[str, float]:
    scrapes = {str(i): parse(text) for i, text in enumerate(workers)}
    if own:
        scrapes["supervisor"] = parse(own)
    return samples(merge(scrapes))


def test_counters_and_histograms_are_summed_per_label_set() -> None:
    def first(m: Metrics) -> None:
        m.deliveries.labels("delivered", "2xx").inc(3)
        m.deliveries.labels("failed", "5xx").inc(1)
        m.delivery_duration.labels("delivered").observe(0.003)

    def second(m: Metrics) -> None:
        m.deliveries.labels("delivered", "2xx").inc(4)
        m.delivery_duration.labels("delivered").observe(0.003)
        m.delivery_duration.labels("delivered").observe(7)

    got = merged(scrape(first), scrape(second))
    assert got['webhook_router_deliveries_total{outcome="delivered",status_class="2xx"}'] == 7
    assert got['webhook_router_deliveries_total{outcome="failed",status_class="5xx"}'] == 1
    assert got['webhook_router_delivery_duration_seconds_count{outcome="delivered"}'] == 3
    assert got['webhook_router_delivery_duration_seconds_sum{outcome="delivered"}'] == pytest.approx(7.006)
    assert got['webhook_router_delivery_duration_seconds_bucket{le="0.005",outcome="delivered"}'] == 2
    assert got['webhook_router_delivery_duration_seconds_bucket{le="+Inf",outcome="delivered"}'] == 3


def test_gauges_of_what_each_worker_holds_are_summed() -> None:
    def busy(n: int) -> Callable[[Metrics], None]:
        def setup(m: Metrics) -> None:
            m.events_in_flight.labels("events").set(n)
            m.requests_in_flight.set(n * 10)
            m.deliveries_queued.set(1)

        return setup

    got = merged(scrape(busy(2)), scrape(busy(5)))
    assert got['webhook_router_events_in_flight{consumer="events"}'] == 7
    assert got["webhook_router_requests_in_flight{}"] == 70
    assert got["webhook_router_deliveries_queued{}"] == 2


def test_a_partition_s_lag_is_its_owner_s_and_never_counted_twice() -> None:
    def owns(partition: str, lag: int) -> Callable[[Metrics], None]:
        return lambda m: m.consumer_lag.labels("events", partition).set(lag)

    got = merged(scrape(owns("0", 5)), scrape(owns("1", 7)))
    assert got['webhook_router_consumer_lag_records{partition="0",topic="events"}'] == 5
    assert got['webhook_router_consumer_lag_records{partition="1",topic="events"}'] == 7
    # A worker's last scrape from before a rebalance may still hold the partition: one value, not a sum.
    got = merged(scrape(owns("0", 5)), scrape(owns("0", 3)))
    assert got['webhook_router_consumer_lag_records{partition="0",topic="events"}'] == 5


def test_each_worker_s_own_state_is_labelled_with_the_worker_and_process_metrics_too() -> None:
    def loaded(m: Metrics) -> None:
        m.endpoints.set(3)
        m.endpoints_paused.labels("operator").set(1)
        m.kafka_contact.set(1)
        m.config_reloads.labels("ok").inc()

    own = SupervisorMetrics(workers=2)
    own.config_reloads.labels("ok").inc()
    got = merged(scrape(loaded), scrape(loaded), own=generate_latest(own.registry).decode())
    assert got['webhook_router_endpoints{worker="0"}'] == got['webhook_router_endpoints{worker="1"}'] == 3
    assert "webhook_router_endpoints{}" not in got
    assert got['webhook_router_endpoints_paused{reason="operator",worker="1"}'] == 1
    assert got['webhook_router_kafka_contact{worker="0"}'] == 1
    for worker in ("0", "1", "supervisor"):
        assert got[f'webhook_router_config_reloads_total{{result="ok",worker="{worker}"}}'] == 1
        assert got[f'process_resident_memory_bytes{{worker="{worker}"}}'] > 0
    assert "process_resident_memory_bytes{}" not in got
    assert got["webhook_router_workers{}"] == 2
    (build,) = [k for k in got if k.startswith("webhook_router_build_info")]
    assert got[build] == 1


def test_no_series_of_any_worker_is_lost() -> None:
    def first(m: Metrics) -> None:
        m.events_consumed.labels("a").inc()
        m.consumer_offset.labels("a", "0").set(10)

    def second(m: Metrics) -> None:
        m.events_consumed.labels("b").inc(2)
        m.endpoint_attempts.labels("crm", "delivered").inc()

    got = merged(scrape(first), scrape(second))
    for name in ('webhook_router_events_consumed_total{topic="a"}', 'webhook_router_events_consumed_total{topic="b"}',
                 'webhook_router_consumer_offset{partition="0",topic="a"}',
                 'webhook_router_endpoint_attempts_total{endpoint="crm",outcome="delivered"}'):  # fmt: skip
        assert name in got
    inputs = {k.split("{")[0] for text in (scrape(first), scrape(second)) for k in samples(text)}
    assert inputs <= {k.split("{")[0] for k in got}


def test_every_gauge_a_worker_serves_has_a_rule_of_its_own() -> None:
    """A new gauge is labelled per worker until someone decides otherwise: this test makes them decide."""
    families = parse(scrape())
    kinds = {f.name: f.kind for f in families}
    undecided = [
        f.name
        for f in families
        if f.kind == "gauge" and not f.name.startswith(("process_", "python_")) and not f.name.endswith("_created")
        and f.name not in RULES
    ]  # fmt: skip
    assert undecided == []
    assert rule("webhook_router_deliveries_created", "gauge", kinds) == "earliest"
    assert rule("webhook_router_config_reloads_created", "gauge", kinds) == "worker"


def test_a_counter_of_the_instance_never_goes_down_when_a_worker_is_restarted() -> None:
    def delivered(n: int) -> Callable[[Metrics], None]:
        def setup(m: Metrics) -> None:
            m.deliveries.labels("delivered", "2xx").inc(n)
            m.requests_in_flight.set(n)

        return setup

    aggregate = Aggregate()
    own = generate_latest(SupervisorMetrics(workers=2).registry).decode()
    key = 'webhook_router_deliveries_total{outcome="delivered",status_class="2xx"}'
    aggregate.observe("0", 1, scrape(delivered(5)))
    aggregate.observe("1", 1, scrape(delivered(10)))
    assert samples(aggregate.render(own))[key] == 15
    aggregate.retire("1", 1)  # killed: its counts stay, its gauges go
    got = samples(aggregate.render(own))
    assert got[key] == 15 and got["webhook_router_requests_in_flight{}"] == 5
    aggregate.observe("1", 1, scrape(delivered(11)))  # a scrape it answered just before it ended: dropped
    assert samples(aggregate.render(own))[key] == 15
    aggregate.observe("1", 2, scrape(delivered(2)))  # its replacement starts from 0
    assert samples(aggregate.render(own))[key] == 17
    aggregate.observe("1", 3, scrape(delivered(1)))  # replaced again, its end not seen yet: the new process retires it
    assert samples(aggregate.render(own))[key] == 18
    aggregate.retire("1", 2)  # seen late: counted once
    aggregate.retire("1", 3)
    aggregate.retire("1", 3)
    assert samples(aggregate.render(own))[key] == 18


def test_a_scrape_that_is_not_an_exposition_keeps_the_last_one() -> None:
    aggregate = Aggregate()
    aggregate.observe("0", 1, scrape(lambda m: m.results_written.inc(4)))
    with pytest.raises(ValueError):
        aggregate.observe("0", 1, "webhook_router_results_written_total{oops 4\n")
    assert samples(aggregate.render(""))["webhook_router_results_written_total{}"] == 4


def test_an_exposition_reads_as_prometheus_client_reads_it_and_is_written_back_as_it_was() -> None:
    def busy(m: Metrics) -> None:
        m.deliveries.labels("delivered", "2xx").inc(3)
        m.delivery_duration.labels("delivered").observe(0.2)
        m.consumer_lag.labels('odd "topic"\\name\nwith a line', "0").set(1e20)
        m.endpoints_paused.labels("operator").set(float("inf"))

    text = scrape(busy)
    theirs = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
    ours = parse(text)
    assert {key: value for f in ours for key, value in f.samples.items()} == theirs
    assert [(f.name, f.kind, f.documentation) for f in ours] == [
        (f.name, f.type, f.documentation) for f in text_string_to_metric_families(text)
    ]
    assert render(ours) == text
    with pytest.raises(ValueError):
        parse('webhook_router_endpoints{a="1"b="2"} 1\n')


def test_the_merged_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: apt-get install prometheus (make test does)")

    def busy(m: Metrics) -> None:
        m.deliveries.labels("delivered", "2xx").inc(3)
        m.delivery_duration.labels("delivered").observe(0.2)
        m.consumer_lag.labels("events", "0").set(1)
        m.endpoints.set(2)

    aggregate = Aggregate()
    aggregate.observe("0", 1, scrape(busy))
    aggregate.observe("1", 2, scrape(busy))
    text = aggregate.render(generate_latest(SupervisorMetrics(workers=2).registry).decode())
    linted = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_a_scrape_of_some_names_alone_is_merged_as_a_full_one_and_keeps_nothing() -> None:
    def delivered(n: int) -> Callable[[Metrics], None]:
        def setup(m: Metrics) -> None:
            m.deliveries.labels("delivered", "2xx").inc(n)
            m.requests_in_flight.set(n)

        return setup

    names = ["webhook_router_deliveries_total"]
    key = 'webhook_router_deliveries_total{outcome="delivered",status_class="2xx"}'
    aggregate = Aggregate()
    own = generate_latest(SupervisorMetrics(workers=3).registry.restricted_registry(names)).decode()
    aggregate.observe("0", 1, scrape(delivered(5)))
    aggregate.observe("1", 1, scrape(delivered(10)))
    aggregate.observe("2", 1, scrape(delivered(1)))
    aggregate.retire("2", 1)  # gone: its count is carried
    partial = {"0": (1, scrape(delivered(7)))}  # worker 1 did not answer: its last full scrape counts
    got = samples(aggregate.render_only(names, partial, own))
    assert got == {key: 7 + 10 + 1}  # that series alone: no gauge, no other family, not even an empty one
    assert samples(aggregate.render(own))[key] == 5 + 10 + 1  # the partial scrape was not kept
    got = samples(aggregate.render_only(names, {"1": (2, scrape(delivered(3)))}, own))  # worker 1 restarted
    assert got[key] == 5 + 10 + 3 + 1  # its first process retired: counted once, never lost
    assert samples(aggregate.render(own))[key] == 5 + 10 + 1  # worker 1's new process not scraped in full yet
