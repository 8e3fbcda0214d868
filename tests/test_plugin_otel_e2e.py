"""A third-party plugin end to end: ``gatekeep-otel`` found through its entry point,
named in a TOML config beside ``tracing`` and ``access-log``, exporting over
OTLP/HTTP to a real receiver on loopback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

import gatekeep
from gatekeep.testing import EchoUpstream, TestClient, serve_asgi

pytest.importorskip(
    "gatekeep_otel",
    reason="the gatekeep-otel plugin is not installed (pip install -e plugins/gatekeep-otel)",
)
trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="opentelemetry-proto is not installed (it comes with gatekeep-otel's OTLP exporter)",
)

pytestmark = pytest.mark.anyio

CONFIG = """
[[services]]
name = "orders"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "order"
  paths = ["/orders/{{id}}"]

[[plugins]]
name = "tracing"

[[plugins]]
name = "access-log"

[[plugins]]
name = "otel"

  [plugins.config]
  service_name = "edge"
  exporter = "otlp-http"
  endpoint = "http://127.0.0.1:{collector}/v1/traces"
  headers = {{ authorization = "{{env://OTLP_TOKEN}}" }}
"""

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Collector:
    """The OTLP/HTTP traces endpoint of an OpenTelemetry Collector, protobuf only."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.services: set[str] = set()
        self.authorization: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = dict(scope["headers"])
        ok = (scope["method"], scope["path"]) == ("POST", "/v1/traces")
        if ok:
            export = trace_service.ExportTraceServiceRequest()
            export.ParseFromString(body)
            self.authorization.append(headers.get(b"authorization", b"").decode())
            for resource_spans in export.resource_spans:
                for a in resource_spans.resource.attributes:
                    if a.key == "service.name":
                        self.services.add(a.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        answer = trace_service.ExportTraceServiceResponse().SerializeToString() if ok else b""
        await send(
            {
                "type": "http.response.start",
                "status": 200 if ok else 404,
                "headers": [
                    (b"content-type", b"application/x-protobuf"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})


async def test_otel_from_a_toml_config_exports_the_trace_the_upstream_and_access_log_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTLP_TOKEN", "Bearer t0ken")
    upstream = EchoUpstream()
    collector = Collector()
    caplog.set_level(logging.INFO, logger="gatekeep.access")
    async with serve_asgi(upstream) as upstream_port, serve_asgi(collector) as collector_port:
        path = tmp_path / "gateway.toml"
        path.write_text(CONFIG.format(upstream=upstream_port, collector=collector_port))
        gateway = gatekeep.Gateway(path)
        assert "gatekeep_otel" in {type(f).__module__.split(".")[0] for f in gateway.filters}
        async with gateway, serve_asgi(gatekeep.asgi(gateway)) as port:
            client = TestClient("127.0.0.1", port)
            r = await client.get("/orders/7", headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})
            with anyio.fail_after(5):
                while not [rec for rec in caplog.records if hasattr(rec, "access")]:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        # Leaving the gateway's lifespan exported the spans still queued.

    assert r.status == 200
    assert collector.services == {"edge"}
    assert collector.authorization == ["Bearer t0ken"]
    spans = {span.name: span for span in collector.spans}
    assert set(spans) == {"GET /orders/{id}", "upstream"}
    server, call = spans["GET /orders/{id}"], spans["upstream"]
    assert server.trace_id.hex() == call.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert call.parent_span_id == server.span_id

    _, trace_id, parent_id, flags = upstream.requests[-1].headers["traceparent"].split("-")
    assert (trace_id, parent_id, flags) == (TRACE_ID, call.span_id.hex(), "01")
    (access,) = [rec.access for rec in caplog.records if hasattr(rec, "access")]
    assert access["trace_id"] == TRACE_ID
