"""Is this address one of those networks? (trusted proxies, metrics allow-lists, service peers)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["Network", "in_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def in_networks(address: str | None, networks: Sequence[Network]) -> bool:
    """Whether the textual ``address`` lies in one of ``networks``.

    Not an address (``""``, ``None``, a host name, a Unix socket path) is never
    in any.  An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, what a dual-stack
    socket reports for an IPv4 peer) counts as its IPv4 address.
    """
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
