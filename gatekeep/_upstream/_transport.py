"""The byte pipe under one upstream connection.

Theory of operation
-------------------
An upstream connection needs four things from its transport: write bytes
(waiting while the kernel buffer is full), read bytes with a deadline, say
without any system call whether an idle connection went stale, and close.

On asyncio (what uvicorn, hypercorn and granian run) ``AsyncioTransport``
does this with an ``asyncio.Protocol`` directly: reads land in a buffer as the
loop delivers them, a waiting reader is woken through one future, and EOF or unsolicited bytes on an idle
connection are simply noticed by the protocol, so the pool's staleness check
is a flag test.  This costs a fraction of a generic anyio stream, which pays
a checkpoint and a cancel scope per call on the hot path.

Read deadlines cost no timer per read: each connection keeps one lazy
``loop.call_at`` timer.  A read only stores its deadline; when the timer
fires it fails the waiting read if that deadline passed, else sleeps again
until the current deadline.  With the usual fixed read timeout the timer
fires about once per timeout per connection, whatever the request rate.

Reading applies backpressure: past ``_HIGH_WATER`` buffered bytes the
protocol pauses the socket until the reader catches up.

On any other anyio backend (trio) ``AnyioTransport`` wraps an anyio byte
stream with the same interface, so the connection above is written once.

Both raise plain ``TimeoutError`` when a deadline passes, the ``OSError``
that broke the connection, and return ``b""`` at EOF; the connection's one
error boundary translates them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Any, Final, Protocol, cast

import anyio
import anyio.abc

__all__ = ["AnyioTransport", "AsyncioTransport", "Transport", "open_transport"]

_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024


class Transport(Protocol):
    async def send(self, data: bytes | list[bytes], within: float | None) -> None:
        """Write ``data`` (a list: its parts, in order, without joining them first)."""

    async def receive(self, within: float | None) -> bytes: ...

    def is_stale(self) -> bool: ...

    def abort(self) -> None: ...


class AsyncioTransport(asyncio.Protocol):
    """A lean reader/writer over an asyncio transport (see module doc)."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_drain",
        "_eof",
        "_error",
        "_loop",
        "_paused_reading",
        "_paused_writing",
        "_read_deadline",
        "_timer",
        "_timer_at",
        "_transport",
        "_waiter",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._read_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not TCP
                pass

    def data_received(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused_reading and self._transport is not None:
            self._paused_reading = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        self._eof = True
        self._wake()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            if exc is None:
                drain.set_result(None)
            else:
                drain.set_exception(exc)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- Transport ---------------------------------------------------------

    async def send(self, data: bytes | list[bytes], within: float | None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise self._error or ConnectionResetError("connection closed")
        if type(data) is list:
            transport.writelines(data)  # one writev on uvloop, no copy
        else:
            transport.write(data)  # type: ignore[arg-type]
        if self._paused_writing:
            drain = self._drain = self._loop.create_future()
            await self._wait(drain, within)

    async def receive(self, within: float | None) -> bytes:
        buffer = self._buffer
        if not buffer:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            waiter = self._waiter = self._loop.create_future()
            if within is None:
                await waiter
            else:
                deadline = self._read_deadline = self._loop.time() + within
                if self._timer is None or self._timer_at > deadline:
                    self._arm(deadline)
                try:
                    await waiter
                finally:
                    self._read_deadline = 0.0
            if not buffer:
                if self._error is not None:
                    raise self._error
                return b""
        data = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._buffered = 0
        if self._paused_reading and self._transport is not None:
            self._paused_reading = False
            self._transport.resume_reading()
        return data

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._read_timer)

    def _read_timer(self) -> None:
        self._timer = None
        deadline = self._read_deadline
        waiter = self._waiter
        if not deadline or waiter is None:
            return  # no read waiting: the next one arms again
        if self._loop.time() >= deadline:
            _expire(waiter)
        else:
            self._arm(deadline)

    async def _wait(self, future: asyncio.Future[None], within: float | None) -> None:
        if within is None:
            await future
            return
        timer = self._loop.call_later(within, _expire, future)
        try:
            await future
        finally:
            timer.cancel()

    def is_stale(self) -> bool:
        """EOF, an error, or unsolicited bytes: this idle connection must not be reused."""
        transport = self._transport
        return self._eof or bool(self._buffer) or transport is None or transport.is_closing()

    def abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()
        self._eof = True
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class AnyioTransport:
    """The same interface over any anyio byte stream (trio, or tests)."""

    __slots__ = ("_raw", "_stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._raw: socket.socket | None = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)

    async def send(self, data: bytes | list[bytes], within: float | None) -> None:
        whole = b"".join(data) if isinstance(data, list) else data
        if within is None:
            await self._stream.send(whole)
            return
        with anyio.move_on_after(within) as scope:
            await self._stream.send(whole)
        if scope.cancelled_caught:
            raise TimeoutError

    async def receive(self, within: float | None) -> bytes:
        try:
            if within is None:
                return await self._stream.receive(65536)
            with anyio.move_on_after(within) as scope:
                return await self._stream.receive(65536)
        except anyio.EndOfStream:
            return b""
        if scope.cancelled_caught:
            raise TimeoutError
        return b""  # pragma: no cover

    def is_stale(self) -> bool:
        raw = self._raw
        if raw is None:
            return False
        try:
            raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def abort(self) -> None:
        raw = self._raw
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # The stream's own close happens in aclose (async).

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self._stream)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # another backend (trio)
        return None


async def open_transport(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    server_name: str | None,
) -> Any:
    """Connect; the caller bounds the time (``anyio.fail_after``)."""
    loop = _running_loop()
    if loop is not None:
        protocol = AsyncioTransport(loop)
        if ssl_context is None:
            await loop.create_connection(lambda: protocol, host, port)
        else:
            await loop.create_connection(
                lambda: protocol,
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_name or host,
                ssl_shutdown_timeout=1.0,
            )
        return protocol
    if ssl_context is None:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
    else:
        stream = await anyio.connect_tcp(
            host,
            port,
            ssl_context=ssl_context,
            tls_hostname=server_name or host,
            tls_standard_compatible=False,
        )
    return AnyioTransport(stream)
