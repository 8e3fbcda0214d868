"""RedisRateLimiter and the rate-limiting filter on a real three-node Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from gatekeep import Limit, RedisRateLimiter
from gatekeep.ratelimit import bucket_key
from gatekeep.testing import gateway_for

pytestmark = pytest.mark.anyio

HOUR = 3600.0
LIMITS = (Limit(rate=5, period=1.0), Limit(rate=50, period=60.0), Limit(rate=500, period=HOUR))


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_keys_spread_over_the_nodes_and_each_request_stays_in_one_slot(cluster: RedisCluster) -> None:
    limiter = RedisRateLimiter(cluster)
    users = [bucket_key("consumer", f"user{i}") for i in range(60)] + ["", "a}b", "{x}"]
    for user in users:
        decision = await limiter.acquire(user, LIMITS)
        assert decision.allowed and decision.remaining == (4, 49, 499)
    stored = [k for node in cluster.get_primaries() for k in await cluster.keys("gk:rl:*", target_nodes=node)]
    assert len(stored) == 3 * len(users)
    holders = {
        node.name for node in cluster.get_primaries() if await cluster.keys("gk:rl:*", target_nodes=node)
    }
    assert len(holders) == 3  # the users' buckets live on every node
    by_tag: dict[bytes, set[int]] = {}
    for k in stored:
        by_tag.setdefault(k.split(b"}")[0], set()).add(key_slot(k))
    assert all(len(slots) == 1 for slots in by_tag.values())
    await limiter.aclose()


async def test_concurrent_requests_admit_exactly_the_limit(cluster: RedisCluster) -> None:
    limiter = RedisRateLimiter(cluster, timeout=5.0)
    limits = (Limit(rate=50, period=HOUR), Limit(rate=1000, period=60.0))
    admitted = 0

    async def one(key: str) -> None:
        nonlocal admitted
        if (await limiter.acquire(key, limits)).allowed:
            admitted += 1

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, "hot")
            tg.start_soon(one, f"cold{i}")  # other slots, in the same batches
    assert admitted == 50 + 200
    await limiter.aclose()


async def test_the_script_comes_back_on_every_node(cluster: RedisCluster) -> None:
    limiter = RedisRateLimiter(cluster)
    limit = (Limit(rate=100, period=HOUR),)
    assert (await limiter.acquire("k", limit)).remaining == (99,)
    await cluster.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.ALL_NODES)
    assert (await limiter.acquire("k", limit)).remaining == (98,)
    # A whole batch meeting NOSCRIPT at once, in one cluster pipeline.
    await cluster.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.ALL_NODES)
    verdicts: list[bool] = []

    async def one(key: str) -> None:
        verdicts.append((await limiter.acquire(key, limit)).allowed)

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, f"k{i % 8}")
    assert verdicts == [True] * 40
    assert (await limiter.acquire("k", limit, cost=0)).remaining == (98,)
    await limiter.aclose()


async def test_the_filter_through_redis_cluster(redis_cluster_url: str) -> None:
    config = {
        "hour": 2,
        "limit_by": "header",
        "header_name": "x-tenant",
        "policy": "redis",
        "redis": {"url": redis_cluster_url, "mode": "cluster", "timeout": 2000},
    }
    async with gateway_for(plugins=[{"name": "rate-limiting", "config": config}]) as gw:
        for tenant in ("a", "b", "c:d", "e"):
            seen = [await gw.client.get("/", headers={"x-tenant": tenant}) for _ in range(3)]
            assert [r.status for r in seen] == [200, 200, 429], tenant
            assert [r.header("x-ratelimit-remaining-hour") for r in seen] == ["1", "0", "0"]
