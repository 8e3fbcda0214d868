"""The otel filter over real loopback sockets, spans kept by the SDK's in-memory exporter."""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, ClassVar

import anyio
import pytest
from gatekeep import (
    BaseFilter,
    ConfigError,
    Exchange,
    Gateway,
    Headers,
    Request,
    available_filters,
    load_config,
)
from gatekeep.plugins.tracing import TracingFilter
from gatekeep.testing import EchoUpstream, gateway_for

pytest.importorskip(
    "gatekeep_otel", reason="the gatekeep-otel plugin is not installed (pip install -e plugins/gatekeep-otel)"
)

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gatekeep_otel import STATE_KEY, UPSTREAM_SPAN, OtelConfig, OtelFilter

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ORDERS = [
    {"name": "order", "paths": ["/orders/{id}"]},
    {"name": "shop", "paths": ["/cart", "/checkout"]},
]


def otel(**config: Any) -> OtelFilter:
    return OtelFilter(OtelConfig(exporter="none", **config))


class ExchangeLog(BaseFilter):
    """Keeps every finished exchange, to compare the spans' timings with."""

    name: ClassVar[str] = "exchange-log"
    priority: ClassVar[int] = 1

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []

    async def on_log(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)


async def spans_of(f: OtelFilter, count: int) -> Sequence[ReadableSpan]:
    """The finished spans once there are ``count`` (on_log runs just after the answer)."""
    for _ in range(500):
        if len(f.finished_spans()) >= count:
            break
        await anyio.sleep(0.01)
    await anyio.sleep(0.05)  # and no more than that
    spans = f.finished_spans()
    assert len(spans) == count, [s.name for s in spans]
    return spans


def by_kind(spans: Sequence[ReadableSpan]) -> tuple[ReadableSpan, ReadableSpan | None]:
    server = [s for s in spans if s.kind is SpanKind.SERVER]
    client = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(server) == 1 and len(client) <= 1
    return server[0], client[0] if client else None


def traceparent_parts(value: str) -> tuple[str, str, str, str]:
    version, trace_id, parent_id, flags = value.split("-")
    return version, trace_id, parent_id, flags


def test_the_entry_point_is_found() -> None:
    (entry_point,) = [ep for ep in entry_points(group="gatekeep.plugins") if ep.name == "otel"]
    assert entry_point.load() is OtelFilter
    assert "otel" in available_filters()
    assert OtelFilter.priority == TracingFilter.priority - 1


# -- spans ------------------------------------------------------------------------


