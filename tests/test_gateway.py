"""The request's way through the gateway, over real loopback sockets."""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import attrs
import pytest

import gatekeep
from gatekeep import BaseFilter, Request, Response
from gatekeep.testing import ClientResponse, EchoUpstream, gateway_for

pytestmark = pytest.mark.anyio


def _problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    assert doc["type"].startswith("https://")
    assert doc["title"] and doc["detail"]
    assert doc["request_id"] == response.header("x-request-id")
    return doc


def _config(routes: list[dict[str, Any]], **service: Any) -> dict[str, Any]:
    return {"services": [{"name": "up", "url": "{upstream}", "routes": routes, **service}]}


async def test_proxies_and_rewrites_headers() -> None:
    async with gateway_for() as gw:
        response = await gw.client.get(
            "/hello?x=1",
            headers=[("x-forwarded-for", "203.0.113.9"), ("connection", "x-secret"), ("x-secret", "1")],
        )
        assert response.status == 200
        seen = gw.upstream.requests[-1]
        assert seen.path == "/hello" and seen.query == "x=1"
        # The peer is no trusted proxy: what it claims about earlier hops is dropped.
        assert seen.headers["x-forwarded-for"] == "127.0.0.1"
        assert seen.headers["x-forwarded-proto"] == "http"
        assert "gatekeep" in seen.headers["via"]
        assert "x-secret" not in seen.headers
        assert seen.headers["host"] == f"127.0.0.1:{gw.upstream_port}"
        assert response.header("x-request-id") == seen.headers["x-request-id"]
        assert len(response.header("x-request-id") or "") == 32


async def test_request_id_is_kept_when_the_client_sends_one() -> None:
    async with gateway_for() as gw:
        response = await gw.client.get("/", headers={"x-request-id": "abc-123"})
        assert response.header("x-request-id") == "abc-123"
        assert gw.upstream.requests[-1].headers["x-request-id"] == "abc-123"


async def test_strip_path_and_service_path() -> None:
    config = {
        "services": [
            {
                "name": "up",
                "url": "{upstream}/base",
                "routes": [
                    {"name": "strip", "paths": ["/api"]},
                    {"name": "keep", "paths": ["/keep"], "strip_path": False},
                    {"name": "item", "paths": ["/items/{id}"]},
                ],
            }
        ]
    }
    async with gateway_for(config) as gw:
        await gw.client.get("/api/orders/1")
        assert gw.upstream.requests[-1].path == "/base/orders/1"
        await gw.client.get("/api")
        assert gw.upstream.requests[-1].path == "/base"
        await gw.client.get("/keep/x")
        assert gw.upstream.requests[-1].path == "/base/keep/x"
        await gw.client.get("/items/7")
        assert gw.upstream.requests[-1].path == "/base"


async def test_preserve_host() -> None:
    async with gateway_for(_config([{"paths": ["/"], "preserve_host": True}])) as gw:
        await gw.client.get("/", host="api.example.com")
        assert gw.upstream.requests[-1].headers["host"] == "api.example.com"
        assert gw.upstream.requests[-1].headers["x-forwarded-host"] == "api.example.com"


async def test_404_and_405_are_problem_documents() -> None:
    config = _config([{"name": "orders", "paths": ["/orders"], "methods": ["GET", "POST"]}])
    async with gateway_for(config) as gw:
        _problem(await gw.client.get("/nowhere"), 404)
        response = await gw.client.delete("/orders/1")
        _problem(response, 405)
        assert response.header("allow") == "GET, POST"
        assert gw.upstream.requests == []


@pytest.mark.parametrize(
    "path",
    ["/orders/../admin", "/%6Frders/../admin", "//admin", "/./admin", "/orders/%2e%2e/admin"],
)
async def test_normalised_paths_cannot_skip_a_routes_filters(path: str) -> None:
    # /admin is guarded by a filter that refuses everything; no spelling may reach it unguarded.
    config = {
        "services": [
            {
                "name": "up",
                "url": "{upstream}",
                "routes": [
                    {"name": "orders", "paths": ["/orders"]},
                    {
                        "name": "admin",
                        "paths": ["/admin"],
                        "plugins": [
                            {"name": "request-size-limiting", "config": {"require_content_length": True}}
                        ],
                    },
                ],
            }
        ]
    }
    async with gateway_for(config) as gw:
        response = await gw.client.post(path, headers={"transfer-encoding": "chunked"}, body=b"")
        # The admin route's filter ran (413), whatever the spelling.
        _problem(response, 413)
        assert gw.upstream.requests == []


