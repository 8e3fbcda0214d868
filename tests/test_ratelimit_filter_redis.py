"""The ``rate-limiting`` filter on a real redis-server: shared pool, outages, leases."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest
import redis

from gatekeep.plugins import rate_limiting
from gatekeep.plugins.rate_limiting import RateLimitingFilter
from gatekeep.ratelimit import _connect
from gatekeep.testing import Harness, gateway_for
from tests._redis_fixture import RedisProcess

pytestmark = pytest.mark.anyio


def redis_config(url: str, **config: Any) -> dict[str, Any]:
    return {"policy": "redis", "redis": {"url": url, "timeout": 500}, "limit_by": "ip", **config}


def the_filter(gw: Harness) -> RateLimitingFilter:
    (found,) = [f for f in gw.gateway.filters if isinstance(f, RateLimitingFilter)]
    return found


def evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def test_the_buckets_live_in_redis(redis_url: str) -> None:
    async with gateway_for(
        plugins=[{"name": "rate-limiting", "config": redis_config(redis_url, hour=2)}]
    ) as gw:
        seen = [await gw.client.get("/") for _ in range(3)]
        assert [r.status for r in seen] == [200, 200, 429]
        assert [r.header("x-ratelimit-remaining-hour") for r in seen] == ["1", "0", "0"]
        assert 1799 <= int(seen[2].header("retry-after") or 0) <= 1800
    with redis.Redis.from_url(redis_url) as client:
        assert client.keys("*") == [b"gk:rl:{global:ip:127.0.0.1}:2/3600.0/2"]


async def test_instances_with_the_same_redis_share_one_pool(redis_url: str) -> None:
    plugin = {"name": "rate-limiting", "config": redis_config(redis_url, hour=5)}
    other = {"name": "rate-limiting", "config": redis_config(redis_url, hour=5)}
    other["config"]["redis"] = {"url": redis_url, "timeout": 600}  # other settings, another pool
    routes = [
        {"name": "a", "paths": ["/a"], "plugins": [plugin]},
        {"name": "b", "paths": ["/b"], "plugins": [plugin]},
        {"name": "c", "paths": ["/c"], "plugins": [other]},
    ]
    async with gateway_for(routes=routes) as gw:
        stores = [f._store for f in gw.gateway.filters if isinstance(f, RateLimitingFilter)]
        assert stores[0] is stores[1] and stores[0] is not stores[2]
        assert len(_connect._stores) == 2
        for path in ("/a", "/b", "/c"):
            assert (await gw.client.get(path)).status == 200
    assert _connect._stores == {}


async def hammer(gw: Harness, until: anyio.Event, seen: list[tuple[int, float]]) -> None:
    while not until.is_set():
        started = time.monotonic()
        r = await gw.client.get("/")
        seen.append((r.status, time.monotonic() - started))


async def test_fault_tolerant_redis_killed_mid_load_then_restarted(
    redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gatekeep.rate_limiting")
    config = redis_config(redis_process.url, hour=100_000)
    async with gateway_for(plugins=[{"name": "rate-limiting", "config": config}]) as gw:
        f = the_filter(gw)
        seen: list[tuple[int, float]] = []
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(hammer, gw, done, seen)
            await anyio.sleep(0.3)
            before = f.stats.allowed
            assert before > 0
            redis_process.stop()
            await anyio.sleep(0.6)
            during = len(seen)
            redis_process.start()
            await anyio.sleep(rate_limiting.PROBE_INTERVAL + 0.5)
            done.set()
        assert {status for status, _ in seen} == {200}
        assert max(elapsed for _, elapsed in seen) < 0.5 + 0.5
        assert f.stats.fallback_allowed > 0
        assert f.stats.outages == 1
        assert f.stats.allowed > before  # Redis decides again
        assert len(seen) > during
        messages = [r.getMessage() for r in caplog.records]
        assert sum("Redis is unavailable" in m for m in messages) == 1, messages
        assert sum("Redis answers again" in m for m in messages) == 1, messages
    with redis.Redis.from_url(redis_process.url) as client:
        assert client.keys("gk:rl:*")  # the restarted server holds the bucket again


async def test_fail_closed_answers_503_then_recovers(redis_process: RedisProcess) -> None:
    config = redis_config(redis_process.url, hour=100, fault_tolerant=False)
    async with gateway_for(plugins=[{"name": "rate-limiting", "config": config}]) as gw:
        assert (await gw.client.get("/")).status == 200
        redis_process.stop()
        for _ in range(3):
            r = await gw.client.get("/")
            assert r.status == 503, r.text
            assert r.header("content-type") == "application/problem+json"
            assert "unavailable" in r.json()["detail"]
            assert "127.0.0.1" not in r.text  # nothing about the store leaks to the client
            assert r.header("x-ratelimit-limit-hour") is None
        redis_process.start()
        await anyio.sleep(rate_limiting.PROBE_INTERVAL + 0.1)
        r = await gw.client.get("/")
        assert r.status == 200 and r.header("x-ratelimit-remaining-hour") == "99"  # a fresh server
        f = the_filter(gw)
        assert f.stats.unavailable == 3 and f.stats.fallback == 0 and f.stats.outages == 1


async def test_a_frozen_redis_costs_one_request_one_timeout(redis_process: RedisProcess) -> None:
    config = redis_config(redis_process.url, hour=1000)
    config["redis"]["timeout"] = 300
    async with gateway_for(plugins=[{"name": "rate-limiting", "config": config}]) as gw:
        assert (await gw.client.get("/")).status == 200
        redis_process.pause()
        try:
            seen: list[tuple[int, float]] = []
            for _ in range(10):
                started = time.monotonic()
                r = await gw.client.get("/")
                seen.append((r.status, time.monotonic() - started))
        finally:
            redis_process.resume()
        assert [s for s, _ in seen] == [200] * 10
        assert 0.25 < seen[0][1] < 0.3 + 0.3  # the one that found out waited the timeout
        assert all(elapsed < 0.2 for _, elapsed in seen[1:])  # the others did not ask a frozen Redis
        assert the_filter(gw).stats.fallback_allowed == 10


async def test_leases_cut_round_trips_and_never_overshoot(redis_url: str) -> None:
    config = redis_config(redis_url, hour=25, sync_rate=60, lease_size=10)
    async with gateway_for(plugins=[{"name": "rate-limiting", "config": config}]) as gw:
        before = evalsha_calls(redis_url)
        statuses = [(await gw.client.get("/")).status for _ in range(40)]
        calls = evalsha_calls(redis_url) - before
    assert statuses == [200] * 25 + [429] * 15
    # Leases of 10, 10 and the last 5; the refusal is remembered until retry_after.
    assert calls == 4, calls