async def test_a_request_makes_a_server_span_and_an_upstream_client_span() -> None:
    f = otel(service_name="edge")
    async with gateway_for(routes=ORDERS, filters=[f]) as gw:
        before = time.time_ns()
        r = await gw.client.get("/orders/7?page=2", headers={"user-agent": "probe/1"})
        server, client = by_kind(await spans_of(f, 2))
        after = time.time_ns()
    assert r.status == 200
    assert server.name == "GET /orders/{id}"  # the template, never the raw path
    assert server.resource.attributes["service.name"] == "edge"
    assert server.parent is None  # no traceparent came in: the trace starts here
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/orders/{id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/orders/7"  # the query string may hold secrets
    assert attributes["url.scheme"] == "http"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == gw.port
    assert attributes["client.address"] == "127.0.0.1"
    assert attributes["user_agent.original"] == "probe/1"
    assert attributes["gatekeep.route"] == "order"
    assert attributes["gatekeep.service"] == "upstream"
    assert attributes["gatekeep.source"] == "service"
    assert attributes["gatekeep.request_id"] == r.header("x-request-id")
    assert "gatekeep.consumer" not in attributes
    assert server.status.status_code is StatusCode.UNSET

    assert client is not None
    assert client.name == UPSTREAM_SPAN
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    assert client.attributes is not None
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["server.port"] == gw.upstream_port
    assert client.attributes["http.response.status_code"] == 200
    assert client.status.status_code is StatusCode.UNSET

    # Wall-clock times, the upstream call inside the request.
    assert server.start_time is not None and server.end_time is not None
    assert client.start_time is not None and client.end_time is not None
    assert before <= server.start_time <= client.start_time <= client.end_time <= server.end_time <= after


async def test_span_timings_are_the_exchange_timings() -> None:
    f = otel()
    exchanges = ExchangeLog()
    async with gateway_for(filters=[f, exchanges]) as gw:
        await gw.client.get("/a")
        server, client = by_kind(await spans_of(f, 2))
    (exchange,) = exchanges.exchanges
    assert server.start_time is not None and server.end_time is not None
    assert client is not None and client.start_time is not None and client.end_time is not None

    def ns(seconds: float) -> int:
        return round(seconds * 1e9)

    # One perf_counter -> epoch offset per request: durations are exact (to float rounding).
    assert abs((server.end_time - server.start_time) - ns(exchange.duration)) <= 2
    upstream_end = min(exchange.upstream_end, exchange.end)  # released just after the last byte
    assert abs((client.end_time - client.start_time) - ns(upstream_end - exchange.upstream_start)) <= 2
    assert abs((client.start_time - server.start_time) - ns(exchange.upstream_start - exchange.start)) <= 2


async def test_a_route_with_several_paths_is_named_by_its_name() -> None:
    f = otel()
    async with gateway_for(routes=ORDERS, filters=[f]) as gw:
        await gw.client.post("/checkout/now", body=b"{}")
        server, _ = by_kind(await spans_of(f, 2))
    assert server.name == "POST shop"
    assert server.attributes is not None
    assert "http.route" not in server.attributes  # which of the paths matched is not known
    assert server.attributes["gatekeep.route"] == "shop"
    assert server.attributes["http.request.body.size"] == 2


async def test_a_method_outside_the_conventions_is_other() -> None:
    f = otel()
    async with gateway_for(routes=ORDERS, filters=[f]) as gw:
        await gw.client.request("PURGE", "/orders/1")
        server, client = by_kind(await spans_of(f, 2))
    assert server.name == "HTTP /orders/{id}"
    assert server.attributes is not None and client is not None and client.attributes is not None
    assert server.attributes["http.request.method"] == "_OTHER"
    assert server.attributes["http.request.method_original"] == "PURGE"
    assert client.attributes["http.request.method"] == "_OTHER"


async def test_an_unmatched_request_gets_a_span_without_a_route() -> None:
    f = otel()
    async with gateway_for(routes=ORDERS, filters=[f]) as gw:
        r = await gw.client.get("/nowhere/12345")
        (server,) = await spans_of(f, 1)
    assert r.status == 404
    assert server.name == "GET"
    assert server.attributes is not None
    assert "http.route" not in server.attributes
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["gatekeep.source"] == "gateway"
    assert server.status.status_code is StatusCode.UNSET  # 4xx is not a server error


async def test_a_metrics_scrape_makes_no_span() -> None:
    f = otel()
    plugins = [{"name": "prometheus", "config": {}}]
    async with gateway_for(plugins=plugins, filters=[f]) as gw:
        scrape = await gw.client.get("/metrics")
        await gw.client.get("/x")
        spans = await spans_of(f, 2)
    assert scrape.status == 200
    assert {s.name for s in spans} == {"GET /", UPSTREAM_SPAN}


async def test_the_consumer_is_an_attribute_and_a_refusal_is_not_an_error() -> None:
    f = otel()
    config = {
        "services": [{"name": "orders", "url": "{upstream}", "routes": [{"name": "all", "paths": ["/"]}]}],
        "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "alice-key"}]}],
        "plugins": [{"name": "key-auth"}],
    }
    async with gateway_for(config, filters=[f]) as gw:
        ok = await gw.client.get("/", headers={"apikey": "alice-key"})
        server, _ = by_kind(await spans_of(f, 2))
        refused = await gw.client.get("/", headers={"apikey": "wrong"})
        spans = await spans_of(f, 3)
    assert (ok.status, refused.status) == (200, 401)
    assert server.attributes is not None
    assert server.attributes["gatekeep.consumer"] == "alice"
    assert server.attributes["gatekeep.service"] == "orders"
    denied = spans[-1]
    assert denied.kind is SpanKind.SERVER and denied.attributes is not None
    assert denied.attributes["http.response.status_code"] == 401
    assert denied.attributes["gatekeep.source"] == "gateway"
    assert denied.status.status_code is StatusCode.UNSET
    assert "error.type" not in denied.attributes


# -- errors -----------------------------------------------------------------------


async def test_an_upstream_5xx_is_an_error_on_both_spans_and_a_4xx_on_the_client_span() -> None:
    f = otel()
    async with gateway_for(upstream=EchoUpstream(status=503), filters=[f]) as gw:
        await gw.client.get("/busy")
        server, client = by_kind(await spans_of(f, 2))
    assert client is not None and server.attributes is not None and client.attributes is not None
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["error.type"] == "503"
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes["error.type"] == "503"

    f = otel()
    async with gateway_for(upstream=EchoUpstream(status=404), filters=[f]) as gw:
        await gw.client.get("/missing")
        server, client = by_kind(await spans_of(f, 2))
    assert client is not None and client.attributes is not None
    assert server.status.status_code is StatusCode.UNSET
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes["error.type"] == "404"


async def test_a_refused_connection_is_a_502_with_the_exception_on_the_upstream_span() -> None:
    f = otel()
    with anyio.fail_after(5):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there any more
    config = {
        "services": [
            {"name": "gone", "url": f"http://127.0.0.1:{port}", "retries": 0, "routes": [{"paths": ["/"]}]}
        ]
    }
    async with gateway_for(config, filters=[f]) as gw:
        r = await gw.client.get("/x")
        server, client = by_kind(await spans_of(f, 2))
    assert r.status == 502
    assert client is not None and server.attributes is not None and client.attributes is not None
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["error.type"] == "gatekeep.UpstreamConnectError"
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes["error.type"] == "gatekeep.UpstreamConnectError"
    assert "http.response.status_code" not in client.attributes  # the upstream never answered
    assert client.attributes["server.port"] == port
    (event,) = client.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"].endswith("UpstreamConnectError")  # type: ignore[union-attr]
    assert not server.events  # recorded once, where it happened


class SlowUpstream:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await anyio.sleep(2)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def test_an_upstream_timeout_is_a_504_error() -> None:
    f = otel()
    config = {
        "services": [
            {
                "name": "slow",
                "url": "{upstream}",
                "read_timeout": 200,
                "retries": 0,
                "routes": [{"name": "slow", "paths": ["/"]}],
            }
        ]
    }
    async with gateway_for(config, upstream=SlowUpstream(), filters=[f]) as gw:
        r = await gw.client.get("/slow")
        server, client = by_kind(await spans_of(f, 2))
    assert r.status == 504
    assert client is not None and server.attributes is not None and client.attributes is not None
    assert server.attributes["http.response.status_code"] == 504
    assert server.attributes["error.type"] == "gatekeep.UpstreamTimeout"
    assert server.status.status_code is StatusCode.ERROR
    assert client.status.status_code is StatusCode.ERROR
    assert client.start_time is not None and client.end_time is not None
    assert client.end_time - client.start_time >= 150_000_000  # it waited for the read timeout


# -- propagation -------------------------------------------------------------------


async def test_an_incoming_traceparent_is_continued_and_the_upstream_is_a_child_of_the_call() -> None:
    f = otel()
    incoming = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "tracestate": "vendor=abc,other=1"}
    async with gateway_for(filters=[f]) as gw:
        await gw.client.get("/traced", headers=incoming)
        server, client = by_kind(await spans_of(f, 2))
    assert client is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert server.parent.is_remote
    seen = gw.upstream.requests[-1].headers
    version, trace_id, parent_id, flags = traceparent_parts(seen["traceparent"])
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent_id == f"{client.context.span_id:016x}"  # the upstream's spans hang under "upstream"
    assert seen["tracestate"] == "vendor=abc,other=1"


