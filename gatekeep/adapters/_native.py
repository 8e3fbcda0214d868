"""gatekeep on its own front server without ASGI's messages in between.

``gatekeep serve`` runs gatekeep's ASGI app on gatekeep's own server, which
would otherwise turn every request into a scope, every body chunk into a
``receive`` message and every answer into ``send`` messages, only for the
adapter to turn them back.  When the app is plain gatekeep (no wrapped app),
``ASGIApp.gatekeep_native`` is a ``NativeServe`` and the server hands it each
request cycle instead: the cycle's ``read`` gives body bytes, ``start`` and
``write`` take the answer.  Lifespan and WebSockets still go through ASGI.

What the request sees is the same as under any ASGI server (the ASGI
adapter's ``request_from_head`` makes what its ``request_from_scope`` would
make of the head's scope, without the scope; the same gateway), with one
difference for the better: the server knows at once when a client goes away, so the request's
work is cancelled then (nginx's 499), not after ``WATCH_AFTER`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import anyio

from .._filter import Exchange
from .._gateway import Gateway
from .._http import EMPTY_BODY, Body, Request, Response
from ._tasks import ClientDisconnected, TaskCancel

__all__ = ["NativeConnection", "NativeCycle", "NativeHead", "NativeServe", "write_response"]

log = logging.getLogger("gatekeep")


class NativeConnection(Protocol):
    """The connection a request came on (``_front._protocol.HTTPConnection``)."""

    client: tuple[str, int] | None
    server: tuple[str, int] | None
    scheme: str
    tls: dict[str, Any] | None  # the ASGI TLS extension


class NativeHead(Protocol):
    """What the front server parsed of a request's head (``_front._protocol.RequestHead``)."""

    method: str
    version: str
    raw_path: bytes  # the target before "?"
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    host: bytes | None  # the Host field's value
    conn: NativeConnection


class NativeCycle(Protocol):
    """One request of the front server, as ``NativeServe`` uses it (``_front._protocol._Cycle``)."""

    head: NativeHead
    has_body: bool
    body_done: bool
    on_disconnect: Callable[[], None] | None
    # The task the server runs this cycle in (set before it starts): no
    # ``asyncio.current_task()``, whose running-loop lookup is a getpid() system call.
    task: asyncio.Task[None] | None

    async def read(self) -> bytes | None: ...

    def read_now(self) -> bytes | None:
        """The whole body at once if it has all arrived and none was read; else None."""

    def start(self, status: int, headers: Any) -> None: ...

    async def write(self, body: bytes, more: bool) -> None: ...

    def write_last(self, body: bytes) -> None:
        """``write(body, False)``, synchronously (the last bytes never wait)."""


class _CycleBody:
    """The request body, read from the cycle on demand."""

    __slots__ = ("cycle", "done", "received")

    def __init__(self, cycle: NativeCycle) -> None:
        self.cycle = cycle
        self.done = False
        self.received = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    def read_now(self) -> bytes | None:
        """The whole body, when it has all arrived and none was read; else None (``_body.read_now``)."""
        if self.done or self.received:
            return None
        data = self.cycle.read_now()
        if data is None:
            return None
        self.done = True
        self.received = len(data)
        return data

    async def _iter(self) -> AsyncIterator[bytes]:
        if self.done:
            return
        cycle = self.cycle
        while True:
            data = await cycle.read()
            if data is None:
                self.done = True
                raise ClientDisconnected("client disconnected while sending the request body")
            last = cycle.body_done
            if last:
                self.done = True
            if data:
                self.received += len(data)
                yield data
            if last:
                return


async def write_response(
    response: Response, exchange: Exchange, write: Callable[[bytes, bool], Awaitable[None]]
) -> None:
    """Write ``response``'s body with ``write(bytes, more)``; a body that breaks mid-way aborts.

    The head has been started already.  A body that raises after its first
    bytes ends without its last write: the only honest signal left to the
    client is a connection cut short.
    """
    body = response.body
    if isinstance(body, bytes):
        exchange.bytes_out = len(body)
        await write(body, False)
        exchange.end = time.perf_counter()
        return
    sent = 0
    try:
        async for chunk in body:
            if chunk:
                sent += len(chunk)
                await write(chunk, True)
    except Exception as exc:
        exchange.bytes_out = sent
        exchange.error = exc
        log.warning("response body broke after %d bytes: %s", sent, exc)
        return
    exchange.bytes_out = sent
    await write(b"", False)
    exchange.end = time.perf_counter()


class NativeServe:
    """Serves one front-server request cycle with ``gateway`` (see the module doc).

    Args:
        request_from_head: the ASGI adapter's, which makes a request exactly as
            its ``request_from_scope`` would from the head's scope.
    """

    __slots__ = ("gateway", "request_from_head")

    def __init__(self, gateway: Gateway, request_from_head: Callable[[NativeHead, Body], Request]) -> None:
        self.gateway = gateway
        self.request_from_head = request_from_head

    async def __call__(self, cycle: NativeCycle) -> None:
        gateway = self.gateway
        body = _CycleBody(cycle) if cycle.has_body else None
        request = self.request_from_head(cycle.head, EMPTY_BODY if body is None else body)
        exchange = Exchange(request)
        response: Response | None = None
        task = cycle.task or asyncio.current_task()
        assert task is not None  # the front server runs every cycle in a task of its own
        cancel = TaskCancel(task)
        cycle.on_disconnect = cancel.cancel
        # ``with cancel:`` spelled out (two calls less on every request): our own
        # cancellation, and only that one, ends the request quietly.
        try:
            try:
                response = await gateway.handle(request, exchange, None)
                if response.status != 499:
                    cycle.start(response.status, response.headers.raw)
                    data = response.body
                    if isinstance(data, bytes):  # write_response's first case, inline
                        exchange.bytes_out = len(data)
                        cycle.write_last(data)
                        exchange.end = time.perf_counter()
                    else:
                        await write_response(response, exchange, cycle.write)
            except BaseException:
                cycle.on_disconnect = None
                if response is not None:
                    # Cancelled or broken: release the upstream connection whatever happens.
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                    response = None
                raise
            cycle.on_disconnect = None
        except BaseException as exc:
            if not cancel.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            if cancel.cancel_called:
                cancel.__exit__(None, None, None)
        if response is not None and response.holds_resources:
            await response.aclose()
        if not exchange.end:
            exchange.end = time.perf_counter()
        if body is not None:
            exchange.bytes_in = body.received
        if cancel.cancel_called:
            exchange.error = exchange.error or ClientDisconnected("client disconnected")
            if not exchange.status:
                exchange.status = 499  # gone before the answer's head: nginx's 499
                log.info("client closed the connection during %s %s", request.method, request.path)
        if gateway.has_log_phase:
            pending = gateway.log_now(exchange)  # (no coroutine when every log phase answers at once)
            if pending is not None:
                await pending
