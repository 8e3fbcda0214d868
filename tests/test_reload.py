"""Live reload (issue 15): a new config validated whole, compiled, swapped atomically; state carried over.

Everything runs over real loopback sockets: a gateway served by an ASGI server,
real upstreams, a real client.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter

from gatekeep import ConfigError, Gateway
from gatekeep.adapters import asgi
from gatekeep.configsource import FileStore, MemoryStore
from gatekeep.observability import MetricsEndpoint
from gatekeep.testing import EchoUpstream, TestClient, serve_asgi
from tests._upstream_servers import raw_server, read_head

pytestmark = pytest.mark.anyio


def _config(a: int, b: int | None = None, **extra: Any) -> dict[str, Any]:
    services: list[dict[str, Any]] = [
        {"name": "a", "url": f"http://127.0.0.1:{a}", "routes": [{"name": "a", "paths": ["/a"]}], **extra}
    ]
    if b is not None:
        services.append(
            {"name": "b", "url": f"http://127.0.0.1:{b}", "routes": [{"name": "b", "paths": ["/b"]}]}
        )
    return {"services": services}


@asynccontextmanager
async def _running(config: Any, **kwargs: Any) -> AsyncIterator[tuple[Gateway, TestClient]]:
    gateway = Gateway(config, **kwargs)
    async with gateway, serve_asgi(asgi(gateway)) as port:
        yield gateway, TestClient("127.0.0.1", port, timeout=10)


@asynccontextmanager
async def _upstreams(n: int) -> AsyncIterator[list[int]]:
    ports = []
    async with serve_asgi(EchoUpstream()) as p1, serve_asgi(EchoUpstream()) as p2:
        ports = [p1, p2][:n]
        yield ports


async def test_a_reload_swaps_the_config_and_the_status_reports_it() -> None:
    async with _upstreams(2) as (a, b), _running(_config(a)) as (gateway, client):
        first = gateway.config_status()
        assert first["source"] == "static" and first["reloads"] == 0 and len(first["config_hash"]) == 64
        assert (await client.get("/b")).status == 404
        await gateway.reload(_config(a, b))
        assert (await client.get("/b")).status == 200
        assert (await client.get("/a")).status == 200
        status = gateway.config_status()
        assert status["reloads"] == 1
        assert status["config_hash"] != first["config_hash"]
        assert status["loaded_at"] >= first["loaded_at"]
        assert status["last_error"] is None


async def test_a_bad_config_is_refused_with_every_error_and_the_old_one_keeps_serving() -> None:
    async with _upstreams(1) as (a,), _running(_config(a)) as (gateway, client):
        before = gateway.config_status()["config_hash"]
        bad = _config(a)
        bad["services"][0]["routes"][0]["methods"] = ["FETCH"]
        bad["services"][0]["retries"] = -1
        with pytest.raises(ConfigError) as caught:
            await gateway.reload(bad)
        paths = {e.path for e in caught.value.errors}
        assert paths == {"services[0].routes[0].methods[0]", "services[0].retries"}
        assert (await client.get("/a")).status == 200
        status = gateway.config_status()
        assert status["config_hash"] == before
        assert status["refused"] == 1
        assert {e["path"] for e in status["last_error"]["errors"]} == paths


async def test_an_open_breaker_stays_open_across_a_reload_of_another_service() -> None:
    failing = EchoUpstream(status=503)
    breaker = {"consecutive_failures": 2, "open_for": 60, "per_instance": False}
    async with serve_asgi(failing) as a, serve_asgi(EchoUpstream()) as b:
        config = _config(a, b, breaker=breaker, retries=0)
        async with _running(config) as (gateway, client):
            for _ in range(2):
                assert (await client.get("/a")).status == 503
            seen = len(failing.requests)
            assert (await client.get("/a")).status == 503  # open: the upstream is not asked
            assert len(failing.requests) == seen
            changed = _config(a, b, breaker=breaker, retries=0)
            changed["services"][1]["routes"][0]["paths"] = ["/b", "/bee"]
            await gateway.reload(changed)
            response = await client.get("/a")
            assert response.status == 503 and len(failing.requests) == seen
            assert "circuit" in response.text.lower()
            assert (await client.get("/bee")).status == 200


async def test_a_rate_limit_counter_is_kept_across_a_reload() -> None:
    async with _upstreams(2) as (a, b):
        limited = _config(a, b)
        limited["plugins"] = [
            {"name": "rate-limiting", "service": "a", "config": {"minute": 2, "limit_by": "ip"}}
        ]
        async with _running(limited) as (gateway, client):
            assert [(await client.get("/a")).status for _ in range(2)] == [200, 200]
            changed = dict(
                limited, services=[limited["services"][0], {**limited["services"][1], "retries": 1}]
            )
            await gateway.reload(changed)
            assert gateway.config_status()["reloads"] == 1
            assert (await client.get("/a")).status == 429


async def test_a_removed_service_is_closed_its_pooled_connections_too() -> None:
    closed = anyio.Event()
    opened = 0

    async def keep_alive(stream: Any) -> None:
        nonlocal opened
        opened += 1
        buffer = bytearray()
        try:
            while True:
                await read_head(stream, buffer)
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            closed.set()

    async with serve_asgi(EchoUpstream()) as a, raw_server(keep_alive) as b:
        async with _running(_config(a, b)) as (gateway, client):
            assert (await client.get("/b")).status == 200
            assert opened == 1 and not closed.is_set()
            old_guard = gateway.services["b"].guard
            await gateway.reload(_config(a))
            with anyio.fail_after(5):
                await closed.wait()  # the idle keep-alive connection to b was closed
            assert (await client.get("/b")).status == 404
            assert (await client.get("/a")).status == 200
            assert "b" not in gateway.services and old_guard is not None


async def test_reload_under_load_loses_no_request() -> None:
    async with _upstreams(2) as (a, b), _running(_config(a, b)) as (gateway, client):
        statuses: list[int] = []
        stop = anyio.Event()

        async def hammer() -> None:
            while not stop.is_set():
                statuses.append((await client.get("/a")).status)

        hashes = {gateway.config_status()["config_hash"]}
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(hammer)
            for i in range(10):
                await anyio.sleep(0.05)
                await gateway.reload(_config(a, b, retries=i % 3, read_timeout=1000 + i))
                hashes.add(gateway.config_status()["config_hash"])
            stop.set()
        assert len(hashes) == 11
        assert len(statuses) > 50
        assert set(statuses) == {200}


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_in_place(path: Path, text: str) -> None:
    with open(path, "w") as out:
        out.write(text)


def _toml(a: int, extra_path: str | None = None) -> str:
    paths = '["/a"]' if extra_path is None else f'["/a", "{extra_path}"]'
    return f"""