async def test_a_new_trace_is_sent_upstream_with_the_spans_trace_id() -> None:
    f = otel()
    async with gateway_for(filters=[f]) as gw:
        await gw.client.get("/", headers={"traceparent": "00-not-a-valid-header-01"})
        server, client = by_kind(await spans_of(f, 2))
    assert client is not None and server.parent is None
    _, trace_id, parent_id, flags = traceparent_parts(gw.upstream.requests[-1].headers["traceparent"])
    assert trace_id == f"{server.context.trace_id:032x}"
    assert parent_id == f"{client.context.span_id:016x}"
    assert int(flags, 16) & 1


async def test_sampling_off_records_nothing_but_still_propagates() -> None:
    f = otel(sample_ratio=0.0)
    unsampled = f"00-{TRACE_ID}-{CALLER_SPAN}-00"
    async with gateway_for(filters=[f]) as gw:
        await gw.client.get("/one")
        await gw.client.get("/two")
        await gw.client.get("/three", headers={"traceparent": unsampled})
        await anyio.sleep(0.2)
    assert f.finished_spans() == ()
    seen = [traceparent_parts(r.headers["traceparent"]) for r in gw.upstream.requests]
    assert len({trace_id for _, trace_id, _, _ in seen}) == 3  # a new trace per request, then the caller's
    assert seen[2][1] == TRACE_ID
    assert seen[2][2] != CALLER_SPAN  # the gateway is still a hop, with its own (unrecorded) span id
    assert all(int(flags, 16) & 1 == 0 for _, _, _, flags in seen)


