"""MemoryRateLimiter: a controllable clock, bounded memory, threads."""

from __future__ import annotations

import threading

import pytest

from gatekeep import Limit, MemoryRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_refill_follows_the_injected_clock() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    limit = Limit(rate=10, period=1.0)
    assert (await limiter.acquire("k", [limit], cost=10)).remaining == (0,)
    clock.now += 0.25
    decision = await limiter.acquire("k", [limit], cost=0)
    assert decision.remaining == (2,)
    assert decision.reset == (0.75,)
    assert (await limiter.acquire("k", [limit], cost=2)).allowed
    refused = await limiter.acquire("k", [limit], cost=2)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.15)


def test_full_buckets_are_dropped() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    limit = Limit(rate=1, period=1.0)
    for i in range(100):
        limiter.acquire_nowait(f"k{i}", [limit])
    assert len(limiter) == 100
    clock.now += 1.0  # every bucket is full again
    for i in range(60):
        limiter.acquire_nowait(f"new{i}", [limit])
    # Each call drops up to two full buckets: the old ones go as new ones come.
    assert len(limiter) == 60


def test_memory_is_bounded_least_recently_used_first() -> None:
    limiter = MemoryRateLimiter(clock=Clock(), max_keys=10)
    limit = Limit(rate=1, period=3600.0)
    for i in range(10):
        limiter.acquire_nowait(f"k{i}", [limit])
    limiter.acquire_nowait("k0", [limit])  # refused, but recently used
    limiter.acquire_nowait("k10", [limit])
    assert len(limiter) == 10
    assert not limiter.acquire_nowait("k0", [limit]).allowed  # kept
    assert limiter.acquire_nowait("k1", [limit]).allowed  # forgotten: starts full


def test_threads_share_one_exact_state() -> None:
    limiter = MemoryRateLimiter()
    limit = Limit(rate=50, period=3600.0)
    admitted = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        admitted.extend(d for d in (limiter.acquire_nowait("hot", [limit]) for _ in range(100)) if d.allowed)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 50


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryRateLimiter(max_keys=0)
