"""Service discovery and registration: Consul (HTTP API, blocking queries) and DNS SRV.

A service gets its instances from a watcher when its config has a
``discovery`` table; the gateway starts the watchers on its lifespan task
group.  ``register``/``registered`` put a service into Consul.
See docs/discovery.md.
"""

from __future__ import annotations

from ._composite import CompositeDiscovery, build_discovery, no_instances
from ._config import ConsulConfig, ConsulTLSConfig, DiscoveryConfig, DnsConfig
from ._consul import ConsulClient, ConsulDiscovery, ConsulReply, DiscoveryStats
from ._consul_api import aggregate_status, next_index, parse_duration, parse_health, parse_index
from ._dns import DnsDiscovery, SrvLookup
from ._errors import (
    ConsulError,
    ConsulHTTPError,
    ConsulResponseError,
    ConsulUnavailable,
    DiscoveryError,
    DiscoveryPending,
    DnsError,
)
from ._registration import (
    Registration,
    check_ids,
    deregister,
    register,
    registered,
    registered_sync,
    validate_registration,
)
from ._srv import SrvRecord, by_priority, order, select

__all__ = [
    "CompositeDiscovery",
    "ConsulClient",
    "ConsulConfig",
    "ConsulDiscovery",
    "ConsulError",
    "ConsulHTTPError",
    "ConsulReply",
    "ConsulResponseError",
    "ConsulTLSConfig",
    "ConsulUnavailable",
    "DiscoveryConfig",
    "DiscoveryError",
    "DiscoveryPending",
    "DiscoveryStats",
    "DnsConfig",
    "DnsDiscovery",
    "DnsError",
    "Registration",
    "SrvLookup",
    "SrvRecord",
    "aggregate_status",
    "build_discovery",
    "by_priority",
    "check_ids",
    "deregister",
    "next_index",
    "no_instances",
    "order",
    "parse_duration",
    "parse_health",
    "parse_index",
    "register",
    "registered",
    "registered_sync",
    "select",
    "validate_registration",
]