async def test_a_callers_sampling_decision_is_followed() -> None:
    f = otel(sample_ratio=0.0)
    async with gateway_for(filters=[f]) as gw:
        await gw.client.get("/", headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})
        spans = await spans_of(f, 2)
    assert {f"{s.context.trace_id:032x}" for s in spans} == {TRACE_ID}

    f = otel(sample_ratio=1.0)
    async with gateway_for(filters=[f]) as gw:
        await gw.client.get("/", headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-00"})
        await anyio.sleep(0.2)
    assert f.finished_spans() == ()
    assert gw.upstream.requests[-1].headers["traceparent"].startswith(f"00-{TRACE_ID}-")


async def test_a_ratio_samples_about_that_share_of_new_traces() -> None:
    f = otel(sample_ratio=0.5)
    async with gateway_for(filters=[f]) as gw:
        for _ in range(60):
            await gw.client.get("/")
        await anyio.sleep(0.2)
    sampled = [r for r in gw.upstream.requests if r.headers["traceparent"].endswith("1")]
    # Binomial(60, 0.5): outside 12..48 once in about 10^6 runs.
    assert 12 <= len(sampled) <= 48
    assert len(f.finished_spans()) == 2 * len(sampled)  # exactly the ones flagged sampled upstream


async def test_with_the_tracing_filter_both_agree_on_the_trace() -> None:
    f = otel()
    plugins = [{"name": "tracing", "config": {"trust_incoming": False, "echo_downstream": True}}]
    incoming = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
    async with gateway_for(plugins=plugins, filters=[f]) as gw:
        r = await gw.client.get("/", headers=incoming)
        server, client = by_kind(await spans_of(f, 2))
    assert client is not None
    trace_id = f"{server.context.trace_id:032x}"
    assert trace_id != TRACE_ID  # trust_incoming = false: the caller's trace is not continued
    assert server.parent is None
    upstream = traceparent_parts(gw.upstream.requests[-1].headers["traceparent"])
    assert upstream[1:3] == (trace_id, f"{client.context.span_id:016x}")
    echoed = traceparent_parts(r.header("traceparent") or "")
    assert echoed[1:3] == (trace_id, f"{server.context.span_id:016x}")


async def test_with_the_tracing_filter_an_incoming_trace_is_continued() -> None:
    f = otel()
    incoming = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "tracestate": "k=v"}
    async with gateway_for(plugins=[{"name": "tracing"}], filters=[f]) as gw:
        await gw.client.get("/", headers=incoming)
        server, _ = by_kind(await spans_of(f, 2))
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert gw.upstream.requests[-1].headers["tracestate"] == "k=v"


# -- config -----------------------------------------------------------------------


def _config_errors(config: dict[str, Any]) -> dict[str, str]:
    document = {
        "services": [{"name": "api", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "otel", "config": config}],
    }
    with pytest.raises(ConfigError) as info:
        load_config(document)
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"sample_ratio": 1.5}, "sample_ratio", "must be between 0 and 1, got 1.5"),
        ({"sample_ratio": "all"}, "sample_ratio", "expected a number"),
        ({"exporter": "jaeger"}, "exporter", "must be one of 'otlp-http', 'console', 'none'"),
        ({"endpoint": "collector:4318"}, "endpoint", "must be an http:// or https:// URL"),
        ({"service_name": " "}, "service_name", "must not be empty"),
        ({"headers": {"bad header": "x"}}, "headers", "'bad header' is not a header name"),
        ({"headers": {"authorization": 5}}, "headers.authorization", "expected a string"),
        ({"sampling": 1}, "sampling", "unknown field"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], path: str, message: str) -> None:
    errors = _config_errors(config)
    full = f"plugins[0].config.{path}"
    assert full in errors, errors
    assert message in errors[full]


def test_config_defaults_and_secret_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    c = OtelConfig()
    assert (c.service_name, c.exporter, c.endpoint, c.sample_ratio, dict(c.headers)) == (
        "gatekeep",
        "otlp-http",
        None,
        1.0,
        {},
    )
    monkeypatch.setenv("OTLP_TOKEN", "Bearer s3cret")
    config = {"exporter": "none", "headers": {"authorization": "{env://OTLP_TOKEN}"}}
    document = {
        "services": [{"name": "api", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "otel", "config": config}],
    }
    (f,) = Gateway(document).filters
    assert isinstance(f, OtelFilter)
    assert f.config.headers["authorization"] == "Bearer s3cret"
    with pytest.raises(TypeError):
        f.config.headers["x"] = "y"  # type: ignore[index]


async def test_the_upstream_headers_are_what_otels_propagator_writes() -> None:
    f = otel()
    for incoming in (f"00-{TRACE_ID}-{CALLER_SPAN}-01", f"00-{TRACE_ID}-{CALLER_SPAN}-00", None):
        headers = Headers([(b"tracestate", b"a=1,b=2")])
        if incoming is not None:
            headers.raw.append((b"traceparent", incoming.encode()))
        request = Request("GET", "/", headers=headers)
        await f.on_request(request)
        plan = request.state[STATE_KEY]
        expected: dict[str, str] = {}
        upstream = SpanContext(
            plan.trace_id, plan.upstream_span_id, False, TraceFlags(plan.flags), plan.trace_state
        )
        TraceContextTextMapPropagator().inject(expected, set_span_in_context(NonRecordingSpan(upstream)))
        sent = {k.decode(): v.decode() for k, v in request.headers.raw}
        assert sent == expected
        assert ("tracestate" in sent) == (incoming is not None)  # it belongs to the caller's trace
