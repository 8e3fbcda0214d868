"""One suite for every RateLimiter: the memory one and the Redis one decide alike.

The Redis limiter reads the Redis server's clock, so these tests use limits
whose refill during a test is far below one token, or wait for real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from gatekeep import Limit, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from gatekeep.ratelimit import bucket_key

HOUR = 3600.0

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis", "redis-unbatched"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    batch = request.param == "redis"
    # Unbatched, every concurrent call holds a connection of its own.
    client = aioredis.Redis.from_url(
        request.getfixturevalue("redis_url"), max_connections=None if batch else 256
    )
    # Generous: these tests are about decisions, not deadlines, on a shared machine.
    rl = RedisRateLimiter(client, batch=batch, timeout=5.0)
    try:
        yield rl
    finally:
        await rl.aclose()
        await client.aclose()


async def test_it_is_a_rate_limiter(limiter: RateLimiter) -> None:
    assert isinstance(limiter, RateLimiter)


async def test_a_bucket_drains_then_refuses(limiter: RateLimiter) -> None:
    limit = Limit(rate=3, period=HOUR)
    seen = [await limiter.acquire("k", [limit]) for _ in range(4)]
    assert [(d.allowed, d.remaining) for d in seen] == [
        (True, (2,)),
        (True, (1,)),
        (True, (0,)),
        (False, (0,)),
    ]
    assert seen[0].retry_after == 0
    assert seen[0].reset[0] == pytest.approx(HOUR / 3, abs=0.2)
    # One token comes back every 1200 s.
    assert seen[3].retry_after == pytest.approx(HOUR / 3, abs=0.2)  # the server clock runs on
    assert seen[3].reset[0] == pytest.approx(HOUR, abs=0.2)


async def test_keys_are_independent(limiter: RateLimiter) -> None:
    limit = Limit(rate=1, period=HOUR)
    assert (await limiter.acquire(bucket_key("a:b", "c"), [limit])).allowed
    assert (await limiter.acquire(bucket_key("a", "b:c"), [limit])).allowed
    assert not (await limiter.acquire(bucket_key("a:b", "c"), [limit])).allowed


async def test_a_request_blocked_by_one_limit_takes_from_none(limiter: RateLimiter) -> None:
    wide, narrow = Limit(rate=5, period=HOUR), Limit(rate=2, period=HOUR)
    decisions = [await limiter.acquire("k", [wide, narrow]) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, False, False, False]
    assert decisions[-1].remaining == (3, 0)
    # The wide bucket kept its three tokens through the three rejections.
    alone = await limiter.acquire("k", [wide], cost=3)
    assert alone.allowed and alone.remaining == (0,)


async def test_cost(limiter: RateLimiter) -> None:
    limit = Limit(rate=5, period=HOUR)
    first = await limiter.acquire("k", [limit], cost=3)
    assert first.allowed and first.remaining == (2,)
    second = await limiter.acquire("k", [limit], cost=3)
    assert not second.allowed and second.remaining == (2,)
    assert second.retry_after == pytest.approx(HOUR / 5, abs=0.01)
    peek = await limiter.acquire("k", [limit], cost=0)
    assert peek.allowed and peek.remaining == (2,)
    assert (await limiter.acquire("k", [limit], cost=2)).allowed


async def test_a_cost_above_capacity_is_refused_with_the_period(limiter: RateLimiter) -> None:
    limits = [Limit(rate=10, period=HOUR), Limit(rate=2, period=60.0)]
    decision = await limiter.acquire("k", limits, cost=3)
    assert not decision.allowed
    assert decision.retry_after == 60.0
    assert decision.remaining == (10, 2)


async def test_burst(limiter: RateLimiter) -> None:
    limit = Limit(rate=1, period=HOUR, burst=4)
    assert [(await limiter.acquire("k", [limit])).allowed for _ in range(5)] == [True] * 4 + [False]


async def test_the_same_limit_twice_is_one_bucket(limiter: RateLimiter) -> None:
    limit = Limit(rate=2, period=HOUR)
    decision = await limiter.acquire("k", [limit, Limit(rate=2, period=HOUR, name="again")])
    assert decision.remaining == (1, 1)
    assert (await limiter.acquire("k", [limit])).remaining == (0,)


async def test_tokens_come_back_at_retry_after(limiter: RateLimiter) -> None:
    limit = Limit(rate=20, period=1.0)
    for _ in range(20):
        assert (await limiter.acquire("k", [limit])).allowed
    refused = await limiter.acquire("k", [limit])
    assert not refused.allowed
    assert 0 < refused.retry_after <= 0.05
    await anyio.sleep(refused.retry_after + 0.005)
    assert (await limiter.acquire("k", [limit])).allowed


async def test_bad_arguments_are_refused(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="negative"):
        await limiter.acquire("k", [Limit(rate=1, period=1.0)], cost=-1)
    with pytest.raises(ValueError, match="positive"):
        await limiter.acquire("k", [Limit(rate=0, period=1.0)])


async def test_concurrent_requests_admit_exactly_the_limit(limiter: RateLimiter) -> None:
    limits = [Limit(rate=50, period=HOUR), Limit(rate=1000, period=60.0)]
    admitted = 0

    async def one() -> None:
        nonlocal admitted
        if (await limiter.acquire("hot", limits)).allowed:
            admitted += 1

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one)
    assert admitted == 50