async def test_encoded_slash_is_refused() -> None:
    async with gateway_for() as gw:
        _problem(await gw.client.get("/orders%2F..%2Fadmin"), 400)


class Recorder(BaseFilter):
    """Records the order phases run in; optionally answers early."""

    name: ClassVar[str] = "recorder"
    order: ClassVar[list[str]] = []

    def __init__(self, label: str, priority: int, answer: int | None = None) -> None:
        super().__init__(None)
        self.label = label
        self.priority = priority  # type: ignore[misc]
        self.answer = answer
        self.name = f"recorder-{label}"  # type: ignore[misc]

    async def on_request(self, request: Request) -> Response | None:
        self.order.append(f"req:{self.label}")
        if self.answer is not None:
            return Response.text("early", self.answer)
        return None

    async def on_response(self, request: Request, response: Response) -> Response | None:
        self.order.append(f"resp:{self.label}")
        response.headers.add(b"x-seen-by", self.label.encode())
        return None

    async def on_log(self, exchange: gatekeep.Exchange) -> None:
        self.order.append(f"log:{self.label}:{exchange.status}")


async def _logged(count: int) -> None:
    # The log phase runs after the last byte reached the client: wait for it.
    with anyio.fail_after(5):
        while sum(entry.startswith("log:") for entry in Recorder.order) < count:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_filters_run_by_priority_and_reverse_on_response() -> None:
    Recorder.order = []
    filters = [Recorder("low", 10), Recorder("high", 1000), Recorder("mid", 500)]
    async with gateway_for(filters=filters) as gw:
        response = await gw.client.get("/")
        assert response.status == 200
        assert response.header_all("x-seen-by") == ["low", "mid", "high"]
        await _logged(3)
    assert Recorder.order == [
        "req:high",
        "req:mid",
        "req:low",
        "resp:low",
        "resp:mid",
        "resp:high",
        "log:high:200",
        "log:mid:200",
        "log:low:200",
    ]


async def test_a_filter_may_answer_early() -> None:
    Recorder.order = []
    filters = [Recorder("guard", 100, answer=418), Recorder("after", 10)]
    async with gateway_for(filters=filters) as gw:
        response = await gw.client.get("/")
        assert response.status == 418 and response.text == "early"
        assert gw.upstream.requests == []
    assert "req:after" not in Recorder.order
    # Response filters still see the early answer (like Kong's header_filter).
    assert Recorder.order[:3] == ["req:guard", "resp:after", "resp:guard"]


class Exploding(BaseFilter):
    name: ClassVar[str] = "exploding"
    priority: ClassVar[int] = 5

    async def on_request(self, request: Request) -> Response | None:
        if request.path == "/boom":
            raise RuntimeError("bug in a filter")
        return None


async def test_a_filter_that_raises_answers_500_problem_and_the_worker_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with gateway_for(filters=[Exploding()]) as gw:
        doc = _problem(await gw.client.get("/boom"), 500)
        assert "bug in a filter" not in str(doc)  # no internals leak
        assert "exploding" in doc["detail"]
        assert (await gw.client.get("/fine")).status == 200
    assert any("exploding" in r.getMessage() for r in caplog.records)


async def test_an_upstream_that_is_down_answers_502() -> None:
    config = {"services": [{"name": "down", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}]}
    async with gateway_for(config) as gw:
        _problem(await gw.client.get("/"), 502)


async def test_upstream_errors_pass_through_with_their_source() -> None:
    upstream = EchoUpstream(status=503, extra_headers=[("retry-after", "3")])
    async with gateway_for(upstream=upstream) as gw:
        response = await gw.client.get("/")
        assert response.status == 503
        assert response.header("retry-after") == "3"
        assert response.header("content-type") == "application/json"


@attrs.frozen
class _TagConfig:
    tag: str = "none"


class Tagger(BaseFilter):
    name: ClassVar[str] = "tagger"
    priority: ClassVar[int] = 50
    Config = _TagConfig

    async def on_request(self, request: Request) -> Response | None:
        request.headers.add(b"x-tag", self.config.tag.encode())
        return None


