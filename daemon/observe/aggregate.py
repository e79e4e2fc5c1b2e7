"""One ``/metrics`` for an instance of several workers: each worker's exposition merged into one, no series lost and
none counted twice. The rule of each family (``RULES``; one not named there: ``SUM`` for counters and histograms,
``WORKER`` for the rest, so that a new gauge is never summed by accident):

- ``SUM``: counters and histograms, per label set (every sample: ``_total``, ``_bucket``, ``_count``, ``_sum``), and
  the gauges that are totals of what each worker holds on its own: events and requests in flight, deliveries
  queued, results pending, stuck partitions, the routing caches' bytes.
- ``OWNER``: the per-partition gauges (lag, committable offset, retries due later). A partition is one worker's at a
  time, so there is one value: kept as it is (the highest, should a worker's last scrape still hold a partition it
  has since given up).
- ``WORKER``: each worker's own series, labelled ``worker="N"`` (the supervisor's own ``worker="supervisor"``), where
  a sum means nothing: the copy each worker keeps of what every worker reads whole (endpoints and subscriptions
  loaded, paused endpoints, the endpoints topic's refused and old-key records, how far behind it each reader is; the
  delivery index's copy, which worker 0 keeps and another only while it answers lookups),
  flags (fetch paused, contact with Kafka), what each process does once for the instance (config reloads), and
  ``process_*`` and ``python_*``.
- ``ONE``: the build info: each distinct label set once.

A ``_created`` sample (when a counter or histogram began) follows its family: the earliest of a ``SUM``.

``Aggregate`` keeps each worker's last scrape (a worker that does not answer one scrape is counted as it last was) and,
when a worker is gone, its last counts (``retire``): they are added to the sums from then on, so that a restarted
worker's counters starting again from 0 never make the instance's go down (what a scrape had not seen before the
worker died is lost, as it is for a single process).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

SUM = "sum"
OWNER = "owner"
WORKER = "worker"
ONE = "one"
_EARLIEST = "earliest"  # a SUM family's _created

P = "webhook_router_"
RULES: dict[str, str] = {
    # gauges: totals of what each worker holds
    P + "events_in_flight": SUM,
    P + "events_in_flight_bytes": SUM,
    P + "requests_in_flight": SUM,
    P + "deliveries_queued": SUM,
    P + "endpoint_circuits_open": SUM,
    P + "results_pending": SUM,
    P + "partitions_stuck": SUM,
    P + "routing_cache_bytes": SUM,
    # gauges: per partition, of the worker that holds it
    P + "consumer_lag_records": OWNER,
    P + "consumer_offset": OWNER,
    P + "retries_due_later_records": OWNER,
    # gauges: each worker's own state
    P + "endpoints": WORKER,
    P + "subscriptions": WORKER,
    P + "endpoints_paused": WORKER,
    P + "endpoints_records_under_old_keys": WORKER,
    P + "endpoints_behind_records": WORKER,
    P + "endpoints_behind_seconds": WORKER,
    P + "delivery_index_behind_records": WORKER,
    P + "delivery_index_behind_seconds": WORKER,
    P + "delivery_index_entries": WORKER,
    P + "delivery_index_bytes": WORKER,
    P + "fetch_paused": WORKER,
    P + "fetch_max_wait_seconds": WORKER,
    P + "kafka_contact": WORKER,
    P + "kafka_refused": WORKER,  # each worker is refused the same credentials and topics: never summed
    P + "kafka_producer_idempotent": WORKER,
    P + "kafka_last_contact_timestamp_seconds": WORKER,
    P + "event_loop_tasks": WORKER,
    # counters of what every worker does once for the instance (each reads the whole endpoints topic, each reloads)
    P + "config_reloads": WORKER,
    P + "endpoints_records_refused": WORKER,
    P + "build_info": ONE,
    # the supervisor's own (it alone serves them)
    P + "workers": SUM,
    P + "workers_ready": SUM,
    P + "worker_restarts": SUM,
    P + "worker_scrape_errors": SUM,
}
_PER_PROCESS = ("process_", "python_")
_MONOTONIC = ("counter", "histogram")

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]  # a sample's name and its labels, sorted


@dataclass
class Family:
    name: str
    documentation: str
    kind: str
    samples: dict[Key, float] = field(default_factory=dict)


Families = list[Family]


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|\Z)')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"n": "\n"}


def parse(text: str) -> Families:
    """An exposition in the Prometheus text format as prometheus_client writes it (``# HELP``, then ``# TYPE``, then
    the family's samples; a counter's family named without ``_total``, as prometheus_client's own parser names it);
    ValueError for a line it is not. Ten times as fast as prometheus_client's parser, which reads every variant of the
    format: the supervisor reads its workers' scrapes on each of its own."""
    out: Families = []
    family: Family | None = None
    documentation = ""
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            fields = line.split(" ", 3)
            if len(fields) >= 3 and fields[1] == "HELP":
                documentation = _unescape(fields[3]) if len(fields) == 4 else ""
            elif len(fields) == 4 and fields[1] == "TYPE":
                name, kind = fields[2], fields[3]
                kind = "unknown" if kind == "untyped" else kind
                family = Family(name.removesuffix("_total") if kind == "counter" else name, documentation, kind)
                out.append(family)
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise ValueError(f"not a sample: {line[:200]!r}")
        name, labels, value = match.groups()
        pairs = _labels(labels) if labels else ()
        if family is None or not name.startswith(family.name):
            family = Family(name, "", "unknown")
            out.append(family)
        family.samples[(name, pairs)] = float(value)
    return out


def _labels(text: str) -> Labels:
    pairs, at = [], 0
    for match in _LABEL.finditer(text):
        if match.start() != at:
            break
        pairs.append((match[1], _unescape(match[2])))
        at = match.end()
    if at != len(text):
        raise ValueError(f"not labels: {text[:200]!r}")
    return tuple(sorted(pairs))


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda m: _ESCAPED.get(m[1], m[1]), text) if "\\" in text else text


