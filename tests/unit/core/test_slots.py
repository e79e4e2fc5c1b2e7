"""The bound on scans of Kafka under way: per tenant and per instance, refused at once, given back however one ends."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from daemon.core.errors import TooManyRequests
from daemon.core.slots import Slots


def test_a_tenant_over_its_own_bound_is_refused_naming_the_setting_while_others_still_start() -> None:
    slots = Slots()
    with ExitStack() as held:
        held.enter_context(slots.taken("acme", 2, 8))
        held.enter_context(slots.taken("acme", 2, 8))
        with pytest.raises(TooManyRequests, match=r"api\.max_scans_per_tenant") as refused:
            held.enter_context(slots.taken("acme", 2, 8))
        assert refused.value.http_status == 429
        held.enter_context(slots.taken("globex", 2, 8))
        held.enter_context(slots.taken(None, 2, 8))
        assert (slots.under_way("acme"), slots.under_way("globex"), slots.under_way()) == (2, 1, 4)
    assert (slots.under_way("acme"), slots.under_way()) == (0, 0)


def test_the_instance_bound_holds_for_every_tenant_and_the_platform() -> None:
    slots = Slots()
    with ExitStack() as held:
        for tenant in ("a", "b", None):
            held.enter_context(slots.taken(tenant, 2, 3))
        for tenant in ("c", None):
            with pytest.raises(TooManyRequests, match=r"api\.max_scans\)"):
                held.enter_context(slots.taken(tenant, 2, 3))
        assert slots.under_way() == 3  # a refusal takes nothing


def test_a_slot_is_given_back_when_its_scan_fails_or_is_cancelled() -> None:
    slots = Slots()
    for failure in (RuntimeError("broker gone"), KeyboardInterrupt()):
        with pytest.raises(type(failure)), slots.taken("acme", 1, 1):
            raise failure
    with slots.taken("acme", 1, 1):
        assert slots.under_way("acme") == 1


def test_a_lower_bound_after_a_reload_refuses_new_scans_and_keeps_those_under_way() -> None:
    slots = Slots()
    with slots.taken("acme", 4, 8), slots.taken("acme", 4, 8):
        with pytest.raises(TooManyRequests):
            slots.taken("acme", 1, 8).__enter__()
        assert slots.under_way("acme") == 2