class LoginByHeader(BaseFilter):
    """Names the consumer from a header (a stand-in for an auth filter)."""

    name: ClassVar[str] = "login-by-header"
    priority: ClassVar[int] = 1000

    async def on_request(self, request: Request) -> Response | None:
        user = request.headers.get(b"x-user")
        if user:
            request.consumer = user.decode()
        return None


async def test_plugin_scopes_follow_kongs_precedence() -> None:
    config = {
        "services": [
            {
                "name": "up",
                "url": "{upstream}",
                "plugins": [{"name": "tagger", "config": {"tag": "service"}}],
                "routes": [
                    {"name": "plain", "paths": ["/plain"]},
                    {
                        "name": "special",
                        "paths": ["/special"],
                        "plugins": [{"name": "tagger", "config": {"tag": "route"}}],
                    },
                    {"name": "off", "paths": ["/off"], "plugins": [{"name": "tagger", "enabled": False}]},
                ],
            },
            {"name": "other", "url": "{upstream}", "routes": [{"name": "other", "paths": ["/other"]}]},
        ],
        "consumers": [{"username": "alice", "plugins": [{"name": "tagger", "config": {"tag": "alice"}}]}],
        "plugins": [
            {"name": "tagger", "config": {"tag": "global"}},
            {"name": "login-by-header"},
            {"name": "tagger", "route": "special", "consumer": "alice", "config": {"tag": "special-alice"}},
        ],
    }
    async with gateway_for(config, plugin_classes=[Tagger, LoginByHeader]) as gw:

        async def tag(path: str, user: str | None = None) -> str:
            await gw.client.get(path, headers={"x-user": user} if user else {})
            return gw.upstream.requests[-1].headers.get("x-tag", "<none>")

        assert await tag("/plain") == "service"
        assert await tag("/special") == "route"
        assert await tag("/off") == "<none>"
        assert await tag("/other") == "global"
        assert await tag("/other", "alice") == "alice"
        assert await tag("/plain", "alice") == "alice"  # consumer beats service and route alone
        assert await tag("/special", "alice") == "special-alice"
        assert await tag("/special", "bob") == "route"


async def test_request_size_limiting_refuses_before_the_upstream() -> None:
    plugins = [
        {"name": "request-size-limiting", "config": {"allowed_payload_size": 10, "size_unit": "bytes"}}
    ]
    async with gateway_for(plugins=plugins) as gw:
        assert (await gw.client.post("/", body=b"x" * 10)).status == 200
        _problem(await gw.client.post("/", body=b"x" * 11), 413)
        assert len(gw.upstream.requests) == 1


async def test_correlation_id_header_is_added_and_echoed() -> None:
    plugins = [{"name": "correlation-id", "config": {"header_name": "X-Corr", "echo_downstream": True}}]
    async with gateway_for(plugins=plugins) as gw:
        response = await gw.client.get("/")
        sent = gw.upstream.requests[-1].headers["x-corr"]
        assert sent and response.header("x-corr") == sent
        response = await gw.client.get("/", headers={"x-corr": "mine"})
        assert gw.upstream.requests[-1].headers["x-corr"] == "mine"


async def test_chains_are_computed_once_at_config_time() -> None:
    config = _config([{"name": "r", "paths": ["/"], "plugins": [{"name": "tagger"}]}])
    config["plugins"] = [{"name": "correlation-id"}]
    async with gateway_for(config, plugin_classes=[Tagger]) as gw:
        route = gw.gateway.routes[0]
        chain = route.chain
        assert [f.name for f in chain.filters] == ["correlation-id", "tagger"]
        await gw.client.get("/")
        assert gw.gateway.routes[0].chain is chain


class FailsToStart(BaseFilter):
    name: ClassVar[str] = "fails-to-start"
    events: ClassVar[list[str]] = []

    async def start(self, task_group: Any) -> None:
        raise RuntimeError("cannot start")


class StartsFine(BaseFilter):
    name: ClassVar[str] = "starts-fine"
    priority: ClassVar[int] = 10

    async def start(self, task_group: Any) -> None:
        FailsToStart.events.append("started")
        task_group.start_soon(anyio.sleep_forever)

    async def stop(self) -> None:
        FailsToStart.events.append("stopped")


