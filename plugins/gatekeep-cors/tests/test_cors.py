"""The cors filter over real loopback sockets: a gateway in front of an echo upstream."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from gatekeep import ConfigError, available_filters, load_config
from gatekeep.testing import ClientResponse, EchoUpstream, gateway_for

from gatekeep_cors import DEFAULT_METHODS, CorsConfig, CorsFilter

pytestmark = pytest.mark.anyio

APP = "https://app.example.com"
EVIL = "https://evil.example.net"


def cors(**config: Any) -> list[dict[str, Any]]:
    return [{"name": "cors", "config": config}]


def preflight_headers(origin: str, method: str = "PUT", headers: str = "") -> dict[str, str]:
    asked = {"origin": origin, "access-control-request-method": method}
    if headers:
        asked["access-control-request-headers"] = headers
    return asked


def cors_headers(response: ClientResponse) -> dict[str, str]:
    return {k: v for k, v in response.headers if k.startswith("access-control-")}


def test_the_entry_point_is_found() -> None:
    (entry_point,) = [ep for ep in entry_points(group="gatekeep.plugins") if ep.name == "cors"]
    assert entry_point.load() is CorsFilter
    assert "cors" in available_filters()
    assert CorsFilter.name == "cors"
    assert CorsFilter.priority == 2000


# -- preflight ------------------------------------------------------------------


async def test_an_allowed_preflight_is_answered_by_the_gateway() -> None:
    async with gateway_for(plugins=cors(origins=[APP], max_age=600)) as gw:
        r = await gw.client.request("OPTIONS", "/orders", headers=preflight_headers(APP, "PUT", "x-token"))
    assert r.status == 200
    assert r.body == b""
    assert r.header("access-control-allow-origin") == APP
    assert r.header("access-control-allow-methods") == ",".join(DEFAULT_METHODS)
    assert r.header("access-control-allow-headers") == "x-token"  # echoed by default
    assert r.header("access-control-max-age") == "600"
    assert r.header("access-control-allow-credentials") is None
    assert r.header("vary") == "Origin"
    assert gw.upstream.requests == []


async def test_a_preflight_from_another_origin_gets_no_cors_headers() -> None:
    async with gateway_for(plugins=cors(origins=[APP])) as gw:
        r = await gw.client.request("OPTIONS", "/orders", headers=preflight_headers(EVIL))
    assert r.status == 200
    assert cors_headers(r) == {}
    assert gw.upstream.requests == []


async def test_configured_methods_and_headers_replace_the_defaults() -> None:
    config = cors(origins=[APP], methods=["GET", "POST"], headers=["Authorization", "X-Token"])
    async with gateway_for(plugins=config) as gw:
        r = await gw.client.request("OPTIONS", "/", headers=preflight_headers(APP, "POST", "x-other"))
    assert r.header("access-control-allow-methods") == "GET,POST"
    assert r.header("access-control-allow-headers") == "Authorization,X-Token"
    assert r.header("access-control-max-age") is None


async def test_private_network_access_is_allowed_only_when_configured() -> None:
    asked = preflight_headers(APP) | {"access-control-request-private-network": "true"}
    async with gateway_for(plugins=cors(origins=[APP], private_network=True)) as gw:
        allowed = await gw.client.request("OPTIONS", "/", headers=asked)
    async with gateway_for(plugins=cors(origins=[APP])) as gw:
        refused = await gw.client.request("OPTIONS", "/", headers=asked)
    assert allowed.header("access-control-allow-private-network") == "true"
    assert refused.header("access-control-allow-private-network") is None


async def test_options_without_the_preflight_headers_goes_upstream() -> None:
    async with gateway_for(plugins=cors(origins=[APP])) as gw:
        r = await gw.client.request("OPTIONS", "/", headers={"origin": APP})
    assert r.status == 200
    assert gw.upstream.requests[-1].method == "OPTIONS"
    assert r.header("access-control-allow-origin") == APP


async def test_preflight_continue_hands_the_preflight_to_the_upstream() -> None:
    upstream = EchoUpstream(extra_headers=[("access-control-allow-origin", "https://from.upstream")])
    async with gateway_for(plugins=cors(origins=[APP], preflight_continue=True), upstream=upstream) as gw:
        r = await gw.client.request("OPTIONS", "/orders", headers=preflight_headers(APP))
    seen = gw.upstream.requests[-1]
    assert seen.method == "OPTIONS"
    assert seen.headers["access-control-request-method"] == "PUT"
    # The upstream answers the preflight; the filter adds nothing and removes nothing.
    assert cors_headers(r) == {"access-control-allow-origin": "https://from.upstream"}


async def test_a_route_without_options_in_its_methods_refuses_preflights() -> None:
    # As in Kong: the router answers before any filter runs, so list OPTIONS on the route.
    routes = [{"name": "get-only", "paths": ["/"], "methods": ["GET"]}]
    async with gateway_for(plugins=cors(origins=[APP]), routes=routes) as gw:
        refused = await gw.client.request("OPTIONS", "/", headers=preflight_headers(APP))
    routes = [{"name": "with-options", "paths": ["/"], "methods": ["GET", "OPTIONS"]}]
    async with gateway_for(plugins=cors(origins=[APP]), routes=routes) as gw:
        answered = await gw.client.request("OPTIONS", "/", headers=preflight_headers(APP))
    assert refused.status == 405
    assert answered.status == 200
    assert answered.header("access-control-allow-methods")


# -- actual requests --------------------------------------------------------------


async def test_an_allowed_request_gets_the_origin_and_exposed_headers() -> None:
    config = cors(origins=[APP], exposed_headers=["X-Total", "X-Page"], credentials=True)
    async with gateway_for(plugins=config) as gw:
        r = await gw.client.get("/orders", headers={"origin": APP})
    assert r.status == 200
    assert r.json()["path"] == "/orders"
    assert cors_headers(r) == {
        "access-control-allow-origin": APP,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "X-Total,X-Page",
    }
    assert r.header("vary") == "Origin"


async def test_a_request_from_another_origin_is_answered_without_cors_headers() -> None:
    # CORS is the browser's to enforce: the request is served, the browser hides the answer.
    upstream = EchoUpstream(extra_headers=[("access-control-allow-origin", "*")])
    async with gateway_for(plugins=cors(origins=[APP], credentials=True), upstream=upstream) as gw:
        r = await gw.client.get("/", headers={"origin": EVIL})
    assert r.status == 200
    assert len(gw.upstream.requests) == 1
    assert cors_headers(r) == {}  # the upstream's own wildcard is dropped too
    assert r.header("vary") == "Origin"


async def test_a_request_without_origin_still_varies_on_origin() -> None:
    async with gateway_for(plugins=cors(origins=[APP])) as gw:
        r = await gw.client.get("/")
    assert cors_headers(r) == {}
    assert r.header("vary") == "Origin"


async def test_wildcard_without_credentials_is_a_star_and_does_not_vary() -> None:
    async with gateway_for(plugins=cors()) as gw:
        r = await gw.client.get("/", headers={"origin": EVIL})
        preflight = await gw.client.request("OPTIONS", "/", headers=preflight_headers(EVIL))
    assert r.header("access-control-allow-origin") == "*"
    assert r.header("access-control-allow-credentials") is None
    assert r.header("vary") is None
    assert preflight.header("access-control-allow-origin") == "*"


async def test_wildcard_with_credentials_echoes_the_origin_never_a_star() -> None:
    async with gateway_for(plugins=cors(origins=["*"], credentials=True)) as gw:
        r = await gw.client.get("/", headers={"origin": EVIL})
        preflight = await gw.client.request("OPTIONS", "/", headers=preflight_headers(EVIL))
    for answer in (r, preflight):
        assert answer.header("access-control-allow-origin") == EVIL
        assert answer.header("access-control-allow-credentials") == "true"
        assert answer.header("vary") == "Origin"


async def test_regex_origins_must_match_the_whole_origin() -> None:
    config = cors(origins=[r"~https://[a-z0-9-]+\.example\.com", "http://localhost:3000"])
    async with gateway_for(plugins=config) as gw:
        sub = await gw.client.get("/", headers={"origin": "https://shop.example.com"})
        again = await gw.client.get("/", headers={"origin": "https://shop.example.com"})
        suffix = await gw.client.get("/", headers={"origin": "https://shop.example.com.evil.net"})
        exact = await gw.client.get("/", headers={"origin": "http://localhost:3000"})
        port = await gw.client.get("/", headers={"origin": "http://localhost:3001"})
    assert sub.header("access-control-allow-origin") == "https://shop.example.com"
    assert again.header("access-control-allow-origin") == "https://shop.example.com"
    assert suffix.header("access-control-allow-origin") is None
    assert exact.header("access-control-allow-origin") == "http://localhost:3000"
    assert port.header("access-control-allow-origin") is None


async def test_vary_is_merged_with_the_upstreams() -> None:
    upstream = EchoUpstream(extra_headers=[("vary", "Accept-Encoding")])
    async with gateway_for(plugins=cors(origins=[APP]), upstream=upstream) as gw:
        r = await gw.client.get("/", headers={"origin": APP})
    assert r.header_all("vary") == ["Accept-Encoding", "Origin"]
    upstream = EchoUpstream(extra_headers=[("vary", "accept-encoding, origin")])
    async with gateway_for(plugins=cors(origins=[APP]), upstream=upstream) as gw:
        r = await gw.client.get("/", headers={"origin": APP})
    assert r.header_all("vary") == ["accept-encoding, origin"]


async def test_errors_of_later_filters_carry_cors_headers() -> None:
    # A browser can only read a 413/401/429 problem document if it is CORS-allowed.
    plugins = cors(origins=[APP]) + [
        {"name": "request-size-limiting", "config": {"allowed_payload_size": 4, "size_unit": "bytes"}}
    ]
    async with gateway_for(plugins=plugins) as gw:
        r = await gw.client.post("/", headers={"origin": APP}, body=b"far too long")
    assert r.status == 413
    assert r.header("content-type") == "application/problem+json"
    assert r.header("access-control-allow-origin") == APP
    assert gw.upstream.requests == []


# -- config -----------------------------------------------------------------------


def _config_errors(config: dict[str, Any]) -> dict[str, str]:
    document = {
        "services": [{"name": "api", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "cors", "config": config}],
    }
    with pytest.raises(ConfigError) as info:
        load_config(document)
    return {e.path: e.message for e in info.value.errors}


def test_kong_defaults() -> None:
    c = CorsConfig()
    assert c.origins == ("*",)
    assert c.methods == ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT")
    assert c.headers is None and c.exposed_headers == ()
    assert (c.credentials, c.max_age, c.preflight_continue, c.private_network) == (False, None, False, False)


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"max_age": -1}, "max_age", "must be 0 or more seconds, got -1"),
        ({"max_age": "10"}, "max_age", "expected an integer, got string '10'"),
        ({"origins": "https://a.example"}, "origins", "expected an array"),
        ({"origins": []}, "origins", "at least one origin"),
        ({"origins": ["*", APP]}, "origins", "list it alone"),
        ({"origins": [APP, "app.example.com"]}, "origins", "entry 1: 'app.example.com' is not '*'"),
        ({"origins": [APP + "/path"]}, "origins", "is not '*', a '~regex' or an origin"),
        ({"origins": ["~(unclosed"]}, "origins", "entry 0: invalid regular expression '(unclosed'"),
        ({"methods": ["GET", "FETCH"]}, "methods", "entry 1: 'FETCH' is not one of GET, HEAD"),
        ({"headers": ["X-Ok", "bad header"]}, "headers", "entry 1: 'bad header' is not a header name"),
        ({"credentials": "yes"}, "credentials", "expected a boolean"),
        ({"origin": [APP]}, "origin", "unknown field"),
        ({"credentials": True, "exposed_headers": ["*"]}, "", "list the header names instead"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], path: str, message: str) -> None:
    errors = _config_errors(config)
    full = "plugins[0].config" + (f".{path}" if path else "")
    assert full in errors, errors
    assert message in errors[full]


def test_config_from_python_is_checked_too() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        CorsConfig(max_age=-5)
    assert CorsConfig(origins=["HTTPS://App.Example.com:443"]).origins == ("HTTPS://App.Example.com:443",)
    # exact origins are compared in the form browsers send (lower case, no default port)
    f = CorsFilter(CorsConfig(origins=["HTTPS://App.Example.com:443", "http://[::1]:8080"]))
    assert f.allowed_origin(b"https://app.example.com") == b"https://app.example.com"
    assert f.allowed_origin(b"http://[::1]:8080") == b"http://[::1]:8080"
    assert f.allowed_origin(b"http://app.example.com") is None


def test_every_config_error_is_listed_at_once() -> None:
    errors = _config_errors({"origins": ["bad"], "methods": ["FETCH"], "max_age": -1, "credentials": 1})
    assert sorted(errors) == [
        "plugins[0].config.credentials",
        "plugins[0].config.max_age",
        "plugins[0].config.methods",
        "plugins[0].config.origins",
    ]
