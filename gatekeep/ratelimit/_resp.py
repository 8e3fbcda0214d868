"""A lean RESP2 wire to one Redis server, for the limiter's one hot command.

Theory of operation
-------------------

A rate-limit decision is one EVALSHA whose reply is a short array of
integers.  Through redis-py, most of a decision's client-side cost is the
generic machinery around those few bytes: its command packer, its RESP3
parser and its stream reader.  This module is the smallest client that does
the same job correctly:

* ``pack`` writes a command as a RESP array of bulk strings;
* ``parse`` reads one reply (integers, simple and bulk strings, errors,
  arrays, nil) from a buffer, or says it is incomplete; an array of integers
  (the limiter's reply) is read with one regular expression and one split;
* ``RespProtocol`` is an asyncio ``Protocol`` on one TCP connection: calls
  written on it get their replies in the order they were written, each as
  it arrives;
* ``RespWire`` pipelines commands on one such connection.  ``call`` queues a
  command and returns the future of its outcome; the queue is written in one
  ``write`` once per event-loop tick (a ``call_soon`` flush), whether or not
  earlier writes still wait for their replies, so no decision waits for
  another's round trip and the loop never idles on Redis while requests
  queue.  The wire opens its connection on first use (``AUTH``, ``SELECT``
  and ``CLIENT SETNAME`` as the redis-py client would).

Deadlines.  Every call has one (its arrival + ``timeout``); one watchdog
timer per wire fires at the earliest and re-arms itself, so under load it
fires about once per ``timeout`` and no call pays for a timer.  A call past
its deadline in the queue (the connection is still being opened) gets a
``TimeoutError``; a call past its deadline on the connection means Redis is
not answering: the connection is dropped and every call on it gets the
``TimeoutError`` (replies after that could not be matched with trust).

Failures.  Any failure drops the connection and every call on it gets the
error, except one case: a connection that had gone idle and got no reply at
all since it was written to again (a server that restarted while we were
idle) sends those calls once more on a fresh connection, as redis-py does.
NOSCRIPT means the script did not run: the call is sent again in the form
``noscript`` gives (EVAL), once.  A caller that gives up (cancelled) keeps
its place in the stream; its reply is read and dropped.

Errors are redis-py's classes (``ConnectionError``, ``ResponseError``,
``NoScriptError``, ``AuthenticationError``), so the limiter translates them at
its one boundary as before.  A server's error reply is a value in the list of
replies, not an exception: the other replies of the round trip are good.

Only a plain TCP ``ConnectionPool`` is served this way (``wire_for``); TLS,
Unix sockets, Sentinel and credential providers keep redis-py's own
connection (the limiter's other lean path).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias, cast

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["Call", "RespProtocol", "RespWire", "bulk", "pack", "parse", "wire_for"]

_CRLF: Final = b"\r\n"
# A reply we never asked for, or bigger than any the limiter gets, ends the connection.
_MAX_BUFFER: Final = 1 << 20
# An array of integers and what follows it: a reply of the limiter's shape, unless the count
# differs (then one of another shape that the general path reads).
_INTEGERS: Final = re.compile(rb"\*([0-9]+)\r\n((?::-?[0-9]+\r\n)*)")
# By the byte after "*": the whole array of that many (1 to 9) integers, each a group.
_SHAPES: Final[tuple[re.Pattern[bytes] | None, ...]] = tuple(
    re.compile(rb"\*%d\r\n" % (c - 0x30) + rb":(-?[0-9]+)\r\n" * (c - 0x30)) if 0x31 <= c <= 0x39 else None
    for c in range(256)
)


class Incomplete(Exception):
    """The buffer ends inside a reply."""


class ProtocolViolation(RedisConnectionError):
    """The server sent something that is not RESP2: the connection is dropped."""


def bulk(data: bytes) -> bytes:
    """``data`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(command: Sequence[bytes | str | int]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(command)]
    for part in command:
        if type(part) is int:
            data = b"%d" % part
        elif type(part) is str:
            data = part.encode("utf-8", "surrogatepass")
        elif isinstance(part, str):  # a subclass: a decrypted config value (gatekeep.Secret)
            data = part.encode("utf-8", "surrogatepass")
        else:
            data = bytes(part)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _error(message: str) -> RedisError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationError(message)
    return ResponseError(message)


def parse(buf: bytes | bytearray, pos: int = 0) -> tuple[Any, int]:
    """The reply starting at ``pos`` and the position after it.

    Raises:
        Incomplete: the reply does not end in ``buf``.
        ProtocolViolation: not a RESP2 reply.
    """
    end = buf.find(_CRLF, pos)
    if end < 0:
        raise Incomplete
    kind = buf[pos]
    try:
        if kind == 0x3A:  # ':' integer
            return int(buf[pos + 1 : end]), end + 2
        if kind == 0x2A:  # '*' array
            ints = _INTEGERS.match(buf, pos)
            if ints is not None and ints.end(2) > ints.start(2):
                # The limiter's reply: integers only, read in one go.
                values = list(map(int, ints.group(2)[1:-2].split(b"\r\n:")))
                if len(values) == int(ints.group(1)):
                    return values, ints.end()
            count = int(buf[pos + 1 : end])
            pos = end + 2
            if count < 0:
                return None, pos
            items = []
            size = len(buf)
            for _ in range(count):
                if pos < size and buf[pos] == 0x3A:
                    # An integer, read in place: the limiter's replies are arrays of them.
                    end = buf.find(_CRLF, pos)
                    if end < 0:
                        raise Incomplete
                    kind = 0x3A
                    items.append(int(buf[pos + 1 : end]))
                    pos = end + 2
                else:
                    item, pos = parse(buf, pos)
                    items.append(item)
            return items, pos
        if kind == 0x24:  # '$' bulk string
            size = int(buf[pos + 1 : end])
            if size < 0:
                return None, end + 2
            start = end + 2
            stop = start + size
            if len(buf) < stop + 2:
                raise Incomplete
            if buf[stop : stop + 2] != _CRLF:
                raise ProtocolViolation("a bulk string longer than its length")
            return bytes(buf[start:stop]), stop + 2
        if kind == 0x2B:  # '+' simple string
            return bytes(buf[pos + 1 : end]), end + 2
        if kind == 0x2D:  # '-' error
            return _error(bytes(buf[pos + 1 : end]).decode("utf-8", "replace")), end + 2
    except ValueError:
        raise ProtocolViolation(f"not a number in a {chr(kind)!r} reply") from None
    raise ProtocolViolation(f"unknown reply type {kind!r}")


_Outcome: TypeAlias = Any  # a reply, or the exception saying why there is none

# The watchdog looks this far ahead: a timer may fire a clock tick early.
_EARLY: Final = 0.001


class Call:
    """One command on the wire and the future of its outcome (a reply, or an exception as a value)."""

    __slots__ = ("command", "deadline", "future", "tries")

    def __init__(self, command: bytes, future: asyncio.Future[_Outcome], deadline: float) -> None:
        self.command = command
        self.future = future
        self.deadline = deadline
        self.tries = 0


class RespProtocol(asyncio.Protocol):
    """One connection to Redis: calls answered in the order they were written."""

    def __init__(self, owner: RespWire | None = None) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.waiting: deque[Call] = deque()
        self._lost: BaseException | None = None
        self.replies = 0  # replies read on this connection so far
        # Replies read when the connection last went from idle to busy, and whether it
        # had served a busy period before that one (see ``RespWire._lost``).
        self.mark = 0
        self.reused = False

    @property
    def alive(self) -> bool:
        return self._lost is None and self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        if self._lost is None:
            self._lost = error
        calls = list(self.waiting)
        self.waiting.clear()
        if self._owner is not None:
            self._owner._lost(self, calls, error)
        else:
            _settle(calls, error)

    def send(self, calls: list[Call]) -> None:
        """Write ``calls`` in one ``write``; each future gets its reply as it arrives."""
        waiting = self.waiting
        if not waiting:
            self.reused = self.replies > self.mark or self.reused
            self.mark = self.replies
        waiting.extend(calls)
        assert self._transport is not None
        if len(calls) == 1:
            self._transport.write(calls[0].command)
        else:
            self._transport.write(b"".join([call.command for call in calls]))

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        waiting = self.waiting
        size = len(buf)
        shapes = _SHAPES
        try:
            while waiting and pos < size:
                # The limiter's reply (an array of up to 9 integers) whole in ``buf``: one match.
                found = None
                if buf[pos] == 0x2A and pos + 2 < size and buf[pos + 2] == 0x0D:  # "*N\r"
                    shape = shapes[buf[pos + 1]]
                    if shape is not None:
                        found = shape.match(buf, pos)
                if found is not None:
                    reply: Any = list(map(int, found.groups()))
                    pos = found.end()
                else:
                    try:
                        reply, pos = parse(buf, pos)
                    except Incomplete:
                        break
                self.replies += 1
                call = waiting.popleft()
                if type(reply) is NoScriptError and self._owner is not None:
                    self._owner._noscript(call, reply)
                elif not call.future.done():  # a caller that gave up
                    call.future.set_result(reply)
        except ProtocolViolation as exc:
            self.fail(exc)
            return
        del buf[:pos]
        if buf and not waiting or len(buf) > _MAX_BUFFER:
            self.fail(ProtocolViolation("Redis sent a reply nobody asked for"))

    def fail(self, exc: BaseException) -> None:
        """Drop the connection: every call waiting on it gets ``exc``."""
        if self._lost is None:
            self._lost = exc
        calls = list(self.waiting)
        self.waiting.clear()
        _settle(calls, exc)
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the socket goes with it
                self._transport.abort()

    def close(self) -> None:
        self.fail(RedisConnectionError("the connection to Redis was closed"))


def _settle(calls: Sequence[Call], outcome: BaseException) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_result(outcome)


class RespWire:
    """Commands pipelined on one lean connection to a plain TCP Redis, opened on first use.

    ``call`` queues a command and returns the future of its outcome; the queue is
    written once per event-loop tick (see the module notes).  ``noscript``, when set,
    turns a command answered NOSCRIPT into the one to send instead (once).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        timeout: float = 0.5,
    ) -> None:
        self._address = (host, port)
        setup: list[Sequence[bytes | str | int]] = []
        if password is not None:
            setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            setup.append(("SELECT", db))
        if client_name:
            setup.append(("CLIENT", "SETNAME", client_name))
        self._setup = [pack(command) for command in setup]
        self.timeout = timeout
        self.noscript: Callable[[bytes], bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[Call] = []
        self._scheduled = False
        self._protocol: RespProtocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._connect_deadline = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:  # never the password
        return f"RespWire({self._address[0]}:{self._address[1]})"

    def call(self, command: bytes) -> asyncio.Future[_Outcome]:
        """Queue one packed command; its future gets the reply, or the exception why there is none."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._bind()
        future = loop.create_future()
        call = Call(command, future, loop.time() + self.timeout)
        self._queue.append(call)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_at(call.deadline, self._tick)
        return future

    async def drain(self) -> None:
        """Wait until every call made so far has its outcome (each within its deadline)."""
        protocol = self._protocol
        futures = [call.future for call in self._queue]
        if protocol is not None:
            futures += [call.future for call in protocol.waiting]
        if futures:
            await asyncio.wait(futures)

    def close(self) -> None:
        """Drop the connection: calls in flight fail with ``ConnectionError``; queued ones wait
        (for a new connection).  With nobody waiting, a connection being opened is given up."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()
        if all(call.future.done() for call in self._queue):
            if self._connecting is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs it any more
                    self._connecting.cancel()
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None

    def _bind(self) -> asyncio.AbstractEventLoop:
        # First use, or a new event loop (the old one's connection cannot serve it).
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()
            self._queue, self._scheduled, self._connecting, self._watchdog = [], False, None, None
            self._loop = loop
        return loop

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        protocol = self._protocol
        if protocol is None or not protocol.alive:
            if self._connecting is None:
                loop = cast(asyncio.AbstractEventLoop, self._loop)
                self._connect_deadline = loop.time() + self.timeout
                self._connecting = loop.create_task(self._connect())
            return
        calls, self._queue = self._queue, []
        calls = [call for call in calls if not call.future.done()]  # callers that gave up before
        if calls:
            protocol.send(calls)

    async def _connect(self) -> None:
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        protocol: RespProtocol | None = None
        try:
            try:
                _, protocol = await loop.create_connection(lambda: RespProtocol(self), *self._address)
            except OSError as exc:
                raise RedisConnectionError(
                    f"cannot connect to Redis at {self._address[0]}:{self._address[1]}: {exc.strerror or exc}"
                ) from exc
            if self._setup:
                deadline = loop.time() + self.timeout
                calls = [Call(command, loop.create_future(), deadline) for command in self._setup]
                protocol.send(calls)
                for call in calls:
                    outcome = await call.future
                    if isinstance(outcome, BaseException):
                        raise outcome
                protocol.mark = protocol.replies  # the setup's replies do not make it reused
        except BaseException as exc:
            if protocol is not None:
                protocol.close()
            failed, self._queue = self._queue, []
            cancelled = isinstance(exc, asyncio.CancelledError)
            _settle(failed, TimeoutError() if cancelled else exc)
            if not cancelled and not isinstance(exc, Exception):
                raise
            return
        finally:
            self._connecting = None
        self._protocol = protocol
        self._flush()

    def _lost(self, protocol: RespProtocol, calls: list[Call], error: BaseException) -> None:
        """The connection died under ``calls``: send them again once, or fail them."""
        if self._protocol is protocol:
            self._protocol = None
        # Nothing was answered since the connection went busy again after serving before:
        # a server that restarted while we were idle, so nothing reached a live server.
        stale = protocol.reused and protocol.replies == protocol.mark
        again = []
        for call in calls:
            if call.future.done():
                continue
            if stale and call.tries == 0:
                call.tries = 1
                again.append(call)
            else:
                call.future.set_result(error)
        if again:
            self._queue[:0] = again
            if not self._scheduled and self._loop is not None and not self._loop.is_closed():
                self._scheduled = True
                self._loop.call_soon(self._flush)

    def _noscript(self, call: Call, reply: BaseException) -> None:
        """NOSCRIPT: the script did not run, so its EVAL form is sent instead (once)."""
        if self.noscript is None or call.tries > 1 or call.future.done():
            if not call.future.done():
                call.future.set_result(reply)
            return
        call.tries = 2
        call.command = self.noscript(call.command)
        self._queue.append(call)
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _tick(self) -> None:
        """The watchdog: time out what is due, re-arm for the next deadline."""
        self._watchdog = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        now = loop.time() + _EARLY
        due = math.inf
        protocol = self._protocol
        if protocol is not None and protocol.waiting:
            for call in protocol.waiting:
                if call.future.done():
                    continue
                if now >= call.deadline:  # Redis is not answering: its late replies cannot be trusted
                    self._protocol = None
                    protocol.fail(TimeoutError())
                    break
                due = min(due, call.deadline)
            if self._protocol is None:
                due = math.inf
        connecting = self._connecting
        if connecting is not None:
            if now >= self._connect_deadline:
                connecting.cancel()  # the queued calls time out with it
            else:
                due = min(due, self._connect_deadline)
        keep = []
        for call in self._queue:
            if call.future.done():
                continue
            if now >= call.deadline:
                call.future.set_result(TimeoutError())
            else:
                due = min(due, call.deadline)
                keep.append(call)
        self._queue = keep
        if due != math.inf:
            self._watchdog = loop.call_at(due, self._tick)


def wire_for(client: Any, timeout: float = 0.5) -> RespWire | None:
    """A lean wire to ``client``'s server, when it is a plain TCP Redis; else None."""
    if not isinstance(client, Redis):
        return None
    pool = client.connection_pool
    if type(pool) is not ConnectionPool or pool.connection_class is not Connection:
        return None
    kwargs = pool.connection_kwargs
    if kwargs.get("credential_provider") is not None or kwargs.get("redis_connect_func") is not None:
        return None
    return RespWire(
        str(kwargs.get("host") or "localhost"),
        int(kwargs.get("port") or 6379),
        db=int(kwargs.get("db") or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        client_name=kwargs.get("client_name"),
        timeout=timeout,
    )
