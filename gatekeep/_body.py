"""Request bodies at the edge: client body timeouts, buffering, and the streaming cap.

Theory of operation
-------------------
A client that sends its body slowly must not hold what other clients need.
Three parts see to it, all in the core so that they hold under every adapter:

Timeouts (``timed``)
    Every read of a request body waits at most ``client_body_timeout``
    seconds for the next chunk (nginx's ``client_body_timeout``: the time
    between two reads, not the whole transfer), and at most what is left of
    ``client_body_total_timeout`` when that is set.  Only the wait for the
    client counts, never the time the consumer (a slow upstream) takes.
    Expiry raises ``RequestTimeout``: a 408 problem+json with
    ``Connection: close`` (RFC 9110 §15.5.9), and since it is not an
    ``UpstreamError`` no breaker, health check or retry counts it.  When it
    fires while the body streams to an upstream, the pool closes that
    connection instead of returning it.

Buffering (``BodyPolicy.prepare``, before an upstream connection is taken)
    Kong's ``request_buffering`` / nginx's ``proxy_request_buffering on``: a
    body of at most ``request_buffer_size`` bytes is read whole first, so an
    upstream connection is only taken once the body can go out at full
    speed.  A declared ``Content-Length`` decides up front; a chunked body is
    read ahead and streams after all once it grows past the limit.  All
    buffers together stay under ``request_buffer_memory`` (a counter, no
    lock: one event loop); a body that does not fit streams instead.  Worst
    case memory: ``request_buffer_memory``, plus what a streaming request
    keeps outside it: a chunked body's read-ahead (``request_buffer_size``)
    or the retry layer's (``retry_policy.body_limit``), for at most
    ``max_streaming_uploads`` requests per service.

A body already here (``read_now``)
    A body iterator may offer ``read_now()``: the whole body at once when it
    has all arrived and none was read, else ``None``.  The front server's
    does (a small body usually comes with its head), and ``TimedBody``
    passes it on: buffering such a body takes it without a read, a timer or
    a task switch.  Nothing else changes: the budget is taken as for any
    buffered body, and a body that has not all arrived is read as before.

The streaming cap (``_Uploads``)
    A body that streams (too big, not buffered by its route, or no room in
    the memory budget) holds an upstream connection for as long as its
    client takes.  At most ``max_streaming_uploads`` such requests per
    service (default: half of ``[gateway.pool] max_connections``) may be in
    flight; the next one waits up to the pool timeout for a slot, then gets
    503 with ``Retry-After`` (Envoy's overflow answer).  A slot is given back
    when its body has been read to the end, or when the upstream call ends.
    Requests without a body never wait here, so slow uploads cannot starve
    them of upstream connections.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from typing import Final, cast

import anyio

from ._config import RouteConfig, ServiceConfig
from ._errors import RequestTimeout, ServiceUnavailable
from ._http import EMPTY_BODY, Body, Request, is_replayable, replayable

__all__ = ["BodyPolicy", "Hold"]

# A 408 ends the connection: the rest of the body is not worth reading.
_CLOSE: Final = (("connection", "close"),)


class TimedBody:
    """A request body whose every read must finish in time (see the module doc).

    On asyncio one timer serves the whole body: each read only notes when it
    started waiting, and the timer, when it fires, either finds a read overdue
    (it cancels the reading task, and the read turns that into
    ``RequestTimeout``) or re-arms itself for the read in progress.  A body
    that flows costs no timer per chunk -- a cancel scope and a timer handle
    per read were most of a fast upload's cost.  Other event loops (trio) get
    a cancel scope per read.
    """

    __slots__ = ("_body", "_idle", "_total")

    def __init__(self, body: Body, idle: float, total: float | None) -> None:
        self._body = body
        self._idle = idle
        self._total = total

    def read_now(self) -> bytes | None:
        """The whole body if it has all arrived (nothing to time); else None."""
        now = getattr(self._body, "read_now", None)
        return None if now is None else cast("bytes | None", now())

    def __aiter__(self) -> AsyncIterator[bytes]:
        if asyncio._get_running_loop() is not None:
            return _Watched(self._body, self._idle, self._total)
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        it = aiter(self._body)
        idle = self._idle
        total = self._total
        deadline = None if total is None else anyio.current_time() + total
        while True:
            wait = idle if deadline is None else min(idle, deadline - anyio.current_time())
            with anyio.move_on_after(wait) as scope:
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    return
            if scope.cancelled_caught:
                raise _timeout(idle, total, deadline is not None and anyio.current_time() >= deadline)
            yield chunk


def _timeout(idle: float, total: float | None, whole: bool) -> RequestTimeout:
    if whole:
        return RequestTimeout(f"the request body did not arrive within {total:g} s", headers=_CLOSE)
    return RequestTimeout(f"no request body data for {idle:g} s", headers=_CLOSE)


class _Watched:
    """``TimedBody`` on asyncio: an async iterator with one watchdog timer."""

    __slots__ = ("_deadline", "_expired", "_idle", "_it", "_loop", "_reader", "_timer", "_total", "_waiting")

    def __init__(self, body: Body, idle: float, total: float | None) -> None:
        self._it = aiter(body)
        self._idle = idle
        self._total = total
        self._loop = asyncio.get_running_loop()
        self._deadline = math.inf if total is None else self._loop.time() + total
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = 0.0  # when the read in progress began; 0: none in progress
        self._reader: asyncio.Task[object] | None = None
        self._expired = False

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> bytes:
        loop = self._loop
        now = loop.time()
        self._waiting = now
        reader = self._reader = asyncio.current_task(loop)
        if self._timer is None:
            self._timer = loop.call_at(min(now + self._idle, self._deadline), self._check)
        try:
            return await self._it.__anext__()
        except asyncio.CancelledError:
            if self._expired and reader is not None and reader.uncancel() == 0:
                raise _timeout(self._idle, self._total, loop.time() >= self._deadline) from None
            raise
        except BaseException:
            self._stop()
            raise
        finally:
            self._waiting = 0.0

    def _check(self) -> None:
        self._timer = None
        started = self._waiting
        if not started:
            return  # no read in progress: the next one arms the timer again
        due = min(started + self._idle, self._deadline)
        if self._loop.time() >= due - 0.001:  # a timer may fire a clock tick early
            reader = self._reader
            if reader is not None and not reader.done():
                self._expired = True
                reader.cancel()
            return
        self._timer = self._loop.call_at(due, self._check)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def aclose(self) -> None:
        self._stop()
        close = getattr(self._it, "aclose", None)
        if close is not None:
            await close()


class _Budget:
    """Bytes that buffered bodies may hold, gateway-wide."""

    __slots__ = ("free",)

    def __init__(self, size: int) -> None:
        self.free = size

    def take(self, n: int) -> bool:
        if n > self.free:
            return False
        self.free -= n
        return True

    def give(self, n: int) -> None:
        self.free += n


class _Uploads:
    """The streaming-upload slots of one service."""

    __slots__ = ("limit", "name", "slots")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.slots = anyio.Semaphore(limit, fast_acquire=True)

    async def acquire(self, wait: float) -> None:
        """Take a slot, waiting at most ``wait`` seconds for one."""
        try:
            self.slots.acquire_nowait()
        except anyio.WouldBlock:
            with anyio.move_on_after(wait):
                await self.slots.acquire()
                return
            raise ServiceUnavailable(
                f"service {self.name!r} already streams {self.limit} request bodies; "
                f"none finished within {wait:g} s",
                headers=[("retry-after", "1")],
            ) from None


class Hold:
    """What one request holds for its body: buffer bytes, a streaming slot.  ``release`` is idempotent."""

    __slots__ = ("_budget", "_bytes", "_uploads")

    def __init__(self, budget: _Budget, n: int, uploads: _Uploads | None) -> None:
        self._budget = budget
        self._bytes = n
        self._uploads = uploads

    def release(self) -> None:
        n, self._bytes = self._bytes, 0
        if n:
            self._budget.give(n)
        uploads, self._uploads = self._uploads, None
        if uploads is not None:
            uploads.slots.release()


class BodyPolicy:
    """The body rules of one gateway config.

    Args:
        idle: ``client_body_timeout`` (seconds between two reads).
        total: ``client_body_total_timeout`` (seconds for the whole body), or ``None``.
        buffer_size: bodies up to this many bytes are buffered.
        memory: bytes all buffered bodies may hold together.
        uploads: per service name, its ``max_streaming_uploads``.
        wait: seconds to wait for a streaming slot (the pool timeout).
    """

    def __init__(
        self,
        *,
        idle: float,
        total: float | None,
        buffer_size: int,
        memory: int,
        uploads: Mapping[str, int],
        wait: float,
    ) -> None:
        self.idle = idle
        self.total = total
        self.buffer_size = buffer_size
        self._budget = _Budget(memory)
        self._uploads = {name: _Uploads(name, limit) for name, limit in uploads.items()}
        self._wait = wait

    def streaming(self) -> dict[str, int]:
        """Per service, the request bodies streaming now (each holds a slot); read-only."""
        return {name: u.limit - u.slots.value for name, u in self._uploads.items()}

    def timed(self, body: Body) -> Body:
        """``body`` with the client body timeouts (a body held in memory needs none)."""
        if body is EMPTY_BODY or is_replayable(body):
            return body
        return TimedBody(body, self.idle, self.total)

    async def prepare(self, request: Request, route: RouteConfig, service: ServiceConfig) -> Hold | None:
        """Buffer ``request``'s body, or take a streaming slot of ``service`` for it.

        Called before an upstream connection is taken.  Returns what the
        request holds (release it once the upstream call is over), ``None``
        when it holds nothing.

        Raises:
            RequestTimeout: the client stalled while its body was buffered.
            ServiceUnavailable: no streaming slot came free in time.
        """
        body = request.body
        if body is EMPTY_BODY or is_replayable(body):
            return None
        length: int | None = None
        chunked = False
        for name, value in request.headers.raw:
            if name == b"content-length":
                if not value.isdigit():
                    return None  # the pool refuses it (400) before any connection
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if chunked:
            length = None
        elif length is None or length == 0:
            return None  # HTTP/1.1 framing: no body
        budget = self._budget
        buffering = route.request_buffering
        if buffering if buffering is not None else service.request_buffering:
            if length is not None:
                if length <= self.buffer_size and budget.take(length):
                    now = getattr(body, "read_now", None)
                    whole = None if now is None else now()
                    if whole is not None:  # all here already (llhttp framed it by its Content-Length)
                        request.body = replayable(whole)
                        return Hold(budget, length, None)
                    try:
                        await self._read_ahead(request, length)
                    except BaseException:
                        budget.give(length)
                        raise
                    return Hold(budget, length, None)
            else:
                held = await self._read_ahead(request, None)
                if held >= 0:
                    return Hold(budget, held, None)
        uploads = self._uploads.get(service.name)
        if uploads is None:
            return None
        await uploads.acquire(self._wait)
        hold = Hold(budget, 0, uploads)
        request.body = _release_at_end(request.body, hold)
        return hold

    async def _read_ahead(self, request: Request, reserved: int | None) -> int:
        """Read the body into memory; the bytes held, or -1 when it streams after all.

        A body whose ``reserved`` bytes were taken from the budget up front
        (its ``Content-Length``) is read whole.  A chunked one takes budget
        as it grows and streams once it outgrows the limit or the budget.
        At most ``_MAX_PARTS`` chunks are kept as they came and joined at the
        end; past them one ``bytearray``: a client trickling a byte at a time
        must not cost an object per byte.
        """
        budget = self._budget
        limit = self.buffer_size
        it = aiter(request.body)
        # The first chunks are kept as they came and joined once at the end (a body that came in
        # one or two reads is copied at most once); past _MAX_PARTS of them, one ``bytearray``.
        parts: list[bytes] = []
        data: bytearray | None = None
        size = 0
        taken = 0
        try:
            async for chunk in it:
                size += len(chunk)
                if data is not None:
                    data += chunk
                elif len(parts) < _MAX_PARTS:
                    parts.append(chunk)
                else:
                    data = bytearray(b"".join(parts))
                    data += chunk
                    parts = []
                if reserved is None:
                    if size > limit or not budget.take(len(chunk)):
                        budget.give(taken)
                        request.body = _resume(_joined(parts, data), it)
                        return -1
                    taken += len(chunk)
        except BaseException:
            budget.give(taken)
            raise
        whole = _joined(parts, data)
        request.body = replayable(whole)
        return len(whole) if reserved is None else reserved


# A buffered body's chunks kept as they came before ``_read_ahead`` copies them into one buffer:
# a client that trickles a byte at a time costs no object per byte past these.
_MAX_PARTS: Final = 16


def _joined(parts: list[bytes], data: bytearray | None) -> bytes:
    if data is not None:
        return bytes(data)
    if len(parts) == 1:
        return bytes(parts[0])  # (the chunk itself when it is bytes: no copy)
    return b"".join(parts)


async def _resume(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest:
        yield chunk


async def _release_at_end(body: Body, hold: Hold) -> AsyncIterator[bytes]:
    # The slot is for a client that is still sending: free it at the body's end.
    async for chunk in body:
        yield chunk
    hold.release()
