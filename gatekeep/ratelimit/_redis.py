"""The distributed rate limiter: token buckets in Redis, decided by one Lua script.

Theory of operation
-------------------

``token_bucket.lua`` decides all limits of one request in one atomic call with
the server's clock (see its header).  This module only gets requests to it
cheaply and turns every failure into ``RateLimiterUnavailable``.

Batching.  The client side, not Redis, is the bottleneck of a decision: one
EVALSHA costs Redis ~5-12 µs but a redis-py round trip ~80 µs of Python.  So
the decisions that are waiting at the same moment travel together, without
adding any wait.  Two ways, by client:

* A plain ``Redis`` client on TCP (the common case) gets the lean wire (``_resp.RespWire``):
  gatekeep's own RESP2 connection, one per limiter, on which every call made
  in one event-loop tick is written in one ``write`` and each reply resolves
  its call as it arrives.  Writes do not wait for earlier replies
  (pipelining), so under load Redis always has the next batch and the loop
  never idles waiting for it.  A decision is packed by joining bytes made
  once: the command's head and the limits' ARGV per sequence of limits
  (``_Plan``), the keys per (limits, key) and the counts per (need, want), in
  bounded caches.  Deadlines, reconnection and NOSCRIPT are the wire's (see
  ``_resp``).
* Other ``Redis`` clients (TLS, Unix sockets, Sentinel's ``master_for``,
  credential providers) keep one connection checked out of
  the client's pool and write packed commands on it themselves, batched:
  when no round trip is in flight a call sends its EVALSHA at once; calls
  arriving meanwhile queue, and when that round trip ends one flusher task
  sends them as one pipeline, keeps going while more has queued and ends
  when the queue is empty.  At most one round trip is in flight.  The
  flusher never raises (errors reach the waiting calls), and ``aclose``
  waits for it.  Any failure on that connection disconnects it and hands it
  back to the pool; a failure on a reused connection before any reply was
  read -- a server that restarted since -- is retried once on a fresh
  connection, as redis-py itself would.

Deadlines of the flusher's way.  Each call waits at most ``timeout``, but no
call pays for a timer of its own (``asyncio.timeout`` costs a timer handle, a
heap push and a cancel per call).  One watchdog timer serves the whole
limiter: the round trip in flight has a deadline (its start + ``timeout``),
and so does each queued call (its arrival + ``timeout``).  The watchdog fires
at the earliest of them; a round trip past its deadline has its task
cancelled (and that cancellation is turned into a timeout, the way
``asyncio.timeout`` does it, so a real cancellation from outside still
propagates), a queued call past its deadline gets a timeout as its outcome.
A watchdog that finds nothing due re-arms itself for the next deadline, so
under steady load it fires about once per ``timeout``.

``RedisCluster`` clients (keys of one batch live on several nodes) and
``batch=False`` limiters go through redis-py's ``execute_command`` and
``pipeline``; unbatched calls run concurrently, each with its own
``asyncio.timeout``.

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
from ._resp import bulk, wire_for

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
# Packed keys kept by (plan, key): a client's next decision packs without formatting.
_MAX_PACKED_KEYS = 4096
# Packed (need, want) pairs: a filter's cost takes few values.
_MAX_COUNTS = 256

# A call: on the lean wire the whole EVALSHA command, packed (RESP); else its
# arguments after the script (numkeys, keys ..., need, want, limits' ARGV ...).
_Call: TypeAlias = "bytes | tuple[str | int, ...]"
_EVALSHA = b"$7\r\nEVALSHA\r\n$40\r\n" + _SHA.encode() + b"\r\n"
_EVAL = b"$4\r\nEVAL\r\n" + bulk(SCRIPT.encode())


class _Plan:
    """What one sequence of limits contributes to every call: key suffixes, ARGV, and
    for the lean wire the same packed: the command's head and its trailing ARGV."""

    __slots__ = ("args", "argv", "head", "suffixes", "tails")

    def __init__(self, limits: tuple[Limit, ...]) -> None:
        for limit in limits:
            check_limit(limit)
        # The limit's parameters name its bucket; a changed limit starts afresh.
        self.suffixes = tuple(f"{lim.rate}/{float(lim.period)!r}/{lim.capacity}" for lim in limits)
        args: list[int] = []
        for lim in limits:
            args += (lim.rate, round(lim.period * 1_000_000), lim.capacity)
        self.args = tuple(args)
        keys = len(limits)
        # *<parts> EVALSHA <sha> <numkeys>: the keys, need, want and ``argv`` follow.
        self.head = b"*%d\r\n%b%b" % (3 + keys + 2 + len(args), _EVALSHA, bulk(b"%d" % keys))
        self.argv = b"".join([bulk(b"%d" % arg) for arg in args])
        self.tails = tuple([suffix.encode() + b"\r\n" for suffix in self.suffixes])


class _Pending:
    __slots__ = ("command", "deadline", "future")

    def __init__(self, command: _Call, future: asyncio.Future[_Outcome], deadline: float) -> None:
        self.command = command
        self.future = future
        self.deadline = deadline


