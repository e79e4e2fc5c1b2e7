"""Mask: one automaton per endpoint, masking a text in steps linear in its length, whatever the secrets.

The properties every mask keeps (anywhere in a body, JSON escapes, percent-encoding, a cut body, secrets holding one
another) are tests/unit/core/test_model.py's; these hold the mask to a plain reading of its rule, and its cost."""

from __future__ import annotations

import json
import random
from urllib.parse import quote

import orjson
from hypothesis import given
from hypothesis import strategies as st

from daemon.core.mask import _MIN_TAIL, _SCANNED_FORMS, _STEPS_PER_CHAR, MASKED, MIN_MASKED, Mask
from daemon.core.model import RESPONSE_BODY_LIMIT, truncate_body


def forms_of(values: list[str]) -> set[str]:
    return {
        form
        for value in values
        if len(value) >= MIN_MASKED
        for form in (value, json.dumps(value)[1:-1], orjson.dumps(value).decode()[1:-1], quote(value, safe=""))
    }


def plainly_masked(values: list[str], text: str, cut: bool) -> str:
    """The rule read plainly (quadratic, and fine for short texts): every character of every occurrence of a form is
    masked, each run by one MASKED, a cut text's end that begins a form too, again until nothing changes."""
    forms = forms_of(values)
    while True:
        covered = [False] * len(text)
        for form in forms:
            at = text.find(form)
            while at != -1:
                covered[at : at + len(form)] = [True] * len(form)
                at = text.find(form, at + 1)
        pieces: list[str] = []
        for i, ch in enumerate(text):
            if not covered[i]:
                pieces.append(ch)
            elif i == 0 or not covered[i - 1]:
                pieces.append(MASKED)
        masked = "".join(pieces)
        if cut:
            tails = [k for form in forms for k in range(_MIN_TAIL, len(form)) if masked.endswith(form[:k])]
            if tails:
                masked = masked[: -max(tails)] + MASKED
        if masked == text:
            return masked
        text = masked


small_values = st.lists(st.text("ab*", min_size=MIN_MASKED, max_size=9), min_size=1, max_size=4)


@given(st.lists(st.text("abc", min_size=MIN_MASKED, max_size=9), min_size=1, max_size=4), st.text("abcx", max_size=80),
       st.booleans())  # fmt: skip
def test_masking_is_the_rule_read_plainly(values: list[str], text: str, cut: bool) -> None:
    assert Mask(values)(text, cut) == plainly_masked(values, text, cut)


@given(small_values, st.text("ab*x", max_size=80), st.booleans())
def test_secrets_holding_stars_are_masked_as_the_rule_says_or_the_text_whole(
    values: list[str], text: str, cut: bool
) -> None:
    masked, steps = Mask(values).apply(text, cut)
    assert masked in (plainly_masked(values, text, cut), MASKED)
    assert not any(form in masked for form in forms_of(values))
    assert steps <= _STEPS_PER_CHAR * (len(text) + 8) + 4 * len(text) + 8


def test_a_mask_made_by_masking_is_masked_too() -> None:
    mask = Mask(["zzzzzz", "*abcde"])
    assert mask("zzzzzzabcde") == "**" + MASKED  # "***abcde" held "*abcde"
    assert mask("xxzzzzzzabcd", cut=True) == "xx**" + MASKED  # "xx***abcd" ends with the start of "*abcde"


def test_overlapping_secrets_are_masked_whole() -> None:
    assert Mask(["abcdefgh", "efghijkl"])("<abcdefghijkl>") == "<***>"
    assert Mask(["secret-one", "secret-one-two"])("x secret-one-two y") == "x *** y"


def test_masking_takes_steps_linear_in_the_text_whatever_the_secrets() -> None:
    rng = random.Random(19)
    alphabet = "ab/+="
    # The endpoint: 140 header values of 4,100 characters, a receiver answering 5,000 bytes.
    values = ["".join(rng.choices(alphabet, k=4100)) for _ in range(140)]
    values += ["a" * 4100, "a" * 4099 + "b", "ab" * 2050]  # as periodic as strings get
    mask = Mask(values)
    bodies = [values[0][:5000], "a" * 5000, "ab" * 2500, "".join(rng.choices(alphabet, k=5000)), values[7] * 2]
    for raw in bodies:
        text = truncate_body(raw.encode())
        for cut in (False, True):
            masked, steps = mask.apply(text, cut=cut)
            assert steps <= 4 * len(text)  # a step per character, one per failure link (no more than characters)
            assert not any(value[:RESPONSE_BODY_LIMIT] in masked for value in values if len(value) <= len(text))


def test_masking_made_slow_on_purpose_masks_the_text_whole_within_its_steps() -> None:
    # Each mask makes the next one: "bbb***" masked leaves "bbb***" again, a character shorter each time.
    mask = Mask(["cccccc", "bbb***"])
    text = "b" * 3000 + "cccccc"
    masked, steps = mask.apply(text)
    assert masked == MASKED
    assert steps <= _STEPS_PER_CHAR * (len(text) + 8) + 4 * len(text)


def test_a_mask_compiles_once_and_only_when_used() -> None:
    mask = Mask(["tok-0123456789"])
    assert not mask.compiled
    assert mask("a tok-0123456789 b") == "a *** b"
    automaton = mask._automaton
    assert mask.compiled and mask("tok-0123456789") == MASKED and mask._automaton is automaton
    assert not Mask([]).compiled and Mask([])("abc") == "abc"


def test_a_text_holding_no_secret_takes_no_automaton_step_when_the_forms_are_few() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    mask = Mask([secret])
    body = '{"ok": true, "echo": "' + "x" * 4000 + '"}'
    assert mask.apply(body) == (body, 0)
    masked, steps = mask.apply(body[:-2] + secret[:10], cut=True)  # a cut body's end: only that end is read
    assert masked == body[:-2] + MASKED and 0 < steps <= 2 * len(secret)
    assert mask.apply(body, cut=True)[0] == body
    assert mask(f"<{secret}>") == "<***>"


def test_a_mask_of_many_forms_masks_every_one_of_them() -> None:
    values = [f"secret-{i:02d}-value" for i in range(_SCANNED_FORMS + 1)]  # a form each: more than are scanned
    mask = Mask(values)
    text = "nothing to see here, nothing at all"
    assert mask.apply(text)[1] >= len(text)  # the automaton read it
    assert mask(" ".join(values)) == " ".join([MASKED] * len(values))


def test_a_text_shorter_than_every_form_is_left_as_it_is_unless_cut() -> None:
    mask = Mask(["tok-0123456789"])
    assert mask.apply("ok") == ("ok", 0)
    assert mask("tok-01", cut=True) == MASKED  # the start of a secret at the end of a cut body
