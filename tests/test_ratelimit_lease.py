"""Leases (``sync_rate``): the overshoot bound, round trips, expiry -- sans I/O, with a controllable clock."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeep import Decision, Limit, MemoryRateLimiter
from gatekeep.ratelimit._bucket import Bucket, grant
from gatekeep.ratelimit._lease import LeasedRateLimiter

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends (the memory store does no I/O)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the coroutine suspended")


# -- grant: the step a lease is taken with ------------------------------------


def test_grant_takes_what_every_bucket_holds_up_to_want() -> None:
    limits = [Limit(rate=10, period=60.0), Limit(rate=4, period=3600.0)]
    granted, decision, new = grant([None, None], limits, 0.0, need=1, want=10)
    assert (granted, decision.allowed, decision.remaining) == (4, True, (6, 0))
    assert new == (Bucket(6.0, 0.0), Bucket(0.0, 0.0))
    granted, decision, new = grant(list(new), limits, 0.0, need=1, want=10)
    assert (granted, decision.allowed, new) == (0, False, None)
    assert decision.retry_after == 900.0


@given(st.integers(1, 50), st.integers(1, 20), st.integers(1, 30), st.floats(0, 100, allow_nan=False))
def test_grant_is_between_need_and_want_or_nothing(rate: int, need: int, extra: int, elapsed: float) -> None:
    limit = Limit(rate=rate, period=10.0)
    granted, decision, _ = grant([Bucket(rate / 2, 0.0)], [limit], elapsed, need, need + extra)
    if decision.allowed:
        assert need <= granted <= need + extra
        assert decision.remaining[0] >= 0
    else:
        assert granted == 0


# -- the overshoot bound ------------------------------------------------------

steps = st.lists(
    st.tuples(st.integers(0, 3), st.floats(0, 3, allow_nan=False), st.integers(1, 3)), max_size=80
)


@settings(max_examples=300, deadline=None)
@given(
    nodes=st.integers(1, 4),
    size=st.integers(1, 10),
    rate=st.integers(1, 20),
    period=st.sampled_from([1.0, 5.0, 60.0]),
    burst=st.none() | st.integers(1, 30),
    max_age=st.floats(0.5, 20),
    plan=steps,
)
def test_leases_overshoot_at_most_nodes_times_size_minus_one(
    nodes: int,
    size: int,
    rate: int,
    period: float,
    burst: int | None,
    max_age: float,
    plan: list[tuple[int, float, int]],
) -> None:
    """Over any interval: admitted <= capacity + refill + nodes * (size - 1); from a fresh
    bucket (no leases held yet) not one token more than the exact limiter's bound."""
    clock = Clock()
    store = MemoryRateLimiter(clock=clock)
    limit = Limit(rate=rate, period=period, burst=burst)
    fleet = [LeasedRateLimiter(store, size=size, max_age=max_age, clock=clock) for _ in range(nodes)]
    admitted: list[tuple[float, int]] = []
    for node, dt, cost in plan:
        clock.now += dt
        if run(fleet[node % nodes].acquire("k", (limit,), cost)).allowed:
            admitted.append((clock.now, cost))
        assert all(n.held() <= size - 1 for n in fleet)
    slack = nodes * (size - 1)
    for i, (start, _) in enumerate(admitted):
        total = 0
        for end, cost in admitted[i:]:
            total += cost
            assert total <= limit.capacity + rate * (end - start) / period + slack + 1e-6
    total = 0
    for end, cost in admitted:
        total += cost
        assert total <= limit.capacity + rate * end / period + 1e-6


def test_a_lease_of_one_is_the_exact_limiter() -> None:
    clock = Clock()
    store = MemoryRateLimiter(clock=clock)
    node = LeasedRateLimiter(store, size=1, max_age=60, clock=clock)
    limit = (Limit(rate=3, period=60.0),)
    assert [run(node.acquire("k", limit)).allowed for _ in range(4)] == [True, True, True, False]
    assert node.round_trips == 4


# -- round trips --------------------------------------------------------------


def test_one_round_trip_per_lease() -> None:
    clock = Clock()
    node = LeasedRateLimiter(MemoryRateLimiter(clock=clock), size=10, max_age=60, clock=clock)
    limit = (Limit(rate=1000, period=3600.0),)
    decisions = [run(node.acquire("k", limit)) for _ in range(100)]
    assert all(d.allowed for d in decisions)
    assert node.round_trips == 10
    # Remaining: the shared bucket's plus what this node still holds.
    assert [d.remaining for d in decisions[:3]] == [(999,), (998,), (997,)]
    assert decisions[-1].remaining == (900,)


def test_a_refusal_is_remembered_until_retry_after() -> None:
    clock = Clock()
    node = LeasedRateLimiter(MemoryRateLimiter(clock=clock), size=5, max_age=600, clock=clock)
    limit = (Limit(rate=2, period=60.0),)
    assert [run(node.acquire("k", limit)).allowed for _ in range(5)] == [True, True, False, False, False]
    assert node.round_trips == 2  # the refusal was asked once
    refused = run(node.acquire("k", limit))
    assert refused.retry_after == 30.0
    clock.now += 10
    assert run(node.acquire("k", limit)).retry_after == 20.0
    clock.now += 20
    assert run(node.acquire("k", limit)).allowed
    assert node.round_trips == 3


def test_an_old_lease_is_dropped() -> None:
    clock = Clock()
    store = MemoryRateLimiter(clock=clock)
    node = LeasedRateLimiter(store, size=10, max_age=5, clock=clock)
    limit = (Limit(rate=100, period=3600.0),)
    assert run(node.acquire("k", limit)).remaining == (99,)
    assert node.held() == 9
    clock.now += 5
    assert node.held() == 0
    # The 9 tokens are forgotten, not given back: the shared bucket paid for them.
    assert run(node.acquire("k", limit)).remaining == (89,)
    assert node.round_trips == 2


def test_a_cost_larger_than_the_lease() -> None:
    clock = Clock()
    node = LeasedRateLimiter(MemoryRateLimiter(clock=clock), size=3, max_age=60, clock=clock)
    limit = (Limit(rate=100, period=3600.0),)
    assert run(node.acquire("k", limit, cost=2)).allowed
    assert node.held() == 1
    assert run(node.acquire("k", limit, cost=7)).remaining == (91,)
    assert node.held() == 0


class SlowStore:
    """A store that takes a while to answer, counting its calls."""

    def __init__(self) -> None:
        self.inner = MemoryRateLimiter()
        self.calls = 0

    async def lease(self, key: str, limits: Sequence[Limit], need: int, want: int) -> tuple[int, Decision]:
        self.calls += 1
        await anyio.sleep(0.02)
        return await self.inner.lease(key, limits, need, want)


@pytest.mark.anyio
async def test_concurrent_requests_wait_for_the_refill_in_flight() -> None:
    store = SlowStore()
    node = LeasedRateLimiter(store, size=10, max_age=60)
    limit = (Limit(rate=1000, period=3600.0),)
    verdicts: list[bool] = []

    async def one() -> None:
        verdicts.append((await node.acquire("k", limit)).allowed)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert verdicts == [True] * 20
    assert store.calls == 2


def test_a_lease_needs_a_positive_cost() -> None:
    node = LeasedRateLimiter(MemoryRateLimiter(), size=3, max_age=60)
    with pytest.raises(ValueError, match="at least 1"):
        run(node.acquire("k", (Limit(rate=1, period=1.0),), cost=0))
