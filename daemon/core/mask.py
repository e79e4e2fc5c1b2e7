"""An endpoint's secrets masked in a text bound for the results topic (a response body, an error)."""

from __future__ import annotations

import bisect
import json
from array import array
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote

import orjson

MASKED: Final = "***"


# Shorter values are not secrets worth the name, and masking them would garble most bodies.
MIN_MASKED: Final = 6


_MIN_TAIL = 4  # the shortest start of a secret masked at the end of a cut body

# A mask whose forms hold more characters than this is compiled off the event loop (``Endpoint.mask_ready`` runs
# ``Mask.compile`` in a thread): about a millisecond of work. An endpoint's custom headers are bounded
# (daemon.core.validate), so the largest mask an endpoint of the API can have compiles in tens of milliseconds.
INLINE_COMPILE: Final = 4096

# Masking a text takes no more than this many automaton steps per character, give or take its last pass: a text that
# would take more (secrets holding ``*`` that a mask completes again and again, set to make masking slow) is masked
# whole.
_STEPS_PER_CHAR = 16

# A mask of at most this many forms first looks for each in the text with ``str.__contains__`` (a C scan each): most
# texts hold none, and the automaton reads a 4 KiB body in about 0.3-0.5 ms of Python where the scans take about 1 us.
# More forms (an endpoint of many custom headers) go to the automaton at once: its cost does not grow with them.
_SCANNED_FORMS = 16


class Mask:
    """Replaces an endpoint's secret values in a text bound for the results topic (a response body, an error).

    Each value (at least ``MIN_MASKED`` characters) is masked as written and as a receiver that echoes it most
    likely writes it: inside a JSON string (with or without ``\\u`` escapes) and percent-encoded. Every character
    of every occurrence of any of these forms is masked, the occurrences overlapping or not (a secret that holds
    another is masked whole), each run of masked characters replaced by one ``MASKED``; no form is left in the
    result, not even one that masking made (a secret holding ``*``). A body cut at the size limit may end with the
    first characters of a secret: those are masked too (``cut=True``).

    All forms are matched at once by one automaton (Aho-Corasick), built once per endpoint: masking a text costs a
    number of steps linear in its length, whatever the endpoint's secrets (``apply`` counts them), and at most
    ``_STEPS_PER_CHAR`` per character (beyond that the text is masked whole). A mask of few forms first scans the
    text for each in C, and a text holding none takes no step but those of a cut body's end.
    """

    __slots__ = ("_automaton", "_forms", "_scanned", "_shortest", "size", "starred")

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if len(value) >= MIN_MASKED:
                forms.update(
                    (value, json.dumps(value)[1:-1], orjson.dumps(value).decode()[1:-1], quote(value, safe=""))
                )
        self._forms = sorted(forms)
        self._scanned = self._forms if len(self._forms) <= _SCANNED_FORMS else None
        self._shortest = min((len(form) for form in self._forms), default=0)
        self.size = sum(len(form) for form in self._forms)  # the automaton's states, about
        self.starred = any("*" in form for form in self._forms)  # masking may make one of them
        self._automaton: _Automaton | None = None

    def __bool__(self) -> bool:
        return bool(self._forms)

    @property
    def compiled(self) -> bool:
        return self._automaton is not None

    def compile(self) -> None:
        """Build the automaton (once; safe from another thread: it is assigned whole)."""
        self._compiled()

    def _compiled(self) -> _Automaton:
        automaton = self._automaton
        if automaton is None:
            automaton = self._automaton = _Automaton(self._forms)
        return automaton

    def __call__(self, text: str, cut: bool = False) -> str:
        return self.apply(text, cut)[0]

    def apply(self, text: str, cut: bool = False) -> tuple[str, int]:
        """The masked text, and the automaton steps it took (about ``_STEPS_PER_CHAR`` per character at most)."""
        if not self._forms or not text or (len(text) < self._shortest and not cut):  # too short to hold any form
            return text, 0
        automaton = self._compiled()
        scanned = self._scanned
        if scanned is not None and not any(map(text.__contains__, scanned)):  # no occurrence: nothing to cover
            if not cut:
                return text, 0
            tail, steps = automaton.tail(text)
            if tail < _MIN_TAIL:
                return text, steps
            if not self.starred:  # only a form holding '*' can be made by masking
                return text[:-tail] + MASKED, steps
        budget = _STEPS_PER_CHAR * (len(text) + 8)
        steps = 0
        while True:
            masked, spent = automaton.cover(text)
            steps += spent
            changed = masked != text
            text = masked
            if cut:
                tail, spent = automaton.tail(text)
                steps += spent
                if tail >= _MIN_TAIL:
                    text, changed = text[:-tail] + MASKED, True
            # Only a form holding '*' can be made by masking (its every other occurrence was covered): without one,
            # one pass leaves none.
            if not (changed and self.starred):
                return text, steps
            if steps > budget:
                return MASKED, steps


