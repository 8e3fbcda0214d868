"""``proxy-cache`` with ``strategy = "redis"``: one store for every gateway process, on a real redis-server.

Two ``gatekeep serve`` processes load one TOML config: the second answers from
the entry the first stored.  A Redis outage makes requests a Bypass (never a
500) and caching resumes when Redis is back; ``gatekeep cache purge`` purges
the shared entries by key, by route and all.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from gatekeep.cache import purge_caches
from gatekeep.plugins.proxy_cache import ProxyCacheFilter
from gatekeep.testing import Harness, TestClient, gateway_for, serve_asgi
from tests._redis_fixture import RedisProcess, _free_port
from tests.test_proxy_cache import Origin, status

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def redis_cache(url: str, **config: Any) -> dict[str, Any]:
    return {"name": "proxy-cache", "config": {"strategy": "redis", "redis": {"url": url}, **config}}


def the_cache(gw: Harness) -> ProxyCacheFilter:
    (plugin,) = [p for p in gw.gateway.plugin_context.plugins if isinstance(p, ProxyCacheFilter)]
    return plugin


async def test_two_gateways_share_the_entries(redis_url: str) -> None:
    origin = Origin()
    async with serve_asgi(origin) as port:
        config = {
            "services": [
                {
                    "name": "api",
                    "url": f"http://127.0.0.1:{port}",
                    "routes": [{"name": "all", "paths": ["/"]}],
                }
            ],
            "plugins": [redis_cache(redis_url)],
        }
        async with gateway_for(config) as one, gateway_for(config) as two:
            first = await one.client.get("/orders/1")
            second = await two.client.get("/orders/1")
            head = await two.client.request("HEAD", "/orders/1")
    assert (status(first), status(second), status(head)) == ("Miss", "Hit", "Hit")
    assert second.body == first.body
    assert origin.seen["/orders/1"] == 1
    with redis.Redis.from_url(redis_url) as client:
        names = [n.decode() for n in client.keys("*")]
    assert len(names) == 1 and names[0].startswith("gk:cache:e:")
    assert names[0].endswith(":" + (first.header("x-cache-key") or "?"))


async def test_age_is_counted_by_the_redis_clock(redis_url: str) -> None:
    origin = Origin()
    async with gateway_for(plugins=[redis_cache(redis_url)], upstream=origin) as gw:
        await gw.client.get("/a")
        await anyio.sleep(1.2)
        hit = await gw.client.get("/a")
    assert status(hit) == "Hit"
    assert hit.header("age") == "1"


async def test_a_redis_outage_is_a_bypass_not_an_error(
    redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gatekeep.cache")
    origin = Origin()
    plugin = redis_cache(redis_process.url)
    plugin["config"]["redis"]["timeout"] = 300
    async with gateway_for(plugins=[plugin], upstream=origin) as gw:
        await gw.client.get("/o")
        assert status(await gw.client.get("/o")) == "Hit"
        redis_process.stop()
        down = [await gw.client.get("/o") for _ in range(3)]
        assert [a.status for a in down] == [200, 200, 200]
        assert [status(a) for a in down] == ["Bypass"] * 3
        redis_process.start()
        await anyio.sleep(1.1)  # the store waits a second before it tries Redis again
        back = [await gw.client.get("/o") for _ in range(2)]
        stats = the_cache(gw).stats()
    assert [status(a) for a in back] == ["Miss", "Hit"]
    assert stats["store_errors"] >= 1
    assert origin.seen["/o"] == 5
    # The operator reads one line when the outage starts and one when it ends, not one per request.
    lines = [r.getMessage() for r in caplog.records if r.name == "gatekeep.cache"]
    assert len(lines) == 2
    assert lines[0].startswith("proxy-cache: redis unavailable, bypassing the cache:")
    assert lines[1] == "proxy-cache: redis is back"


TWO_ROUTES = """
[[services]]
name = "api"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "orders"
  paths = ["/orders"]

  [[services.routes]]
  name = "users"
  paths = ["/users"]