async def test_a_filter_failing_to_start_stops_the_others_and_leaves_no_task() -> None:
    FailsToStart.events = []
    gateway = gatekeep.Gateway(
        {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}]},
        filters=[StartsFine(), FailsToStart()],
    )
    with pytest.raises(RuntimeError, match="cannot start"):
        async with gateway:
            pass  # pragma: no cover
    assert FailsToStart.events == ["started", "stopped"]
    assert gateway.task_group is None


def test_register_filter_is_deprecated_but_still_registers() -> None:
    with pytest.warns(DeprecationWarning, match="Gateway\\(config, plugins="):
        gatekeep.register_filter(Tagger, "tagger-registered")
    assert "tagger-registered" in gatekeep.available_filters(refresh=True)
    assert gatekeep.available_plugins() is gatekeep.available_filters()


def test_plugin_classes_belong_to_one_gateway() -> None:
    config = {
        "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "tagger"}],
    }
    gateway = gatekeep.Gateway(config, plugins=[Tagger])
    assert [f.name for f in gateway.routes[0].chain.filters] == ["tagger"]
    with pytest.raises(gatekeep.ConfigError, match="unknown filter 'tagger'"):
        gatekeep.Gateway(config)  # another gateway of the process does not know it
    assert "tagger" not in gatekeep.available_plugins(refresh=True)


class StatusEndpoint(BaseFilter):
    name: ClassVar[str] = "status-endpoint"

    def bind(self, context: gatekeep.PluginContext) -> None:
        async def status(request: Request) -> Response:
            return Response.json({"routes": len(context.routes)})

        context.add_endpoint("/_status", status)


async def test_filters_can_add_gateway_endpoints_that_no_route_shadows() -> None:
    async with gateway_for(filters=[StatusEndpoint()]) as gw:
        response = await gw.client.get("/_status")
        assert response.json() == {"routes": 1}
        assert gw.upstream.requests == []
        assert (await gw.client.get("/_status/x")).status == 200  # only the exact path
        assert len(gw.upstream.requests) == 1


async def test_client_sent_identity_headers_never_reach_the_upstream() -> None:
    spoofed = [
        ("x-consumer-username", "admin"),
        ("x-consumer-id", "1"),
        ("x-authenticated-roles", "admin"),
        ("x-credential-identifier", "k"),
        ("x-anonymous-consumer", "false"),
    ]
    async with gateway_for() as gw:  # a route with no auth filter at all
        assert (await gw.client.get("/", headers=spoofed)).status == 200
        seen = gw.upstream.requests[-1].headers
        assert not [
            name for name in seen if name.startswith(("x-consumer", "x-authenticated", "x-credential"))
        ]
        assert "x-anonymous-consumer" not in seen


class GuardEverything(BaseFilter):
    name: ClassVar[str] = "guard-everything"
    priority: ClassVar[int] = 100

    async def on_request(self, request: Request) -> Response | None:
        raise gatekeep.AuthError("no token")


class OpenEndpoint(BaseFilter):
    name: ClassVar[str] = "open-endpoint"

    def bind(self, context: gatekeep.PluginContext) -> None:
        async def ping(request: Request) -> Response:
            return Response.text("pong")

        context.add_endpoint("/_ping", ping, run_global_filters=False)


async def test_an_endpoint_may_skip_global_filters() -> None:
    async with gateway_for(filters=[GuardEverything(), OpenEndpoint()]) as gw:
        assert (await gw.client.get("/_ping")).text == "pong"
        assert (await gw.client.get("/other")).status == 401


async def test_the_request_id_is_echoed_exactly_once() -> None:
    echoing = EchoUpstream(extra_headers=[("x-request-id", "upstream-made-this-up")])
    async with gateway_for(upstream=echoing) as gw:
        response = await gw.client.get("/", headers={"x-request-id": "mine"})
        assert response.header_all("x-request-id") == ["mine"]
        problem = await gw.client.get("/%zz")
        assert problem.status == 400
        assert len(problem.header_all("x-request-id")) == 1


@pytest.mark.parametrize("trusted", [["127.0.0.0/8"], ["10.0.0.1"]])
async def test_forwarded_proto_and_host_are_kept_only_from_trusted_proxies(trusted: list[str]) -> None:
    config = {
        "gateway": {"trusted_proxies": trusted},
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"paths": ["/"]}]}],
    }
    async with gateway_for(config) as gw:
        await gw.client.get("/", headers={"x-forwarded-proto": "https", "x-forwarded-host": "shop.example"})
        seen = gw.upstream.requests[-1].headers
        if trusted == ["127.0.0.0/8"]:  # the test client is on loopback: a trusted proxy
            assert (seen["x-forwarded-proto"], seen["x-forwarded-host"]) == ("https", "shop.example")
        else:
            assert seen["x-forwarded-proto"] == "http"
            assert seen["x-forwarded-host"] != "shop.example"


