"""The daemon's signals: handlers only set state or schedule work. SIGTERM and SIGINT stop (a second SIGINT exits at
once), SIGHUP reloads."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Signals:
    def __init__(self, stop: asyncio.Event, reload: Callable[[], None]) -> None:
        self._stop = stop
        self._reload = reload
        self._sigint_count = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_int)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in _HANDLED:
            loop.remove_signal_handler(sig)

    def _on_term(self) -> None:
        log.info("SIGTERM: shutting down")
        self._stop.set()

    def _on_int(self) -> None:
        self._sigint_count += 1
        if self._sigint_count > 1:
            log.warning("second SIGINT: exiting now")
            os._exit(1)
        log.info("SIGINT: shutting down (again to force)")
        self._stop.set()