def rule(name: str, kind: str, kinds: Mapping[str, str]) -> str:
    """How a family is merged; ``kinds`` (every family's kind in the same scrape) tells a ``_created`` family's."""
    if name.startswith(_PER_PROCESS):
        return WORKER
    base = name.removesuffix("_created")
    if base != name and kinds.get(base) in _MONOTONIC:
        of_base = rule(base, kinds[base], kinds)
        return _EARLIEST if of_base == SUM else of_base
    if name in RULES:
        return RULES[name]
    return SUM if kind in _MONOTONIC else WORKER


def merge(scrapes: Mapping[str, Families], carried: Iterable[Family] = ()) -> str:
    """The exposition of the instance: ``scrapes`` by worker label (``"0"``, ``"1"``..., ``"supervisor"``), merged
    family by family as ``RULES`` says; ``carried`` (retired workers' counts, all ``SUM``) added to the sums."""
    merged: dict[str, Family] = {}
    for worker, families in scrapes.items():
        kinds = {f.name: f.kind for f in families}
        for family in families:
            how = rule(family.name, family.kind, kinds)
            into = merged.setdefault(family.name, Family(family.name, family.documentation, family.kind))
            for (name, labels), value in family.samples.items():
                if how == WORKER:
                    into.samples[(name, (*labels, ("worker", worker)))] = value
                    continue
                key = (name, labels)
                was = into.samples.get(key)
                if was is None or how == ONE:
                    into.samples[key] = value
                elif how == SUM:
                    into.samples[key] = was + value
                elif how == _EARLIEST:
                    into.samples[key] = min(was, value)
                else:  # OWNER
                    into.samples[key] = max(was, value)
    for family in carried:
        into = merged.setdefault(family.name, Family(family.name, family.documentation, family.kind))
        for key, value in family.samples.items():
            into.samples[key] = into.samples.get(key, 0.0) + value
    return render(merged.values())


def render(families: Iterable[Family]) -> str:
    """Families in the Prometheus text format, written as prometheus_client's ``generate_latest`` writes them."""
    out: list[str] = []
    for family in families:
        name = family.name + "_total" if family.kind == "counter" else family.name
        documentation = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        kind = "untyped" if family.kind == "unknown" else family.kind
        out.append(f"# HELP {name} {documentation}\n# TYPE {name} {kind}\n")
        for (sample, labels), value in family.samples.items():
            if labels:
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels))
                out.append(f"{sample}{{{pairs}}} {_number(value)}\n")
            else:
                out.append(f"{sample} {_number(value)}\n")
    return "".join(out)


