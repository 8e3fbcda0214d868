"""MemoryRateLimiter: a controllable clock, bounded memory, threads."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeep import Limit, MemoryRateLimiter
from gatekeep.ratelimit._bucket import EPSILON, Bucket, grant
from gatekeep.ratelimit._memory import _admit, _Plan


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


# -- the one-pass admission against the reference maths ---------------------------------

_limits = st.builds(
    Limit,
    rate=st.integers(1, 10_000),
    period=st.sampled_from([0.001, 0.25, 1.0, 1, 60.0, 3600.0, 86_400.0]),
    burst=st.none() | st.integers(1, 20_000),
)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[list[Bucket | None], list[Limit], float, int]:
    limits = draw(st.lists(_limits, min_size=1, max_size=4))
    now = draw(st.floats(0.0, 1e7, allow_nan=False))
    states: list[Bucket | None] = []
    for limit in limits:
        if draw(st.booleans()):
            states.append(None)
            continue
        # Levels around the cost (the edge that matters) and anywhere in the bucket; stamps
        # before, at and after ``now`` (a clock that went back).
        tokens = draw(
            st.floats(-EPSILON, float(limit.capacity), allow_nan=False)
            | st.sampled_from([0.0, 1.0, 1.0 - EPSILON, 1.0 - EPSILON / 2, 2.0 - EPSILON, float(limit.rate)])
        )
        ago = draw(
            st.sampled_from([0.0, 1e-6, -0.5])  # at now, just before, after (a clock that went back)
            | st.floats(0.0, 2.0 * limit.period * limit.capacity / limit.rate, allow_nan=False)
        )
        stamp = now - ago
        states.append(Bucket(tokens, stamp))
    cost = draw(st.integers(1, 5))
    return states, limits, now, cost


@settings(max_examples=2000, deadline=None)
@given(_cases())
def test_the_one_pass_admission_is_the_reference_maths_exactly(
    case: tuple[list[Bucket | None], list[Limit], float, int],
) -> None:
    states, limits, now, cost = case
    granted, decision, new = grant(states, limits, now, cost, cost)
    fast = _admit(states, _Plan(limits).params, now, cost)
    if not decision.allowed:
        assert fast is None  # a refusal is left to ``grant``
        return
    assert fast is not None and granted == cost and new is not None
    fast_decision, fast_new = fast
    assert fast_decision == decision  # the same floats, to the last bit
    assert tuple(fast_new) == new


def test_equal_limits_share_their_buckets_whatever_object_or_sequence_holds_them() -> None:
    limiter = MemoryRateLimiter(clock=Clock())
    assert limiter.acquire_nowait("k", [Limit(rate=2, period=60.0)]).remaining == (1,)
    # A new, equal Limit in a new list (a plan built afresh): the same bucket.
    assert limiter.acquire_nowait("k", (Limit(rate=2, period=60),)).remaining == (0,)
    assert not limiter.acquire_nowait("k", [Limit(rate=2, period=60.0)]).allowed
    # A different limit is a different bucket.
    assert limiter.acquire_nowait("k", [Limit(rate=2, period=60.0, burst=3)]).remaining == (2,)
    assert len(limiter) == 2


def test_an_invalid_limit_is_refused_on_every_call() -> None:
    limiter = MemoryRateLimiter(clock=Clock())
    bad = [Limit(rate=0, period=1.0)]
    for _ in range(2):
        with pytest.raises(ValueError, match="must be positive"):
            limiter.acquire_nowait("k", bad)


def test_a_list_of_limits_changed_in_place_is_read_afresh() -> None:
    limiter = MemoryRateLimiter(clock=Clock())
    limits = [Limit(rate=1, period=60.0)]
    assert limiter.acquire_nowait("k", limits).allowed
    assert not limiter.acquire_nowait("k", limits).allowed
    limits[0] = Limit(rate=5, period=60.0)  # the same list object, another limit
    assert limiter.acquire_nowait("k", limits).remaining == (4,)
