"""``GET /explain`` on the Admin API: which route, why, which plugins in which order, which instances.

A real gateway over a store, its Admin API on its own loopback listener
(``admin_for`` + ``serve_admin``, as ``gatekeep serve`` starts it), httpx as
the operator's client; the router's ``explain`` is also checked on its own,
and held to ``match``'s choice by a property test.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep import CompiledRouter, Gateway, RouteRule, serve_admin
from gatekeep.adapters import asgi
from gatekeep.admin._server import admin_for
from gatekeep.configsource import MemoryStore
from gatekeep.testing import EchoUpstream, TestClient, serve_asgi
from tests import strategies as gs
from tests._docs import blocks
from tests._servers import free_port, upstream_thread
from tests._servers import running as serving

pytestmark = pytest.mark.anyio


def _config(upstream: str, dead: str = "127.0.0.1:9") -> dict[str, Any]:
    return {
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "plugins": [{"name": "correlation-id"}],
        "services": [
            {
                "name": "orders",
                "url": f"http://{upstream}/v1",
                "plugins": [{"name": "rate-limiting", "config": {"second": 50}}],
                "routes": [
                    {
                        "name": "order",
                        "paths": ["/orders/{id}"],
                        "methods": ["GET", "POST"],
                        "plugins": [{"name": "key-auth"}],
                    },
                    {"name": "orders-v2", "paths": ["/orders"], "headers": {"x-version": ["2"]}},
                    {"name": "api-orders", "paths": ["/orders"], "hosts": ["*.example.com"]},
                ],
            },
            {
                "name": "stock",
                "protocol": "http",
                "targets": [{"target": upstream}, {"target": dead}],
                "retries": 2,
                "healthchecks": {
                    "passive": {
                        "unhealthy": {
                            "http_failures": 0,
                            "tcp_failures": 1,
                            "timeouts": 0,
                            "connect_failures": 1,
                        }
                    }
                },
                "breaker": {"consecutive_failures": 1, "open_for": 60},
                "routes": [{"name": "stock", "paths": ["=/stock"], "methods": ["GET"]}],
            },
        ],
        "consumers": [
            {"username": "alice", "plugins": [{"name": "rate-limiting", "config": {"second": 500}}]}
        ],
    }


@asynccontextmanager
async def running() -> AsyncIterator[tuple[httpx.AsyncClient, TestClient, Gateway]]:
    async with serve_asgi(EchoUpstream()) as upstream_port:
        config = _config(f"127.0.0.1:{upstream_port}")
        gateway = Gateway(config, config_source=MemoryStore(config))
        async with gateway, serve_asgi(asgi(gateway)) as proxy_port:
            api = admin_for(gateway)
            assert api is not None
            async with serve_admin(api, api.settings) as (host, port):
                async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as admin:
                    yield admin, TestClient("127.0.0.1", proxy_port), gateway


@pytest.fixture
async def admin() -> AsyncIterator[httpx.AsyncClient]:
    async with running() as (client, _, _):
        yield client


async def explain(admin: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await admin.get("/explain", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# -- which route, and why ----------------------------------------------------------------


async def test_a_matching_route_with_plugins_of_every_scope_in_run_order(admin: httpx.AsyncClient) -> None:
    body = await explain(admin, method="GET", path="/orders/42")
    assert body["status"] is None and body["outcome"] == "routed to 'order' of service 'orders'"
    route = body["route"]
    assert (route["name"], route["service"]) == ("order", "orders")
    assert route["matched"] == {"path": "/orders/{id}", "host": "", "kind": "template"}
    assert route["params"] == {"id": "42"}
    assert route["strip_path"] is True
    assert route["upstream_path"] == "/v1"  # strip_path removes the whole matched template
    assert "the first candidate, in precedence order" in route["reason"]
    # The prefix routes for /orders were considered and lost on precedence or their host.
    others = {c["route"]: c for c in body["candidates"] if not c["taken"]}
    assert "a template path ranks before a prefix path" in others["orders-v2"]["reason"]
    assert others["api-orders"]["failed"] == "host"
    chain = body["plugins"]["chain"]
    assert [(p["name"], p["scope"]) for p in chain] == [
        ("correlation-id", "global"),
        ("key-auth", "route"),
        ("rate-limiting", "service"),
    ]
    priorities = [p["priority"] for p in chain]
    assert priorities == sorted(priorities, reverse=True)
    assert chain[2]["config_path"] == "services[0].plugins[0]"
    assert body["plugins"]["order"]["request"] == ["correlation-id", "key-auth", "rate-limiting"]
    assert body["plugins"]["order"]["response"] == ["rate-limiting", "correlation-id"]  # reversed
    # Alice's own rate limit replaces the service's once key-auth names her.
    (alice,) = body["plugins"]["consumer_scoped"]
    assert alice["consumer"] == "alice" and alice["replaces"] == "service"
    assert "depend on who authenticates" in body["plugins"]["note"]
    assert body["upstream"]["instances"][0]["eligible"] is True


async def test_a_404_is_explained_with_the_nearest_routes(admin: httpx.AsyncClient) -> None:
    body = await explain(admin, path="/order/1")
    assert body["status"] == 404 and body["route"] is None
    assert body["outcome"].startswith("404: no route matches GET /order/1")
    nearest = body["candidates"]
    assert nearest and all(c["failed"] == "path" for c in nearest)
    assert nearest[0]["route"] == "order" and "they share '/order'" in nearest[0]["reason"]
    assert body["plugins"]["order"]["request"] == ["correlation-id"]
    assert "request phase does not run" in body["plugins"]["note"]


async def test_a_405_is_explained_with_its_allow_and_the_failed_method(admin: httpx.AsyncClient) -> None:
    body = await explain(admin, method="DELETE", path="/stock")
    assert body["status"] == 405 and body["allow"] == ["GET"]
    (stock,) = body["candidates"]
    assert stock["failed"] == "method" and "not the method 'DELETE'" in stock["reason"]


async def test_the_host_decides_before_the_path_kind(admin: httpx.AsyncClient) -> None:
    body = await explain(admin, path="/orders", host="shop.example.com:8443")
    assert body["route"]["name"] == "api-orders"
    assert body["route"]["matched"]["host"] == "*.example.com"
    v2 = next(c for c in body["candidates"] if c["route"] == "orders-v2")
    assert "wildcard host '*.example.com' is tried before any host" in v2["reason"]
    # The same through a Host header.
    assert (await explain(admin, path="/orders", header="Host:shop.example.com"))["route"]["name"] == (
        "api-orders"
    )


async def test_a_header_route_needs_its_header(admin: httpx.AsyncClient) -> None:
    body = await explain(admin, path="/orders", header=["X-Version: 2", "Accept: */*"])
    assert body["route"]["name"] == "orders-v2"
    assert body["request"]["headers"] == [["x-version", "2"], ["accept", "*/*"]]
    missing = await explain(admin, path="/orders", header="X-Version: 3")
    assert missing["status"] == 404
    (v2,) = [c for c in missing["candidates"] if c["route"] == "orders-v2"]
    assert v2["failed"] == "headers" and "'x-version' is not one of ['2']" in v2["reason"]


async def test_explain_has_no_side_effect_and_follows_the_active_config() -> None:
    async with running() as (admin, proxy, gateway):
        before = gateway.config_status()["config_hash"]
        body = await explain(admin, path="/orders/1")
        assert body["config_hash"] == before
        assert not gateway.compiled.routes_by_name["order"].consumer_chains
        assert gateway.services["stock"].guard.instance_breakers == {}


# -- which instances -------------------------------------------------------------------------


async def test_an_ejected_instance_with_an_open_breaker_is_shown_ineligible() -> None:
    async with running() as (admin, proxy, gateway):
        for _ in range(4):  # round robin reaches the dead target; the retry answers
            assert (await proxy.get("/stock")).status == 200
        body = await explain(admin, path="/stock")
        upstream = body["upstream"]
        assert upstream["balancer"] == "round-robin" and upstream["healthchecks"] is True
        by_address = {i["address"]: i for i in upstream["instances"]}
        dead = by_address["127.0.0.1:9"]
        assert dead["eligible"] is False and dead["health"] == "ejected"
        assert dead["breaker"] == "open"
        assert "ejected by passive health checks" in dead["why_not"]
        assert any("breaker is open" in why for why in dead["why_not"])
        assert upstream["eligible"] == [a for a in by_address if a != "127.0.0.1:9"]


# -- an attacker's or a typo's query ---------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("method=GET", "path"),
        ("path=orders", "path"),
        ("path=/a%00b", "path"),
        ("path=/x&header=NoColon", "header"),
        ("path=/x&header=Bad Name:1", "header"),
        ("path=/x&header=X:a%0d%0aInjected:1", "header"),
        ("path=/x&method=G%20T", "method"),
        ("path=/x&host=bad%20host", "host"),
        ("path=/x&host=a&header=Host:b", "host"),
        ("path=/x&path=/y", "path"),
        ("path=/x&headers=X:1", "headers"),
        ("path=/" + "a" * 9000, "path"),
    ],
)
async def test_a_bad_query_is_a_kong_schema_violation(
    admin: httpx.AsyncClient, query: str, field: str
) -> None:
    r = await admin.get("/explain?" + query)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["name"] == "schema violation" and field in body["fields"]


async def test_a_huge_or_odd_query_is_never_a_500(admin: httpx.AsyncClient) -> None:
    many = "&".join(f"header=X-{i}:{i}" for i in range(200))
    r = await admin.get("/explain?path=/&" + many)
    assert r.status_code == 400 and "too many query fields" in r.json()["message"]
    huge = await admin.get("/explain?path=/" + "x" * 40_000)
    assert huge.status_code in (400, 414, 431)
    for odd in ("%", "path=%ff%fe", "path=/%2e%2e/%2e%2e/etc", "=&&==", "path=/&header=%ff:%ff"):
        r = await admin.get("/explain?" + odd)
        assert r.status_code in (200, 400), (odd, r.text)
    assert (await admin.post("/explain")).status_code == 405


async def test_an_admin_api_without_a_gateway_says_so() -> None:
    from gatekeep import AdminAPI, AdminSettings

    settings = AdminSettings(listen=f"127.0.0.1:{free_port()}")
    async with serve_admin(AdminAPI(MemoryStore({}), settings=settings), settings) as (host, port):
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            r = await client.get("/explain", params={"path": "/"})
    assert r.status_code == 501 and "no gateway" in r.json()["message"]


# -- the router's own explain ----------------------------------------------------------------


def test_router_explain_names_the_deciding_precedence() -> None:
    router = CompiledRouter(
        [
            RouteRule("short", ["/a"]),
            RouteRule("long", ["/a/b"]),
            RouteRule("any-method", ["=/a/b/c"]),
            RouteRule("get", ["=/a/b/c"], methods=["GET"]),
            RouteRule("first", ["~^/r/.*$"]),
            RouteRule("second", ["~^/r/x$"]),
        ]
    )
    e = router.explain("GET", "h", "/a/b/x")
    assert [c.route for c in e.candidates] == ["long", "short"]
    assert "the longer prefix '/a/b' ranks before '/a'" in e.candidates[1].reason
    e = router.explain("GET", "h", "/a/b/c")
    assert e.candidates[0].route == "get"
    assert "with a method list ranks before one for any method" in e.candidates[1].reason
    e = router.explain("GET", "h", "/r/x")
    assert e.candidates[1].reason.endswith("it comes first in the configuration")
    assert router.explain("GET", "h", "nope").candidates == ()


def test_a_router_ranks_its_routes_for_explain_once(monkeypatch: pytest.MonkeyPatch) -> None:
    router = CompiledRouter(
        [RouteRule(f"r{i}", [f"/svc{i}", f"=/svc{i}/health"], hosts=["a.example.com"]) for i in range(300)]
    )
    first = router.explain("GET", "a.example.com", "/svc7/x")
    assert first.match is not None and first.match.rule.name == "r7"

    def parse_again(pattern: str) -> object:
        raise AssertionError(f"explain parsed {pattern!r} again: it re-ranked every route")

    monkeypatch.setattr("gatekeep._router._parse_pattern", parse_again)
    assert router.explain("GET", "a.example.com", "/svc7/x") == first
    assert router.explain("GET", "a.example.com", "/svc42/health").match.rule.name == "r42"  # type: ignore[union-attr]


_rules = st.lists(
    st.builds(
        RouteRule,
        name=st.text(alphabet="abcdef", min_size=1, max_size=3),
        paths=st.lists(
            st.one_of(
                gs.canonical_paths(gs.plain_segments),
                gs.canonical_paths(gs.plain_segments).map(lambda p: "=" + p),
                st.sampled_from(["/{x}", "/a/{x}", "/a/{x}/", "/{p:path}", "~^/a.*$", "/a/b"]),
            ),
            max_size=2,
        ),
        methods=st.lists(st.sampled_from(["GET", "POST"]), max_size=2),
        hosts=st.lists(st.sampled_from(["a.example.com", "*.example.com"]), max_size=1),
        headers=st.one_of(st.just({}), st.just({"x-v": ("1",)})),
    ),
    max_size=8,
)


@given(
    _rules,
    st.sampled_from(["GET", "POST", "PUT"]),
    st.sampled_from(["a.example.com", "b.example.com", "other"]),
    st.one_of(gs.canonical_paths(gs.plain_segments), st.sampled_from(["/a", "/a/b", "/a/x/", "/"])),
    st.sampled_from([[], [(b"x-v", b"1")], [(b"x-v", b"2")]]),
)
def test_explain_chooses_what_match_chooses(
    rules: list[RouteRule], method: str, host: str, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    router = CompiledRouter(rules)
    expected = router.match(method, host, path, headers)
    found = router.explain(method, host, path, headers)
    assert found.match == expected
    assert router.explain(method, host, path, headers) == found  # the ranking kept from the first call
    taken = [c for c in found.candidates if c.taken]
    if expected is None:
        assert taken == []
    else:
        assert [c.route for c in taken] == [expected.rule.name] and found.candidates[0].taken
    assert found.allowed == router.allowed_methods(host, path, headers)
    for c in found.candidates:  # each verdict describes a pattern its route really has
        assert any(
            r.name == c.route and c.path in (r.paths or ("/",)) and c.host in (r.hosts or ("",))
            for r in rules
        )


# -- docs/operations.md: its explain example against a real ``gatekeep serve`` ---------------


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(_subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


def test_the_operations_page_explain_examples_run_against_gatekeep_serve(tmp_path: Path) -> None:
    (config,) = blocks("operations.md", "toml")
    calls = [
        line for block in blocks("operations.md", "sh") for line in block.splitlines() if "/explain?" in line
    ]
    answers = [json.loads(block) for block in blocks("operations.md", "json")]
    assert len(calls) == len(answers) == 2
    admin_port = free_port()
    with upstream_thread(EchoUpstream()) as upstream_port:

        def real(text: str) -> str:
            text = text.replace("127.0.0.1:8001", f"127.0.0.1:{admin_port}")
            return text.replace("127.0.0.1:9001", f"127.0.0.1:{upstream_port}")

        path = tmp_path / "gatekeep.toml"
        path.write_text(real(config))
        port = free_port()
        argv = [sys.executable, "-m", "gatekeep", "serve", str(path), "--port", str(port)]
        with serving("gatekeep", "", app_dir=tmp_path, argv=argv, port=port):
            deadline = time.monotonic() + 10
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{admin_port}/status").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the Admin API did not start"
                time.sleep(0.05)
            for call, answer in zip(calls, answers, strict=True):
                url = real(call.split("'")[1])
                got = httpx.get(url).json()
                assert _subset(json.loads(real(json.dumps(answer))), got), (url, got)
