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
(errors reach the waiting calls), and ``aclose`` waits for it.

Deadlines.  Each call waits at most ``timeout``, whatever happens to the
others, but no call pays for a timer of its own (``asyncio.timeout`` costs a
timer handle, a heap push and a cancel per call -- a good part of a decision's
client-side cost).  One watchdog timer serves the whole limiter: the round trip
in flight has a deadline (its start + ``timeout``), and so does each queued
call (its arrival + ``timeout``).  The watchdog fires at the earliest of them;
a round trip past its deadline has its task cancelled (and that cancellation
is turned into a timeout, the way ``asyncio.timeout`` does it, so a real
cancellation from outside still propagates), a queued call past its deadline
gets a timeout as its outcome.  Nothing is cancelled or rescheduled when a
round trip ends in time; a watchdog that finds nothing due re-arms itself for
the next deadline, so under steady load it fires about once per ``timeout``.
With ``batch=False`` calls run concurrently and each keeps its own
``asyncio.timeout``.

A lean wire.  With a plain ``Redis`` client (also what Sentinel's
``master_for`` gives), the round trips of a batched limiter never overlap, so
the limiter keeps one connection and writes its commands packed on it,
reading the replies itself: redis-py's per-command machinery (pool checkout
with its bookkeeping, retry wrapper, pipeline objects, response callbacks) is
skipped, which is most of a decision's client-side cost.  For a plain TCP
server that connection is gatekeep's own RESP2 protocol (``_resp.py``: no
stream reader, no generic packer or RESP3 parser); for TLS, Unix sockets and
Sentinel it is one connection checked out of the client's pool.  Any failure
on that connection disconnects it (its replies cannot be trusted any more)
and hands it back to the pool; a failure on a
reused connection before any reply was read -- a server that restarted since
-- is retried once on a fresh connection, as redis-py itself would.
``RedisCluster`` clients (keys of one batch live on several nodes) and
unbatched limiters go through redis-py's ``execute_command``/``pipeline``.

NOSCRIPT (after a Redis restart, a failover or SCRIPT FLUSH) means the script
did not run, so it is safe to send the same call again with EVAL, which also
puts the script back in the server's cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import weakref
from collections.abc import Sequence
from importlib import resources
from typing import Any, TypeAlias, cast

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from .._protocols import Decision, Limit
from ._bucket import check_limit
from ._errors import RateLimiterUnavailable
from ._resp import wire_for

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

    def __init__(self, limits: tuple[Limit, ...]) -> None:
        for limit in limits:
            check_limit(limit)
        # The limit's parameters name its bucket; a changed limit starts afresh.
        self.suffixes = tuple(f"{lim.rate}/{float(lim.period)!r}/{lim.capacity}" for lim in limits)
        args: list[int] = []
        for lim in limits:
            args += (lim.rate, round(lim.period * 1_000_000), lim.capacity)
        self.args = tuple(args)


