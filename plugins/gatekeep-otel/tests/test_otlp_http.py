"""Spans exported over OTLP/HTTP to a real receiver on loopback.

The receiver is a small ASGI app that accepts ``POST /v1/traces`` as an
OpenTelemetry Collector does (protobuf ``ExportTraceServiceRequest``,
decoded with ``opentelemetry-proto``), served on a real socket.
"""

from __future__ import annotations

import gzip
from typing import Any

import anyio
import pytest
from gatekeep.testing import gateway_for, serve_asgi

pytest.importorskip(
    "gatekeep_otel", reason="the gatekeep-otel plugin is not installed (pip install -e plugins/gatekeep-otel)"
)

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gatekeep_otel import OtelFilter, TaskGroupBatcher

pytestmark = pytest.mark.anyio


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf trace exports and keeps them."""

    def __init__(self) -> None:
        self.exports: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []

    def spans(self) -> list[tuple[str, Span]]:
        """``(service.name, span)`` of every span received."""
        found = []
        for export in self.exports:
            for resource_spans in export.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found += [(attributes["service.name"], span) for span in scope_spans.spans]
        return found

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if (scope["method"], scope["path"]) != ("POST", "/v1/traces"):
            await self._answer(send, 404, b"", "text/plain")
            return
        if headers.get("content-type") != "application/x-protobuf":
            await self._answer(send, 415, b"", "text/plain")
            return
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.exports.append(export)
        self.headers.append(headers)
        await self._answer(
            send, 200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
        )

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes, content_type: str) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def otlp(port: int, **config: Any) -> list[dict[str, Any]]:
    endpoint = f"http://127.0.0.1:{port}/v1/traces"
    return [{"name": "otel", "config": {"exporter": "otlp-http", "endpoint": endpoint, **config}}]


def the_filter(gateway: Any) -> OtelFilter:
    (f,) = [f for f in gateway.filters if isinstance(f, OtelFilter)]
    return f


async def test_spans_reach_an_otlp_receiver_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    receiver = OtlpReceiver()
    async with serve_asgi(receiver) as port:
        config = otlp(port, service_name="edge-gateway", headers={"authorization": "Bearer t0ken"})
        async with gateway_for(plugins=config, routes=[{"name": "order", "paths": ["/orders/{id}"]}]) as gw:
            r = await gw.client.get("/orders/42")
            with anyio.fail_after(10):
                while len(receiver.spans()) < 2:  # noqa: ASYNC110 - the receiver is polled, not signalled
                    await anyio.sleep(0.02)
            seen = gw.upstream.requests[-1].headers["traceparent"]

    assert r.status == 200
    assert receiver.headers[0]["authorization"] == "Bearer t0ken"
    spans = {span.name: (service, span) for service, span in receiver.spans()}
    assert set(spans) == {"GET /orders/{id}", "upstream"}
    service, server = spans["GET /orders/{id}"]
    _, client = spans["upstream"]
    assert service == "edge-gateway"
    assert server.kind == Span.SPAN_KIND_SERVER
    assert client.kind == Span.SPAN_KIND_CLIENT
    assert server.parent_span_id == b""
    assert client.parent_span_id == server.span_id
    assert client.trace_id == server.trace_id
    _, trace_id, parent_id, _ = seen.split("-")
    assert (trace_id, parent_id) == (server.trace_id.hex(), client.span_id.hex())
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["http.route"].string_value == "/orders/{id}"
    assert attributes["http.response.status_code"].int_value == 200
    assert server.status.code == Status.STATUS_CODE_UNSET
    assert server.start_time_unix_nano <= client.start_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano


async def test_stopping_the_gateway_exports_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # only the final flush sends anything
    receiver = OtlpReceiver()
    async with serve_asgi(receiver) as port:
        async with gateway_for(plugins=otlp(port)) as gw:
            batcher = the_filter(gw.gateway).batcher
            assert batcher is not None
            for _ in range(3):
                await gw.client.get("/")
            with anyio.fail_after(5):
                while batcher.queued < 6:  # noqa: ASYNC110 - on_log runs just after each answer
                    await anyio.sleep(0.01)
            assert receiver.exports == []
        assert batcher.queued == 0
        assert len(receiver.exports) == 1  # one batch
        assert len(receiver.spans()) == 6


async def test_the_console_exporter_prints_json_spans(capsys: pytest.CaptureFixture[str]) -> None:
    async with gateway_for(plugins=[{"name": "otel", "config": {"exporter": "console"}}]) as gw:
        await gw.client.get("/hello")
        batcher = the_filter(gw.gateway).batcher
        assert batcher is not None
        with anyio.fail_after(5):
            while batcher.queued < 2:  # noqa: ASYNC110 - on_log runs just after the answer
                await anyio.sleep(0.01)
    out = capsys.readouterr().out
    assert '"name": "GET /"' in out
    assert '"name": "upstream"' in out
    assert '"kind": "SpanKind.SERVER"' in out


async def test_a_full_queue_drops_new_spans_and_counts_them() -> None:
    exporter = InMemorySpanExporter()
    batcher = TaskGroupBatcher(exporter, max_queue=3, max_batch=2, delay=3600)
    for i in range(5):
        batcher.on_end(ReadableSpan(name=f"s{i}"))
    assert (batcher.queued, batcher.dropped) == (3, 2)
    async with anyio.create_task_group() as tg:
        await batcher.start(tg)
        await batcher.stop()
    assert [s.name for s in exporter.get_finished_spans()] == ["s0", "s1", "s2"]
    assert batcher.queued == 0


async def test_a_dead_collector_delays_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")  # export (and fail) all the time
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # the exporter's own retry budget
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there any more
    async with gateway_for(plugins=otlp(port)) as gw:
        started = anyio.current_time()
        answers = [await gw.client.get("/") for _ in range(20)]
        elapsed = anyio.current_time() - started
        stopping = anyio.current_time()
    assert [a.status for a in answers] == [200] * 20
    assert elapsed < 2.0  # 20 requests on loopback, while every export fails
    assert anyio.current_time() - stopping < 5.0  # shutdown is bounded by the exporter's timeout
