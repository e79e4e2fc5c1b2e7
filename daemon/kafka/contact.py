"""Contact with the Kafka cluster: whether it answers, said once when lost and once when back, and log lines that
can repeat many times a second (aiokafka's own above all) let through once in a while and counted.

With a broker down, aiokafka logs every failed connection, fetch, metadata update and heartbeat: about 190 ERROR
lines a second. ``KafkaLogFilter`` sits on aiokafka's loggers: of their WARNING and above, one line a minute
passes while contact is fine (with the count of those held back), none while it is lost. ``Contact`` asks the
cluster for metadata every second; after ``kafka.contact_timeout_s`` without an answer contact is lost: one
warning, aiokafka quiet, ``/readyz`` 503 and sd_notify ``STATUS=``; one line again when the cluster answers, with
how long it was away and how many lines were held back meanwhile. The cluster answers while any broker does; a broker
that alone has not answered for ``kafka.contact_timeout_s`` is named in one warning, and in one line when it answers
again (``unanswered()`` names it meanwhile: what a write waiting for its partition's leader may be waiting for).

A cluster that answers but refuses the router's credentials (a token refused once a session's life ended, a password
changed) is no answer to aiokafka, which says only that it cannot connect: after a probe without an answer,
``Contact`` asks ``refused`` (a handshake of the router's own, ``clients.refused``, at most every ``_REFUSED_CHECK_S``)
and, while the cluster refuses, says why: one warning naming the setting, ``refusal`` for ``/readyz``,
``kafka_refused{what="credentials"}`` 1; one line when an answer comes again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiokafka.errors import KafkaConnectionError, KafkaError

from daemon.core.errors import reason_of
from daemon.kafka.clients import probe_timeout_s
from daemon.observe.metrics import Metrics

log = logging.getLogger(__name__)

_AIOKAFKA = "aiokafka"
_LOG_INTERVAL_S = 60.0
_REFUSED_CHECK_S = 10.0  # while probes go unanswered, the credentials are checked this often at most


class Throttle:
    """One occurrence per ``interval_s`` goes through, the others are counted.

    ``ready()`` returns None for an occurrence to hold back, else how many were held back since the last one that
    went through (so the line that goes through can say so).
    """

    def __init__(self, interval_s: float = _LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last = -math.inf
        self._held = 0

    def ready(self) -> int | None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._held += 1
            return None
        self._last = now
        held, self._held = self._held, 0
        return held


def held_note(held: int) -> str:
    """`` (N more like it held back)`` for a throttled line, or nothing."""
    return f" ({held} more like it held back)" if held else ""


class _Forward(logging.Handler):
    """Hands aiokafka's records on to the root logger's handlers, as propagation would, once they pass its filters.

    A filter on a logger does not see its children's records, and aiokafka logs from a dozen loggers, some created
    only when their module is first imported; a handler on ``aiokafka`` sees them all.
    """

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


_FORWARD = _Forward()


class KafkaLogFilter(logging.Filter):
    """On aiokafka's records: WARNING and above pass once a minute while contact is fine, never while it is lost
    (``quiet``); the rest are counted. Lower levels (``--log-level DEBUG``) pass untouched."""

    def __init__(self, metrics: Metrics, interval_s: float = _LOG_INTERVAL_S) -> None:
        super().__init__()
        self.quiet = False
        self.suppressed = 0
        self._metrics = metrics
        self._throttle = Throttle(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if not self.quiet:
            held = self._throttle.ready()
            if held is not None:
                if held:
                    record.msg, record.args = record.getMessage() + held_note(held), None
                return True
        self.suppressed += 1
        self._metrics.kafka_log_suppressed.inc()
        return False

    def install(self) -> None:
        """From now on, aiokafka's records reach the root logger's handlers only through this filter."""
        logger = logging.getLogger(_AIOKAFKA)
        _FORWARD.addFilter(self)
        if _FORWARD not in logger.handlers:
            logger.addHandler(_FORWARD)
            logger.propagate = False

    def remove(self) -> None:
        _FORWARD.removeFilter(self)
        if not _FORWARD.filters:  # the last daemon of this process: aiokafka logs as it did
            logger = logging.getLogger(_AIOKAFKA)
            logger.removeHandler(_FORWARD)
            logger.propagate = True


class Probe(Protocol):
    """A cheap request to the cluster (``clients.ClusterProbe``: metadata, of every broker)."""

    def __call__(self) -> Awaitable[bool]:
        """True when the cluster answered."""

    def silent(self, min_s: float) -> list[tuple[str, float]]:
        """The brokers that have not answered for ``min_s`` seconds or more, with how long."""

    async def close(self) -> None: ...


class Contact:
    """Whether the cluster answers, from ``probe``: made every ``interval_s``, given at most ``probe_timeout_s``; the
    contact owns it (``stop`` closes it). ``notify`` gets sd_notify lines. ``refused``: why the cluster refuses the
    credentials, naming the setting (None: it does not), asked after a probe without an answer."""

    def __init__(
        self,
        probe: Probe,
        where: str,
        timeout_s: float,
        noise: KafkaLogFilter,
        metrics: Metrics,
        notify: Callable[[str], None],
        interval_s: float = 1.0,
        refused: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._probe = probe
        self._where = where
        self._timeout_s = timeout_s
        self._noise = noise
        self._metrics = metrics
        self._notify = notify
        self._interval_s = interval_s
        self._silent_named: set[str] = set()  # brokers said to be silent, not said to be back yet
        self._probe_timeout_s = probe_timeout_s(timeout_s)
        self._last = time.monotonic()  # made at start-up: the cluster had just answered
        self._suppressed_when_lost = 0
        self.lost = False
        self._task: asyncio.Task[None] | None = None
        self._refused = refused
        self.refusal: str | None = None  # why the cluster refuses the credentials now (None: it does not)
        self._refused_since = 0.0
        self._checked_at = -math.inf
        self._check: asyncio.Task[None] | None = None
        metrics.kafka_contact.set(1)
        metrics.kafka_last_contact.set(time.time())

    @property
    def silent_s(self) -> float:
        """Seconds since the cluster last answered."""
        return time.monotonic() - self._last

    @property
    def answering(self) -> bool:
        """False once the cluster has not answered for ``timeout_s`` (exactly: not only when a probe says so)."""
        return not self.lost and self.silent_s < self._timeout_s

    def problem(self) -> str | None:
        """Why the cluster cannot be used now (``/readyz``): it refuses the credentials, or it has not answered."""
        if self.refusal is not None:
            return f"the cluster refuses the router's credentials: {self.refusal}"
        if not self.answering:
            return f"no contact with Kafka at {self._where} for {self.silent_s:.0f} s"
        return None

    async def start(self) -> None:
        """The first probe, then one every ``interval_s``. Raises ``KafkaConnectionError`` when the first is not
        answered (the cluster had just answered the start-up: try it again)."""
        if not await asyncio.wait_for(self._probe(), self._probe_timeout_s):
            raise KafkaConnectionError(f"no broker of {self._where} answers a metadata request")
        self._task = asyncio.create_task(self._run(), name="kafka-contact")

    async def stop(self) -> None:
        for task in (self._task, self._check):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._check = None
        await self._probe.close()

    async def _run(self) -> None:
        while True:
            answered = False
            try:
                answered = bool(await asyncio.wait_for(self._probe(), self._probe_timeout_s))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no answer, whatever the reason: the reason is aiokafka's to log
                log.debug("contact probe failed: %s: %s", type(exc).__name__, exc)
            self.observe(answered)
            if not answered:
                self._check_refusal()
            await asyncio.sleep(self._interval_s)

    def _check_refusal(self) -> None:
        """After a probe without an answer: ask whether the cluster refuses the credentials (one check at a time, at
        most every ``_REFUSED_CHECK_S``)."""
        now = time.monotonic()
        if self._refused is None or (self._check is not None and not self._check.done()):
            return
        if now - self._checked_at < _REFUSED_CHECK_S:
            return
        self._checked_at = now
        self._check = asyncio.create_task(self._why_refused(self._refused), name="kafka-credentials")

    async def _why_refused(self, refused: Callable[[], Awaitable[str | None]]) -> None:
        try:
            why = await refused()
        except Exception as exc:  # the check's own failure says nothing about the credentials
            log.debug("checking the credentials failed: %s: %s", type(exc).__name__, exc)
            return
        if why is not None and self.refusal is None:
            self._refused_since = time.monotonic()
            self._metrics.kafka_refused.labels("credentials").set(1)
            log.warning("the cluster refuses the router's credentials: %s. Deliveries already fetched go on; their "
                        "results wait, nothing is committed, and the clients keep logging in", why)  # fmt: skip
            self._notify(f"STATUS=the cluster refuses the router's credentials: {why}")
        elif why is None:
            self._taken()
        self.refusal = why or None

    def _taken(self) -> None:
        """The credentials are taken (again)."""
        if self.refusal is None:
            return
        self.refusal = None
        self._metrics.kafka_refused.labels("credentials").set(0)
        log.info("the cluster takes the router's credentials again after %.0f s", time.monotonic() -
                 self._refused_since)  # fmt: skip
        self._notify("STATUS=running")

    def observe(self, answered: bool) -> None:
        """One probe's result."""
        if answered:
            silent = self.silent_s
            self._last = time.monotonic()
            self._metrics.kafka_last_contact.set(time.time())
            self._taken()
            if self.lost:
                self._back(silent)
            self._brokers_heard()
        elif not self.lost and self.silent_s >= self._timeout_s:
            self._lose()

    def unanswered(self) -> str | None:
        """The brokers that did not answer the last probes while others did (a whole probe's time or more), or None."""
        if not self.answering:
            return None
        named = self._probe.silent(self._probe_timeout_s + self._interval_s)
        return "; ".join(f"{broker} has not answered for {s:.0f} s" for broker, s in named) or None

    def _brokers_heard(self) -> None:
        """While the cluster answers: one line when a broker has not answered for ``timeout_s``, one when it has."""
        silent = dict(self._probe.silent(self._timeout_s))
        for broker in sorted(silent.keys() - self._silent_named):
            log.warning("%s has not answered for %.0f s (the others answer): writes to the partitions it leads wait "
                        "until it answers or another broker leads them", broker, silent[broker])  # fmt: skip
        for broker in sorted(self._silent_named - silent.keys()):
            log.info("%s answers again", broker)
        self._silent_named = set(silent)

    def _lose(self) -> None:
        self.lost = True
        self._noise.quiet = True
        self._suppressed_when_lost = self._noise.suppressed
        self._metrics.kafka_contact.set(0)
        silent = self.silent_s
        log.warning(
            "lost contact with Kafka at %s: no answer for %.0f s. Deliveries already fetched go on; their results "
            "wait until it is back, and nothing is committed meanwhile",
            self._where,
            silent,
        )
        self._notify(f"STATUS=no contact with Kafka at {self._where} for {silent:.0f} s, waiting for it")

    def _back(self, silent_s: float) -> None:
        self.lost = False
        self._noise.quiet = False
        self._metrics.kafka_contact.set(1)
        log.info(
            "contact with Kafka at %s is back after %.0f s without an answer (%d Kafka client log lines held back "
            "meanwhile)",
            self._where,
            silent_s,
            self._noise.suppressed - self._suppressed_when_lost,
        )
        self._notify("STATUS=running")