def test_trusted_proxies_must_be_addresses() -> None:
    with pytest.raises(
        gatekeep.ConfigError, match=r"gateway.trusted_proxies: expected an IP address or CIDR"
    ):
        gatekeep.Gateway({"gateway": {"trusted_proxies": ["nope"]}, "services": []})


class Redact(BaseFilter):
    name: ClassVar[str] = "redact"

    async def on_request(self, request: Request) -> Response | None:
        data = await request.read(limit=1024)
        request.replace_body(data.replace(b"secret", b"******"))
        return None


async def test_a_filter_may_rewrite_the_request_body() -> None:
    async with gateway_for(filters=[Redact()]) as gw:
        await gw.client.post("/", body=b"my secret", headers={"content-type": "text/plain"})
        seen = gw.upstream.requests[-1]
        assert seen.body == b"my ******"
        assert seen.headers["content-length"] == "9"


@pytest.mark.parametrize("freeze", [True, False])
def test_the_first_gateway_freezes_startup_objects_out_of_the_gc(freeze: bool) -> None:
    import subprocess
    import sys

    script = f"""
import gc, anyio, gatekeep
gw = gatekeep.Gateway({{"gateway": {{"gc_freeze": {freeze}}},
    "services": [{{"name": "s", "url": "http://127.0.0.1:9", "routes": [{{"paths": ["/"]}}]}}]}})
async def main():
    async with gw:
        print(gc.get_freeze_count())
anyio.run(main)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (int(out.stdout) > 10_000) is freeze


# The interpreter's own threshold0 (700 on CPython 3.11-3.13), read in a fresh process below.
_OWN = -1


@pytest.mark.parametrize(
    ("before", "configured", "after"),
    [
        (None, None, 2_000),  # the default raises the interpreter's own (when lower)
        (None, 0, _OWN),  # 0 leaves the interpreter's own
        (None, 5_000, 5_000),
        (50_000, None, 50_000),  # the application chose a higher one: kept
        (0, None, 0),  # the application turned automatic collection off: still off
    ],
)
def test_the_first_gateway_raises_the_young_gc_threshold_once(
    before: int | None, configured: int | None, after: int
) -> None:
    import subprocess
    import sys

    settings = {} if configured is None else {"gc_threshold": configured}
    script = f"""
import gc, anyio, gatekeep
print(gc.get_threshold()[0])
if {before!r} is not None:
    gc.set_threshold({before!r}, 10, 10)
def config(settings):
    return {{"gateway": settings,
        "services": [{{"name": "s", "url": "http://127.0.0.1:9", "routes": [{{"paths": ["/"]}}]}}]}}
async def main():
    async with gatekeep.Gateway(config({settings!r})):
        print(gc.get_threshold()[0])
    # A later gateway (a test, a reload) leaves the collector as the first one set it.
    async with gatekeep.Gateway(config({{"gc_threshold": 123_456}})):
        print(gc.get_threshold()[0])
anyio.run(main)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    own, first, later = (int(n) for n in out.stdout.split())
    if after == _OWN:
        expected = own
    elif before is None:
        expected = max(own, after)  # raised, never lowered
    else:
        expected = after
    assert own > 0 and (first, later) == (expected, expected)


def test_a_negative_gc_threshold_is_a_config_error_at_its_path() -> None:
    with pytest.raises(gatekeep.ConfigError, match=r"gateway\.gc_threshold"):
        gatekeep.Gateway({"gateway": {"gc_threshold": -1}})


async def test_the_disconnect_watch_never_spins_on_a_server_without_disconnects() -> None:
    # An ASGI server that (against the spec) answers every receive() at once.
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def slow(scope: Any, receive_: Any, send_: Any) -> None:
        await anyio.sleep(0.8)  # past WATCH_AFTER: the watch starts
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": b"ok"})

    async with gateway_for(upstream=slow) as gw:
        app = gatekeep.asgi(gw.gateway)
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [(b"host", b"x")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }
        await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert calls <= 3