def _number(value: float) -> str:
    """A value as prometheus_client writes it (``+Inf``, ``1e+20``)."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Aggregate:
    """Every worker's last scrape, and what the processes of workers gone before left in the sums. A worker's
    processes are told apart by their incarnation: 1, 2, 3... as the supervisor starts them."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, Families]] = {}  # worker -> (the incarnation scraped, its last scrape)
        self._gone: dict[str, int] = {}  # worker -> its latest incarnation retired
        self._carried: dict[str, Family] = {}

    def observe(self, worker: str, incarnation: int, text: str) -> None:
        """A scrape of ``worker``'s process ``incarnation``; one of a later process retires the earlier first, one of
        a process retired already is dropped (it answered just before it ended). ValueError when ``text`` is not an
        exposition (the last scrape is kept)."""
        families = parse(text)
        if self._admit(worker, incarnation):
            self._last[worker] = (incarnation, families)

    def _admit(self, worker: str, incarnation: int) -> bool:
        """Whether a scrape of ``worker``'s process ``incarnation`` counts: not of a process retired already; one of a
        later process than the one last seen retires the earlier first."""
        if incarnation <= self._gone.get(worker, 0):
            return False
        last = self._last.get(worker)
        if last is not None and last[0] != incarnation:
            self.retire(worker, last[0])
        return True

    def retire(self, worker: str, incarnation: int) -> None:
        """``worker``'s process ``incarnation`` has ended: its counts stay in the sums, its gauges go."""
        self._gone[worker] = max(incarnation, self._gone.get(worker, 0))
        last = self._last.get(worker)
        if last is None or last[0] > incarnation:
            return
        del self._last[worker]
        families = last[1]
        kinds = {f.name: f.kind for f in families}
        for family in families:
            if family.kind not in _MONOTONIC or rule(family.name, family.kind, kinds) != SUM:
                continue
            into = self._carried.setdefault(family.name, Family(family.name, family.documentation, family.kind))
            for key, value in family.samples.items():
                into.samples[key] = into.samples.get(key, 0.0) + value

    def render(self, own: str) -> str:
        """The instance's exposition: the supervisor's own (``own``) and every worker's last scrape, merged."""
        scrapes = {worker: families for worker, (_, families) in sorted(self._last.items(), key=_by_index)}
        scrapes["supervisor"] = parse(own)
        return merge(scrapes, self._carried.values())

    def render_only(self, names: Iterable[str], scrapes: Mapping[str, tuple[int, str]], own: str) -> str:
        """The series ``names`` alone (a scrape's ``name[]``): ``scrapes`` are the workers' answers to the same
        question, (incarnation, text) by worker, merged with what retired workers left as ``render`` merges, and not
        kept (each worker's last full scrape stays its last). A worker that did not answer is counted as its last full
        scrape had it; a later incarnation than the one last seen retires the earlier first, as ``observe`` does.
        ValueError when an answer is not an exposition."""
        wanted = frozenset(names)
        answered = {worker: (incarnation, parse(text)) for worker, (incarnation, text) in scrapes.items()}
        parts: dict[str, Families] = {}
        for worker in sorted({*self._last, *answered}, key=lambda w: _by_index((w, None))):
            if worker in answered:
                incarnation, families = answered[worker]
                if not self._admit(worker, incarnation):
                    continue
            else:
                families = self._last[worker][1]
            parts[worker] = _only(families, wanted)
        parts["supervisor"] = parse(own)
        return merge(parts, _only(self._carried.values(), wanted))


def _only(families: Iterable[Family], wanted: frozenset[str]) -> Families:
    """The families that have samples named in ``wanted``, with only those samples."""
    out: Families = []
    for family in families:
        samples = {key: value for key, value in family.samples.items() if key[0] in wanted}
        if samples:
            out.append(Family(family.name, family.documentation, family.kind, samples))
    return out


def _by_index(item: tuple[str, object]) -> tuple[int, str]:
    return (int(item[0]), item[0]) if item[0].isdigit() else (1 << 30, item[0])
