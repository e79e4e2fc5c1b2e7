"""The body mapping of a profile: how a platform's body is built from the event as it arrived. Pure.

A small field mapping, compiled once per profile, not code per customer. The language:

- ``"$type"``: the event type; ``"$secret"``: the endpoint's (current) secret;
- ``"$time.iso"`` / ``"$time.ms"``: the Kafka record's time as ``2026-06-12T20:00:00Z`` / unix ms;
- ``"$event"``: the whole event; ``"$rest"``: the event without the field its type was read from and
  without the top-level fields this template names elsewhere; ``"$rest:a,b"``: without that field and
  ``a`` and ``b`` only;
- ``"a.b"``: the event's field at that path (``null`` when absent);
- ``"x|y|z"``: the first of these that is present;
- a nested table builds a nested object; the key ``"..."`` spreads an object's fields in place.

Field order follows the event: a spread keeps the order the fields arrived in, and a key the template
sets after the spread stays where the event had it (its value as the template says); a key the event
does not have goes where the template puts it. So ``{"event": "$type", "...": "$rest", "timestamp":
"timestamp|$time.iso"}`` sends ``event`` first, then the event's fields in their order with its own
``timestamp`` where it was, and adds a ``timestamp`` at the end only when the event has none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from daemon.core.errors import TemplateError

Json = Any
_MISSING: Final = object()

# What a getter reads: the decoded event, its type, the record time (ms), the endpoint's secret, and the
# top-level field the type was read from (None: a nested or configured field).
Context = tuple[dict[str, Json], str, int, str, str | None]
Getter = Callable[[Context], Json]


def iso_seconds(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


class Template:
    """A compiled body mapping. ``render`` builds the body object for one event."""

    def __init__(self, spec: Mapping[str, Json]) -> None:
        self._named = frozenset(_top_fields(spec))
        self._build = self._compile_object(spec, "")

    def render(
        self, event: dict[str, Json], event_type: str, time_ms: int, secret: str, type_field: str | None = "event"
    ) -> dict[str, Json]:
        out: dict[str, Json] = self._build((event, event_type, time_ms, secret, type_field))
        return out

    def _compile_object(self, spec: Mapping[str, Json], path: str) -> Getter:
        parts: list[tuple[str | None, Getter]] = []
        keys = list(spec)
        for i, (key, value) in enumerate(spec.items()):
            where = f"{path}.{key}" if path else key
            # A spread keeps the event's own fields that this object sets after it: they stay in place.
            later = frozenset(keys[i + 1 :]) if key == "..." else frozenset()
            if isinstance(value, Mapping):
                getter = self._compile_object(value, where)
            else:
                getter = self._compile(value, where, later)
            parts.append((None if key == "..." else key, getter))

        def build(ctx: Context) -> dict[str, Json]:
            out: dict[str, Json] = {}
            for key, getter in parts:
                value = getter(ctx)
                if key is not None:
                    out[key] = None if value is _MISSING else value
                elif isinstance(value, dict):
                    out.update(value)
            return out

        return build

    def _compile(self, source: Json, where: str, keep: frozenset[str] = frozenset()) -> Getter:
        if not isinstance(source, str) or not source:
            raise TemplateError(f"{where}: a source must be a non-empty string or a table")
        getters = [self._compile_one(alt.strip(), where, keep) for alt in source.split("|")]
        if len(getters) == 1:
            return getters[0]

        def first(ctx: Context) -> Json:
            for getter in getters:
                value = getter(ctx)
                if value is not _MISSING and value is not None:
                    return value
            return _MISSING

        return first

    def _compile_one(self, source: str, where: str, keep: frozenset[str] = frozenset()) -> Getter:
        if source == "$type":
            return lambda ctx: ctx[1]
        if source == "$secret":
            return lambda ctx: ctx[3]
        if source == "$time.iso":
            return lambda ctx: iso_seconds(ctx[2])
        if source == "$time.ms":
            return lambda ctx: ctx[2]
        if source == "$event":
            return lambda ctx: ctx[0]
        if source == "$rest" or source.startswith("$rest:"):
            drop = (self._named - keep) if source == "$rest" else frozenset(f.strip() for f in source[6:].split(","))
            return lambda ctx: {k: v for k, v in ctx[0].items() if k not in drop and k != ctx[4]}
        if source.startswith("$"):
            raise TemplateError(f"{where}: unknown source {source!r}")
        steps = tuple(source.split("."))
        if not all(steps):
            raise TemplateError(f"{where}: bad field path {source!r}")

        def at_path(ctx: Context) -> Json:
            value: Json = ctx[0]
            for step in steps:
                if not isinstance(value, dict):
                    return _MISSING
                value = value.get(step, _MISSING)
                if value is _MISSING:
                    return _MISSING
            return value

        return at_path


def _top_fields(spec: Mapping[str, Json]) -> set[str]:
    """Top-level event fields a template names (so ``$rest`` leaves them out)."""
    named: set[str] = set()
    for key, value in spec.items():
        if key != "...":
            named.add(key)
        sources = _top_fields(value) if isinstance(value, Mapping) else set()
        if isinstance(value, str):
            for alt in value.split("|"):
                alt = alt.strip()
                if alt and not alt.startswith("$"):
                    named.add(alt.split(".", 1)[0])
        named |= sources
    return named
