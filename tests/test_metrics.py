"""The ``prometheus`` filter: exposition after real requests, cardinality, timings, exposition options."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gatekeep import (
    AuthError,
    BaseFilter,
    ConfigError,
    Exchange,
    Gateway,
    Headers,
    RateLimited,
    Request,
    Response,
    wsgi,
)
from gatekeep.plugins.prometheus import PrometheusFilter
from gatekeep.testing import ClientResponse, EchoUpstream, TestClient, gateway_for, serve_asgi

pytestmark = pytest.mark.anyio


# -- helpers ------------------------------------------------------------------


class Guard(BaseFilter):
    """Stands in for auth and rate limiting: answers 401 on /secret and 429 on /limited;
    takes the consumer from ``x-test-consumer``."""

    name: ClassVar[str] = "test-guard"
    priority: ClassVar[int] = 1000

    async def on_request(self, request: Request) -> Response | None:
        consumer = request.headers.get(b"x-test-consumer")
        if consumer:
            request.consumer = consumer.decode()
        if request.path.startswith("/secret"):
            raise AuthError("no credentials")
        if request.path.startswith("/limited"):
            raise RateLimited("API rate limit exceeded")
        return None


async def hang(scope: Any, receive: Any, send: Any) -> None:
    await anyio.sleep_forever()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def samples(text: str) -> dict[str, list[Sample]]:
    """Every sample of an exposition, by metric family name, via prometheus-client's own parser."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, []).extend(family.samples)
    return out