[[services]]
name = "a"
url = "http://127.0.0.1:{a}"
routes = [{{ name = "a", paths = {paths} }}]
"""


async def _until(check: Any, within: float = 3.0) -> float:
    start = anyio.current_time()
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - polls what the gateway's watch changes
            await anyio.sleep(0.02)
    return anyio.current_time() - start


async def test_the_watched_file_is_reloaded_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "gatekeep.toml"
    async with _upstreams(1) as (a,):
        path.write_text(_toml(a))
        async with _running(str(path), config_source=FileStore(path)) as (gateway, client):
            first = gateway.config_status()
            assert first["source"] == f"file:{path}"
            _write_atomically(path, _toml(a, "/new"))

            async def switched() -> bool:
                return (await client.get("/new")).status == 200

            assert await _until(switched) < 1.0
            assert gateway.config_status()["config_hash"] != first["config_hash"]


async def test_a_half_written_file_is_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "gatekeep.toml"
    async with _upstreams(1) as (a,):
        path.write_text(_toml(a))
        store = FileStore(path, poll_interval=0.05, settle=0.05)
        async with _running(str(path), config_source=store) as (gateway, client):
            before = gateway.config_status()["config_hash"]
            full = _toml(a, "/new")
            # An editor writing in place, stopped in the middle of a table.
            _write_in_place(path, full[: full.index("routes") + 12])

            async def refused() -> bool:
                return bool(gateway.config_status()["refused"] >= 1)

            await _until(refused)
            assert gateway.config_status()["config_hash"] == before
            assert "does not parse" in gateway.config_status()["last_error"]["message"]
            assert (await client.get("/a")).status == 200
            _write_in_place(path, full)

            async def applied() -> bool:
                return (await client.get("/new")).status == 200

            await _until(applied)
            assert gateway.config_status()["last_error"] is None


async def test_sighup_reloads_even_an_unchanged_file(tmp_path: Path) -> None:
    path = tmp_path / "gatekeep.toml"
    async with _upstreams(1) as (a,):
        path.write_text(_toml(a))
        gateway = Gateway(str(path), config_source=FileStore(path))
        gateway.reloads.sighup = True
        async with gateway:
            os.kill(os.getpid(), signal.SIGHUP)

            async def reloaded() -> bool:
                return bool(gateway.config_status()["reloads"] == 1)

            await _until(reloaded)


async def test_a_memory_store_write_is_applied_by_the_watching_gateway() -> None:
    async with _upstreams(2) as (a, b):
        store = MemoryStore(_config(a))
        async with _running(_config(a), config_source=store) as (gateway, client):
            snapshot = await store.read()
            await store.write(_config(a, b), snapshot.version)

            async def applied() -> bool:
                return (await client.get("/b")).status == 200

            await _until(applied)
            assert gateway.config_status()["version"] == "2"


async def test_an_unchanged_services_discovery_watcher_carries_over_a_removed_ones_stops() -> None:
    from tests._consul_server import consul_endpoint

    async with consul_endpoint() as consul, serve_asgi(EchoUpstream()) as up:
        double = consul.double
        if double is None:
            pytest.skip("counts the double's requests")
        for name in ("orders", "billing"):
            double.register({"Name": name, "ID": f"{name}-1", "Address": "127.0.0.1", "Port": up})

        def config(*names: str) -> dict[str, Any]:
            discovery = {"consul": {"address": consul.address, "wait": "1s"}}
            return {
                "services": [
                    {"name": n, "discovery": discovery, "routes": [{"name": n, "paths": [f"/{n}"]}]}
                    for n in names
                ]
            }

        def asked(name: str) -> int:
            return sum(1 for _, path, _ in double.requests if path == f"/v1/health/service/{name}")

        async with _running(config("orders", "billing")) as (gateway, client):
            assert (await client.get("/orders")).status == 200
            assert (await client.get("/billing")).status == 200
            orders = gateway.discovery.watchers["orders"]  # type: ignore[attr-defined]
            before = asked("orders")
            await gateway.reload(config("orders"))
            assert gateway.discovery.watchers["orders"] is orders  # type: ignore[attr-defined]
            assert asked("orders") == before  # no new first query: the same blocking loop
            await anyio.sleep(0.2)
            billing = asked("billing")
            await anyio.sleep(1.5)  # more than a blocking query's wait: a live watcher would ask again
            assert asked("billing") == billing
            assert asked("orders") > before
            assert (await client.get("/orders")).status == 200
            assert (await client.get("/billing")).status == 404


def _series(text: str, name: str, *labels: str) -> float:
    """The sum of ``name``'s samples carrying every one of ``labels`` (``key="value"``)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(label in line for label in labels)
    )


