"""``ip-restriction``: allow or deny clients by address (Kong's plugin).

Fields (Kong's): ``allow`` and ``deny`` (addresses and CIDRs, IPv4 and IPv6;
at least one of them), ``status`` (default 403) and ``message`` (default "Your
IP address is not allowed").  A client in ``deny`` is refused; with ``allow``,
a client not in it is refused too (``deny`` wins when both match).  The answer
is problem+json with ``status`` and ``message`` as its detail.

The address is the real client's, as ``[gateway] trusted_proxies`` defines it
(``Request.client_ip``): the peer's, or behind a trusted proxy the address it
forwarded; a client's own ``X-Forwarded-For`` counts only when its peer is a
trusted proxy.  An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, a dual-stack
socket's IPv4 peer) is its IPv4 address.  A client with no IP address (a Unix
socket) matches no list: refused with ``allow``, let through with ``deny`` only.
Decisions are memoised per address (bounded).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from gatekeep import BasePlugin, GatekeepError, Request, Response, validators

__all__ = ["IpRestrictionConfig", "IpRestrictionFilter"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"expected an IP address or CIDR, got {item!r}") from None


def _status(_: Any, attribute: Any, value: int) -> None:
    if not 400 <= value <= 599:
        raise ValueError(f"must be an HTTP error status (400-599), got {value}")


@attrs.frozen
class IpRestrictionConfig:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("allow", "deny", "status", "message")

    # Addresses and CIDRs (IPv4, IPv6) that may pass; any other client is refused.
    allow: tuple[str, ...] = attrs.field(default=(), validator=_networks)
    # Addresses and CIDRs that are refused (deny wins over allow).
    deny: tuple[str, ...] = attrs.field(default=(), validator=_networks)
    # The status of a refusal (400-599).
    status: int = attrs.field(default=403, validator=_status)
    # The refusal's problem detail.
    message: str = "Your IP address is not allowed"

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return
        if not (self.allow or self.deny):
            raise ValueError("set 'allow' or 'deny' (or both): a list of addresses or CIDRs")


def _parse(networks: tuple[str, ...]) -> tuple[_Network, ...]:
    out: list[_Network] = []
    for text in networks:
        net = ipaddress.ip_network(text, strict=False)
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
            mapped = net.network_address.ipv4_mapped
            if mapped is not None:  # ::ffff:a.b.c.d/104 is a.b.c.d/8
                net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False)
        out.append(net)
    return tuple(out)


class IpRestricted(GatekeepError):
    slug = "ip-restricted"

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status  # type: ignore[misc]  # per instance: Kong's configurable status
        self.title = "Forbidden" if status == 403 else "Client Address Refused"  # type: ignore[misc]


class IpRestrictionFilter(BasePlugin[IpRestrictionConfig]):
    name: ClassVar[str] = "ip-restriction"
    priority: ClassVar[int] = 990
    config: IpRestrictionConfig

    def __init__(self, config: IpRestrictionConfig | None = None) -> None:
        super().__init__(config)
        self.allow = _parse(self.config.allow)
        self.deny = _parse(self.config.deny)
        self.allowed = functools.lru_cache(maxsize=4096)(self._allowed)

    def _allowed(self, address: str) -> bool:
        try:
            ip: Any = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip is not None and any(ip in net for net in self.deny):
            return False
        if self.allow:
            return ip is not None and any(ip in net for net in self.allow)
        return True

    async def on_request(self, request: Request) -> Response | None:
        if not self.allowed(request.client_ip):
            raise IpRestricted(self.config.status, self.config.message)
        return None
