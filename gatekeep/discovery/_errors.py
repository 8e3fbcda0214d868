"""Errors of discovery and registration.

They belong to ``ServiceUnavailable`` (503): when one reaches a client at all,
it is because the gateway could not learn where a service lives.  Watchers
catch them, keep the last known good instances and count the failure.
"""

from __future__ import annotations

from .._errors import ServiceUnavailable

__all__ = [
    "ConsulError",
    "ConsulHTTPError",
    "ConsulResponseError",
    "ConsulUnavailable",
    "DiscoveryError",
    "DiscoveryPending",
    "DnsError",
]


class DiscoveryError(ServiceUnavailable):
    """Where a service lives could not be found out."""

    title = "Discovery Failed"
    slug = "discovery-failed"


class DiscoveryPending(DiscoveryError):
    """The service's discovery has not answered yet (a slow or hung Consul at start-up)."""

    title = "Discovery Pending"
    slug = "discovery-pending"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail, headers=[("retry-after", str(retry_after))])


class ConsulError(DiscoveryError):
    """A Consul call failed."""


class ConsulUnavailable(ConsulError):
    """The Consul agent could not be reached (refused, reset, TLS failure, timeout)."""


class ConsulHTTPError(ConsulError):
    """Consul answered with an error status; ``code`` is that status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Consul answered {code}: {message}")
        self.code = code


class ConsulResponseError(ConsulError):
    """Consul's answer is not the documented shape."""


class DnsError(DiscoveryError):
    """A DNS lookup failed (timeout, SERVFAIL, no nameserver answered)."""