class _Automaton:
    """An Aho-Corasick automaton of a set of strings, kept in flat arrays: a state is the longest suffix of what was
    read that begins one of the strings. With the strings sorted, the states of one string's characters that no
    string before it shares are consecutive ids, so a state stores only the code of the character that continues its
    own string (``_code``); the other continuations are ``_branch`` entries (one per string at most), and a state's
    failure link is ``_fail``. ``_out``: for the states where strings end, the length of the longest that does."""

    __slots__ = ("_bases", "_branch", "_code", "_fail", "_longest", "_out")

    def __init__(self, forms: list[str]) -> None:
        total = sum(len(form) for form in forms)
        code = array("i", [-1]) * (total + 1)  # state 0 is the root; -1: no continuation of its own
        branch: dict[int, dict[int, int]] = {0: {}}
        out: dict[int, int] = {}
        bases: list[int] = []
        path: list[int] = [0]  # the states of the previous string's characters, by depth
        previous = ""
        base = 1
        for form in forms:  # sorted: a string shares with all earlier ones no more than with the one before it
            shared = 0
            most = min(len(previous), len(form))
            while shared < most and previous[shared] == form[shared]:
                shared += 1
            # Its state at depth d (1..len) is base + d - 1; those up to ``shared`` are the earlier string's.
            branch.setdefault(path[shared], {})[ord(form[shared])] = base + shared
            own = array("i")
            own.frombytes(form[shared + 1 :].encode("utf-32-le"))
            code[base + shared : base + len(form) - 1] = own
            path = path[: shared + 1] + list(range(base + shared, base + len(form)))
            out[base + len(form) - 1] = len(form)
            bases.append(base)
            previous = form
            base += len(form)
        fail = array("i", [0]) * (total + 1)
        self._code, self._branch, self._fail, self._out, self._bases = code, branch, fail, out, bases
        self._longest = max((len(form) for form in forms), default=0)
        # Failure links, breadth first: a state's is its parent's, followed by the character that leads to it.
        level = [(child, 0, c) for c, child in branch[0].items()]
        while level:
            deeper: list[tuple[int, int, int]] = []
            for state, parent, c in level:
                if parent:
                    target = self._next(fail[parent], c)[0]
                    fail[state] = target
                    if state not in out and target in out:
                        out[state] = out[target]
                own_code = code[state]
                if own_code != -1:
                    deeper.append((state + 1, state, own_code))
                for c2, child in branch.get(state, {}).items():
                    deeper.append((child, state, c2))
            level = deeper

    def _next(self, state: int, c: int) -> tuple[int, int]:
        """The state after reading ``c`` in ``state``, and the failure links followed to get there."""
        code, branch, fail = self._code, self._branch, self._fail
        steps = 0
        while True:
            if code[state] == c:
                return state + 1, steps
            children = branch.get(state)
            if children is not None:
                child = children.get(c)
                if child is not None:
                    return child, steps
            if not state:
                return 0, steps
            state = fail[state]
            steps += 1

    def cover(self, text: str) -> tuple[str, int]:
        """``text`` with every character of every occurrence of a string replaced, each run by one ``MASKED``; and
        the steps taken (one per character, one per failure link followed: at most twice the length)."""
        code, branch, fail, out = self._code, self._branch, self._fail, self._out
        starts: list[int] = []  # the runs to mask so far, [start, end] inclusive, apart and in order
        ends: list[int] = []
        root = branch[0]
        state = 0
        steps = len(text)
        for i, c in enumerate(map(ord, text)):
            if state:
                while True:
                    if code[state] == c:
                        state += 1
                        break
                    children = branch.get(state)
                    if children is not None:
                        child = children.get(c)
                        if child is not None:
                            state = child
                            break
                    state = fail[state]
                    steps += 1
                    if not state:
                        state = root.get(c, 0)
                        break
                if not state:
                    continue
            else:  # most characters of most texts: one look-up
                state = root.get(c, 0)
                if not state:
                    continue
            length = out.get(state)
            if length is not None:
                start = i - length + 1
                while ends and ends[-1] >= start - 1:  # overlaps or touches earlier runs: one run with them
                    ends.pop()
                    start = min(start, starts.pop())
                starts.append(start)
                ends.append(i)
        if not starts:
            return text, steps
        pieces: list[str] = []
        at = 0
        for start, end in zip(starts, ends, strict=True):
            pieces += (text[at:start], MASKED)
            at = end + 1
        pieces.append(text[at:])
        return "".join(pieces), steps

    def tail(self, text: str) -> tuple[int, int]:
        """The length of the longest end of ``text`` that begins one of the strings (none ends there once ``cover``
        has run), and the steps taken."""
        window = text[-self._longest :] if self._longest else ""
        state = 0
        steps = 0
        for c in map(ord, window):
            state, spent = self._next(state, c)
            steps += 1 + spent
        if not state:
            return 0, steps
        form = bisect.bisect_right(self._bases, state) - 1
        return state - self._bases[form] + 1, steps
