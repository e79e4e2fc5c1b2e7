"""An endpoint's secrets masked in a text bound for the results topic (a response body, an error)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote

import orjson

MASKED: Final = "***"


# Shorter values are not secrets worth the name, and masking them would garble most bodies.
MIN_MASKED: Final = 6


_MIN_TAIL = 4  # the shortest start of a secret masked at the end of a cut body


class Mask:
    """Replaces an endpoint's secret values in a text bound for the results topic (a response body, an error).

    Each value (at least ``MIN_MASKED`` characters) is masked as written and as a receiver that echoes it most
    likely writes it: inside a JSON string (with or without ``\\u`` escapes) and percent-encoded. A body cut at
    the size limit may end with the first characters of a secret: those are masked too (``cut=True``).
    """

    __slots__ = ("_forms",)

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if len(value) >= MIN_MASKED:
                forms.update(
                    (value, json.dumps(value)[1:-1], orjson.dumps(value).decode()[1:-1], quote(value, safe=""))
                )
        # Longest first: a secret that holds another is masked whole.
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __call__(self, text: str, cut: bool = False) -> str:
        changed = True
        while changed:  # until no form is left, masks included (each round shortens the text: it ends)
            changed = False
            for form in self._forms:
                if form in text:
                    text, changed = text.replace(form, MASKED), True
        if cut:
            for form in self._forms:
                for k in range(min(len(form) - 1, len(text)), _MIN_TAIL - 1, -1):
                    if text.endswith(form[:k]):
                        text = text[:-k] + MASKED
                        break
        return text
