"""A gateway built from the user's own parts serves real requests through each of them.

Every protocol ``Gateway`` names is a seam (STYLE rule 12): the Router,
RateLimiter, Authenticator, Balancer and Breaker below are small classes
written here, with no gatekeep base class, satisfying only what the
protocol declares.  Requests cross real loopback sockets (``gatekeep.testing``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import attrs
import pytest

from gatekeep import (
    Authenticator,
    AuthError,
    Authorizer,
    Balancer,
    Breaker,
    ConfigError,
    Decision,
    Forbidden,
    Gateway,
    Identity,
    Instance,
    Limit,
    RateLimiter,
    Request,
    Router,
)
from gatekeep.testing import EchoUpstream, gateway_for, serve_asgi
from tests._docs import run_python_blocks

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the user's parts -------------------------------------------------------------


@attrs.frozen
class PrefixMatch:
    rule: Any
    params: Mapping[str, str]
    matched: str


class PrefixRouter:
    """Routes by the first path segment: ``/<route name>/...``."""

    def __init__(self, rules: Sequence[Any]) -> None:
        self.rules = {rule.name: rule for rule in rules}
        self.calls = 0

    def match(self, method: str, host: str, path: str, headers: Any = None) -> PrefixMatch | None:
        self.calls += 1
        first = path.split("/")[1]
        rule = self.rules.get(first)
        return None if rule is None else PrefixMatch(rule, {}, f"/{first}")

    def allowed_methods(self, host: str, path: str, headers: Any = None) -> frozenset[str]:
        return frozenset()


class HeaderAuthenticator:
    """Trusts ``x-user`` (a stand-in for a company SSO), refuses ``mallory``."""

    def __init__(self) -> None:
        self.calls = 0

    async def authenticate(self, request: Request) -> Identity | None:
        self.calls += 1
        user = request.headers.get(b"x-user")
        if user is None:
            return None
        if user == b"mallory":
            raise AuthError("mallory is not welcome")
        name = user.decode()
        return Identity(subject=name, consumer=name, roles=frozenset({"user"}))


class NoDeletes:
    """An ``Authorizer``: nobody may DELETE; notes every question it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, str, str]] = []

    def authorize(self, identity: Identity | None, method: str, path: str) -> None:
        self.asked.append((identity.subject if identity is not None else None, method, path))
        if method == "DELETE":
            raise Forbidden(f"nobody may DELETE {path}")


