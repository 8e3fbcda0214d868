"""Discovery config: the ``discovery`` table of a service.

::

    [[services]]
    name = "orders"
    protocol = "http"
    discovery = { consul = { service = "orders", address = "http://127.0.0.1:8500", tag = "v1" } }

    [[services]]
    name = "billing"
    discovery = { dns = { name = "_billing._tcp.service.consul", nameserver = "127.0.0.1", port = 8600 } }

Exactly one of ``consul`` or ``dns``.  Field names follow Consul's own
(``dc``, ``tag``, ``passing``, ``wait``, ``token``) and the ``consul`` CLI's
TLS flags (``ca_file``, ``cert_file``, ``key_file``, ``tls_server_name``).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from .. import validators
from ._consul_api import parse_duration

__all__ = ["ConsulConfig", "ConsulTLSConfig", "DiscoveryConfig", "DnsConfig"]

# Consul refuses blocking waits above 10 minutes.
_MAX_WAIT = 600.0


def _duration(_: Any, attribute: Any, value: str) -> None:
    seconds = parse_duration(value)
    if not 0 < seconds <= _MAX_WAIT:
        raise ValueError(f"must be more than 0 and at most 10m (Consul's limit), got {value!r}")


def _agent_address(_: Any, attribute: Any, value: str) -> None:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL of the Consul agent, got {value!r}")
    if port == 0 or (parts.path not in ("", "/")) or parts.query or parts.fragment:
        raise ValueError(f"expected scheme://host[:port] only, got {value!r}")


def _nameserver(_: Any, attribute: Any, value: str | None) -> None:
    if value is None:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"a nameserver is an IP address, got {value!r}") from exc


def _nameservers(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    for v in value:
        _nameserver(_, attribute, v)


def _service_name(_: Any, attribute: Any, value: str | None) -> None:
    if value is not None and (not value or "/" in value or "?" in value or "#" in value):
        raise ValueError(f"must be a Consul service name (no '/', '?' or '#'), got {value!r}")


@attrs.frozen
class ConsulTLSConfig:
    """TLS to the Consul agent (an ``https://`` address).  ``cert_file`` + ``key_file`` for mTLS."""

    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_server_name: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("'key_file' needs 'cert_file'")


@attrs.frozen
class ConsulConfig:
    """Instances from Consul's health endpoint, kept fresh with blocking queries.

    Attributes:
        service: the Consul service name (default: the gatekeep service's name).
        address: the agent's HTTP(S) address (``CONSUL_HTTP_ADDR`` in Consul's CLI).
        tag: only instances with this tag; ``tags`` for several (all must match).
        dc: the datacenter to ask (default: the agent's).
        token: an ACL token, sent as ``X-Consul-Token``; use ``{env://CONSUL_HTTP_TOKEN}``.
        passing: only instances whose checks all pass; ``false`` also takes
            instances in ``warning`` (``critical`` ones are never used).
        wait: how long one blocking query may wait (Consul adds up to 1/16).
        tagged_address: use this tagged address (``wan``, ``lan_ipv4`` ...) when set.
        filter: a Consul filter expression (``Service.Meta.version == "2"``).
        connect_timeout: seconds to connect to the agent.
        query_timeout: seconds a plain (non-blocking) query may take: the first one, and
            the one after an error.  Blocking queries get ``wait`` + wait/16 + 10 s.
        initial_timeout: seconds the gateway's start waits for the first answer; after
            that it starts anyway and answers 503 with ``Retry-After`` for this service
            until Consul answers (a hung agent must not hold the gateway).
        tls: TLS settings for an ``https://`` agent address.
    """

    service: str | None = attrs.field(default=None, validator=_service_name)
    address: str = attrs.field(default="http://127.0.0.1:8500", validator=_agent_address)
    tag: str | None = None
    tags: tuple[str, ...] = ()
    dc: str | None = None
    token: str | None = None
    passing: bool = True
    wait: str = attrs.field(default="30s", validator=_duration)
    tagged_address: str | None = None
    filter: str | None = None
    connect_timeout: float = attrs.field(default=5.0, validator=validators.positive)
    query_timeout: float = attrs.field(default=10.0, validator=validators.positive)
    initial_timeout: float = attrs.field(default=1.0, validator=validators.non_negative)
    tls: ConsulTLSConfig = ConsulTLSConfig()

    @property
    def all_tags(self) -> tuple[str, ...]:
        return ((self.tag,) if self.tag else ()) + tuple(t for t in self.tags if t != self.tag)

    @property
    def wait_seconds(self) -> float:
        return parse_duration(self.wait)


@attrs.frozen
class DnsConfig:
    """Instances from DNS SRV records (RFC 2782), refreshed by their TTL.

    Attributes:
        name: the SRV name: ``_orders._tcp.service.consul``, or Consul's short
            ``orders.service.consul``.
        nameserver / nameservers: resolver IP addresses (default: the system's).
        port: the nameservers' port (Consul's DNS listens on 8600).
        min_ttl / max_ttl: floor and ceiling, in seconds, of the refresh interval.
        timeout: seconds for one whole lookup.
        tcp: ask over TCP instead of UDP.
        address_types: which address records of the targets to use.
        initial_timeout: seconds the gateway's start waits for the first lookup; after
            that it starts anyway and answers 503 with ``Retry-After`` for this service
            until the lookup succeeds.
    """

    name: str
    nameserver: str | None = attrs.field(default=None, validator=_nameserver)
    nameservers: tuple[str, ...] = attrs.field(default=(), validator=_nameservers)
    port: int = attrs.field(default=53, validator=validators.port)
    min_ttl: float = attrs.field(default=1.0, validator=validators.positive)
    max_ttl: float = attrs.field(default=300.0, validator=validators.positive)
    timeout: float = attrs.field(default=5.0, validator=validators.positive)
    tcp: bool = False
    address_types: tuple[Literal["A", "AAAA"], ...] = ("A", "AAAA")
    initial_timeout: float = attrs.field(default=1.0, validator=validators.non_negative)

    def __attrs_post_init__(self) -> None:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"'min_ttl' ({self.min_ttl:g}) is above 'max_ttl' ({self.max_ttl:g})")
        if not self.address_types:
            raise ValueError("'address_types' needs 'A', 'AAAA' or both")
        if not self.name or self.name.strip(".") == "":
            raise ValueError("'name' must be a DNS name")

    @property
    def all_nameservers(self) -> tuple[str, ...]:
        return ((self.nameserver,) if self.nameserver else ()) + self.nameservers


@attrs.frozen
class DiscoveryConfig:
    """Where a service's instances come from: set exactly one of ``consul`` or ``dns``."""

    consul: ConsulConfig | None = None
    dns: DnsConfig | None = None

    def __attrs_post_init__(self) -> None:
        if (self.consul is None) == (self.dns is None):
            raise ValueError("set exactly one of 'consul' or 'dns'")
