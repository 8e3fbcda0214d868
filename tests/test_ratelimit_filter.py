"""The ``rate-limiting`` filter through a real gateway: Kong's fields, headers, keys, roles, cost, burst."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest

from gatekeep import BaseFilter, ConfigError, Identity, Request, Response
from gatekeep._structure import structure_or_raise
from gatekeep.plugins.rate_limiting import RateLimitingConfig, RateLimitingFilter
from gatekeep.testing import ClientResponse, Harness, gateway_for

pytestmark = pytest.mark.anyio


class Login(BaseFilter):
    """Stands in for an authentication filter: the consumer, credential and roles come from headers."""

    name: ClassVar[str] = "test-login"
    priority: ClassVar[int] = 1450

    async def on_request(self, request: Request) -> Response | None:
        consumer = request.headers.text("x-consumer")
        credential = request.headers.text("x-credential")
        roles = request.headers.text("x-roles")
        if consumer or credential or roles:
            request.identity = Identity(
                subject=consumer or credential or "someone",
                consumer=consumer,
                credential=credential,
                roles=frozenset((roles or "").split(",")) - {""},
            )
            request.consumer = consumer
        return None


@asynccontextmanager
async def limited(
    config: Mapping[str, Any], *, routes: list[dict[str, Any]] | None = None, **extra: Any
) -> AsyncIterator[Harness]:
    async with gateway_for(
        plugins=[{"name": "rate-limiting", "config": dict(config)}],
        routes=routes,
        filters=[Login()],
        **extra,
    ) as gw:
        yield gw


def the_filter(gw: Harness) -> RateLimitingFilter:
    (found,) = [f for f in gw.gateway.filters if isinstance(f, RateLimitingFilter)]
    return found


async def statuses(gw: Harness, n: int, path: str = "/", **kwargs: Any) -> list[int]:
    return [(await gw.client.get(path, **kwargs)).status for _ in range(n)]


def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    return doc


# -- config -------------------------------------------------------------------


def test_kongs_example_config_loads() -> None:
    config = structure_or_raise(
        RateLimitingConfig,
        {"second": 5, "hour": 1000, "policy": "redis", "redis": {"host": "127.0.0.1", "port": 6379}},
    )
    assert (config.second, config.hour, config.limit_by, config.fault_tolerant) == (5, 1000, "consumer", True)
    assert config.redis.timeout == 2000
    assert (config.error_code, config.error_message) == (429, "API rate limit exceeded")


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({}, "config", "set at least one of second"),
        ({"minute": 0}, "config.minute", "greater than 0"),
        ({"minute": 5, "limit_by": "header"}, "config", "header_name"),
        ({"minute": 5, "limit_by": "path", "path": "nope"}, "config", "path starting with '/'"),
        ({"minute": 5, "limit_by": "cookie"}, "config.limit_by", "must be one of"),
        ({"minute": 5, "policy": "redis"}, "config", "needs a redis table"),
        ({"minute": 5, "policy": "redis", "redis": {"port": 6379}}, "config.redis", "needs a host"),
        ({"minute": 5, "redis": {"host": "h", "port": 70000}}, "config.redis.port", "port number"),
        ({"minute": 5, "burst": {"hour": 10}}, "config", "burst.hour is set but hour is not"),
        ({"minute": 5, "burst": {"week": 10}}, "config.burst", "unknown window 'week'"),
        ({"minute": 5, "error_code": 200}, "config", "400-599"),
        ({"minute": 5, "cost": 5, "max_cost": 2}, "config", "max_cost"),
        ({"minute": 5, "sync_rate": 1}, "config", "needs policy 'redis'"),
        ({"minute": 5, "roles": {"admin": {}}}, "config.roles.admin", "set at least one"),
        ({"minute": 5, "roles": {"admin": {"hour": -1}}}, "config.roles.admin.hour", "greater than 0"),
        ({"minute": 5, "redis": {"host": "h", "prefix": "{x}"}}, "config.redis.prefix", "braces"),
    ],
)
def test_bad_config_is_refused_with_its_path(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        structure_or_raise(RateLimitingConfig, data, "config")
    assert any(e.path == path and message in e.message for e in info.value.errors), info.value.errors


# -- decisions and headers ----------------------------------------------------


async def test_the_limit_then_429_problem_json_with_headers() -> None:
    async with limited({"hour": 3, "limit_by": "ip"}) as gw:
        seen = [await gw.client.get("/") for _ in range(4)]
        assert [r.status for r in seen] == [200, 200, 200, 429]
        assert [r.header("x-ratelimit-limit-hour") for r in seen] == ["3"] * 4
        assert [r.header("x-ratelimit-remaining-hour") for r in seen] == ["2", "1", "0", "0"]
        assert [r.header("ratelimit-remaining") for r in seen] == ["2", "1", "0", "0"]
        assert seen[0].header("ratelimit-limit") == "3"
        assert seen[0].header("ratelimit-reset") == "1200"  # one token in, 1200 s to full
        doc = problem(seen[3], 429)
        assert doc["detail"] == "API rate limit exceeded"
        assert doc["title"] == "Too Many Requests"
        # One token comes back every 1200 s; never invite the client back earlier.
        assert 1199 <= int(seen[3].header("retry-after") or 0) <= 1200
        assert seen[3].header("ratelimit-reset") == "3600"
        assert len(gw.upstream.requests) == 3
        assert the_filter(gw).stats.as_dict() == {
            "allowed": 3,
            "rejected": 1,
            "fallback_allowed": 0,
            "fallback_rejected": 0,
            "unavailable": 0,
        }


async def test_the_most_constrained_window_and_ties_go_to_the_longer_one() -> None:
    async with limited({"second": 100, "minute": 10, "hour": 10, "limit_by": "ip"}) as gw:
        r = await gw.client.get("/")
        assert [r.header(f"x-ratelimit-remaining-{w}") for w in ("second", "minute", "hour")] == [
            "99",
            "9",
            "9",
        ]
        assert (r.header("ratelimit-limit"), r.header("ratelimit-remaining")) == ("10", "9")
        assert r.header("ratelimit-reset") == "360"  # the hour's bucket: 1 token at 10 per hour


async def test_ietf_draft_fields() -> None:
    async with limited({"minute": 10, "hour": 3, "limit_by": "ip", "ietf_headers": True}) as gw:
        r = await gw.client.get("/")
        assert r.header("ratelimit-policy") == '"minute";q=10;w=60, "hour";q=3;w=3600'
        assert r.header("ratelimit") == '"minute";r=9;t=6, "hour";r=2;t=1200'
        assert r.header("x-ratelimit-limit-minute") == "10"


async def test_hide_client_headers_keeps_retry_after() -> None:
    async with limited({"hour": 1, "limit_by": "ip", "hide_client_headers": True}) as gw:
        ok, refused = await gw.client.get("/"), await gw.client.get("/")
        for r in (ok, refused):
            assert not [k for k, _ in r.headers if "ratelimit" in k]
        assert refused.status == 429 and refused.header("retry-after") == "3600"


async def test_error_code_and_message() -> None:
    config = {"hour": 1, "limit_by": "ip", "error_code": 420, "error_message": "Enhance your calm"}
    async with limited(config) as gw:
        await gw.client.get("/")
        doc = problem(await gw.client.get("/"), 420)
        assert doc["detail"] == "Enhance your calm"


async def test_upstream_rate_limit_headers_are_replaced() -> None:
    from gatekeep.testing import EchoUpstream

    upstream = EchoUpstream(extra_headers=[("RateLimit-Remaining", "999"), ("X-RateLimit-Limit-Hour", "1")])
    async with limited({"hour": 5, "limit_by": "ip"}, upstream=upstream) as gw:
        r = await gw.client.get("/")
        assert r.header_all("ratelimit-remaining") == ["4"]
        assert r.header_all("x-ratelimit-limit-hour") == ["5"]


async def test_burst() -> None:
    async with limited({"second": 1, "hour": 100, "burst": 3, "limit_by": "ip"}) as gw:
        seen = [await gw.client.get("/") for _ in range(4)]
        assert [r.status for r in seen] == [200, 200, 200, 429]
        assert seen[0].header("x-ratelimit-limit-second") == "1"
        assert seen[0].header("x-ratelimit-remaining-second") == "2"
        assert seen[3].header("retry-after") == "1"


async def test_burst_per_window() -> None:
    async with limited({"minute": 1, "hour": 2, "burst": {"hour": 5, "minute": 2}, "limit_by": "ip"}) as gw:
        assert await statuses(gw, 3) == [200, 200, 429]


async def test_a_fixed_cost_and_a_refused_request_takes_nothing() -> None:
    async with limited({"hour": 5, "cost": 2, "limit_by": "ip"}) as gw:
        seen = [await gw.client.get("/") for _ in range(3)]
        assert [r.status for r in seen] == [200, 200, 429]
        assert [r.header("x-ratelimit-remaining-hour") for r in seen] == ["3", "1", "1"]


async def test_cost_from_a_header_is_bounded() -> None:
    config = {"hour": 20, "cost_header": "X-Cost", "cost": 1, "max_cost": 5, "limit_by": "ip"}
    async with limited(config) as gw:

        async def left(cost: str | None) -> tuple[int, str | None]:
            r = await gw.client.get("/", headers={"x-cost": cost} if cost is not None else {})
            return r.status, r.header("x-ratelimit-remaining-hour")

        assert await left("3") == (200, "17")
        assert await left(None) == (200, "16")  # no header: the fixed cost
        assert await left("0") == (200, "15")  # never below the fixed cost
        assert await left("1000") == (200, "10")  # never above max_cost
        assert await left("-1") == (400, None)
        assert await left("2.5") == (400, None)
        assert await left("9" * 40) == (400, None)
        assert await left("5") == (200, "5")
        assert await left("5") == (200, "0")
        assert (await left("1"))[0] == 429


async def test_per_role_limits() -> None:
    config = {
        "hour": 1,
        "roles": {"admin": {"hour": 4}, "user": {"hour": 2}},
    }
    async with limited(config) as gw:
        admin = await statuses(gw, 5, headers={"x-consumer": "ann", "x-roles": "user,admin"})
        user = await statuses(gw, 3, headers={"x-consumer": "bob", "x-roles": "user"})
        nobody = await statuses(gw, 2, headers={"x-consumer": "cid", "x-roles": "guest"})
        assert admin == [200] * 4 + [429]  # the first listed role the identity holds
        assert user == [200, 200, 429]
        assert nobody == [200, 429]
        r = await gw.client.get("/", headers={"x-consumer": "dee", "x-roles": "user"})
        assert r.header("x-ratelimit-limit-hour") == "2"


# -- keys ---------------------------------------------------------------------


async def test_limit_by_consumer_falls_back_to_the_ip() -> None:
    async with limited({"hour": 2}) as gw:
        assert await statuses(gw, 3, headers={"x-consumer": "alice"}) == [200, 200, 429]
        assert await statuses(gw, 2, headers={"x-consumer": "bob"}) == [200, 200]
        # No consumer, but a credential: Kong keys by the credential.
        assert await statuses(gw, 3, headers={"x-credential": "key-1"}) == [200, 200, 429]
        # Anonymous: by the client's IP -- which is not the consumer named like the IP.
        assert await statuses(gw, 3) == [200, 200, 429]
        assert await statuses(gw, 2, headers={"x-consumer": "127.0.0.1"}) == [200, 200]


async def test_limit_by_header_values_never_share_a_bucket() -> None:
    async with limited({"hour": 1, "limit_by": "header", "header_name": "X-Tenant"}) as gw:
        tenants = ["a:b", "a", "b:c", "a%3Ab", "{x}", "127.0.0.1", "ip:127.0.0.1", "x" * 300, "x" * 301]
        for tenant in tenants:
            assert await statuses(gw, 2, headers={"x-tenant": tenant}) == [200, 429], tenant
        # The fallback to the client's IP is a bucket of its own too.
        assert await statuses(gw, 2) == [200, 429]


async def test_limit_by_path_counts_only_that_path() -> None:
    async with limited({"hour": 1, "limit_by": "path", "path": "/expensive"}) as gw:
        assert await statuses(gw, 2, "/expensive") == [200, 429]
        # Other paths fall back to the client's IP: one bucket for all of them.
        assert await statuses(gw, 2, "/cheap") == [200, 429]


async def test_limit_by_service_and_route() -> None:
    routes = [{"name": "one", "paths": ["/one"]}, {"name": "two", "paths": ["/two"]}]
    async with limited({"hour": 1, "limit_by": "route"}, routes=routes) as gw:
        assert await statuses(gw, 2, "/one") == [200, 429]
        assert await statuses(gw, 2, "/two") == [200, 429]
    async with limited({"hour": 1, "limit_by": "service"}, routes=routes) as gw:
        assert await statuses(gw, 1, "/one") == [200]
        assert await statuses(gw, 1, "/two") == [429]


async def test_each_plugin_instance_has_its_own_buckets() -> None:
    limited_route = {"name": "rate-limiting", "config": {"hour": 1, "limit_by": "ip"}}
    config = {
        "services": [
            {
                "name": "up",
                "url": "{upstream}",
                "routes": [
                    {"name": "a", "paths": ["/a"], "plugins": [limited_route]},
                    {"name": "b", "paths": ["/b"], "plugins": [limited_route]},
                    {"name": "c", "paths": ["/c"]},
                    {"name": "d", "paths": ["/d"]},
                ],
            }
        ],
        "plugins": [{"name": "rate-limiting", "config": {"hour": 1, "limit_by": "ip"}}],
    }
    async with gateway_for(config) as gw:
        scopes = sorted(str(f._scope) for f in gw.gateway.filters if isinstance(f, RateLimitingFilter))
        assert scopes == ["route:a", "route:b", "routes:c,d"]
        assert await statuses(gw, 2, "/a") == [200, 429]
        assert await statuses(gw, 2, "/b") == [200, 429]
        # The global instance serves c and d with one budget, as Kong's global plugin does.
        assert await statuses(gw, 1, "/c") == [200]
        assert await statuses(gw, 1, "/d") == [429]


async def test_a_consumer_scoped_instance() -> None:
    config = {
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"name": "all", "paths": ["/"]}]}],
        "consumers": [
            {
                "username": "alice",
                "plugins": [{"name": "rate-limiting", "config": {"hour": 1, "limit_by": "ip"}}],
            }
        ],
    }
    async with gateway_for(config, filters=[Login()]) as gw:
        assert await statuses(gw, 2, headers={"x-consumer": "alice"}) == [200, 429]
        assert await statuses(gw, 3, headers={"x-consumer": "bob"}) == [200] * 3