def value(found: dict[str, list[Sample]], family: str, sample: str, **labels: str) -> float | None:
    matches = [
        s.value
        for s in found.get(family, [])
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    if not matches:
        return None
    assert len(matches) == 1, (sample, labels, matches)
    return matches[0]


async def scrape(client: TestClient, path: str = "/metrics", *, requests: int = 0) -> dict[str, list[Sample]]:
    """Scrape until ``requests`` requests are counted (the log phase runs after the client got its answer)."""
    with anyio.fail_after(5):
        while True:
            response = await client.get(path)
            assert response.status == 200, response.text
            assert (response.header("content-type") or "").startswith("text/plain")
            found = samples(response.text)
            counted = sum(
                s.value for s in found.get("gatekeep_http_requests", []) if s.name.endswith("_total")
            )
            if counted >= requests:
                return found
            await anyio.sleep(0.01)


async def until(check: Any) -> None:
    with anyio.fail_after(5):
        while not check():  # noqa: ASYNC110 - polls state another task changes
            await anyio.sleep(0.01)


def requests_total(found: dict[str, list[Sample]], **labels: str) -> float | None:
    return value(found, "gatekeep_http_requests", "gatekeep_http_requests_total", **labels)


# -- exposition after real requests ---------------------------------------------


@asynccontextmanager
async def five_cases(**prometheus: Any) -> AsyncIterator[Any]:
    """A gateway with routes that answer 200, 401, 429, 502 and 504."""
    async with serve_asgi(hang) as hang_port:
        config = {
            "services": [
                {"name": "up", "url": "{upstream}", "routes": [{"name": "all", "paths": ["/"]}]},
                {
                    "name": "down",
                    "url": f"http://127.0.0.1:{closed_port()}",
                    "routes": [{"name": "down", "paths": ["/down"]}],
                },
                {
                    "name": "slow",
                    "url": f"http://127.0.0.1:{hang_port}",
                    "read_timeout": 200,
                    "routes": [{"name": "slow", "paths": ["/slow"]}],
                },
            ],
            "plugins": [{"name": "prometheus", "config": prometheus}],
        }
        async with gateway_for(config, filters=[Guard()]) as gw:
            yield gw


async def test_series_after_200_401_429_502_504_with_their_source() -> None:
    async with five_cases(per_consumer=True) as gw:
        for _ in range(3):
            assert (await gw.client.get("/orders/1", headers={"x-test-consumer": "alice"})).status == 200
        assert (await gw.client.post("/orders", body=b"x" * 1000)).status == 200
        assert (await gw.client.get("/secret")).status == 401
        assert (await gw.client.get("/limited", headers={"x-test-consumer": "bob"})).status == 429
        assert (await gw.client.get("/down/x")).status == 502
        assert (await gw.client.get("/slow/x")).status == 504
        found = await scrape(gw.client, requests=8)

    def total(**labels: str) -> float | None:
        return requests_total(found, **labels)

    assert total(service="up", route="all", method="GET", code="200", source="service", consumer="alice") == 3
    assert total(service="up", route="all", method="POST", code="200", source="service", consumer="") == 1
    assert total(route="all", code="401", source="gateway", consumer="") == 1
    assert total(route="all", code="429", source="gateway", consumer="bob") == 1
    assert total(service="down", route="down", code="502", source="gateway") == 1
    assert total(service="slow", route="slow", code="504", source="gateway") == 1
    # Nothing else: six label combinations, /metrics itself not counted.
    assert len([s for s in found["gatekeep_http_requests"] if s.name.endswith("_total")]) == 6

    count = "gatekeep_request_duration_seconds_count"
    assert value(found, "gatekeep_request_duration_seconds", count, route="all") == 6
    assert value(found, "gatekeep_request_duration_seconds", count, route="slow") == 1
    # The upstream histogram only counts requests that reached an upstream (not 401/429).
    assert value(found, "gatekeep_upstream_duration_seconds", "gatekeep_upstream_duration_seconds_count",
                 route="all") == 4  # fmt: skip
    slow_upstream = value(
        found, "gatekeep_upstream_duration_seconds", "gatekeep_upstream_duration_seconds_sum", route="slow"
    )
    assert slow_upstream is not None and 0.19 <= slow_upstream < 2.0  # the 200 ms read timeout
    egress = value(found, "gatekeep_bandwidth_bytes", "gatekeep_bandwidth_bytes_total",
                   route="all", direction="egress", consumer="alice")  # fmt: skip
    assert egress is not None and egress > 3 * 100
    ingress = value(found, "gatekeep_bandwidth_bytes", "gatekeep_bandwidth_bytes_total",
                    route="all", direction="ingress", consumer="")  # fmt: skip
    assert ingress == 1000
    assert value(found, "gatekeep_info", "gatekeep_info", version="0.1.0") == 1
    assert value(found, "gatekeep_discovery_instances", "gatekeep_discovery_instances", service="up") == 1


async def test_without_per_consumer_there_is_no_consumer_label() -> None:
    async with five_cases() as gw:
        await gw.client.get("/x", headers={"x-test-consumer": "alice"})
        found = await scrape(gw.client, requests=1)
    [sample] = [s for s in found["gatekeep_http_requests"] if s.name.endswith("_total")]
    assert set(sample.labels) == {"service", "route", "method", "code", "source"}


async def test_flags_turn_metrics_off() -> None:
    flags = {"status_code_metrics": False, "latency_metrics": False, "bandwidth_metrics": False}
    async with five_cases(**flags) as gw:
        await gw.client.get("/x")
        await anyio.sleep(0.2)  # nothing to wait for: no request counter
        found = await scrape(gw.client)
    assert not [s for s in found.get("gatekeep_http_requests", []) if s.name.endswith("_total")]
    assert not found.get("gatekeep_request_duration_seconds")
    assert not found.get("gatekeep_bandwidth_bytes")
    assert value(found, "gatekeep_info", "gatekeep_info", version="0.1.0") == 1


async def test_unmatched_requests_share_one_route_label() -> None:
    config = {
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"name": "api", "paths": ["/api"]}]}]
    }
    async with gateway_for(config, plugins=[{"name": "prometheus"}]) as gw:
        for i in range(5):
            assert (await gw.client.get(f"/nothing/{i}")).status == 404
        found = await scrape(gw.client, requests=5)
    assert requests_total(found, service="", route="", code="404", source="gateway") == 5


class Broken(BaseFilter):
    name: ClassVar[str] = "broken"

    async def on_request(self, request: Request) -> Response | None:
        if request.path == "/boom":
            raise ZeroDivisionError("a bug")
        return None


