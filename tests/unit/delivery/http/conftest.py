"""The HTTP client's tests run on both event loops: asyncio's (every other test's) and uvloop, which the daemon runs
on (``daemon.cli``): its transports take the client's own protocol over from aiohttp's (``set_protocol``), plain
and TLS alike. (In a folder of their own: the hook parametrises every test below it.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
