"""The token-bucket maths, sans I/O: exact cases and hypothesis invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep import Limit
from gatekeep.ratelimit._bucket import Bucket, ceil_ms, check_limit, level, take

# -- strategies ---------------------------------------------------------------

limits = st.builds(
    Limit,
    rate=st.integers(1, 1000),
    period=st.sampled_from([0.001, 0.1, 1.0, 1 / 3, 7.5, 60.0, 3600.0]),
    burst=st.none() | st.integers(1, 1000),
)
# A request: how long after the previous one it comes, and its cost.
requests = st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 12))


def run(limits_: list[Limit], steps: list[tuple[float, int]]) -> tuple[list[int], float]:
    """Play ``steps`` against fresh buckets; tokens admitted per limit, and the elapsed time."""
    buckets: list[Bucket | None] = [None] * len(limits_)
    admitted = [0] * len(limits_)
    now = 0.0
    for dt, cost in steps:
        now += dt
        decision, new = take(buckets, limits_, now, cost)
        if decision.allowed:
            admitted = [a + cost for a in admitted]
        if new is not None:
            buckets = list(new)
    return admitted, now


# -- invariants ---------------------------------------------------------------


@given(st.lists(limits, min_size=1, max_size=3), st.lists(requests, max_size=60))
def test_never_more_admitted_than_capacity_plus_refill(
    limits_: list[Limit], steps: list[tuple[float, int]]
) -> None:
    admitted, elapsed = run(limits_, steps)
    for tokens, limit in zip(admitted, limits_, strict=True):
        assert tokens <= limit.capacity + limit.rate * elapsed / limit.period + 1e-6


@given(limits, st.lists(requests, max_size=40), st.floats(0, 10), st.floats(0, 10))
def test_refill_is_monotonic_and_capped(
    limit: Limit, steps: list[tuple[float, int]], a: float, b: float
) -> None:
    buckets: list[Bucket | None] = [None]
    now = 0.0
    for dt, cost in steps:
        now += dt
        _, new = take(buckets, [limit], now, cost)
        if new is not None:
            buckets = list(new)
    early, late = sorted((a, b))
    assert level(buckets[0], [limit][0], now + early) <= level(buckets[0], limit, now + late)
    assert level(buckets[0], limit, now + late) <= limit.capacity


@given(st.lists(limits, min_size=1, max_size=3), st.lists(requests, max_size=40), st.integers(0, 2000))
def test_a_rejected_request_changes_nothing(
    limits_: list[Limit], steps: list[tuple[float, int]], cost: int
) -> None:
    buckets: list[Bucket | None] = [None] * len(limits_)
    now = 0.0
    for dt, c in steps:
        now += dt
        decision, new = take(buckets, limits_, now, c)
        if new is not None:
            buckets = list(new)
    decision, new = take(buckets, limits_, now, cost)
    if not decision.allowed:
        assert new is None
        assert decision.retry_after > 0


@given(st.lists(limits, min_size=1, max_size=3), st.integers(1, 50))
def test_retry_after_is_when_the_request_would_pass(limits_: list[Limit], cost: int) -> None:
    """Drain every bucket, then the request fails until ``retry_after`` and passes then."""
    buckets: list[Bucket | None] = [Bucket(0.0, 0.0) for _ in limits_]
    decision, _ = take(buckets, limits_, 0.0, cost)
    assert not decision.allowed
    if all(cost <= lim.capacity for lim in limits_):
        assert take(buckets, limits_, decision.retry_after, cost)[0].allowed
        early = decision.retry_after - 0.0011
        if early >= 0:
            assert not take(buckets, limits_, early, cost)[0].allowed
    else:
        assert decision.retry_after >= ceil_ms(max(lim.period for lim in limits_ if cost > lim.capacity))


# -- exact cases ---------------------------------------------------------------


def test_a_fresh_bucket_is_full_and_drains_one_token_per_request() -> None:
    limit = Limit(rate=3, period=1.0)
    buckets: list[Bucket | None] = [None]
    remaining = []
    for _ in range(4):
        decision, new = take(buckets, [limit], 10.0)
        remaining.append((decision.allowed, decision.remaining))
        buckets = list(new) if new else buckets
    assert remaining == [(True, (2,)), (True, (1,)), (True, (0,)), (False, (0,))]


def test_refill_is_continuous() -> None:
    limit = Limit(rate=10, period=1.0)
    assert level(Bucket(0.0, 5.0), limit, 5.25) == pytest.approx(2.5)
    assert level(Bucket(0.0, 5.0), limit, 50.0) == 10


def test_a_clock_going_backwards_refills_nothing_and_keeps_the_stamp() -> None:
    limit = Limit(rate=10, period=1.0)
    decision, new = take([Bucket(5.0, 100.0)], [limit], 90.0)
    assert decision.allowed
    assert new == (Bucket(4.0, 100.0),)


def test_all_or_none_over_several_limits() -> None:
    wide, narrow = Limit(rate=10, period=60.0), Limit(rate=1, period=1.0)
    decision, new = take([None, Bucket(0.0, 0.0)], [wide, narrow], 0.5)
    assert not decision.allowed
    assert new is None
    assert decision.remaining == (10, 0)
    assert decision.retry_after == 0.5
    assert decision.reset == (0.0, 0.5)


def test_cost_and_burst() -> None:
    limit = Limit(rate=1, period=2.0, burst=5)
    decision, new = take([None], [limit], 0.0, cost=4)
    assert decision.allowed and decision.remaining == (1,)
    assert decision.reset == (8.0,)
    assert new is not None
    decision, _ = take(new, [limit], 0.0, cost=3)
    assert not decision.allowed
    assert decision.retry_after == 4.0


def test_a_cost_above_capacity_can_never_pass() -> None:
    decision, new = take([None], [Limit(rate=5, period=60.0)], 0.0, cost=6)
    assert (decision.allowed, decision.retry_after, decision.remaining, new) == (False, 60.0, (5,), None)


def test_cost_zero_reports_without_taking() -> None:
    decision, new = take([Bucket(2.0, 0.0)], [Limit(rate=5, period=5.0)], 0.0, cost=0)
    assert decision.allowed and decision.remaining == (2,) and new is None


def test_times_round_up_to_the_millisecond() -> None:
    assert ceil_ms(0.0101) == 0.011
    assert ceil_ms(0.02) == 0.02
    assert ceil_ms(0.0) == 0.0
    decision, _ = take([Bucket(0.0, 0.0)], [Limit(rate=3, period=1.0)], 0.0)
    assert decision.retry_after == 0.334
    assert math.isclose(decision.reset[0], 1.0)


@pytest.mark.parametrize(
    "limit", [Limit(rate=0, period=1.0), Limit(rate=1, period=0.0), Limit(rate=1, period=1.0, burst=0)]
)
def test_limits_that_cannot_work_are_refused(limit: Limit) -> None:
    with pytest.raises(ValueError, match="positive"):
        check_limit(limit)
