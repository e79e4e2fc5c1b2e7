"""daemon.core.netguard: which addresses a delivery may reach, and which URL hosts a config may name."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.core.netguard import REASONS, NetGuard, host_form_problem, network

GUARD = NetGuard()

REFUSED = [
    ("0.0.0.0", "unspecified"),
    ("0.255.1.2", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("127.0.0.2", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("169.254.169.254", "metadata"),
    ("169.254.0.1", "link_local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.2.1", "reserved"),  # documentation: not globally reachable
    ("198.18.0.1", "reserved"),  # benchmarking
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique_local"),
    ("fd12:3456::1", "unique_local"),
    ("fd00:ec2::254", "metadata"),
    ("fe80::1", "link_local"),
    ("fe80::1%eth0", "link_local"),
    ("fec0::1", "reserved"),
    ("ff02::1", "multicast"),
    ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated)
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
    ("64:ff9b:1::1", "reserved"),  # local-use NAT64
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    ("2001:db8::1", "reserved"),  # documentation
]

ALLOWED = [
    "8.8.8.8",
    "93.184.215.14",
    "1.1.1.1",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above
    "172.32.0.1",  # just above 172.16/12
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_each_refused_form_is_refused_with_its_reason_and_a_text_without_the_address(address: str, reason: str) -> None:
    refusal = GUARD.refusal(address)
    assert refusal is not None and refusal.reason == reason
    assert reason in REASONS
    assert address not in refusal.text and address.partition("%")[0] not in refusal.text


@pytest.mark.parametrize("address", ALLOWED)
def test_globally_reachable_addresses_are_let_through(address: str) -> None:
    assert GUARD.refusal(address) is None


def test_embedded_forms_say_where_the_refused_address_was_found() -> None:
    texts = {a: GUARD.refusal(a) for a in ("::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1")}
    assert [r.text if r else None for r in texts.values()] == [
        "loopback address inside an IPv4-mapped IPv6 address",
        "loopback address inside a NAT64 address",
        "loopback address inside a 6to4 address",
    ]


def test_allowed_networks_let_their_ranges_through_and_nothing_else() -> None:
    guard = NetGuard(["127.0.0.0/8", "10.1.0.0/16", "fd00::/8"])
    for address in ("127.0.0.1", "127.9.9.9", "10.1.2.3", "fd00::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"):
        assert guard.refusal(address) is None, address
    for address in ("10.2.0.1", "192.168.1.1", "::1", "fc00::1", "169.254.169.254"):
        assert guard.refusal(address) is not None, address


def test_a_string_that_is_not_an_address_is_refused() -> None:
    refusal = GUARD.refusal("example.com")
    assert refusal is not None and refusal.reason == "reserved"


@pytest.mark.parametrize("text", ["10.0.0.1/8", "10.0.0.0/33", "example.com", "", "::1/129", "1.2.3"])
def test_network_refuses_what_is_not_a_cidr_network(text: str) -> None:
    with pytest.raises(ValueError):
        network(text)
    with pytest.raises(ValueError):
        NetGuard([text])


# --- properties ---

IPV4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


@given(IPV4)
def test_an_ipv4_address_is_judged_alike_in_every_ipv6_form_that_carries_it(v4: ipaddress.IPv4Address) -> None:
    plain = GUARD.refusal(v4)
    for carrier in (
        ipaddress.IPv6Address(f"::ffff:{v4}"),  # IPv4-mapped
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4)),  # NAT64
        ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | 1),  # 6to4
    ):
        carried = GUARD.refusal(carrier)
        assert (carried.reason if carried else None) == (plain.reason if plain else None), carrier


@given(st.sampled_from([a for a, _ in REFUSED if "%" not in a]), st.data())
def test_the_neighbours_of_a_refused_address_are_refused_until_their_range_is_allowed(
    address: str, data: st.DataObject
) -> None:
    ip = ipaddress.ip_address(address)
    prefix = data.draw(st.integers(ip.max_prefixlen - 8, ip.max_prefixlen), label="prefix")  # a /24../32 or /120../128
    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    inside = type(ip)(int(net.network_address) + data.draw(st.integers(0, net.num_addresses - 1)))
    assert GUARD.refusal(inside) is not None
    assert NetGuard([str(net)]).refusal(inside) is None
    assert NetGuard([str(net)]).refusal(ip) is None


@given(st.text(max_size=40))
def test_a_refusal_is_always_one_of_the_bounded_reasons(text: str) -> None:
    refusal = GUARD.refusal(text)
    assert refusal is None or refusal.reason in REASONS


# --- how hosts are written (check-config) ---


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",  # decimal
        "0177.0.0.1",  # octal
        "0x7f.0.0.1",  # hex
        "0x7f000001",
        "127.1",  # short
        "127.0.1",
        "127.0.0.01",
        "127.0.0.1.",
        "1.2.3.4.5",
        "256.0.0.1",
        "example.123",
        "%31%32%37.0.0.1",
        "ex ample.com",
        "a..b",
        "-a.example",
        "fe80::1%25eth0",
    ],
)
def test_hosts_that_are_not_a_plain_name_or_a_canonical_address_are_refused(host: str) -> None:
    assert host_form_problem(host) is not None


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "hooks.example.com.",
        "xn--bcher-kva.example",
        "a_b.example",
        "crm",
        "8.8.8.8",
        "::1",
        "2001:db8::1",
    ],
)
def test_plain_names_and_canonical_addresses_are_fine(host: str) -> None:
    assert host_form_problem(host) is None


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("localhost", "loopback"),
        ("LOCALHOST.", "loopback"),
        ("app.localhost", "loopback"),
        ("metadata.google.internal", "metadata"),
        ("metadata.goog", "metadata"),
        ("127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"),
        ("169.254.169.254", "metadata"),
    ],
)
def test_local_names_and_literal_addresses_are_judged_by_the_address_they_mean(host: str, reason: str) -> None:
    refusal = GUARD.host_refusal(host)
    assert refusal is not None and refusal.reason == reason
    assert NetGuard(["127.0.0.0/8", "169.254.169.254/32"]).host_refusal(host) is None


def test_other_names_are_left_to_the_connect_time_check() -> None:
    assert GUARD.host_refusal("hooks.example.com") is None
    assert GUARD.host_refusal("localhost.example.com") is None
