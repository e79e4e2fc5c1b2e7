"""systemd's service protocol without libsystemd: notifications (READY, RELOADING, STOPPING, STATUS) and the watchdog.

``notify`` sends one datagram to ``$NOTIFY_SOCKET`` when systemd set one (a no-op otherwise). ``watchdog`` sends
``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` (``WatchdogSec=`` of the unit) from the event loop itself, so that a
loop stalled by a blocking call stops the pings and systemd restarts the service; it runs from the start of
``serve`` to the end of the shutdown (a drain is not a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)


def notify(state: str) -> None:
    """sd_notify: a datagram to $NOTIFY_SOCKET (an abstract socket when it starts with ``@``). Never blocks the event
    loop: when the socket's queue is full (its reader is not reading), the notification is dropped and logged."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), path)
    except OSError as exc:
        log.debug("sd_notify %s failed: %s", state.split("=", 1)[0], exc)


def watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout systemd asked for, or None when it asked for none (or for another process)."""
    usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        timeout_us = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number: no watchdog pings", usec)
        return None
    return timeout_us / 2_000_000 if timeout_us > 0 else None


@contextlib.asynccontextmanager
async def watchdog(environ: Mapping[str, str] | None = None) -> AsyncIterator[None]:
    """Ping systemd's watchdog while the body runs (nothing when no watchdog was asked for)."""
    interval = watchdog_interval_s(os.environ if environ is None else environ)
    if interval is None:
        yield
        return

    async def ping() -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    task = asyncio.create_task(ping(), name="systemd-watchdog")
    log.info("systemd watchdog: a ping every %.1f s", interval)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
