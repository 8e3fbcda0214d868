"""The demo gateway's config, in Kong's shape, and the consumers it names.

Plugins are named as a user names them (``jwt``, ``rbac``, ``rate-limiting`` …): the demo
imports no plugin, the gateway finds them through their entry points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._devissuer import DEMO_CLIENTS, DevClient
from ._services import ORDER_HIERARCHY, ORDER_ROLES

__all__ = ["DEMO_AUDIENCE", "REFERENCE_LIMITS", "TRIAL_LIMITS", "demo_clients", "demo_config"]

DEMO_AUDIENCE = "gatekeep-demo"
# Kong's reference rate limit, per consumer, on the Order and Payment services.
REFERENCE_LIMITS = {"second": 5, "hour": 1000}
# carol is a trial client: a consumer-scoped rate-limiting plugin overrides the services' one.
TRIAL_LIMITS = {"second": 3, "hour": 1000}


def demo_clients() -> dict[str, DevClient]:
    """The dev issuer's clients: alice (user), bob (admin) and carol (user, on a trial rate limit)."""
    return {**DEMO_CLIENTS, "carol": DevClient("carol-secret", ("user",), "orders")}


def demo_config(
    ports: Mapping[str, int],
    issuer: str,
    *,
    redis: str | None = None,
    access_log: bool = False,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """The demo gateway's config (Kong's shape).

    Args:
        ports: where each service listens on loopback.
        issuer: the dev issuer's URL; the ``jwt`` filter reads its discovery document and JWKS.
        redis: a Redis URL for ``policy = "redis"``; ``None`` keeps the limits in memory.
        access_log: add the ``access-log`` filter.
    """
    jwt = {
        "name": "jwt",
        "config": {
            "issuers": [{"issuer": issuer, "audiences": [DEMO_AUDIENCE], "algorithms": ["RS256"]}],
            "typ": "at+jwt",
            # The token's client_id names the consumer, so consumer-scoped plugins and
            # X-Consumer-Username apply to it.
            "consumer_claims": ["client_id"],
        },
    }

    def rate_limiting(limits: Mapping[str, int]) -> dict[str, Any]:
        policy: dict[str, Any] = (
            {"policy": "redis", "redis": {"url": redis}} if redis else {"policy": "local"}
        )
        return {"name": "rate-limiting", "config": {**limits, "limit_by": "consumer", **policy}}

    plugins: list[dict[str, Any]] = [
        {"name": "correlation-id", "config": {"echo_downstream": True}},
        {"name": "tracing"},
        {"name": "prometheus", "config": {"per_consumer": True}},
    ]
    if access_log:
        plugins.append({"name": "access-log"})
    return {
        "_format_version": "3.0",
        "services": [
            {
                "name": "order-service",
                "url": f"http://{host}:{ports['order-service']}",
                "routes": [{"name": "orders", "paths": ["/orders"], "strip_path": False}],
                "plugins": [
                    jwt,
                    {
                        "name": "rbac",
                        "config": {
                            "hierarchy": ORDER_HIERARCHY,
                            "rules": [
                                {"methods": [method], "any_of": [role]}
                                for method, role in ORDER_ROLES.items()
                            ],
                        },
                    },
                    rate_limiting(REFERENCE_LIMITS),
                ],
            },
            {
                "name": "payment-service",
                "url": f"http://{host}:{ports['payment-service']}",
                "routes": [
                    {
                        "name": "payments",
                        "paths": ["/payments"],
                        "methods": ["GET", "POST"],
                        "strip_path": False,
                    }
                ],
                "plugins": [
                    jwt,
                    rate_limiting(REFERENCE_LIMITS),
                    {
                        "name": "request-size-limiting",
                        "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"},
                    },
                ],
            },
            {
                "name": "inventory-service",
                "url": f"http://{host}:{ports['inventory-service']}/items",
                "routes": [{"name": "inventory", "paths": ["/inventory"], "methods": ["GET"]}],
            },
        ],
        "plugins": plugins,
        "consumers": [
            {"username": "alice"},
            {"username": "bob"},
            {"username": "carol", "plugins": [rate_limiting(TRIAL_LIMITS)]},
        ],
    }
