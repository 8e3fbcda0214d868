"""The public names of the release before the architecture step still import.

Issue 12 moved the built-ins to ``gatekeep/plugins/``, split the compile step
and renamed filter to plugin; every name ``gatekeep.__all__`` had before stays
importable (aliases where renamed) for at least one release.
"""

from __future__ import annotations

import pytest

import gatekeep

PREVIOUS_ALL = (
    "ASGIApp",
    "AuthError",
    "Authenticator",
    "Authorizer",
    "BadRequest",
    "Balancer",
    "BaseFilter",
    "Breaker",
    "Chain",
    "CircuitBreaker",
    "CircuitOpen",
    "CompiledRouter",
    "CompositeDiscovery",
    "ConfigError",
    "ConsistentHash",
    "ConsulDiscovery",
    "ConsumerConfig",
    "Decision",
    "Discovery",
    "DnsDiscovery",
    "Exchange",
    "FieldError",
    "Filter",
    "FilterError",
    "Forbidden",
    "GatekeepError",
    "Gateway",
    "GatewayConfig",
    "GatewaySettings",
    "HeaderFieldsTooLarge",
    "Headers",
    "Identity",
    "Instance",
    "JWTVerifier",
    "LeastOutstanding",
    "Limit",
    "MemoryRateLimiter",
    "MethodNotAllowed",
    "NoConfig",
    "NoHealthyUpstream",
    "NotFound",
    "PayloadTooLarge",
    "PluginConfig",
    "PowerOfTwoEWMA",
    "RateLimited",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
    "Request",
    "Response",
    "RoundRobin",
    "RouteConfig",
    "RouteMatch",
    "RouteRule",
    "Router",
    "ServiceConfig",
    "ServiceUnavailable",
    "StaticDiscovery",
    "TLSConfig",
    "TargetConfig",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "WSGIApp",
    "__version__",
    "asgi",
    "available_filters",
    "load_config",
    "normalise_path",
    "problem_response",
    "register_filter",
    "wsgi",
)


@pytest.mark.parametrize("name", PREVIOUS_ALL)
def test_a_name_of_the_previous_release_still_imports(name: str) -> None:
    assert name in gatekeep.__all__
    assert getattr(gatekeep, name) is not None


def test_the_renamed_sdk_names_are_aliases() -> None:
    assert gatekeep.BaseFilter is gatekeep.BasePlugin
    assert gatekeep.Filter is gatekeep.Plugin
