"""Which addresses a delivery may connect to (SSRF). Pure: the HTTP client asks it about every address it is
about to connect to (``daemon.delivery.http``), and config validation about every URL's host (``daemon.core.validate``).

Refused unless ``delivery.allowed_networks`` allows them: loopback, private, CGNAT, link-local (cloud metadata
included), ``0.0.0.0/8``, multicast, reserved and broadcast IPv4; IPv6 loopback, unspecified, unique-local,
link-local, site-local and multicast; IPv4-mapped (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::/96``) and 6to4
(``2002::/16``) addresses embedding a refused IPv4 address; and anything else Python's ``ipaddress`` does not
call globally reachable (documentation, benchmarking, protocol-assignment ranges). The names that stand for
such addresses everywhere (``localhost``, ``*.localhost``, ``metadata.google.internal``, ``metadata.goog``)
are refused by name too, and a host written as a number in any form but the canonical dotted quad
(``2130706433``, ``0177.0.0.1``, ``0x7f.0.0.1``, ``127.1``) is not a host this router accepts at all.

A refusal's ``reason`` is one of ``REASONS`` (a bounded metric label); its ``text`` never holds the address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final, NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REASONS: Final = (
    "loopback", "private", "cgnat", "link_local", "metadata", "unspecified", "multicast", "broadcast",
    "reserved", "unique_local",
)  # fmt: skip


class Refusal(NamedTuple):
    """Why an address is refused: ``reason`` is one of ``REASONS``; ``text`` says it in words, without the address."""

    reason: str
    text: str


def _table(rows: list[tuple[str, str, str]]) -> list[tuple[IPNetwork, Refusal]]:
    return [(ipaddress.ip_network(net), Refusal(reason, text)) for net, reason, text in rows]


# Most specific first: the first range that holds an address says why it is refused.
_IPV4 = _table([
    ("169.254.169.254/32", "metadata", "cloud metadata address"),
    ("0.0.0.0/8", "unspecified", "'this network' address"),
    ("127.0.0.0/8", "loopback", "loopback address"),
    ("10.0.0.0/8", "private", "private address"),
    ("172.16.0.0/12", "private", "private address"),
    ("192.168.0.0/16", "private", "private address"),
    ("100.64.0.0/10", "cgnat", "carrier-grade NAT (shared) address"),
    ("169.254.0.0/16", "link_local", "link-local address"),
    ("224.0.0.0/4", "multicast", "multicast address"),
    ("255.255.255.255/32", "broadcast", "broadcast address"),
    ("240.0.0.0/4", "reserved", "reserved (class E) address"),
])  # fmt: skip
_IPV6 = _table([
    ("::/128", "unspecified", "unspecified IPv6 address"),
    ("::1/128", "loopback", "IPv6 loopback address"),
    ("::/96", "reserved", "IPv4-compatible IPv6 address (deprecated)"),
    ("64:ff9b:1::/48", "reserved", "local-use NAT64 address"),
    ("fd00:ec2::254/128", "metadata", "cloud metadata address"),
    ("fc00::/7", "unique_local", "unique-local IPv6 address"),
    ("fe80::/10", "link_local", "link-local IPv6 address"),
    ("fec0::/10", "reserved", "site-local IPv6 address (deprecated)"),
    ("ff00::/8", "multicast", "multicast address"),
])  # fmt: skip
_NOT_GLOBAL = Refusal("reserved", "address that is not globally reachable")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# Names that mean a local or metadata address wherever they are resolved: judged as that address.
_LOCAL_NAMES: Final = {
    "localhost": "127.0.0.1",
    "metadata.google.internal": "169.254.169.254",
    "metadata.goog": "169.254.169.254",
}

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
# WHATWG URL: a host whose last label is a number (decimal, or 0x hex) is an IPv4 address, in whatever form.
_NUMERIC = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
_DECIMAL_OCTET = re.compile(r"(?:0|[1-9][0-9]{0,2})\Z")


def network(text: str) -> IPNetwork:
    """A network in CIDR form (a bare address is its /32 or /128); ValueError when it is not one or has host bits."""
    return ipaddress.ip_network(text, strict=True)


class NetGuard:
    """The refused ranges less ``allowed`` (CIDR networks). Immutable; cheap to ask (a few µs per address)."""

    __slots__ = ("_allowed",)

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = tuple(network(text) for text in allowed)

    @property
    def allowed(self) -> tuple[IPNetwork, ...]:
        return self._allowed

    def refusal(self, address: str | IPAddress) -> Refusal | None:
        """Why a connection to ``address`` (an IP address, as a socket is about to connect to it) is refused;
        None when it is allowed. A string that is not an IP address is refused as reserved."""
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address.partition("%")[0])  # a zone (fe80::1%eth0) is not the address
            except ValueError:
                return _NOT_GLOBAL
        if self._allows(address):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            embedded, form = _embedded(address)
            if embedded is not None:
                inner = self.refusal(embedded)
                return None if inner is None else Refusal(inner.reason, f"{inner.text} inside {form}")
            table = _IPV6
        else:
            table = _IPV4
        for net, refusal in table:
            if address in net:
                return refusal
        return None if address.is_global else _NOT_GLOBAL

    def host_refusal(self, host: str) -> Refusal | None:
        """Why deliveries to a URL's ``host`` (as written, an IP literal without brackets, or a name) are refused:
        a literal address or a local name (``localhost``, ``metadata.google.internal``) in a refused range.
        A name that is not one of those is for the connect-time check to judge, once resolved."""
        host = host.lower()
        if ":" in host:
            return self.refusal(host)
        name = host[:-1] if host.endswith(".") else host
        if _is_canonical_ipv4(name):
            return self.refusal(name)
        stands_for = _LOCAL_NAMES.get(name) or ("127.0.0.1" if name.endswith(".localhost") else None)
        if stands_for is None:
            return None
        inner = self.refusal(stands_for)
        return None if inner is None else Refusal(inner.reason, f"a name that always means a {inner.text}")

    def _allows(self, address: IPAddress) -> bool:
        return any(address in net for net in self._allowed if net.version == address.version)


def host_form_problem(host: str) -> str | None:
    """What is wrong with how a URL's host is written, or None for a plain DNS name or a canonical IP address.

    Refused: an IPv4 address in any form but four decimal numbers (``2130706433``, ``0177.0.0.1``,
    ``0x7f.0.0.1``, ``127.1``: resolvers read them as addresses), and anything that is not a name made of
    letters, digits, ``-`` and ``_`` labels (percent-encoded or empty labels, spaces).
    """
    host = host.lower()
    if ":" in host:  # an IPv6 literal (brackets already removed by the URL parser)
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            return "not a valid IPv6 address"
        return "an IPv6 zone (%...) is not allowed" if "%" in host else None
    if host.endswith("."):
        if _NUMERIC.match(host[:-1].rpartition(".")[2]):
            return "an IPv4 address must be written as four decimal numbers (a.b.c.d), without a trailing dot"
        host = host[:-1]
    labels = host.split(".")
    if _NUMERIC.match(labels[-1]):
        if _is_canonical_ipv4(host):
            return None
        return "an IPv4 address must be written as four decimal numbers (a.b.c.d): no octal, hex or short forms"
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        return "not a plain host name (letters, digits, '-' and '_' in dot-separated labels) or an IP address"
    return None


def _is_canonical_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(_DECIMAL_OCTET.match(p) and int(p) <= 255 for p in parts)


def _embedded(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    """The IPv4 address an IPv6 address carries to an IPv4 host, and the form it carries it in."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "an IPv4-mapped IPv6 address"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "a NAT64 address"
    if address.sixtofour is not None:
        return address.sixtofour, "a 6to4 address"
    return None, ""