async def test_prometheus_counts_go_on_across_a_reload_that_leaves_the_plugin_unchanged() -> None:
    """Prometheus sees no counter reset: an unchanged `prometheus` entry keeps its metrics;
    a changed one starts afresh (its labels or buckets may differ)."""
    async with _upstreams(2) as (a, b):
        config = _config(a, b)
        config["plugins"] = [{"name": "prometheus", "config": {"status_code_metrics": True}}]
        async with _running(config) as (gateway, client):
            for _ in range(3):
                assert (await client.get("/a")).status == 200
            scrape = (await client.get("/metrics")).text
            assert _series(scrape, "gatekeep_http_requests_total", 'route="a"') == 3
            other = dict(config, services=[config["services"][0], {**config["services"][1], "retries": 1}])
            await gateway.reload(other)
            assert (await client.get("/a")).status == 200
            scrape = (await client.get("/metrics")).text
            assert _series(scrape, "gatekeep_http_requests_total", 'route="a"') == 4
            changed = dict(other, plugins=[{"name": "prometheus", "config": {"status_code_metrics": False}}])
            await gateway.reload(changed)
            scrape = (await client.get("/metrics")).text
            assert _series(scrape, "gatekeep_http_requests_total", 'route="a"') == 0


async def test_a_breaker_transition_counts_once_after_reloads_that_keep_its_service() -> None:
    failing = EchoUpstream(status=503)
    breaker = {"consecutive_failures": 2, "open_for": 60, "per_instance": False}
    async with serve_asgi(failing) as a, serve_asgi(EchoUpstream()) as b:
        config = _config(a, b, breaker=breaker, retries=0)
        config["plugins"] = [{"name": "prometheus"}]
        async with _running(config) as (gateway, client):
            for paths in (["/b", "/bee"], ["/b", "/bee", "/bees"]):  # two reloads; service a is kept
                changed = dict(config, services=[config["services"][0], dict(config["services"][1])])
                changed["services"][1]["routes"] = [{"name": "b", "paths": paths}]
                await gateway.reload(changed)
            for _ in range(2):
                assert (await client.get("/a")).status == 503
            scrape = (await client.get("/metrics")).text
            assert _series(scrape, "gatekeep_breaker_transitions_total", 'service="a"', 'state="open"') == 1