class _Pending:
    __slots__ = ("args", "deadline", "future", "keys")

    def __init__(
        self, keys: list[str], args: tuple[int, ...], future: asyncio.Future[_Outcome], deadline: float
    ) -> None:
        self.keys = keys
        self.args = args
        self.future = future
        self.deadline = deadline


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
    if len(reply) == 5:  # one limit: the common case, without slicing
        return Decision(reply[0] == 1, (reply[3],), reply[1] / 1000, (reply[4] / 1000,))
    return Decision(
        allowed=reply[0] == 1,
        remaining=tuple(reply[3::2]),
        retry_after=reply[1] / 1000,
        reset=tuple([ms / 1000 for ms in reply[4::2]]),
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
        # Callers pass the same tuple of limits again and again (a filter's are
        # built once): find its plan by identity before hashing every Limit.
        # The entry keeps its tuple alive, so an id is never reused while cached.
        self._plans_by_id: dict[int, tuple[Sequence[Limit], _Plan]] = {}
        self._queue: list[_Pending] = []
        # The batch the flusher has sent (its calls keep their own deadlines).
        self._sent: list[_Pending] = []
        self._busy = False
        self._flusher: asyncio.Task[None] | None = None
        # The round trip in flight: the task waiting for it and its deadline.
        self._trip: asyncio.Task[Any] | None = None
        self._trip_deadline = 0.0
        self._expired: asyncio.Task[Any] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        # The connection of the lean wire (plain clients, batched limiters).
        self._direct = batch and isinstance(client, Redis)
        self._wire = wire_for(client) if self._direct else None
        if self._wire is not None:
            # The wire's connection is the limiter's own: a limiter dropped without
            # ``aclose`` (the client is shared, so nothing else would) still closes it.
            weakref.finalize(self, self._wire.close)
        self._conn: Any = None

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
        return _decision(await self._call(key, limits, cost, cost))

    async def lease(self, key: str, limits: Sequence[Limit], need: int, want: int) -> tuple[int, Decision]:
        """Take between ``need`` and ``want`` tokens from every bucket, as many as all hold.

        Returns:
            The tokens taken from each bucket (0 when refused) and the decision.

        Raises:
            RateLimiterUnavailable: as ``acquire``.
            ValueError: ``need`` is below 1 or ``want`` below ``need``.
        """
        if need < 1 or want < need:
            raise ValueError(f"a lease needs 1 <= need <= want, got need={need}, want={want}")
        reply = await self._call(key, limits, need, want)
        return reply[2], _decision(reply)

    async def aclose(self) -> None:
        """Wait for the round trip in flight, if any (the client stays open)."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._wire is not None:
            self._wire.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._client.connection_pool.release(conn)

    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _plan(self, limits: Sequence[Limit]) -> _Plan:
        lims = limits if type(limits) is tuple else tuple(limits)
        plan = self._plans.get(lims)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[lims] = _Plan(lims)
        if len(self._plans_by_id) >= _MAX_PLANS:  # callers passing a new list each time
            self._plans_by_id.clear()
        self._plans_by_id[id(limits)] = (limits, plan)
        return plan

    async def _call(self, key: str, limits: Sequence[Limit], need: int, want: int) -> Reply:
        known = self._plans_by_id.get(id(limits))
        plan = known[1] if known is not None and known[0] is limits else self._plan(limits)
        head = f"{self._prefix}{{{_hash_tag(key)}}}:"
        suffixes = plan.suffixes
        keys = [head + suffixes[0]] if len(suffixes) == 1 else [head + suffix for suffix in suffixes]
        args = (need, want, *plan.args)
        if not self._batch:
            return await self._send_alone(keys, args)
        if self._busy:
            return await self._wait(keys, args)
        return await self._send(keys, args)

    # -- deadlines ---------------------------------------------------------------

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        """The watchdog: time out what is due, re-arm for the next deadline."""
        self._watchdog = None
        loop = asyncio.get_running_loop()
        # A timer may fire a clock tick early; what is due within a millisecond is due.
        now = loop.time() + 0.001
        due = math.inf
        trip = self._trip
        if trip is not None:
            if now >= self._trip_deadline:
                if self._expired is not trip:
                    self._expired = trip
                    trip.cancel()
            else:
                due = self._trip_deadline
        for calls in (self._sent, self._queue):
            for pending in calls:  # in arrival order, so in deadline order
                if pending.future.done():
                    continue
                if now < pending.deadline:
                    due = min(due, pending.deadline)
                    break
                pending.future.set_result(TimeoutError())
        if due != math.inf:
            self._watchdog = loop.call_at(due, self._tick)

    def _timed_out(self, task: asyncio.Task[Any], cancelling: int) -> bool:
        """Whether the CancelledError being handled is the watchdog's (then it is undone)."""
        if self._expired is not task:
            return False
        self._expired = None
        return task.uncancel() <= cancelling

    # -- sending -----------------------------------------------------------------

    async def _send(self, keys: list[str], args: tuple[int, ...]) -> Reply:
        """One call, sent by itself, while no round trip is in flight."""
        self._busy = True
        loop = asyncio.get_running_loop()
        task: Any = asyncio.current_task(loop)
        cancelling = task.cancelling()
        self._trip = task
        self._trip_deadline = deadline = loop.time() + self._timeout
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._tick)
        try:
            return await self._eval(keys, args)
        except asyncio.CancelledError:
            if self._timed_out(task, cancelling):
                raise _unavailable(TimeoutError(), self._timeout) from None
            raise
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, self._timeout) from exc
        finally:
            self._trip = None
            if self._queue:
                self._flusher = loop.create_task(self._flush())
            else:
                self._busy = False

    async def _send_alone(self, keys: list[str], args: tuple[int, ...]) -> Reply:
        """Unbatched: every call is its own round trip with its own timer."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._eval(keys, args)
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, self._timeout) from exc

    async def _wait(self, keys: list[str], args: tuple[int, ...]) -> Reply:
        """Queue a call for the flusher and wait for its outcome."""
        loop = asyncio.get_running_loop()
        pending = _Pending(keys, args, loop.create_future(), loop.time() + self._timeout)
        self._queue.append(pending)
        if self._watchdog is None:
            self._watchdog = loop.call_at(pending.deadline, self._tick)
        try:
            outcome = await pending.future
        finally:
            if pending.future.cancelled() and pending in self._queue:
                self._queue.remove(pending)
        if isinstance(outcome, _STORE_ERRORS):
            raise _unavailable(outcome, self._timeout) from outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        task: Any = asyncio.current_task(loop)
        try:
            while self._queue:
                batch = [p for p in self._queue if not p.future.done()]
                self._queue = []
                if not batch:
                    continue
                outcomes: Sequence[_Outcome]
                self._sent = batch
                self._trip = task
                self._trip_deadline = loop.time() + self._timeout
                self._arm(loop, self._trip_deadline)
                cancelling = task.cancelling()
                try:
                    outcomes = await self._eval_many(batch)
                except asyncio.CancelledError:
                    if not self._timed_out(task, cancelling):
                        raise
                    outcomes = [TimeoutError()] * len(batch)
                except Exception as exc:  # the waiting calls raise it, translated
                    outcomes = [exc] * len(batch)
                finally:
                    self._trip = None
                    self._sent = []
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
        if self._direct:
            reply = (await self._roundtrip([("EVALSHA", _SHA, len(keys), *keys, *args)]))[0]
            if isinstance(reply, NoScriptError):
                reply = (await self._roundtrip([("EVAL", SCRIPT, len(keys), *keys, *args)]))[0]
            if isinstance(reply, BaseException):
                raise reply
            return reply
        client = self._client
        try:
            reply = await client.execute_command("EVALSHA", _SHA, len(keys), *keys, *args)
        except NoScriptError:
            reply = await client.execute_command("EVAL", SCRIPT, len(keys), *keys, *args)
        return cast(Reply, reply)

    async def _eval_many(self, batch: list[_Pending]) -> list[_Outcome]:
        if len(batch) == 1:
            return [await self._eval(batch[0].keys, batch[0].args)]
        if self._direct:
            outcomes = await self._roundtrip(
                [("EVALSHA", _SHA, len(p.keys), *p.keys, *p.args) for p in batch]
            )
        else:
            pipe = self._client.pipeline(transaction=False)
            for p in batch:
                pipe.execute_command("EVALSHA", _SHA, len(p.keys), *p.keys, *p.args)
            outcomes = await pipe.execute(raise_on_error=False)
        missing = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
        if missing:
            again = [("EVAL", SCRIPT, len(batch[i].keys), *batch[i].keys, *batch[i].args) for i in missing]
            if self._direct:
                replies = await self._roundtrip(again)
            else:
                pipe = self._client.pipeline(transaction=False)
                for command in again:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
            for i, outcome in zip(missing, replies, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _roundtrip(self, commands: list[tuple[Any, ...]]) -> list[_Outcome]:
        """Write ``commands`` packed on the limiter's connection; every reply, errors as values."""
        if self._wire is not None:
            return await self._wire.roundtrip(commands)
        pool = self._client.connection_pool
        for attempt in (1, 2):
            conn = self._conn
            reused = conn is not None
            if conn is None:
                conn = self._conn = await pool.get_connection()
            replies: list[_Outcome] = []
            try:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:  # one script's error; the stream stays in step
                        replies.append(exc)
                return replies
            except BaseException as exc:
                self._conn = None
                await conn.disconnect(nowait=True)
                await pool.release(conn)
                if attempt == 1 and reused and not replies and isinstance(exc, RedisConnectionError):
                    continue  # nothing reached a live server on a stale connection: once more
                raise
        raise AssertionError("unreachable")  # pragma: no cover
