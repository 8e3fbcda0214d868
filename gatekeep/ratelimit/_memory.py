"""The in-process rate limiter: the embedded default for a single process."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeAlias

from .._protocols import Decision, Limit
from ._bucket import EPSILON, Bucket, check_limit, grant

__all__ = ["MemoryRateLimiter"]

# How many stale buckets one call may drop from the old end: more than one, so
# that eviction keeps up with the creation of new buckets.
_SWEEP = 2
# Plans kept by the identity of the limits tuple callers pass (a filter's is built once).
_MAX_PLANS = 1024

# A limit as the buckets' dict names it: its fields, (rate, period, burst, name).  Equal
# exactly when the ``Limit``s are (attrs compares the same fields), but hashed in C: an
# attrs ``Limit`` hashes in Python on every lookup.
LimitName: TypeAlias = tuple[int, float, "int | None", str]
# What the maths reads of a limit: capacity as a float and as an int, rate, period.
_Params: TypeAlias = tuple[float, int, int, float]


class _Plan:
    """What one sequence of limits needs on every call, made once."""

    __slots__ = ("limits", "names", "params")

    def __init__(self, limits: Sequence[Limit]) -> None:
        for limit in limits:
            check_limit(limit)
        self.limits = limits  # (held: its id names this plan)
        self.names: tuple[LimitName, ...] = tuple([_name(limit) for limit in limits])
        self.params: tuple[_Params, ...] = tuple([_params(name) for name in self.names])


def _name(limit: Limit) -> LimitName:
    return (limit.rate, limit.period, limit.burst, limit.name)


def _params(name: LimitName) -> _Params:
    rate, period, burst, _ = name
    capacity = burst if burst is not None else rate
    return (float(capacity), capacity, rate, period)


def _admit(
    states: Sequence[Bucket | None], params: Sequence[_Params], now: float, cost: int
) -> tuple[Decision, list[Bucket]] | None:
    """``grant(states, limits, now, cost, cost)`` when every bucket admits ``cost >= 1``: the
    same numbers, computed in one pass with the same operations in the same order; ``None``
    when a bucket refuses (``grant`` then decides, and answers the refusal).

    ``tests/test_ratelimit_memory.py`` checks it against ``grant`` on random states.
    """
    remaining: list[int] = []
    reset: list[float] = []
    new: list[Bucket] = []
    floor = math.floor
    ceil = math.ceil
    short = cost - EPSILON
    for state, (cap_f, cap, rate, period) in zip(states, params, strict=True):
        # ``level``:
        if state is None:
            tokens = cap_f
            stamp = now
        else:
            tokens, stamp = state
            if now > stamp:
                filled = tokens + (now - stamp) * rate / period
                tokens = filled if filled < cap_f else cap_f  # min(cap_f, filled)
                stamp = now
        if tokens < short:
            return None
        after = tokens - cost
        remaining.append(floor(after + EPSILON))
        # ``ceil_ms(seconds_until(after, capacity, limit))``:
        until = 0.0 if after >= cap - EPSILON else (cap - after) * period / rate
        reset.append(ceil(until * 1000.0 - 1e-6) / 1000.0)
        new.append(Bucket(after, stamp))
    return Decision(allowed=True, remaining=tuple(remaining), reset=tuple(reset)), new


class MemoryRateLimiter:
    """Token buckets in a dict, for one process.

    Decisions are exact: the read, decision and write of one request happen
    under a ``threading.Lock`` with no ``await`` in between, so concurrent
    tasks of one event loop and threads (several loops, a WSGI server's
    workers) all see one consistent state.  The lock is held for a few
    microseconds and never across an await.

    Memory is bounded.  Buckets are kept in least-recently-used order; each
    call drops a few of the oldest ones that are full again (a full bucket
    and a missing one mean the same, so this loses nothing), and when more
    than ``max_keys`` buckets remain the least recently used are dropped even
    if not full — that key then starts over with a full bucket.

    Args:
        clock: seconds of a monotonic clock; injectable for tests.
        max_keys: the most buckets (one per key and limit) kept at once.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, LimitName], Bucket] = OrderedDict()
        self._lock = threading.Lock()
        self._plans: dict[int, _Plan] = {}

    def __len__(self) -> int:
        """The number of buckets held."""
        return len(self._buckets)

    async def acquire(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Take ``cost`` tokens from the bucket of every limit for ``key``, all or none.

        Raises:
            ValueError: a negative cost or a limit with a non-positive field.
        """
        return self.acquire_nowait(key, limits, cost)

    def acquire_nowait(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """``acquire`` for synchronous callers; it never blocks on I/O."""
        if cost < 0:
            raise ValueError(f"cost must not be negative, got {cost}")
        return self._grant(key, limits, cost, cost)[1]

    async def lease(self, key: str, limits: Sequence[Limit], need: int, want: int) -> tuple[int, Decision]:
        """Take between ``need`` and ``want`` tokens from every bucket, all or none.

        Returns:
            The tokens taken from each bucket (0 when refused) and the decision.

        Raises:
            ValueError: ``need`` is below 1 or ``want`` below ``need``.
        """
        if need < 1 or want < need:
            raise ValueError(f"a lease needs 1 <= need <= want, got need={need}, want={want}")
        return self._grant(key, limits, need, want)

    def _plan(self, limits: Sequence[Limit]) -> _Plan:
        if type(limits) is not tuple:
            return _Plan(limits)  # a list may change between calls: planned afresh each time
        plan = self._plans.get(id(limits))
        if plan is None or plan.limits is not limits:
            plan = _Plan(limits)
            if len(self._plans) >= _MAX_PLANS:  # callers passing a new sequence each time
                self._plans.clear()
            self._plans[id(limits)] = plan
        return plan

    def _grant(self, key: str, limits: Sequence[Limit], need: int, want: int) -> tuple[int, Decision]:
        buckets = self._buckets
        plan = self._plan(limits)
        names = [(key, name) for name in plan.names]
        with self._lock:
            now = self._clock()
            states: list[Bucket | None] = []
            for name in names:
                state = buckets.get(name)
                if state is not None:
                    buckets.move_to_end(name)
                states.append(state)
            admitted = _admit(states, plan.params, now, need) if need == want and need else None
            new: Sequence[Bucket] | None
            if admitted is not None:  # the common case, in one pass
                decision, new = admitted
                granted = need
            else:
                granted, decision, new = grant(states, limits, now, need, want)
            if new is not None:
                for name, state in zip(names, new, strict=True):
                    buckets[name] = state
                self._sweep(now)
        return granted, decision

    def _sweep(self, now: float) -> None:
        buckets = self._buckets
        for _ in range(_SWEEP):
            if not buckets:
                return
            name, state = next(iter(buckets.items()))
            cap_f, _, rate, period = _params(name[1])
            tokens, stamp = state
            # ``level(state, limit, now) < capacity``: not full yet, so kept.
            if (tokens if now <= stamp else tokens + (now - stamp) * rate / period) < cap_f:
                break
            del buckets[name]
        while len(buckets) > self._max_keys:
            buckets.popitem(last=False)
