"""The daemon's log: text or JSON lines on stderr, the level from the config (re-read on SIGHUP), delivery lines.

``setup`` installs the one stderr handler (at start, before a config is read); ``apply`` sets the level and the
format from ``[log]`` (at ``run``'s start and on every reload), unless ``--log-level`` was given: a level from the
command line holds until the process exits. A JSON line is one object: ``ts`` (UTC, RFC 3339 with
milliseconds), ``level``, ``logger``, ``msg`` (the message with its arguments), the ``extra`` fields the call
passed (a delivery line's ``endpoint_id``, ``delivery_id``, ``status``...) and ``exc`` (a traceback) when there is
one. Each attempt is logged at DEBUG; ``log.delivery_sample_ratio`` of them at INFO as well (``sampled``).

A worker of ``process.workers`` (``tag``) writes to its supervisor's stderr: each of its lines says which worker it
is (``worker 1`` after the level; ``"worker": "1"`` in JSON).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from typing import Any

import orjson

from daemon.core.config import LogConfig

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TEXT_WORKER = "%(asctime)s %(levelname)s worker %(worker)s %(name)s: %(message)s"
# The attributes every LogRecord has: whatever else a record carries came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class _State:
    handler: logging.Handler | None = None
    forced: str | None = None  # --log-level: wins over the config
    sample = 0.0
    format = "text"
    worker: str | None = None


class _Worker(logging.Filter):
    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


_state = _State()


def setup(level: str | None, fmt: str = "text") -> None:
    """Log to stderr at ``level`` (``--log-level``; None: INFO until a config says otherwise)."""
    root = logging.getLogger()
    if _state.handler is not None:
        root.removeHandler(_state.handler)
    handler = _state.handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    _state.forced = level
    _set(level or "INFO", fmt)


def apply(config: LogConfig) -> None:
    """The config's level (unless ``--log-level`` was given), format and delivery sampling; at start and reload."""
    _set(_state.forced or config.level, config.format)
    _state.sample = config.delivery_sample_ratio


def tag(worker: int) -> None:
    """This process is worker ``worker`` of a supervisor: every line says so from now on."""
    _state.worker = str(worker)
    if _state.handler is not None:
        _state.handler.addFilter(_Worker(_state.worker))
    _set(logging.getLevelName(logging.getLogger().level), _state.format)


def sampled() -> bool:
    """True for ``log.delivery_sample_ratio`` of the calls: this delivery's line is logged at INFO."""
    return _state.sample > 0 and random.random() < _state.sample  # noqa: S311 - sampling, not a secret


def _set(level: str, fmt: str) -> None:
    numeric = logging.getLevelName(level)
    logging.getLogger().setLevel(numeric)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, numeric))  # chatty below WARNING
    _state.format = fmt
    text = _TEXT if _state.worker is None else _TEXT_WORKER
    if _state.handler is not None:
        _state.handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(text))
