"""Time as the router writes it: RFC 3339 UTC with milliseconds, the formatted second cached."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def utc_now_iso() -> str:
    """Current UTC time as RFC 3339 with milliseconds, e.g. ``2026-11-23T11:30:00.123Z``."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int(now * 1000) % 1000:03d}Z"


def iso_ms(ms: int) -> str:
    """A unix time in milliseconds as RFC 3339 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def ms_of_iso(text: str | None) -> int | None:
    """Unix milliseconds of an RFC 3339 time with its offset (as ``utc_now_iso`` writes them); None for one that is
    not."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return int(moment.timestamp() * 1000) if moment.tzinfo is not None else None
