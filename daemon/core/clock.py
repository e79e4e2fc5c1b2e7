"""Time as the router writes it: RFC 3339 UTC with milliseconds, the formatted second and millisecond cached."""

from __future__ import annotations

import time
from datetime import datetime

_second: list[tuple[int, str]] = [(-1, "")]  # the last whole second formatted and its text, replaced whole
_milli: list[tuple[int, str]] = [(-1, "")]  # the last millisecond formatted and its text: a dozen outcomes share one


def utc_now_iso() -> str:
    """Current UTC time as RFC 3339 with milliseconds, e.g. ``2026-11-23T11:30:00.123Z``."""
    ms = int(time.time() * 1000)
    last = _milli[0]
    if last[0] == ms:
        return last[1]
    second, prefix = _second[0]
    if ms // 1000 != second:  # the second of the same milliseconds
        second = ms // 1000
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second[0] = (second, prefix)
    text = f"{prefix}.{ms % 1000:03d}Z"
    _milli[0] = (ms, text)
    return text


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
