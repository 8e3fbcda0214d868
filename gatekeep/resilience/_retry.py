"""When to retry an upstream call, how long to wait, and the retry budget (sans-IO).

Theory of operation
-------------------
A failed try is retried only when all of these hold:

- tries are left (``retries`` on the service) and the overall deadline allows;
- the request can be sent again: its body is empty or was kept in memory
  (``prepare_body`` reads bodies up to ``body_limit`` ahead; a longer or
  streamed body is never re-sent);
- it is *safe*: no byte of the request left the gateway (a connect failure,
  a pool timeout: retried for any method), or the method is idempotent
  (GET HEAD OPTIONS TRACE PUT DELETE) or the request carries an
  ``Idempotency-Key`` (then also after a reset or timeout before the response
  head, or on a 502/503/504 answer).  A non-idempotent request whose bytes
  may have reached an upstream is never re-sent;
- the budget has room.

The budget caps the extra load retries add to a share of live traffic, so
that retries cannot multiply an outage: over the last 10 seconds, retries
may number at most ``budget_percent`` % of the requests plus
``min_retries_per_second`` × 10.  (Envoy's budget counts retries *in flight*
against requests in flight; counting over a window bounds the load of fast
failures too, which concurrency does not see.)

Delays are "full jitter" exponential backoff: a uniform draw in
``[0, min(max_backoff, backoff × 2^(n-1))]`` before retry ``n``.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from .._errors import UpstreamError
from .._http import Request, is_replayable, replayable
from ._config import RetryConfig
from ._window import RollingCounts

__all__ = ["IDEMPOTENT_METHODS", "RetryBudget", "RetryPolicy", "is_idempotent", "prepare_body"]

# RFC 9110 §9.2.2: the methods whose intended effect is the same sent once or twice.  The one
# home of the rule: the pool re-sends these on a stale keep-alive connection even after bytes
# left (``retry_safe``), and the guard retries them (``is_idempotent`` adds a request that
# carries an ``Idempotency-Key``, which vouches for itself).
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BUDGET_WINDOW: Final = 10.0


def is_idempotent(request: Request) -> bool:
    """May ``request`` be sent twice without harm?"""
    return request.method in IDEMPOTENT_METHODS or request.headers.get(b"idempotency-key") is not None


class RetryBudget:
    """Retries allowed as a share of requests over a rolling window."""

    __slots__ = ("_clock", "_counts", "_floor", "_ratio")

    def __init__(
        self,
        percent: float = 20.0,
        min_per_second: float = 3.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = percent / 100
        self._floor = min_per_second * _BUDGET_WINDOW
        self._clock = clock
        self._counts = RollingCounts(_BUDGET_WINDOW)  # a: requests, b: retries

    def record_request(self) -> None:
        self._counts.add(self._clock(), 1, 0)

    def try_acquire(self) -> bool:
        """Take one retry from the budget; ``False`` when it is spent."""
        counts = self._counts
        requests, retries = counts.totals(self._clock())
        if retries + 1 > self._ratio * requests + self._floor:
            return False
        counts.add(self._clock(), 0, 1)
        return True

    def stats(self) -> dict[str, int]:
        requests, retries = self._counts.totals(self._clock())
        return {"requests": requests, "retries": retries}


class RetryPolicy:
    """The retry decisions of one service."""

    __slots__ = ("_rng", "config", "retries", "statuses")

    def __init__(self, retries: int, config: RetryConfig, *, rng: random.Random | None = None) -> None:
        self.retries = retries
        self.config = config
        self.statuses = frozenset(config.statuses)
        self._rng = rng or random.Random()

    def after_error(self, attempt: int, exc: BaseException, idempotent: bool, replayable: bool) -> bool:
        """Retry after try ``attempt`` (0 = the first) failed with ``exc``?  (Budget aside.)"""
        if attempt >= self.retries or not replayable or not isinstance(exc, UpstreamError):
            return False
        return idempotent or not getattr(exc, "request_sent", True)

    def after_status(self, attempt: int, status: int, idempotent: bool, replayable: bool) -> bool:
        """Retry after try ``attempt`` was answered ``status``?  (Budget aside.)"""
        return attempt < self.retries and replayable and idempotent and status in self.statuses

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = the first retry)."""
        config = self.config
        ceiling = min(config.max_backoff, config.backoff * (1 << min(attempt - 1, 30)))
        return self._rng.random() * ceiling


async def prepare_body(request: Request, limit: int) -> bool:
    """Make ``request``'s body re-sendable when it is at most ``limit`` bytes.

    A body with a ``content-length`` up to ``limit`` is read into memory; a
    chunked one is read ahead up to ``limit`` and kept when it ended by then,
    otherwise the bytes read so far are put back in front of the rest and it
    streams as before.  A request without ``content-length`` or
    ``transfer-encoding`` has no body (HTTP/1.1 framing, as the adapters read
    it).

    Returns:
        whether the body can be sent again.
    """
    body = request.body
    if is_replayable(body):
        return True
    headers = request.headers
    length = headers.get(b"content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            return False
        if size == 0:
            return True
        if size > limit:
            return False
        await request.read(size)
        return True
    if headers.get(b"transfer-encoding") is None:
        return True
    it = aiter(body)
    kept: list[bytes] = []
    total = 0
    async for chunk in it:
        kept.append(chunk)
        total += len(chunk)
        if total > limit:
            request.body = _resume(kept, it)
            return False
    request.body = replayable(b"".join(kept))
    return True


async def _resume(kept: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in kept:
        yield chunk
    async for chunk in rest:
        yield chunk
