"""Local leases: spend tokens taken from a shared limiter in small batches.

Theory of operation
-------------------

Kong calls it ``sync_rate``, APISIX ``sync_interval``: instead of asking the
shared store (Redis) for every request, a node takes a *lease* of up to
``size`` tokens from every bucket of a key in one atomic round trip
(``store.lease(key, limits, need, want)``, the same all-or-none step as a
request, see ``_bucket.grant``) and spends them locally, one request at a
time, without I/O.  It asks again when the lease cannot pay a request, and a
lease older than ``max_age`` seconds is dropped (its tokens are forgotten,
never given back).

Accuracy.  A lease is taken from the shared buckets before its tokens are
spent, so a node never admits a token that the shared buckets did not give:
over the whole life of a fresh bucket the cluster admits no more than the
exact limiter would (an hour limit of 100 admits at most 100 in the first
hour, with any number of nodes).  What leases change is *when* tokens are
spent: a token taken at time t may be spent until t + ``max_age``.  So over an
arbitrary interval [a, b] the admitted tokens are at most what a node held at
``a`` plus what the shared buckets gave during [a, b]:

    admitted(a, b) <= capacity + rate * (b - a) / period + nodes * (size - 1)

Each node holds at most ``size - 1`` unspent tokens at any instant: a refill
asks for ``size - held`` tokens (at least what the request lacks) and spends
the request's cost in the same step, with no await in between.  The price is
the other way: tokens leased by one node cannot serve another, so the cluster
may refuse while some node still holds up to ``size - 1`` tokens, and tokens of
a lease that expires are lost (under-admission, never over-admission).

Round trips.  With requests of cost 1, a node makes about one round trip per
``size - 1`` admissions (the first asks for ``size`` and keeps ``size - 1``),
plus one per ``max_age`` per active key.  Concurrent requests of one key wait
for the refill already in flight instead of each asking.  A refused lease is
remembered until its ``retry_after``: requests of that key are refused
locally until then, so a client hammering a drained bucket costs no round
trips either.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from .._protocols import Decision, Limit

__all__ = ["LeasedRateLimiter", "Leasing"]


class Leasing(Protocol):
    async def lease(self, key: str, limits: Sequence[Limit], need: int, want: int) -> tuple[int, Decision]:
        """Take between ``need`` and ``want`` tokens from every bucket, all or none."""


class _Lease:
    __slots__ = ("error", "expires", "refill", "refused", "refused_until", "remaining", "reset", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0
        # The shared buckets' report when the lease was taken.
        self.remaining: tuple[int, ...] = ()
        self.reset: tuple[float, ...] = ()
        self.refill: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.refused: Decision | None = None
        self.refused_until = 0.0


class LeasedRateLimiter:
    """A ``RateLimiter`` that spends leases of ``size`` tokens taken from ``store``.

    Args:
        store: a limiter with ``lease`` (``RedisRateLimiter``, or
            ``MemoryRateLimiter`` in tests).
        size: the most tokens taken per round trip (``>= 1``; 1 means no lease).
        max_age: seconds a lease may be spent before its remainder is dropped.
        clock: a monotonic clock, injectable for tests.
        max_keys: the most leases kept; the least recently used go first.

    ``Decision.remaining`` of a locally paid request is the shared buckets'
    remaining when the lease was taken plus what this node still holds;
    ``reset`` is as reported then.  Errors of the store propagate.
    """

    def __init__(
        self,
        store: Leasing,
        *,
        size: int,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        if not max_age > 0:
            raise ValueError(f"max_age must be positive, got {max_age}")
        self._store = store
        self._size = size
        self._max_age = max_age
        self._clock = clock
        self._max_keys = max_keys
        self._leases: OrderedDict[tuple[str, tuple[Limit, ...]], _Lease] = OrderedDict()
        self.round_trips = 0

    def held(self) -> int:
        """Tokens this node holds unspent, over all keys (for tests and metrics)."""
        now = self._clock()
        return sum(lease.tokens for lease in self._leases.values() if now < lease.expires)

    async def acquire(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Take ``cost`` tokens for ``key`` from this node's lease, refilling it when short.

        Raises:
            ValueError: ``cost`` is below 1 (a lease cannot report without taking).
            RateLimiterUnavailable: from the store, when a refill fails.
        """
        if cost < 1:
            raise ValueError(f"cost must be at least 1 with leases, got {cost}")
        name = (key, limits if type(limits) is tuple else tuple(limits))
        leases = self._leases
        while True:
            now = self._clock()
            lease = leases.get(name)
            if lease is None:
                lease = leases[name] = _Lease()
                if len(leases) > self._max_keys:
                    leases.popitem(last=False)
            else:
                leases.move_to_end(name)
            if now >= lease.expires:
                lease.tokens = 0
            if lease.tokens >= cost:
                lease.tokens -= cost
                return self._paid(lease)
            if lease.refill is not None:
                # Another request of this key is refilling: wait for it, then look again.
                event = lease.refill
                await event.wait()
                if lease.error is not None:
                    raise lease.error
                continue
            if now < lease.refused_until and lease.refused is not None:
                refused = lease.refused
                return Decision(
                    allowed=False,
                    remaining=tuple([r + lease.tokens for r in refused.remaining]),
                    retry_after=max(0.001, math.ceil((lease.refused_until - now) * 1000) / 1000),
                    reset=refused.reset,
                )
            return await self._refill(name[1], key, lease, cost, now)

    async def _refill(
        self, limits: tuple[Limit, ...], key: str, lease: _Lease, cost: int, now: float
    ) -> Decision:
        held = lease.tokens
        need = cost - held
        want = max(need, self._size - held)
        event = lease.refill = asyncio.Event()
        lease.error = None
        self.round_trips += 1
        try:
            granted, decision = await self._store.lease(key, limits, need, want)
        except BaseException as exc:
            lease.error = exc
            raise
        finally:
            lease.refill = None
            event.set()
        if not decision.allowed:
            lease.refused = decision
            lease.refused_until = now + decision.retry_after
            return Decision(
                allowed=False,
                remaining=tuple([r + held for r in decision.remaining]),
                retry_after=decision.retry_after,
                reset=decision.reset,
            )
        lease.tokens = held + granted - cost
        lease.expires = self._clock() + self._max_age
        lease.remaining = decision.remaining
        lease.reset = decision.reset
        lease.refused = None
        lease.refused_until = 0.0
        return self._paid(lease)

    @staticmethod
    def _paid(lease: _Lease) -> Decision:
        return Decision(
            allowed=True,
            remaining=tuple([r + lease.tokens for r in lease.remaining]),
            reset=lease.reset,
        )
