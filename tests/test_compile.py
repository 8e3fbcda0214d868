"""The compile step and the constructor seams: your own Router, Balancer and Breaker.

A gateway built with user-written parts serves real requests through them;
the compile step carries unchanged services over (``previous=``); a
``Response``'s resources are released once, last registered first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

import gatekeep
from gatekeep import Instance, Request, Response, RouteMatch, RouteRule, load_config
from gatekeep._compile import compile_config
from gatekeep.testing import EchoUpstream, gateway_for

pytestmark = pytest.mark.anyio


class PrefixRouter:
    """A user router: the first rule whose first path prefixes the request path wins."""

    def __init__(self, rules: Sequence[RouteRule]) -> None:
        self.rules = list(rules)
        self.calls = 0

    def match(self, method: str, host: str, path: str, headers: Any = None) -> RouteMatch | None:
        self.calls += 1
        for rule in self.rules:
            prefix = rule.paths[0].rstrip("/")
            if path == prefix or path.startswith(prefix + "/"):
                return RouteMatch(rule, {}, prefix)
        return None

    def allowed_methods(self, host: str, path: str, headers: Any = None) -> frozenset[str]:
        return frozenset()


class CountingBalancer:
    """A user balancer that counts picks and releases (each must be released exactly once)."""

    def __init__(self) -> None:
        self.picks = 0
        self.releases = 0

    def pick(self, instances: Sequence[Instance], request: Request) -> Instance:
        self.picks += 1
        return instances[0]

    def release(self, instance: Instance) -> None:
        self.releases += 1


class CountingBreaker:
    """A user breaker (with what the guard needs today beyond the protocol)."""

    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0

    state = "closed"

    def allow(self) -> bool:
        return True

    def available(self) -> bool:
        return True

    def retry_after(self) -> float:
        return 0.0

    def on_success(self) -> None:
        self.successes += 1

    def on_failure(self) -> None:
        self.failures += 1

    def on_cancel(self) -> None:
        pass

    def on_change(self, callback: Any) -> None:
        pass


ROUTES = [{"name": "orders", "paths": ["/orders"]}, {"name": "users", "paths": ["/users"]}]


async def test_a_gateway_serves_requests_through_user_written_parts() -> None:
    routers: list[PrefixRouter] = []
    balancer = CountingBalancer()
    breakers: dict[str, CountingBreaker] = {}

    def make_router(rules: Sequence[RouteRule]) -> PrefixRouter:
        routers.append(PrefixRouter(rules))
        return routers[-1]

    def make_breaker(service: Any, instance: Instance | None) -> CountingBreaker | None:
        if instance is None:
            return None  # no service-wide breaker
        return breakers.setdefault(instance.address, CountingBreaker())

    async with gateway_for(
        routes=ROUTES, router=make_router, balancer=lambda service: balancer, breaker=make_breaker
    ) as h:
        ok = await h.client.get("/users/7")
        assert ok.status == 200
        assert ok.json()["path"] == "/7"
        assert (await h.client.get("/nowhere")).status == 404
    assert routers[0].calls == 2
    assert balancer.picks == 1 and balancer.releases == 1
    assert [b.successes for b in breakers.values()] == [1]


async def test_a_router_instance_is_used_as_given() -> None:
    rule = RouteRule(name="all", paths=("/",))
    router = PrefixRouter([rule])
    router.rules = [RouteRule(name="all", paths=("/",))]
    async with gateway_for(router=router) as h:
        assert (await h.client.get("/x")).status == 200
    assert router.calls == 1


async def test_the_balancer_slot_is_released_once_on_an_upstream_error() -> None:
    balancer = CountingBalancer()
    async with gateway_for(upstream=EchoUpstream(status=502), balancer=lambda service: balancer) as h:
        assert (await h.client.get("/")).status == 502
    assert balancer.picks == balancer.releases >= 1  # one release per try (502 is retried)


async def test_unchanged_services_keep_their_state_across_a_compile() -> None:
    config = load_config(
        {
            "services": [
                {"name": "a", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/a"]}]},
                {"name": "b", "url": "http://127.0.0.1:2", "routes": [{"paths": ["/b"]}]},
            ]
        }
    )
    first = compile_config(config)
    changed = load_config(
        {
            "services": [
                {"name": "a", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/a"]}]},
                {"name": "b", "url": "http://127.0.0.1:3", "routes": [{"paths": ["/b"]}]},
            ]
        }
    )
    second = compile_config(changed, previous=first)
    assert second.services["a"] is first.services["a"]
    assert second.services["b"] is not first.services["b"]
    assert second.pool is first.pool


async def test_deferred_clean_ups_run_once_last_first_even_when_one_fails() -> None:
    ran: list[str] = []

    def note(name: str, fail: bool = False) -> Any:
        async def cleanup() -> None:
            ran.append(name)
            if fail:
                raise RuntimeError(name)

        return cleanup

    response = Response(200, body=b"")
    response.defer(note("connection"))
    response.defer(note("slot", fail=True))
    response.defer(note("timing"))
    replacement = Response(200, body=b"")
    replacement.defer(note("filter"))
    replacement.adopt(response)
    assert not response.holds_resources and replacement.holds_resources
    with pytest.raises(RuntimeError, match="slot"):
        await replacement.aclose()
    await replacement.aclose()
    await response.aclose()
    assert ran == ["filter", "timing", "slot", "connection"]


async def test_problem_answers_carry_the_configured_request_id_header() -> None:
    config = {"gateway": {"request_id_header": "X-Trace"}, "services": []}
    gateway = gatekeep.Gateway(config)
    async with gateway:
        request = Request(method="GET", path="", raw_path=b"/nowhere", host="example.com")
        response = await gateway.handle(request)
    assert response.status == 404
    assert response.headers.get(b"x-request-id") is None
    assert response.headers.get(b"x-trace") == request.request_id.encode()
    await anyio.lowlevel.checkpoint()
