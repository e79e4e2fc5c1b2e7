"""What a profile is: one platform's webhook contract, declared as data. Pure.

A ``Profile`` names everything that differs between platforms, so that adding one is one declaration
(a module of this package, registered in ``daemon.core.profiles``): how the body is built from the event
(``Template``), how a request is signed and which headers that makes the router's own (``Signing``),
which event types exist, which the contract never delivers (``Skip``), its limits, its retry policy
and pause rule, and, for a platform whose customers configure more than endpoints (the campaign
router's organisations), how that config becomes endpoints (``Expansion``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import msgspec

from daemon.core.policy import STANDARD_STATUSES, Policy, StatusRules
from daemon.core.profiles.template import Template

if TYPE_CHECKING:
    from daemon.core.config import Config, EndpointConfig, SubscriptionConfig

Json = Any

# Hop-by-hop headers (RFC 9110 7.6.1, with Keep-Alive and Proxy-Connection): they speak to the connection or to the
# egress proxy (delivery.proxy_url: Proxy-Authorization carries the router's credentials to it), never to the
# receiver. Every ``Proxy-*`` header counts as one (``hop_by_hop``).
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade"}
)  # fmt: skip

# Headers only the router writes, whatever the profile: an endpoint's own headers may not set them.
TRANSPORT_HEADERS: Final = frozenset({"host", "content-length", "content-type", "traceparent"}) | HOP_BY_HOP


def hop_by_hop(name: str) -> bool:
    """True for a header an endpoint may never set in any profile because it is not the receiver's: a hop-by-hop
    header or any ``Proxy-*`` one (any case)."""
    lower = name.lower()
    return lower in HOP_BY_HOP or lower.startswith("proxy-")


KeySource = Literal["whsec", "text", "optional"]  # Standard Webhooks secrets, any text, or none needed


class Signer(Protocol):
    """One endpoint's signing, keys prepared once."""

    def headers(self, delivery_id: str, wire_id: str | None, event_type: str, body: bytes, ts: int) -> dict[str, str]:
        """The headers of one request that depend on it: signature, ids, timestamp."""
        ...


class Signing(Protocol):
    """A signing scheme: the headers it owns, the id it gives an attempt on the wire, and a signer per endpoint."""

    @property
    def headers_owned(self) -> frozenset[str]:
        """Lower-case names of the headers it sets (an endpoint may not override them)."""
        ...

    def signer(self, secrets: Sequence[str]) -> Signer: ...

    def wire_id(self, endpoint_id: str, delivery_id: str, attempt: int, ts: int) -> str | None:
        """The id the contract puts on the wire for one attempt (agora: X-Agora-Delivery), if it has one."""
        ...


class _Unsigned:
    def headers(self, delivery_id: str, wire_id: str | None, event_type: str, body: bytes, ts: int) -> dict[str, str]:
        return {}


class Unsigned:
    """No signature headers: the contract carries its secret in the body, or none at all."""

    headers_owned: frozenset[str] = frozenset()

    def signer(self, secrets: Sequence[str]) -> Signer:
        return _Unsigned()

    def wire_id(self, endpoint_id: str, delivery_id: str, attempt: int, ts: int) -> str | None:
        return None


class Checks(Protocol):
    """The checks config validation offers a profile's own config (``daemon.core.validate``)."""

    def endpoint_id(self, endpoint: EndpointConfig, path: str) -> None:
        """Register an endpoint id the config makes; a duplicate is a fault at ``path``."""
        ...

    def url(self, url: str, allow_http: bool, https_only: bool, path: str) -> None: ...

    def headers(self, headers: dict[str, str], profile: Profile, path: str) -> None: ...

    def events(self, patterns: list[str], profile: Profile, path: str) -> None: ...

    def topics(self, topics: list[str] | None, path: str) -> None: ...

    def fault(self, path: str, message: str) -> None: ...


class Expansion(Protocol):
    """Config of a profile's own shape (the campaign profile's organisations), resolved into plain endpoints."""

    def expand(self, config: Config) -> tuple[list[EndpointConfig], list[SubscriptionConfig]]:
        """The endpoints and subscriptions this part of the config stands for, once per config."""
        ...

    def check(self, config: Config, checks: Checks) -> None:
        """Report every fault of this part of the config through ``checks``."""
        ...


class Skip(msgspec.Struct, frozen=True, kw_only=True):
    """Events a profile never delivers: ``types`` whose field at ``path`` is one of ``values``."""

    status: str
    types: frozenset[str] | None
    path: str
    values: frozenset[Json] | None  # None: any present, non-null value
    reason: str


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    template: Template | None  # None: the body exactly as it arrived
    signing: Signing
    key_source: KeySource
    standard_headers: bool = True  # Content-Type, User-Agent and the endpoint's custom headers
    timeout_s: float = 10.0  # default
    max_timeout_s: float = 120.0
    catalogue: frozenset[str] | None = None  # event types the platform has; None: any
    https_only: bool = False
    needs_events: bool = False  # an endpoint must subscribe to at least one event
    test_event: Mapping[str, Json] = msgspec.field(default_factory=dict)
    skips: tuple[Skip, ...] = ()
    injects_secret: bool = False  # the body depends on the endpoint's secret
    retry: Policy
    statuses: StatusRules = STANDARD_STATUSES  # which answers are retried, final, or pause the endpoint
    pause_after_failures: int | None = None  # consecutive failed deliveries that pause the endpoint
    expansion: Expansion | None = None

    @property
    def reserved_headers(self) -> frozenset[str]:
        """Lower-case header names an endpoint of this profile may not set itself (and every ``Proxy-*``:
        ``reserves``)."""
        return TRANSPORT_HEADERS | self.signing.headers_owned

    def reserves(self, name: str) -> bool:
        """True when an endpoint of this profile may not set the header ``name`` (any case)."""
        return name.lower() in self.reserved_headers or hop_by_hop(name)


def first_present(event: dict[str, Json], path: str) -> Json:
    """The value at the first of ``a.b|c`` that is present and not null, else None."""
    for alt in path.split("|"):
        value: Json = event
        for step in alt.strip().split("."):
            value = value.get(step) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


def skip_for(profile: Profile, event: dict[str, Json] | None, event_type: str) -> Skip | None:
    """The rule under which this profile never delivers this event, if any."""
    for rule in profile.skips:
        if rule.types is not None and event_type not in rule.types:
            continue
        value = first_present(event, rule.path) if event is not None else None
        if value is None:
            continue
        if rule.values is None or (isinstance(value, (str, int, float)) and value in rule.values):
            return rule
    return None


def pattern_matches(pattern: str, event_type: str) -> bool:
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type
