"""The HTTP client's tests run on both event loops: asyncio's (the other tests') and uvloop, which the daemon runs
on (``daemon.cli``): its transports take the client's own protocol over from aiohttp's (``set_protocol``), plain
and TLS alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    factories: dict[str, Any] = {"asyncio": asyncio.new_event_loop}  # the loop every other test runs on
    if item.path.name == "test_http.py":
        factories["uvloop"] = uvloop.new_event_loop
    return factories
