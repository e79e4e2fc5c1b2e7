"""daemon.delivery.endpoint.Endpoint: the mask of its secrets compiled once, off the event loop when it is large."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from daemon.core.config import DeliveryConfig, EndpointConfig
from daemon.core.mask import INLINE_COMPILE, Mask
from daemon.delivery.endpoint import _PLAIN_URL, Endpoint


def endpoint(headers: dict[str, str]) -> Endpoint:
    config = EndpointConfig(id="crm", url="https://crm.example.com/hook", secret="s" * 32, headers=headers)
    return Endpoint(config, DeliveryConfig(), {})


async def test_a_large_mask_compiles_once_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    compile_ = Mask.compile

    def recorded(self: Mask) -> None:
        threads.append(threading.get_ident())
        compile_(self)

    monkeypatch.setattr(Mask, "compile", recorded)
    large = endpoint({f"X-Key-{i}": f"{i:02d}" + "k/=+" * 100 for i in range(20)})
    assert large.mask.size > INLINE_COMPILE and not large.mask.compiled
    await asyncio.gather(*(large.mask_ready() for _ in range(8)))
    assert large.mask.compiled
    assert len(threads) == 1 and threads[0] != threading.get_ident()  # once, and not on the loop's thread
    assert large.mask("k " + "00" + "k/=+" * 100) == "k ***"


async def test_a_small_mask_compiles_at_once_on_the_loop() -> None:
    small = endpoint({"Authorization": "Bearer tok-0123456789"})
    assert small.mask.size <= INLINE_COMPILE
    await small.mask_ready()
    assert small.mask.compiled


@settings(max_examples=300, deadline=None)
@given(url=st.from_regex(_PLAIN_URL, fullmatch=True))
def test_a_url_the_checks_fast_path_takes_is_one_yarl_parses(url: str) -> None:
    """``Endpoint.check`` leaves a plain URL unparsed (yarl's parse was a tenth of a million endpoints' first read):
    only where yarl would take it."""
    URL(url, encoded=False)
    Endpoint.check(EndpointConfig(id="e", url=url, secret="s" * 16), {})


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com:99999/x", "https://[::1:/x", "http://exa mple.com/"],  # port, IPv6, a space
)
def test_a_url_outside_the_fast_path_is_checked_by_yarl(url: str) -> None:
    assert _PLAIN_URL.fullmatch(url) is None
    try:
        URL(url, encoded=False)
    except ValueError:
        with pytest.raises(ValueError):
            Endpoint.check(EndpointConfig(id="e", url=url, secret="s" * 16), {})
    else:
        Endpoint.check(EndpointConfig(id="e", url=url, secret="s" * 16), {})
