"""Token-bucket maths, sans I/O.

Theory of operation
-------------------

A bucket belongs to one (key, limit).  It holds at most ``limit.capacity``
tokens (the burst, or the rate when no burst is given) and gains
``limit.rate / limit.period`` tokens per second, continuously.  A bucket that
was never seen, or that was dropped, is full: storing a full bucket and
storing nothing mean the same, which is what lets both limiters forget idle
buckets (the memory limiter evicts them, Redis expires them).

The state of a bucket is two numbers, ``Bucket(tokens, stamp)``: the tokens it
held at the time ``stamp``.  Its level at a later time ``now`` is
``min(capacity, tokens + (now - stamp) * rate / period)``; a clock that goes
backwards (``now < stamp``) refills nothing, and the stamp never moves back.
Tokens are floats: integer costs taken from an integer level stay exact, and
refills are exact to the last bits of a double.  So that float dust cannot
turn away a request that arrives exactly when its tokens are due, a bucket
counts as holding ``cost`` when it is at most ``EPSILON`` (1e-9) short.  This
does not accumulate: a level never drops below ``-EPSILON``, so over any span
at most ``capacity + rate * elapsed / period + EPSILON`` tokens are taken.

``take`` decides one request over all its limits at once: it is admitted only
if *every* bucket holds ``cost`` tokens, and then ``cost`` is taken from each.
A rejected request changes nothing (``take`` returns no new state), so
rejected clients cannot starve themselves further and the decision for a
request is all-or-none.  A cost larger than a bucket's capacity can never be
met; such a request is rejected with ``retry_after`` = that limit's period,
since no wait would help.

``grant`` is ``take`` for leases (``_lease.py``): it admits when every
bucket holds ``need`` tokens and then takes as many as every bucket can give,
up to ``want`` -- the same all-or-none step, with the amount decided inside
it.  ``take(..., cost)`` is ``grant`` with ``need = want = cost``.

Times in a ``Decision`` are rounded *up* to the millisecond: ``retry_after``
never invites a client back before its tokens are there.  The Redis script
(``token_bucket.lua``) is a transcription of these functions, in microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from .._protocols import Decision, Limit

__all__ = ["EPSILON", "Bucket", "check_limit", "ceil_ms", "grant", "level", "seconds_until", "take"]

EPSILON = 1e-9


class Bucket(NamedTuple):
    """``tokens`` held at the time ``stamp`` (in the clock's seconds)."""

    tokens: float
    stamp: float


def check_limit(limit: Limit) -> None:
    """Refuse a limit the maths cannot serve.

    Raises:
        ValueError: rate, period or capacity is not positive.
    """
    if not (limit.rate > 0 and limit.period > 0 and limit.capacity > 0):
        raise ValueError(f"rate, period and burst of a limit must be positive: {limit!r}")


def ceil_ms(seconds: float) -> float:
    """``seconds`` rounded up to the millisecond (ignoring float dust)."""
    return math.ceil(seconds * 1000.0 - 1e-6) / 1000.0


def level(bucket: Bucket | None, limit: Limit, now: float) -> float:
    """The tokens in ``bucket`` at the time ``now``."""
    if bucket is None:
        return float(limit.capacity)
    tokens, stamp = bucket
    if now <= stamp:
        return tokens
    return min(float(limit.capacity), tokens + (now - stamp) * limit.rate / limit.period)


def seconds_until(tokens: float, wanted: float, limit: Limit) -> float:
    """Seconds until a bucket holding ``tokens`` holds ``wanted`` (0 if it does)."""
    if tokens >= wanted - EPSILON:
        return 0.0
    return (wanted - tokens) * limit.period / limit.rate


def take(
    buckets: Sequence[Bucket | None], limits: Sequence[Limit], now: float, cost: int = 1
) -> tuple[Decision, tuple[Bucket, ...] | None]:
    """Decide a request of ``cost`` tokens against all ``limits`` at the time ``now``.

    Args:
        buckets: the stored state of each limit's bucket (``None``: full).
        limits: the limits, in the order the decision reports them.
        now: the current time, in seconds of the same clock as the stamps.
        cost: tokens the request takes from every bucket (``>= 0``).

    Returns:
        The decision, and the new state of every bucket if it changed (an
        admitted request with a positive cost), else ``None``.
    """
    _, decision, new = grant(buckets, limits, now, cost, cost)
    return decision, new


def grant(
    buckets: Sequence[Bucket | None], limits: Sequence[Limit], now: float, need: int, want: int
) -> tuple[int, Decision, tuple[Bucket, ...] | None]:
    """Take between ``need`` and ``want`` tokens from every bucket, as many as all can give.

    Admitted when every bucket holds ``need``; then the same number ``g``
    (``need <= g <= want``, the most every bucket holds whole) is taken from
    each.  ``need`` plays the part of ``take``'s cost for a rejection.

    Returns:
        ``g`` (0 when rejected), the decision (``remaining`` after taking
        ``g``) and the new bucket states if they changed.
    """
    levels = [level(b, limit, now) for b, limit in zip(buckets, limits, strict=True)]
    if all(tokens >= need - EPSILON for tokens in levels):
        granted = need
        if want > need:
            granted = max(need, min(want, min([math.floor(t + EPSILON) for t in levels])))
        after = [tokens - granted for tokens in levels]
        decision = Decision(
            allowed=True,
            remaining=tuple([math.floor(t + EPSILON) for t in after]),
            reset=tuple(
                [ceil_ms(seconds_until(t, lim.capacity, lim)) for t, lim in zip(after, limits, strict=True)]
            ),
        )
        if granted == 0:
            return 0, decision, None
        new = tuple(
            [
                Bucket(t, now if b is None or now > b.stamp else b.stamp)
                for t, b in zip(after, buckets, strict=True)
            ]
        )
        return granted, decision, new
    retry = 0.0
    for tokens, limit in zip(levels, limits, strict=True):
        if need > limit.capacity:
            retry = max(retry, float(limit.period))
        else:
            retry = max(retry, seconds_until(tokens, need, limit))
    decision = Decision(
        allowed=False,
        remaining=tuple([math.floor(t + EPSILON) for t in levels]),
        retry_after=max(ceil_ms(retry), 0.001),
        reset=tuple(
            [ceil_ms(seconds_until(t, lim.capacity, lim)) for t, lim in zip(levels, limits, strict=True)]
        ),
    )
    return 0, decision, None