class TwoPerKey:
    """Lets two requests per key through, then says no."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    async def acquire(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        used = self.seen.get(key, 0) + cost
        if used > 2:
            return Decision(False, tuple(0 for _ in limits), 1.0, tuple(1.0 for _ in limits))
        self.seen[key] = used
        return Decision(True, tuple(2 - used for _ in limits), 0.0, tuple(1.0 for _ in limits))


class LastOne:
    """Always the instance with the highest port."""

    def __init__(self) -> None:
        self.picked: list[int] = []

    def pick(self, instances: Sequence[Instance], request: Request) -> Instance:
        chosen = max(instances, key=lambda i: i.port)
        self.picked.append(chosen.port)
        return chosen


class TwoStrikes:
    """Opens after two failures in a row and stays open (no half-open: the test is short)."""

    def __init__(self) -> None:
        self.failures = 0
        self.successes = 0

    def allow(self) -> bool:
        return self.failures < 2

    def on_success(self) -> None:
        self.successes += 1
        self.failures = 0

    def on_failure(self) -> None:
        self.failures += 1


def test_the_parts_satisfy_the_protocols() -> None:
    assert isinstance(PrefixRouter([]), Router)
    assert isinstance(HeaderAuthenticator(), Authenticator)
    assert isinstance(NoDeletes(), Authorizer)
    assert isinstance(TwoPerKey(), RateLimiter)
    assert isinstance(LastOne(), Balancer)
    assert isinstance(TwoStrikes(), Breaker)


# -- the gateway of those parts ---------------------------------------------------


async def test_a_gateway_of_user_parts_serves_requests_through_each() -> None:
    routers: list[PrefixRouter] = []
    balancers: dict[str, LastOne] = {}
    breaker = TwoStrikes()
    authenticator = HeaderAuthenticator()
    authorizer = NoDeletes()
    limiter = TwoPerKey()

    def router(rules: Sequence[Any]) -> PrefixRouter:
        routers.append(PrefixRouter(rules))
        return routers[-1]

    def balancer(service: Any) -> LastOne:
        return balancers.setdefault(service.name, LastOne())

    def breakers(service: Any, instance: Instance | None) -> TwoStrikes | None:
        # The service breaker of "flaky"; no other breaker anywhere.
        return breaker if service.name == "flaky" and instance is None else None

    first, second, flaky = EchoUpstream(), EchoUpstream(), EchoUpstream(status=503)
    async with AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(serve_asgi(app)) for app in (first, second, flaky)]
        low, high = (first, second) if ports[0] < ports[1] else (second, first)
        config = {
            "consumers": [{"username": "alice"}],
            "plugins": [{"name": "auth", "config": {"authenticator": "sso"}}],
            "services": [
                {
                    "name": "api",
                    "targets": [{"target": f"127.0.0.1:{p}"} for p in ports[:2]],
                    "routes": [{"name": "api", "paths": ["/api"]}],
                    "plugins": [
                        {"name": "authz", "config": {"authorizer": "no-deletes"}},
                        {"name": "rate-limiting", "config": {"minute": 100, "policy": "two-per-key"}},
                    ],
                },
                {
                    "name": "flaky",
                    "url": f"http://127.0.0.1:{ports[2]}",
                    "retries": 0,  # one try per request: the breaker counts requests
                    "routes": [{"name": "flaky", "paths": ["/flaky"]}],
                },
            ],
        }
        harness = await stack.enter_async_context(
            gateway_for(
                config,
                router=router,
                balancer=balancer,
                breaker=breakers,
                rate_limiters={"two-per-key": limiter},
                authenticators={"sso": authenticator},
                authorizers={"no-deletes": authorizer},
            )
        )
        client = harness.client

        # The router: no route of its is a 404.
        assert (await client.get("/nowhere")).status == 404
        # The authenticator: no credential, a refused one.
        assert (await client.get("/api/x")).status == 401
        assert (await client.get("/api/x", headers={"x-user": "mallory"})).status == 401
        assert authenticator.calls == 2

        # Alice passes; the balancer sends her to the higher port; the router stripped "/api".
        alice = {"x-user": "alice"}
        for n in (1, 2):
            response = await client.get(f"/api/{n}", headers=alice)
            assert response.status == 200
        assert [r.path for r in high.requests] == ["/1", "/2"] and not low.requests
        assert balancers["api"].picked == [max(ports[:2])] * 2
        assert high.requests[-1].headers["x-consumer-username"] == "alice"
        # The authorizer: her DELETE is refused before it reaches the limiter or the upstream.
        denied = await client.request("DELETE", "/api/1", headers=alice)
        assert denied.status == 403 and len(high.requests) == 2
        assert authorizer.asked == [
            ("alice", "GET", "/api/1"),
            ("alice", "GET", "/api/2"),
            ("alice", "DELETE", "/api/1"),
        ]
        # The rate limiter says no to her third request.
        refused = await client.get("/api/3", headers=alice)
        assert refused.status == 429 and len(high.requests) == 2
        assert sum(limiter.seen.values()) == 2

        # The breaker: two failures open it; the third request never reaches the upstream.
        for _ in range(2):
            assert (await client.get("/flaky", headers=alice)).status == 503
        assert breaker.failures == 2 and len(flaky.requests) == 2
        opened = await client.get("/flaky", headers=alice)
        assert opened.status == 503 and opened.header("retry-after") == "1"
        assert len(flaky.requests) == 2

        assert routers and routers[0].calls >= 9


async def test_a_gateway_without_the_named_part_is_refused() -> None:
    limited = {
        "services": [
            {
                "name": "s",
                "url": "http://127.0.0.1:9",
                "routes": [{"paths": ["/"]}],
                "plugins": [{"name": "rate-limiting", "config": {"second": 1, "policy": "mine"}}],
            }
        ]
    }
    with pytest.raises(ConfigError, match="no rate limiter 'mine'"):
        Gateway(limited)
    authenticated = {
        "plugins": [{"name": "auth", "config": {"authenticator": "sso"}}],
        "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
    }
    with pytest.raises(ConfigError, match="no authenticator 'sso'"):
        Gateway(authenticated)
    authorized = {
        "plugins": [{"name": "authz", "config": {"authorizer": "policy"}}],
        "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
    }
    with pytest.raises(
        ConfigError, match=r"plugins\[0\]\.config\.authorizer.*no authorizer 'policy'.*given: 'other'"
    ):
        Gateway(authorized, authorizers={"other": NoDeletes()})


async def test_a_balancer_with_only_pick_and_a_breaker_with_only_the_three_calls_per_instance() -> None:
    """Per-instance breakers from a factory: the guard asks nothing beyond the protocols."""
    per_instance: dict[int, TwoStrikes] = {}

    def breakers(service: Any, instance: Instance | None) -> TwoStrikes | None:
        return None if instance is None else per_instance.setdefault(instance.port, TwoStrikes())

    config = {"services": [{"name": "s", "url": "{upstream}", "retries": 0, "routes": [{"paths": ["/"]}]}]}
    async with gateway_for(
        config, upstream=EchoUpstream(status=502), balancer=lambda service: LastOne(), breaker=breakers
    ) as gw:
        assert (await gw.client.get("/")).status == 502
        assert (await gw.client.get("/")).status == 502
        # Open: the only instance is skipped, and nothing else is left.
        third = await gw.client.get("/")
        assert third.status == 503 and third.header("retry-after") == "1"
        assert [b.failures for b in per_instance.values()] == [2]
        assert len(gw.upstream.requests) == 2


def test_the_composing_page_runs() -> None:
    assert run_python_blocks("composing.md") == ["test_my_parts"]


def test_one_authorizer_signature_and_the_old_order_for_one_release() -> None:
    from gatekeep.authz import InsufficientRole, Policy

    policy = Policy.of({"rules": [{"methods": ["GET"], "paths": ["/reports"], "any_of": ["auditor"]}]})
    assert isinstance(policy, Authorizer)
    auditor = Identity(subject="a", roles=frozenset({"auditor"}))
    policy.authorize(auditor, "GET", "/reports")
    with pytest.raises(InsufficientRole):
        policy.authorize(Identity(subject="b"), "GET", "/reports")
    with pytest.warns(DeprecationWarning, match="authorize"):
        policy.authorize(auditor, "/reports", "GET")