[[plugins]]
name = "proxy-cache"

  [plugins.config]
  strategy = "redis"
  redis = {{ url = "{redis}", timeout = 2000 }}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gatekeep", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_purge_by_key_route_and_all_from_the_api_and_the_cli(redis_url: str, tmp_path: Path) -> None:
    origin = Origin()
    config_file = tmp_path / "gateway.toml"
    async with serve_asgi(origin) as port:
        config_file.write_text(TWO_ROUTES.format(upstream=port, redis=redis_url))
        async with gateway_for(tomllib.loads(config_file.read_text())) as gw:
            plugins = gw.gateway.plugin_context.plugins
            one = await gw.client.get("/orders/1")
            for path in ("/orders/2", "/users/1", "/users/2"):
                await gw.client.get(path)
            assert await purge_caches(plugins, key=one.header("x-cache-key")) == 1
            assert status(await gw.client.get("/orders/1")) == "Miss"
            purged = await anyio.to_thread.run_sync(
                cli, "cache", "purge", str(config_file), "--route", "users"
            )
            assert purged.returncode == 0, purged.stderr
            assert purged.stdout.strip() == "purged 2 entries"
            assert status(await gw.client.get("/users/1")) == "Miss"
            assert status(await gw.client.get("/orders/2")) == "Hit"
            by_key = await anyio.to_thread.run_sync(
                cli, "cache", "purge", str(config_file), "--key", one.header("x-cache-key") or ""
            )
            assert by_key.stdout.strip() == "purged 1 entry"
            everything = await anyio.to_thread.run_sync(cli, "cache", "purge", str(config_file))
            assert everything.stdout.strip() == "purged 2 entries"  # /orders/2, /users/1
            assert status(await gw.client.get("/orders/2")) == "Miss"


def test_the_cli_says_when_there_is_no_shared_cache(tmp_path: Path) -> None:
    config = tmp_path / "memory.toml"
    config.write_text(
        '[[services]]\nname = "api"\nurl = "http://127.0.0.1:9"\n\n[[plugins]]\nname = "proxy-cache"\n'
    )
    done = cli("cache", "purge", str(config))
    assert done.returncode == 1
    assert "no proxy-cache with strategy 'redis'" in done.stderr


def test_the_cli_reports_an_unreachable_redis(tmp_path: Path) -> None:
    config = tmp_path / "down.toml"
    url = f"redis://127.0.0.1:{_free_port()}/0"
    config.write_text(TWO_ROUTES.format(upstream=9, redis=url))
    done = cli("cache", "purge", str(config))
    assert done.returncode == 1
    assert done.stderr.startswith("gatekeep cache: redis:")
    assert "Traceback" not in done.stderr


# -- the acceptance line: two gateway processes ---------------------------------------------------

SERVE = """
[[services]]
name = "api"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "all"
  paths = ["/"]

[[plugins]]
name = "proxy-cache"

  [plugins.config]
  strategy = "redis"
  redis = {{ url = "{redis}" }}
"""


@pytest.fixture
def gateway_processes(tmp_path: Path) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    started: list[tuple[int, subprocess.Popen[bytes]]] = []
    yield started
    for _, proc in started:
        proc.terminate()
    for _, proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_gateway(config: Path, port: int) -> subprocess.Popen[bytes]:
    """``gatekeep serve CONFIG`` on ``port`` (uvicorn), quiet."""
    argv = [
        sys.executable,
        "-m",
        "gatekeep",
        "serve",
        str(config),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_a_second_gateway_process_hits_the_first_ones_entry(
    redis_url: str, tmp_path: Path, gateway_processes: list[tuple[int, subprocess.Popen[bytes]]]
) -> None:
    origin = Origin()
    config = tmp_path / "gateway.toml"
    async with serve_asgi(origin) as upstream:
        config.write_text(SERVE.format(upstream=upstream, redis=redis_url))
        for _ in range(2):
            port = _free_port()
            gateway_processes.append((port, start_gateway(config, port)))
        deadline = time.monotonic() + 60
        for port, proc in gateway_processes:
            client = TestClient("127.0.0.1", port, timeout=2)
            while True:
                assert proc.poll() is None, f"gateway on {port} exited with {proc.returncode}"
                try:
                    await client.get("/ready")
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the gateways did not start"
                    await anyio.sleep(0.1)
        (port_a, _), (port_b, _) = gateway_processes
        first = await TestClient("127.0.0.1", port_a).get("/orders/1")
        second = await TestClient("127.0.0.1", port_b).get("/orders/1")
    assert (status(first), status(second)) == ("Miss", "Hit")
    assert second.body == first.body
    assert origin.seen["/orders/1"] == 1