def _as_eval(command: bytes) -> bytes:
    """A packed EVALSHA as the same EVAL (after NOSCRIPT)."""
    start = command.index(b"\r\n") + 2
    return command[:start] + _EVAL + command[start + len(_EVALSHA) :]


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
    # One or two limits: the common cases, without slicing.
    if len(reply) == 5:
        return Decision(reply[0] == 1, (reply[3],), reply[1] / 1000, (reply[4] / 1000,))
    if len(reply) == 7:
        return Decision(
            reply[0] == 1, (reply[3], reply[5]), reply[1] / 1000, (reply[4] / 1000, reply[6] / 1000)
        )
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
        self._packed: dict[tuple[_Plan, str], bytes] = {}
        self._counts: dict[tuple[int, int], bytes] = {}
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
        self._wire = wire_for(client, timeout) if self._direct else None
        if self._wire is not None:
            self._wire.noscript = _as_eval
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
        command = self._command(key, limits, cost, cost)
        wire = self._wire
        if wire is not None:  # the common case: the lean wire
            outcome = await wire.call(cast(bytes, command))
            if type(outcome) is list:
                return _decision(outcome)
            raise self._failure(outcome)
        if not self._batch:
            return _decision(await self._send_alone(command))
        if self._busy:  # the common case under load
            return _decision(await self._wait(command))
        return _decision(await self._send(command))

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
        reply = await self._dispatch(self._command(key, limits, need, want))
        return reply[2], _decision(reply)

    async def aclose(self) -> None:
        """Wait for the round trip in flight, if any (the client stays open)."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._wire is not None:
            await self._wire.drain()
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

    def _command(self, key: str, limits: Sequence[Limit], need: int, want: int) -> _Call:
        """The call for ``key``: packed for the lean wire, else its arguments."""
        # By identity only for a tuple: a list the caller changed in place keeps its id.
        known = self._plans_by_id.get(id(limits)) if type(limits) is tuple else None
        plan = known[1] if known is not None and known[0] is limits else self._plan(limits)
        if self._wire is not None:
            keys = self._packed.get((plan, key))
            if keys is None:
                keys = self._pack_keys(plan, key)
            counts = self._counts.get((need, want))
            if counts is None:
                counts = self._pack_counts(need, want)
            return plan.head + keys + counts + plan.argv
        head = f"{self._prefix}{{{_hash_tag(key)}}}:"
        names = [head + suffix for suffix in plan.suffixes]
        return (len(names), *names, need, want, *plan.args)

    async def _dispatch(self, command: _Call) -> Reply:
        if self._wire is not None:
            outcome = await self._wire.call(cast(bytes, command))
            if type(outcome) is list:
                return outcome
            raise self._failure(outcome)
        if not self._batch:
            return await self._send_alone(command)
        if self._busy:
            return await self._wait(command)
        return await self._send(command)

    def _failure(self, outcome: Any) -> BaseException:
        """Why the lean wire gave no reply, as the error to raise."""
        if isinstance(outcome, _STORE_ERRORS):
            return _unavailable(outcome, self._timeout)
        if isinstance(outcome, BaseException):
            return outcome
        return _unavailable(TypeError(f"the script answered {outcome!r}"), self._timeout)

    def _pack_keys(self, plan: _Plan, key: str) -> bytes:
        head = f"{self._prefix}{{{_hash_tag(key)}}}:".encode("utf-8", "surrogatepass")
        keys = b"".join([b"$%d\r\n%b%b" % (len(head) + len(tail) - 2, head, tail) for tail in plan.tails])
        if len(self._packed) >= _MAX_PACKED_KEYS:
            self._packed.clear()
        self._packed[(plan, key)] = keys
        return keys

    def _pack_counts(self, need: int, want: int) -> bytes:
        counts = bulk(b"%d" % need) + bulk(b"%d" % want)
        if len(self._counts) >= _MAX_COUNTS:
            self._counts.clear()
        self._counts[(need, want)] = counts
        return counts

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

    async def _send(self, command: _Call) -> Reply:
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
            return await self._eval(command)
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

    async def _send_alone(self, command: _Call) -> Reply:
        """Unbatched: every call is its own round trip with its own timer."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._eval(command)
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, self._timeout) from exc

    async def _wait(self, command: _Call) -> Reply:
        """Queue a call for the flusher and wait for its outcome."""
        loop = asyncio.get_running_loop()
        pending = _Pending(command, loop.create_future(), loop.time() + self._timeout)
        self._queue.append(pending)
        if self._watchdog is None:
            self._watchdog = loop.call_at(pending.deadline, self._tick)
        try:
            outcome = await pending.future
        finally:
            if pending.future.cancelled() and pending in self._queue:
                self._queue.remove(pending)
        if type(outcome) is list:  # the script's reply
            return outcome
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

    async def _eval(self, command: _Call) -> Reply:
        if self._direct:
            reply = (await self._roundtrip([("EVALSHA", _SHA, *command)]))[0]
            if isinstance(reply, NoScriptError):
                reply = (await self._roundtrip([("EVAL", SCRIPT, *command)]))[0]
            if isinstance(reply, BaseException):
                raise reply
            return reply
        client = self._client
        try:
            reply = await client.execute_command("EVALSHA", _SHA, *command)
        except NoScriptError:
            reply = await client.execute_command("EVAL", SCRIPT, *command)
        return cast(Reply, reply)

    async def _eval_many(self, batch: list[_Pending]) -> list[_Outcome]:
        if len(batch) == 1:
            return [await self._eval(batch[0].command)]
        if self._direct:
            outcomes = await self._roundtrip([("EVALSHA", _SHA, *p.command) for p in batch])
        else:
            pipe = self._client.pipeline(transaction=False)
            for p in batch:
                pipe.execute_command("EVALSHA", _SHA, *p.command)
            outcomes = await pipe.execute(raise_on_error=False)
        missing = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
        if missing:
            if self._direct:
                replies = await self._roundtrip([("EVAL", SCRIPT, *batch[i].command) for i in missing])
            else:
                pipe = self._client.pipeline(transaction=False)
                for i in missing:
                    pipe.execute_command("EVAL", SCRIPT, *batch[i].command)
                replies = await pipe.execute(raise_on_error=False)
            for i, outcome in zip(missing, replies, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _roundtrip(self, commands: list[tuple[Any, ...]]) -> list[_Outcome]:
        """Write ``commands`` packed on redis-py's connection; every reply, errors as values."""
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
