"""The in-process rate limiter: the embedded default for a single process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from .._protocols import Decision, Limit
from ._bucket import Bucket, check_limit, grant, level

__all__ = ["MemoryRateLimiter"]

# How many stale buckets one call may drop from the old end: more than one, so
# that eviction keeps up with the creation of new buckets.
_SWEEP = 2


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
        self._buckets: OrderedDict[tuple[str, Limit], Bucket] = OrderedDict()
        self._lock = threading.Lock()

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

    def _grant(self, key: str, limits: Sequence[Limit], need: int, want: int) -> tuple[int, Decision]:
        buckets = self._buckets
        names = [(key, limit) for limit in limits]
        with self._lock:
            now = self._clock()
            states: list[Bucket | None] = []
            for name in names:
                state = buckets.get(name)
                if state is None:
                    check_limit(name[1])
                else:
                    buckets.move_to_end(name)
                states.append(state)
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
            limit = name[1]
            if level(state, limit, now) < limit.capacity:
                break
            del buckets[name]
        while len(buckets) > self._max_keys:
            buckets.popitem(last=False)