async def test_filter_errors_are_counted() -> None:
    async with gateway_for(plugins=[{"name": "prometheus"}], filters=[Broken()]) as gw:
        assert (await gw.client.get("/boom")).status == 500
        assert (await gw.client.get("/fine")).status == 200
        found = await scrape(gw.client, requests=2)
    errors = found["gatekeep_filter_errors"]
    assert sum(s.value for s in errors if s.name.endswith("_total")) == 1
    assert requests_total(found, code="500", source="gateway") == 1


# -- timings --------------------------------------------------------------------


class Slowpoke(BaseFilter):
    """Spends 30 ms in the gateway."""

    name: ClassVar[str] = "slowpoke"

    async def on_request(self, request: Request) -> Response | None:
        await anyio.sleep(0.03)
        return None


async def slow_upstream(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await anyio.sleep(0.06)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_gateway_plus_upstream_is_the_total() -> None:
    n = 4
    async with gateway_for(
        plugins=[{"name": "prometheus"}], filters=[Slowpoke()], upstream=slow_upstream
    ) as gw:
        start = anyio.current_time()
        for _ in range(n):
            assert (await gw.client.get("/t")).status == 200
        client_time = anyio.current_time() - start
        found = await scrape(gw.client, requests=n)

    def total(family: str) -> float:
        got = value(found, family, family + "_sum", route="all")
        assert got is not None
        assert value(found, family, family + "_count", route="all") == n
        return got

    request = total("gatekeep_request_duration_seconds")
    upstream = total("gatekeep_upstream_duration_seconds")
    gateway = total("gatekeep_gateway_duration_seconds")
    assert gateway + upstream == pytest.approx(request, rel=1e-6, abs=1e-6)
    assert 0.06 * n <= upstream < 0.06 * n + 0.5
    assert 0.03 * n <= gateway < 0.03 * n + 0.5
    assert request <= client_time
    # The buckets agree with the sums: every gateway time is over 25 ms, under 1 s.
    below = value(found, "gatekeep_gateway_duration_seconds", "gatekeep_gateway_duration_seconds_bucket",
                  route="all", le="0.025")  # fmt: skip
    assert below == 0


# -- cardinality budget ---------------------------------------------------------


class EarlyAnswer(BaseFilter):
    """Names the consumer from a header and answers at once (no upstream needed)."""

    name: ClassVar[str] = "early"
    priority: ClassVar[int] = 500

    async def on_request(self, request: Request) -> Response | None:
        consumer = request.headers.get(b"x-test-consumer")
        if consumer:
            request.consumer = consumer.decode()
        return Response.text("ok")


async def test_flood_of_paths_consumers_and_methods_stays_bounded() -> None:
    limit = 20
    config = {
        "services": [
            {"name": "up", "url": "http://127.0.0.1:9", "routes": [{"name": "api", "paths": ["/api"]}]}
        ],
        "plugins": [{"name": "prometheus", "config": {"per_consumer": True, "consumer_label_limit": limit}}],
    }
    gateway = Gateway(config, filters=[EarlyAnswer()])
    [prom] = [f for f in gateway.filters if isinstance(f, PrometheusFilter)]
    async with gateway:
        for i in range(10_000):
            matched = i % 2 == 0
            request = Request(
                method="GET" if i % 3 else f"X{i}",
                path="",
                raw_path=f"/api/items/{i}".encode() if matched else f"/random/{i}".encode(),
                headers=Headers([(b"x-test-consumer", f"user-{i}".encode())]),
                client=("127.0.0.1", 1234),
            )
            exchange = Exchange(request)
            response = await gateway.handle(request, exchange)
            await response.aclose()
            await gateway.log(exchange)
        assert prom.registry is not None
        text = generate_latest(prom.registry).decode()
    found = samples(text)
    requests = [s for s in found["gatekeep_http_requests"] if s.name.endswith("_total")]
    assert sum(s.value for s in requests) == 10_000
    assert {s.labels["route"] for s in requests} == {"api", ""}
    assert {s.labels["method"] for s in requests} == {"GET", "OTHER"}
    consumers = {s.labels["consumer"] for s in requests}
    assert len(consumers) <= limit + 2  # the first `limit` seen, "other", "" (unmatched: no consumer)
    assert "other" in consumers
    every_series = sum(len(v) for v in found.values())
    assert every_series < 400, every_series
    assert len(prom._cache) < 200


# -- exposition options ---------------------------------------------------------


async def test_allow_list_refuses_other_addresses() -> None:
    prometheus = {"name": "prometheus", "config": {"metrics_allow": ["192.0.2.0/24"]}}
    async with gateway_for(plugins=[prometheus]) as gw:
        response = await gw.client.get("/metrics")
        assert response.status == 403
        assert response.header("content-type") == "application/problem+json"
    async with gateway_for(plugins=[{"name": "prometheus", "config": {"metrics_allow": []}}]) as gw:
        assert (await gw.client.get("/metrics")).status == 200


async def test_custom_path() -> None:
    async with gateway_for(plugins=[{"name": "prometheus", "config": {"path": "/-/stats"}}]) as gw:
        await gw.client.get("/x")
        found = await scrape(gw.client, "/-/stats", requests=1)
        assert requests_total(found, code="200") == 1
        # /metrics is an ordinary path now: proxied upstream.
        assert (await gw.client.get("/metrics")).json()["path"] == "/metrics"


async def test_separate_port() -> None:
    prometheus = {"name": "prometheus", "config": {"metrics_port": 0}}
    async with gateway_for(plugins=[prometheus]) as gw:
        [prom] = [f for f in gw.gateway.filters if isinstance(f, PrometheusFilter)]
        assert prom.bound_port
        assert (await gw.client.get("/x")).status == 200
        # Not on the traffic port: proxied like any path.
        assert (await gw.client.get("/metrics")).json()["path"] == "/metrics"
        side = TestClient("127.0.0.1", prom.bound_port)
        found = await scrape(side, requests=2)
        assert requests_total(found, code="200", route="all") == 2
        assert (await side.get("/other")).status == 404


async def test_openmetrics_when_asked() -> None:
    async with gateway_for(plugins=[{"name": "prometheus"}]) as gw:
        await gw.client.get("/x")
        response = await gw.client.get("/metrics", headers={"accept": "application/openmetrics-text"})
        assert response.status == 200
        assert (response.header("content-type") or "").startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")


async def test_registry_is_the_gateways_own() -> None:
    async with (
        gateway_for(plugins=[{"name": "prometheus"}]) as one,
        gateway_for(plugins=[{"name": "prometheus"}]) as two,
    ):
        await one.client.get("/x")
        await one.client.get("/x")
        await two.client.get("/x")
        assert requests_total(await scrape(one.client, requests=2), code="200") == 2
        assert requests_total(await scrape(two.client, requests=1), code="200") == 1
    assert REGISTRY.get_sample_value("gatekeep_http_requests_total", {}) is None


async def test_use_global_registry() -> None:
    prometheus = {"name": "prometheus", "config": {"use_global_registry": True}}
    labels = {"service": "upstream", "route": "all", "method": "GET", "code": "200", "source": "service"}
    before = REGISTRY.get_sample_value("gatekeep_http_requests_total", labels) or 0
    async with gateway_for(plugins=[prometheus]) as gw:
        await gw.client.get("/x")
        await until(lambda: REGISTRY.get_sample_value("gatekeep_http_requests_total", labels) == before + 1)
        found = await scrape(gw.client)
        assert "process_cpu_seconds" in found or "python_info" in found  # the global registry's own
    # A second gateway in the same process joins the same metrics instead of failing.
    async with gateway_for(plugins=[prometheus]) as gw:
        await gw.client.get("/x")
        await until(lambda: REGISTRY.get_sample_value("gatekeep_http_requests_total", labels) == before + 2)
        assert REGISTRY.get_sample_value("gatekeep_info", {"version": "0.1.0"}) == 1


async def test_config_errors_name_the_field() -> None:
    bad = {
        "latency_buckets": [1.0, 0.5],
        "metrics_allow": ["not-a-network"],
        "path": "metrics",
        "metrics_port": 70000,
    }
    with pytest.raises(ConfigError) as info:
        Gateway({"plugins": [{"name": "prometheus", "config": bad}]})
    text = str(info.value)
    for field in bad:
        assert f"plugins[0].config.{field}" in text


def test_wsgi_serves_metrics() -> None:
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from tests._servers import upstream_thread

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    with upstream_thread(EchoUpstream()) as upstream_port:
        config = {
            "services": [
                {"name": "up", "url": f"http://127.0.0.1:{upstream_port}", "routes": [{"paths": ["/"]}]}
            ],
            "plugins": [{"name": "prometheus"}],
        }
        app = wsgi(Gateway(config))
        server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            client = TestClient("127.0.0.1", server.server_port)

            async def run() -> ClientResponse:
                assert (await client.get("/x")).status == 200
                return await client.get("/metrics")

            response = anyio.run(run)
        finally:
            server.shutdown()
            server.server_close()
            app.close()
    assert response.status == 200
    found = samples(response.text)
    assert requests_total(found, code="200", source="service", route="up.0") == 1


# -- promtool ---------------------------------------------------------------------

promtool = shutil.which("promtool")


@pytest.mark.skipif(promtool is None, reason="promtool is not installed")
async def test_promtool_check_metrics_is_clean() -> None:
    assert promtool is not None
    async with five_cases(per_consumer=True, upstream_health_metrics=True) as gw:
        for path in ("/x", "/secret", "/limited", "/down", "/slow"):
            await gw.client.get(path)
        text = (await gw.client.get("/metrics")).text
    result = subprocess.run(  # noqa: ASYNC221 - a short check after the gateway stopped
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout.decode() + result.stderr.decode()
    )


async def test_values_in_place_and_the_librarys_methods_record_the_same() -> None:
    # The default registry keeps the values in plain lists (``gatekeep.observability.counter_values``);
    # the global one leaves them to prometheus-client's methods.  The same traffic, counted both ways.
    def counts(found: dict[str, list[Sample]]) -> dict[tuple[str, str], float]:
        """Every count (not the durations' sums, which differ run to run), by sample and labels."""
        out: dict[tuple[str, str], float] = {}
        for family, found_samples in found.items():
            if not family.startswith(
                ("gatekeep_http", "gatekeep_bandwidth", "gatekeep_request", "gatekeep_up")
            ):
                continue
            for s in found_samples:
                if s.name.endswith(("_count", "_total")) or (
                    s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
                ):
                    key = (s.name, repr(sorted((k, v) for k, v in s.labels.items() if k != "le")))
                    out[key] = s.value
        return out

    async def traffic(client: TestClient) -> None:
        for _ in range(3):
            assert (await client.get("/x")).status == 200
        assert (await client.post("/x", body=b"a" * 700)).status == 200
        assert (await client.request("PURGE", "/x")).status == 200

    async with gateway_for(plugins=[{"name": "prometheus"}]) as gw:
        await traffic(gw.client)
        in_place = counts(await scrape(gw.client, requests=5))
    before = counts(samples(generate_latest(REGISTRY).decode()))
    async with gateway_for(plugins=[{"name": "prometheus", "config": {"use_global_registry": True}}]) as gw:
        await traffic(gw.client)
        await scrape(gw.client, requests=5)
        after = counts(samples(generate_latest(REGISTRY).decode()))
    library = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}
    assert in_place == library
    assert (
        in_place[
            (
                "gatekeep_bandwidth_bytes_total",
                repr([("direction", "ingress"), ("route", "all"), ("service", "upstream")]),
            )
        ]
        == 700
    )
    method_other = [k for k in in_place if "OTHER" in k[1]]
    assert method_other and all(in_place[k] == 1 for k in method_other)