async def _scrape(port: int) -> str:
    return (await TestClient("127.0.0.1", port, timeout=10).get("/metrics")).text


async def test_a_separate_metrics_port_is_handed_over_by_a_reload_and_closed_at_exit() -> None:
    """The new config's metrics take over the running listener (binding the port twice would
    refuse every reload); a refused reload hands it back; the gateway's exit closes it."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    metrics_port = probe.getsockname()[1]
    probe.close()
    async with _upstreams(2) as (a, b):
        config = _config(a)
        config["plugins"] = [
            {"name": "prometheus", "config": {"metrics_port": metrics_port, "metrics_host": "127.0.0.1"}}
        ]
        async with _running(config) as (gateway, client):
            assert (await client.get("/a")).status == 200
            assert 'route="a"' in await _scrape(metrics_port)
            await gateway.reload(dict(config, services=_config(a, b)["services"]))
            assert gateway.config_status()["reloads"] == 1
            assert (await client.get("/b")).status == 200
            scrape = await _scrape(metrics_port)
            assert _series(scrape, "gatekeep_http_requests_total", 'route="a"') == 1  # counted on
            assert 'route="b"' in scrape  # the new config's
            changed = dict(
                config,
                plugins=[
                    {
                        **config["plugins"][0],
                        "config": {**config["plugins"][0]["config"], "per_consumer": True},
                    }
                ],
            )
            await gateway.reload(changed)  # a changed entry takes the listener over too
            assert gateway.config_status()["reloads"] == 2
            assert "gatekeep_http_requests_total" in await _scrape(metrics_port)
    with socket.socket() as again:
        again.bind(("127.0.0.1", metrics_port))  # closed with the gateway


async def test_a_metrics_listener_taken_over_goes_back_when_the_newer_endpoint_closes_first() -> None:
    """What a reload refused after its start does: the listener serves the running registry again."""

    def endpoint(name: str) -> MetricsEndpoint:
        registry = CollectorRegistry(auto_describe=False)
        Counter(name, "which endpoint answers", registry=registry).inc()
        return MetricsEndpoint(registry, collector=None)

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    running, refused = endpoint("running_config"), endpoint("refused_config")
    async with anyio.create_task_group() as tg:
        assert await running.serve(tg, "127.0.0.1", port, "/metrics") == port
        assert await refused.serve(tg, "127.0.0.1", port, "/metrics") == port  # taken over
        assert "refused_config_total 1.0" in await _scrape(port)
        refused.close()
        assert "running_config_total 1.0" in await _scrape(port)
        running.close()
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


async def test_a_kept_service_does_not_collect_the_breaker_callbacks_of_retired_plugins() -> None:
    breaker = {"consecutive_failures": 2, "open_for": 60, "per_instance": False}
    async with _upstreams(2) as (a, b):
        config = _config(a, b, breaker=breaker)
        config["plugins"] = [{"name": "prometheus"}]
        async with _running(config) as (gateway, client):
            gateway.reloads.drain = 0  # retired plugins stop at once
            guard = gateway.services["a"].guard
            for n in range(5):
                changed = dict(config, services=[config["services"][0], dict(config["services"][1])])
                changed["services"][1]["routes"] = [{"name": "b", "paths": ["/b", f"/b{n}"]}]
                await gateway.reload(changed)
            with anyio.fail_after(5):
                while len(guard._callbacks) > 1:  # noqa: ASYNC110 - the retirements run in the background
                    await anyio.sleep(0.01)
            assert gateway.services["a"].guard is guard  # kept, breakers and all
            assert len(guard._callbacks) == 1  # the running plugin's only
