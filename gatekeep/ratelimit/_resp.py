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
* ``RespProtocol`` is an asyncio ``Protocol`` on one TCP connection that
  answers round trips in order: a round trip writes its commands in one
  ``write`` and resolves one future when all their replies have arrived;
* ``RespWire`` keeps one such connection, opens it on first use (``AUTH``,
  ``SELECT`` and ``CLIENT SETNAME`` as the redis-py client would), and drops it
  on any failure: once a reply may be missing or late, the stream cannot be
  trusted.  A failure on a reused connection before any reply arrived (a
  server that restarted while we were idle) is retried once on a fresh one,
  as redis-py does.

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
import re
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["RespProtocol", "RespWire", "bulk", "pack", "parse", "wire_for"]

_CRLF: Final = b"\r\n"
# A reply we never asked for, or bigger than any the limiter gets, ends the connection.
_MAX_BUFFER: Final = 1 << 20
# An array of integers and what follows it: a reply of the limiter's shape, unless the count
# differs (then one of another shape that the general path reads).
_INTEGERS: Final = re.compile(rb"\*([0-9]+)\r\n((?::-?[0-9]+\r\n)*)")


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


class _Trip:
    __slots__ = ("count", "future", "replies")

    def __init__(self, count: int, future: asyncio.Future[list[Any]]) -> None:
        self.count = count
        self.future = future
        self.replies: list[Any] = []


class RespProtocol(asyncio.Protocol):
    """One connection to Redis: round trips answered in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._trips: deque[_Trip] = deque()
        self._lost: BaseException | None = None
        self.replies = 0  # replies read on this connection so far

    @property
    def alive(self) -> bool:
        return self._transport is not None and self._lost is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        trips = self._trips
        try:
            while trips and pos < len(buf):
                try:
                    reply, pos = parse(buf, pos)
                except Incomplete:
                    break
                self.replies += 1
                trip = trips[0]
                trip.replies.append(reply)
                if len(trip.replies) == trip.count:
                    trips.popleft()
                    if not trip.future.done():
                        trip.future.set_result(trip.replies)
        except ProtocolViolation as exc:
            self._fail(exc)
            return
        del buf[:pos]
        if buf and not trips or len(buf) > _MAX_BUFFER:
            self._fail(ProtocolViolation("Redis sent a reply nobody asked for"))

    def roundtrip(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write ``payload`` (``count`` packed commands); the future gets their replies."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self._lost is not None or self._transport is None:
            future.set_exception(self._lost or RedisConnectionError("not connected to Redis"))
            return future
        self._trips.append(_Trip(count, future))
        self._transport.write(payload)
        return future

    def close(self) -> None:
        self._fail(RedisConnectionError("the connection to Redis was closed"))

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        while self._trips:
            future = self._trips.popleft().future
            if not future.done():
                future.set_exception(self._lost)
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the socket goes with it
                self._transport.abort()


class RespWire:
    """One lean connection to a plain TCP Redis, opened on first use."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
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
        self._protocol: RespProtocol | None = None

    def __repr__(self) -> str:  # never the password
        return f"RespWire({self._address[0]}:{self._address[1]})"

    async def roundtrip(self, commands: Sequence[Sequence[bytes | str | int]]) -> list[Any]:
        """Every command's reply, in order; a server's error reply is a ``ResponseError`` value."""
        return await self.send(b"".join([pack(command) for command in commands]), len(commands))

    async def send(self, payload: bytes, count: int) -> list[Any]:
        """``roundtrip`` for ``count`` commands the caller packed (``payload``) itself."""
        for attempt in (1, 2):
            protocol = self._protocol
            reused = protocol is not None and protocol.alive
            if protocol is None or not protocol.alive:
                protocol = self._protocol = await self._connect()
            before = protocol.replies
            try:
                return await protocol.roundtrip(payload, count)
            except BaseException as exc:
                self._protocol = None
                protocol.close()
                stale = reused and protocol.replies == before
                if attempt == 1 and stale and isinstance(exc, RedisConnectionError):
                    continue  # nothing reached a live server on a stale connection: once more
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self) -> RespProtocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(RespProtocol, *self._address)
        except OSError as exc:
            raise RedisConnectionError(
                f"cannot connect to Redis at {self._address[0]}:{self._address[1]}: {exc.strerror or exc}"
            ) from exc
        if self._setup:
            try:
                replies = await protocol.roundtrip(b"".join(self._setup), len(self._setup))
            except BaseException:
                protocol.close()
                raise
            for reply in replies:
                if isinstance(reply, BaseException):
                    protocol.close()
                    raise reply
        return protocol

    def close(self) -> None:
        """Drop the connection (a round trip in flight fails with ``ConnectionError``)."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()


def wire_for(client: Any) -> RespWire | None:
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
    )
