"""What makes a process a worker of ``process.workers`` (its supervisor starts it as ``run --worker N``): the rest of it
is the daemon as ever, its admin server on a unix socket of the supervisor's, its systemd notifications sent to the
supervisor (which set ``NOTIFY_SOCKET`` for it: a worker never talks to systemd)."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import sys

from daemon.observe.logs import tag

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def become(index: int, supervisor: int) -> bool:
    """Before anything else in worker ``index``: its log lines say which worker it is, every thread's stack goes to the
    log on SIGABRT (what the supervisor's watchdog sends a worker whose event loop stands still), and the worker gets
    SIGTERM (a drain) should its supervisor die first. False when the supervisor is gone already."""
    tag(index)
    faulthandler.enable()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the line above: nothing would tell this worker
        log.error("the supervisor (pid %d) is gone: exiting", supervisor)
        return False
    return True