def unretrieved_kafka_errors_quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler while the daemon runs. aiokafka shields some requests (an offset commit) in
    tasks of its own: when the cluster is gone and the caller stopped waiting (a shutdown's deadline), the request's
    failure is nobody's to retrieve. That is a Kafka error already accounted for, not a traceback to show. So is
    aiokafka 0.14's known race in ``Fetcher._update_fetch_positions`` (``_ORPHANED``): a position update left running
    by the fetcher when the group's coordinator moves finds the partition's error (no committed offset, with
    ``auto_offset_reset="none"``) already set by the next one and fails its assertion; the error set is the one the
    consumer raises and ``daemon.kafka.consume`` acts on: one line, no traceback. Anything else goes to asyncio's
    handler."""
    exc = context.get("exception")
    if context.get("message") != "Task exception was never retrieved":
        loop.default_exception_handler(context)
    elif isinstance(exc, KafkaError):
        log.debug("a Kafka request nobody waited for any more failed: %s", reason_of(exc))
    elif isinstance(exc, AssertionError) and (task := _coroutine_of(context.get("future"))) in _ORPHANED:
        log.warning("aiokafka's %s, left running by its fetcher, failed (AssertionError: %s): the partition's error it "
                    "would have set was set already, and is acted on", task, exc)  # fmt: skip
    else:
        loop.default_exception_handler(context)


_ORPHANED = ("Fetcher._update_fetch_positions",)


def _coroutine_of(future: object) -> str:
    """The qualified name of a task's coroutine (empty for anything else)."""
    get_coro = getattr(future, "get_coro", None)
    return str(getattr(get_coro(), "__qualname__", "")) if get_coro is not None else ""
