"""The ``rate-limiting`` filter through Redis Sentinel: discovery, then a real failover."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from gatekeep.plugins import rate_limiting
from gatekeep.plugins.rate_limiting import RateLimitingFilter
from gatekeep.testing import Harness, gateway_for
from tests._redis_fixture import _free_port
from tests._redis_sentinel import MASTER, SentinelGroup

pytestmark = pytest.mark.anyio

TIMEOUT_MS = 500


def sentinel_config(group: SentinelGroup, **config: Any) -> dict[str, Any]:
    redis_settings = {
        "mode": "sentinel",
        "sentinel_master": MASTER,
        "sentinel_nodes": group.nodes,
        "timeout": TIMEOUT_MS,
    }
    by_tenant = {"limit_by": "header", "header_name": "x-tenant"}
    return {"policy": "redis", "redis": redis_settings, **by_tenant, **config}


def the_filter(gw: Harness) -> RateLimitingFilter:
    (found,) = [f for f in gw.gateway.filters if isinstance(f, RateLimitingFilter)]
    return found


def keys(port: int) -> list[bytes]:
    with redis.Redis(host="127.0.0.1", port=port) as client:
        return sorted(client.keys("gk:rl:*"))


async def test_admits_exactly_the_limit_through_the_discovered_master(redis_sentinel: SentinelGroup) -> None:
    config = sentinel_config(redis_sentinel, hour=20)
    # A Sentinel that is down comes first: discovery asks the next one.
    config["redis"]["sentinel_nodes"] = [{"host": "127.0.0.1", "port": _free_port()}, *redis_sentinel.nodes]
    async with gateway_for(plugins=[{"name": "rate-limiting", "config": config}]) as gw:
        statuses: list[int] = []

        async def client() -> None:
            for _ in range(10):
                r = await gw.client.get("/", headers={"x-tenant": "acme"})
                statuses.append(r.status)

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(client)
        assert sorted(statuses) == [200] * 20 + [429] * 20
        r = await gw.client.get("/", headers={"x-tenant": "other"})
        assert r.status == 200 and r.header("x-ratelimit-remaining-hour") == "19"
        f = the_filter(gw)
        assert (f.stats.allowed, f.stats.rejected, f.stats.fallback, f.stats.outages) == (21, 20, 0, 0)
    # The buckets are on the master the Sentinel named, not decided per process.
    assert len(keys(redis_sentinel.master.port)) == 2


async def failed_over(group: SentinelGroup) -> bool:
    """Whether the Sentinel names the replica as master, and it says so itself."""
    async with aioredis.Redis(port=group.sentinel_ports[0], decode_responses=True) as sentinel:
        found = await sentinel.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
        )
    if found != ["127.0.0.1", str(group.replica.port)]:
        return False
    async with aioredis.Redis(port=group.replica.port, decode_responses=True) as replica:
        info: dict[str, Any] = await replica.info("replication")
    return bool(info["role"] == "master")


async def hammer(gw: Harness, tenant: str, until: anyio.Event, seen: list[tuple[int, float, float]]) -> None:
    while not until.is_set():
        started = time.monotonic()
        r = await gw.client.get("/", headers={"x-tenant": tenant})
        seen.append((r.status, started, time.monotonic() - started))


async def test_the_limiter_rides_out_a_failover(
    redis_sentinel: SentinelGroup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gatekeep.rate_limiting")
    group = redis_sentinel
    # A month's bucket refills by under one token during the test: what the old
    # master took must still be missing on the new one.
    config = sentinel_config(group, month=100_000)
    async with gateway_for(plugins=[{"name": "rate-limiting", "config": config}]) as gw:
        f = the_filter(gw)
        for _ in range(3):
            assert (await gw.client.get("/", headers={"x-tenant": "steady"})).status == 200
        with redis.Redis(host="127.0.0.1", port=group.master.port) as master:
            assert master.wait(1, 2000) == 1  # the replica holds the bucket too

        seen: list[tuple[int, float, float]] = []
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(hammer, gw, f"load{i}", done, seen)
            await anyio.sleep(0.3)
            before = f.stats.allowed
            assert before > 0 and f.stats.fallback == 0
            killed = time.monotonic()
            group.master.stop()
            with anyio.fail_after(20):
                while True:
                    if await failed_over(group):
                        break
                    await anyio.sleep(0.05)
            promoted = time.monotonic()
            # The next probe finds the new master; then Redis decides again.
            await anyio.sleep(rate_limiting.PROBE_INTERVAL + 0.5)
            done.set()
        assert {status for status, _, _ in seen} == {200}
        slowest = max(elapsed for _, _, elapsed in seen)
        assert slowest < TIMEOUT_MS / 1000 + 0.5, slowest
        assert f.stats.fallback_allowed > 0  # the gap was covered per process
        assert f.stats.outages == 1
        assert f.stats.allowed > before
        assert any(started > promoted for _, started, _ in seen)
        # After the failover a request is decided by the new master, on the replicated bucket.
        r = await gw.client.get("/", headers={"x-tenant": "steady"})
        assert r.status == 200 and r.header("x-ratelimit-remaining-month") == str(100_000 - 4)
        messages = [r.getMessage() for r in caplog.records]
        assert sum("Redis is unavailable" in m for m in messages) == 1, messages
        assert sum("Redis answers again" in m for m in messages) == 1, messages
        print(f"failover: promoted {promoted - killed:.1f} s after the kill; slowest request {slowest:.3f} s")
    assert keys(group.replica.port)
