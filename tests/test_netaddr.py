"""``in_networks``: the one address-in-networks check (trusted proxies, allow-lists, peers)."""

from __future__ import annotations

import ipaddress

import pytest

from gatekeep._netaddr import in_networks

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # a dual-stack socket's IPv4 peer
        ("fd12::1", True),
        ("11.0.0.1", False),
        ("::ffff:11.0.0.1", False),
        ("", False),
        (None, False),
        ("proxy.internal", False),
        ("10.0.0.1:8080", False),  # not an address: ports are split off before
    ],
)
def test_in_networks(address: str | None, inside: bool) -> None:
    assert in_networks(address, NETS) is inside


def test_no_networks_trusts_nobody() -> None:
    assert not in_networks("10.1.2.3", ())
