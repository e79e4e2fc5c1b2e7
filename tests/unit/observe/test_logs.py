"""A worker's log lines say which worker wrote them, in text and in JSON (``daemon.observe.logs.tag``)."""

from __future__ import annotations

import io
import json
import logging

from daemon.core.config import LogConfig
from daemon.observe import logs


def test_a_worker_s_lines_carry_its_number_in_text_and_in_json() -> None:
    logs.setup(None)
    handler = logs._state.handler
    assert handler is not None
    out = io.StringIO()
    stream = handler.setStream(out)  # type: ignore[attr-defined]
    try:
        logs.tag(3)
        logging.getLogger("daemon.test").warning("hello %s", "there")
        logs.apply(LogConfig(format="json"))
        logging.getLogger("daemon.test").warning("again")
    finally:
        handler.setStream(stream)  # type: ignore[attr-defined]
        for f in list(handler.filters):
            handler.removeFilter(f)
        logs._state.worker = None
        logs.setup(None)
    text, line = out.getvalue().splitlines()
    assert text.endswith(" WARNING worker 3 daemon.test: hello there")
    assert json.loads(line)["worker"] == "3" and json.loads(line)["msg"] == "again"
