"""The distributed rate limiter: token buckets in Redis, decided by one Lua script.

Theory of operation
-------------------

``token_bucket.lua`` decides all limits of one request in one atomic call with
the server's clock (see its header).  This module only gets requests to it
cheaply and turns every failure into ``RateLimiterUnavailable``.

Batching.  The client side, not Redis, is the bottleneck of a decision: one
EVALSHA costs Redis ~5 µs but a redis-py round trip ~80 µs of Python.  So the
decisions that are waiting at the same moment travel together as one
pipeline, without adding any wait:

* when no round trip is in flight, a call sends its EVALSHA at once, itself;
* calls arriving while a round trip is out queue up; when that round trip
  ends, whatever queued is sent as one pipeline by one flusher task, which
  keeps going while more has queued and ends when the queue is empty.

At most one round trip is in flight per limiter, as in Lyft's ratelimit
service.  The flusher is the only task the limiter starts; it never raises
(errors reach the waiting calls), it is bounded by the timeout, and
``aclose`` waits for it.  Each call waits at most ``timeout`` whatever
happens to the others; a call that gives up is dropped from the queue if it
was not sent yet.

NOSCRIPT (after a Redis restart, a failover or SCRIPT FLUSH) means the script
did not run, so it is safe to send the same call again with EVAL, which also
puts the script back in the server's cache.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from .._protocols import Decision, Limit
from ._bucket import check_limit
from ._errors import RateLimiterUnavailable

__all__ = ["SCRIPT", "RedisRateLimiter"]

SCRIPT = resources.files(__package__).joinpath("token_bucket.lua").read_text(encoding="utf-8")
_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

Client: TypeAlias = "Redis | RedisCluster"
Reply: TypeAlias = list[int]
# What a waiting call receives: the script's reply, or why there is none.
_Outcome: TypeAlias = "Reply | BaseException"

# Errors of the store, translated at one boundary (``_unavailable``).
_STORE_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)

_MAX_PLANS = 1024


class _Plan:
    """What one sequence of limits contributes to every call: key suffixes, ARGV."""

    __slots__ = ("args", "suffixes")

    def __init__(self, limits: Sequence[Limit]) -> None:
        for limit in limits:
            check_limit(limit)
        # The limit's parameters name its bucket; a changed limit starts afresh.
        self.suffixes = tuple(f"{lim.rate}/{float(lim.period)!r}/{lim.capacity}" for lim in limits)
        args: list[int] = []
        for lim in limits:
            args += (lim.rate, round(lim.period * 1_000_000), lim.capacity)
        self.args = tuple(args)


class _Pending:
    __slots__ = ("args", "future", "keys")

    def __init__(self, keys: list[str], args: tuple[int, ...], future: asyncio.Future[_Outcome]) -> None:
        self.keys = keys
        self.args = args
        self.future = future


def _has_surrogates(key: str) -> bool:
    try:
        key.encode()
    except UnicodeEncodeError:
        return True
    return False


def _hash_tag(key: str) -> str:
    # Redis Cluster hashes the text between the first "{" and the next "}";
    # an empty or "}"-holding key would split one request over several slots.
    if key and "}" not in key and (key.isascii() or not _has_surrogates(key)):
        return key
    return "##" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _decision(reply: Reply) -> Decision:
    return Decision(
        allowed=reply[0] == 1,
        remaining=tuple(reply[2::2]),
        retry_after=reply[1] / 1000,
        reset=tuple([ms / 1000 for ms in reply[3::2]]),
    )


def _unavailable(exc: BaseException, timeout: float) -> RateLimiterUnavailable:
    if isinstance(exc, TimeoutError) and not isinstance(exc, RedisError):
        detail = f"Redis did not answer within {timeout} s"
    else:
        detail = f"Redis failed: {type(exc).__name__}: {exc}"
    error = RateLimiterUnavailable(detail)
    error.__cause__ = exc
    return error


class RedisRateLimiter:
    """Token buckets shared by every gateway process, kept in Redis.

    Args:
        client: a ``redis.asyncio.Redis`` (plain, or from a Sentinel) or a
            ``RedisCluster``; its connection pool is shared, not owned: the
            limiter never closes it.
        prefix: put before every key; must not hold ``{`` or ``}``.
        timeout: the most seconds a call waits for Redis, whatever happens.
        batch: send the decisions that wait at the same moment as one
            pipeline (see the module notes); off, every call is its own
            round trip.

    Keys are ``<prefix>{<key>}:<rate>/<period>/<capacity>``: the ``{key}``
    hash tag keeps one request's buckets in one cluster slot.  ``key``
    should come from ``bucket_key``; a key that is empty or holds ``}`` is
    replaced by its digest so that it still makes one hash tag.
    """

    def __init__(
        self, client: Client, *, prefix: str = "gk:rl:", timeout: float = 0.5, batch: bool = True
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must not hold braces (Redis Cluster hash tags): {prefix!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._client: Any = client
        self._prefix = prefix
        self._timeout = timeout
        self._batch = batch
        self._plans: dict[tuple[Limit, ...], _Plan] = {}
        self._queue: list[_Pending] = []
        self._busy = False
        self._flusher: asyncio.Task[None] | None = None

    @property
    def timeout(self) -> float:
        return self._timeout

    async def acquire(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Take ``cost`` tokens from the bucket of every limit for ``key``, all or none.

        Raises:
            RateLimiterUnavailable: Redis is unreachable, did not answer within
                ``timeout`` seconds, or answered an error.
            ValueError: a negative cost or a limit with a non-positive field.
        """
        if cost < 0:
            raise ValueError(f"cost must not be negative, got {cost}")
        lims = limits if type(limits) is tuple else tuple(limits)
        plan = self._plans.get(lims)
        if plan is None:
            plan = self._plan(lims)
        head = f"{self._prefix}{{{_hash_tag(key)}}}:"
        keys = [head + suffix for suffix in plan.suffixes]
        args = (cost, *plan.args)
        if self._batch and self._busy:
            reply = await self._wait(keys, args)
        else:
            reply = await self._send(keys, args)
        return _decision(reply)

    async def aclose(self) -> None:
        """Wait for the round trip in flight, if any (the client stays open)."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher])

    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _plan(self, limits: tuple[Limit, ...]) -> _Plan:
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        plan = self._plans[limits] = _Plan(limits)
        return plan

    async def _send(self, keys: list[str], args: tuple[int, ...]) -> Reply:
        """One call, sent by itself, while no round trip is in flight."""
        self._busy = True
        try:
            async with asyncio.timeout(self._timeout):
                return await self._eval(keys, args)
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, self._timeout) from exc
        finally:
            if self._queue:
                self._flusher = asyncio.get_running_loop().create_task(self._flush())
            else:
                self._busy = False

    async def _wait(self, keys: list[str], args: tuple[int, ...]) -> Reply:
        """Queue a call for the flusher and wait for its outcome."""
        pending = _Pending(keys, args, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        try:
            async with asyncio.timeout(self._timeout):
                outcome = await pending.future
        except TimeoutError as exc:
            raise _unavailable(exc, self._timeout) from exc
        finally:
            if pending.future.cancelled() and pending in self._queue:
                self._queue.remove(pending)
        if isinstance(outcome, _STORE_ERRORS):
            raise _unavailable(outcome, self._timeout) from outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = [p for p in self._queue if not p.future.done()]
                self._queue = []
                if not batch:
                    continue
                outcomes: Sequence[_Outcome]
                try:
                    async with asyncio.timeout(self._timeout):
                        outcomes = await self._eval_many(batch)
                except Exception as exc:  # the waiting calls raise it, translated
                    outcomes = [exc] * len(batch)
                for pending, outcome in zip(batch, outcomes, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(outcome)
        finally:
            # Only reached with a non-empty queue when the flusher is cancelled.
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_result(RedisError("the rate limiter was closed"))
            self._queue = []
            self._busy = False
            self._flusher = None

    async def _eval(self, keys: list[str], args: tuple[int, ...]) -> Reply:
        client = self._client
        try:
            reply: Reply = await client.execute_command("EVALSHA", _SHA, len(keys), *keys, *args)
        except NoScriptError:
            reply = await client.execute_command("EVAL", SCRIPT, len(keys), *keys, *args)
        return reply

    async def _eval_many(self, batch: list[_Pending]) -> list[_Outcome]:
        if len(batch) == 1:
            return [await self._eval(batch[0].keys, batch[0].args)]
        pipe = self._client.pipeline(transaction=False)
        for p in batch:
            pipe.execute_command("EVALSHA", _SHA, len(p.keys), *p.keys, *p.args)
        outcomes: list[_Outcome] = await pipe.execute(raise_on_error=False)
        missing = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
        if missing:
            pipe = self._client.pipeline(transaction=False)
            for i in missing:
                p = batch[i]
                pipe.execute_command("EVAL", SCRIPT, len(p.keys), *p.keys, *p.args)
            for i, outcome in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                outcomes[i] = outcome
        return outcomes
