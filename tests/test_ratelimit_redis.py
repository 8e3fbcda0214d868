"""RedisRateLimiter against a real redis-server: script cache, expiry, slots, outages."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from gatekeep import Limit, RateLimiterUnavailable, RedisRateLimiter
from tests._redis_fixture import RedisProcess

pytestmark = pytest.mark.anyio

HOUR = 3600.0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
async def limiters() -> AsyncIterator[list[RedisRateLimiter]]:
    """Limiters to close at the end (a limiter's lean connection is its own)."""
    made: list[RedisRateLimiter] = []
    try:
        yield made
    finally:
        for limiter in made:
            await limiter.aclose()


def keep(limiters: list[RedisRateLimiter], limiter: RedisRateLimiter) -> RedisRateLimiter:
    limiters.append(limiter)
    return limiter


async def many(limiter: RedisRateLimiter, n: int, key: str, limits: list[Limit]) -> list[bool | Exception]:
    """``n`` concurrent acquires; each one's verdict, or what it raised."""
    out: list[bool | Exception] = []

    async def one() -> None:
        try:
            out.append((await limiter.acquire(key, limits)).allowed)
        except RateLimiterUnavailable as exc:
            out.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return out


async def test_the_script_comes_back_after_script_flush(
    client: aioredis.Redis, limiters: list[RedisRateLimiter]
) -> None:
    limiter = keep(limiters, RedisRateLimiter(client))
    limit = Limit(rate=100, period=HOUR)
    assert (await limiter.acquire("k", [limit])).remaining == (99,)
    await client.script_flush()
    assert (await limiter.acquire("k", [limit])).remaining == (98,)
    # A whole batch meeting NOSCRIPT at once, in one pipeline.
    await client.script_flush()
    assert await many(limiter, 50, "k", [limit]) == [True] * 50
    assert (await limiter.acquire("k", [limit], cost=0)).remaining == (48,)
    await limiter.aclose()


async def test_a_list_of_limits_changed_in_place_is_read_afresh(
    client: aioredis.Redis, limiters: list[RedisRateLimiter]
) -> None:
    limiter = keep(limiters, RedisRateLimiter(client, prefix="t:"))
    limits = [Limit(rate=1, period=HOUR)]
    assert (await limiter.acquire("k", limits)).allowed
    assert not (await limiter.acquire("k", limits)).allowed
    limits[0] = Limit(rate=5, period=HOUR)  # the same list object, another limit
    assert (await limiter.acquire("k", limits)).remaining == (4,)


async def test_keys_expire_when_their_bucket_is_full_again(
    client: aioredis.Redis, limiters: list[RedisRateLimiter]
) -> None:
    limiter = keep(limiters, RedisRateLimiter(client, prefix="t:"))
    slow, fast = Limit(rate=10, period=HOUR), Limit(rate=10, period=0.2)
    await limiter.acquire("k", [slow, fast], cost=2)
    keys = sorted(await client.keys("t:*"))
    assert keys == [b"t:{k}:10/0.2/10", b"t:{k}:10/3600.0/10"]
    # Two tokens of ten come back in a fifth of the period.
    assert 0 < await client.pttl(keys[0]) <= 40
    assert HOUR * 200 - 1000 < await client.pttl(keys[1]) <= HOUR * 200
    await anyio.sleep(0.06)
    assert await client.exists(keys[0]) == 0
    assert await client.exists(keys[1]) == 1


async def test_a_rejected_request_writes_nothing(
    client: aioredis.Redis, limiters: list[RedisRateLimiter]
) -> None:
    limiter = keep(limiters, RedisRateLimiter(client, prefix="t:"))
    limits = [Limit(rate=5, period=HOUR), Limit(rate=1, period=HOUR)]
    await limiter.acquire("k", limits)
    before = {k: await client.get(k) for k in await client.keys("t:*")}
    assert not (await limiter.acquire("k", limits)).allowed
    assert {k: await client.get(k) for k in await client.keys("t:*")} == before


@pytest.mark.parametrize("key", ["user:42", "", "a}b", "}", "{x}", "\udc80"])
async def test_the_keys_of_one_request_share_a_cluster_slot(
    client: aioredis.Redis, key: str, limiters: list[RedisRateLimiter]
) -> None:
    limiter = keep(limiters, RedisRateLimiter(client))
    limits = [Limit(rate=5, period=1.0), Limit(rate=100, period=60.0), Limit(rate=1000, period=HOUR)]
    assert (await limiter.acquire(key, limits)).allowed
    stored = await client.keys("gk:rl:*")
    assert len(stored) == 3
    assert len({key_slot(k) for k in stored}) == 1


async def test_prefixes_with_braces_are_refused(
    client: aioredis.Redis, limiters: list[RedisRateLimiter]
) -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisRateLimiter(client, prefix="{gk}:")


async def test_separate_clients_share_the_buckets_exactly(
    redis_url: str, limiters: list[RedisRateLimiter]
) -> None:
    """Four clients with pools of their own stand in for four gateway processes."""
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    limiters += [RedisRateLimiter(c) for c in clients]
    results: list[bool | Exception] = []

    async def hammer(limiter: RedisRateLimiter) -> None:
        results.extend(await many(limiter, 100, "shared", [Limit(rate=50, period=HOUR)]))

    try:
        async with anyio.create_task_group() as tg:
            for limiter in limiters:
                tg.start_soon(hammer, limiter)
    finally:
        for limiter in limiters:
            await limiter.aclose()
        for c in clients:
            await c.aclose()
    assert results.count(True) == 50
    assert results.count(False) == 350


async def test_a_wrong_type_key_is_an_unavailable_store(
    client: aioredis.Redis, limiters: list[RedisRateLimiter]
) -> None:
    await client.lpush("gk:rl:{k}:5/3600.0/5", "x")
    limiter = keep(limiters, RedisRateLimiter(client))
    with pytest.raises(RateLimiterUnavailable, match="WRONGTYPE") as info:
        await limiter.acquire("k", [Limit(rate=5, period=HOUR)])
    assert info.value.status == 503


async def test_a_dead_redis_fails_fast_and_comes_back(redis_process: RedisProcess) -> None:
    client = aioredis.Redis.from_url(redis_process.url)
    limiter = RedisRateLimiter(client, timeout=0.5)
    limit = Limit(rate=1000, period=HOUR)
    try:
        assert (await limiter.acquire("k", [limit])).allowed
        redis_process.stop()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(RateLimiterUnavailable):
                await limiter.acquire("k", [limit])
            assert time.monotonic() - started < 0.6
        outcomes = await many(limiter, 50, "k", [limit])
        assert all(isinstance(o, RateLimiterUnavailable) for o in outcomes)
        redis_process.start()
        # The same client reconnects by itself (its pooled connections are dead).
        decision = await limiter.acquire("k", [limit])
        assert decision.allowed and decision.remaining == (999,)  # a fresh server: data gone
        assert await many(limiter, 50, "k", [limit]) == [True] * 50
    finally:
        await limiter.aclose()
        await client.aclose()


async def test_a_frozen_redis_costs_at_most_the_timeout(redis_process: RedisProcess) -> None:
    client = aioredis.Redis.from_url(redis_process.url)
    limiter = RedisRateLimiter(client, timeout=0.2)
    limit = Limit(rate=1000, period=HOUR)
    try:
        assert (await limiter.acquire("k", [limit])).allowed
        redis_process.pause()
        started = time.monotonic()
        with pytest.raises(RateLimiterUnavailable, match="within 0.2 s"):
            await limiter.acquire("k", [limit])
        outcomes = await many(limiter, 50, "k", [limit])
        elapsed = time.monotonic() - started
        assert all(isinstance(o, RateLimiterUnavailable) for o in outcomes)
        assert elapsed < 0.2 * 2 + 0.2  # one lone call, then one wave: each waits one timeout
        redis_process.resume()
        assert (await limiter.acquire("k", [limit])).allowed
        assert await many(limiter, 50, "k", [limit]) == [True] * 50
    finally:
        redis_process.resume()
        await limiter.aclose()
        await client.aclose()
