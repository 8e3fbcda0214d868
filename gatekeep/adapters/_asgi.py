"""The ASGI 3 adapter: ``app = gatekeep.asgi(gateway)``.

It turns an ASGI ``http`` scope into a ``Request`` whose body pulls from
``receive``, lets the gateway answer, and streams the ``Response`` back with
``send``.  ``lifespan`` enters the gateway (``async with gateway``) so
filters and background tasks start with the server and stop with it.

Client disconnects: ASGI servers report them only through ``receive``, and
uvicorn silently drops ``send`` calls after one.  A request that is still
running after ``WATCH_AFTER`` seconds gets a watcher task (on the gateway's
lifespan task group) that waits on ``receive`` once the body is read and
cancels the request's work when ``http.disconnect`` arrives, which closes the
upstream connection.  Short requests never pay for a task, nor for a timer: one
ticker per app starts the watches of the requests that have run long enough.
On asyncio the cancellation is a plain cancellation of the request's task
(an anyio cancel scope per request cost more than the rest of the adapter);
elsewhere (trio) an anyio cancel scope does it.

Middleware mode: ``gatekeep.asgi(gateway, app=other_asgi_app)`` puts the
gateway's filters in front of ``other_asgi_app``; routes whose service has
``url = "app://"``, and (with ``fallthrough``) requests no route matches,
are answered by the wrapped app.  The principal set by authentication is
in ``scope["gatekeep.identity"]`` and ``scope["gatekeep.consumer"]``.

WebSockets: a ``websocket`` scope is a handshake, and it goes through
``Gateway.handle`` like a GET (``Request.websocket`` set): edge hygiene,
routing, the route's request filters.  Only when it reaches the wrapped app
(an ``app://`` route, or fallthrough) is the app called, with the original
``receive``/``send`` and a scope carrying the filtered headers, the normalised
path and the principal.  Any other answer denies the handshake: sent as an
HTTP answer through the ``websocket.http.response`` extension when the server
has it (uvicorn, hypercorn and granian do), else by closing before accept
(code 1008 for a 4xx answer, 1011 otherwise; the server then answers 403).
A route to a remote upstream is proxied (``gatekeep/_websocket``): the
upstream is chosen and connected like for HTTP, its non-101 answer denies
the handshake as above, and after its 101 the client is accepted with the
upstream's subprotocol and the session relays messages until a close.  At
lifespan shutdown proxied sockets are closed with 1001.  No other scope
type is served.

Client aborts: a client that goes away before its request is complete is no
error of the gateway's.  The request ends as ``ClientClosedRequest``
(recorded as status 499, nginx's convention, in logs and metrics) and
nothing is sent.  A server that raises from ``receive`` because the body is
malformed (a bad chunk) makes it a 400.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import anyio
from anyio.abc import TaskGroup

from .._errors import BadRequest, GatekeepError
from .._filter import Exchange
from .._gateway import Gateway
from .._http import EMPTY_BODY, Headers, Request, Response, header_names, problem_response
from .._websocket._session import relay
from .._websocket._upstream import UPSTREAM
from ._asgi_app import _UPGRADE, ASGI, AppCaller, AppLifespan, Receive, Scope, Send, deny_websocket
from ._native import NativeHead, NativeServe, write_response
from ._tasks import ClientDisconnected, TaskCancel

__all__ = ["ASGIApp", "Middleware", "asgi"]

log = logging.getLogger("gatekeep")


# A request still running after this many seconds starts watching for its
# client's disconnect (see ``_DisconnectWatch``).
WATCH_AFTER = 0.5


# What a server's ``receive`` may raise when the client's connection is gone.
_CONNECTION_ERRORS = (OSError, anyio.BrokenResourceError, anyio.EndOfStream)


def _receive_failed(exc: Exception) -> GatekeepError:
    """What an exception raised by the server's ``receive`` means for the request.

    The ASGI spec has ``receive`` report a lost client as ``http.disconnect``,
    but a server may raise instead: ``OSError`` when the connection broke,
    anything else (h11's ``RemoteProtocolError`` in a chunk) when it could not
    parse the body.
    """
    if isinstance(exc, _CONNECTION_ERRORS):
        return ClientDisconnected(f"the connection broke while the request body was read: {exc!r}")
    log.debug("the server could not read the request body", exc_info=exc)
    return BadRequest("the request body is malformed")


def asgi(gateway: Gateway, app: ASGI | None = None) -> ASGIApp:
    """An ASGI 3 application serving ``gateway`` (in front of ``app``, if given)."""
    return ASGIApp(gateway, app)


class _Body:
    """The request body, pulled from ``receive`` on demand."""

    __slots__ = ("done", "on_done", "receive", "received")

    def __init__(self, receive: Receive, on_done: Callable[[], None] | None) -> None:
        self.receive = receive
        self.done = False
        self.on_done = on_done
        self.received = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        if self.done:
            return
        while True:
            try:
                message = await self.receive()
            except Exception as exc:
                self._finish()
                raise _receive_failed(exc) from exc
            kind = message["type"]
            if kind == "http.request":
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if not more:
                    self._finish()
                if chunk:
                    self.received += len(chunk)
                    yield chunk
                if not more:
                    return
            elif kind == "http.disconnect":
                self._finish()
                raise ClientDisconnected("client disconnected while sending the request body")

    def _finish(self) -> None:
        self.done = True
        if self.on_done is not None:
            self.on_done()
            self.on_done = None


# The body of a request without one (nothing to read, nothing to watch for).
_NO_BODY = _Body(None, None)  # type: ignore[arg-type]
_NO_BODY.done = True

# Host header values seen before and their host names: most traffic repeats a few.
_HOSTS: dict[bytes, str] = {}
_HOSTS_LIMIT = 1024


def _host_name(value: bytes) -> str:
    """The host name of a ``Host`` value (the port cut off, lowered); remembered."""
    host = value.decode("latin-1")
    if host.startswith("["):
        host = host.split("]", 1)[0] + "]"
    else:
        colon = host.rfind(":")  # (``rsplit(":", 1)[0]`` without the list)
        if colon >= 0:
            host = host[:colon]
    host = host.lower()
    if len(_HOSTS) >= _HOSTS_LIMIT:
        _HOSTS.clear()  # a client inventing hosts: start over, stay bounded
    if type(value) is bytes:
        _HOSTS[value] = host
    return host


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    names = header_names(headers)
    if b"content-length" not in names:
        return b"transfer-encoding" in names
    for k, v in headers:
        if k == b"content-length":
            return v != b"0" or b"transfer-encoding" in names
        if k == b"transfer-encoding":
            return True
    return False  # pragma: no cover - content-length is among the names


class ASGIApp:
    """The ASGI application (see ``asgi``)."""

    def __init__(self, gateway: Gateway, app: ASGI | None = None) -> None:
        self.gateway = gateway
        self.app = app
        # Middleware mode: the wrapped app is the upstream of ``app://`` routes, handed to
        # ``Gateway.handle`` with each request (the gateway itself is never changed).
        self._caller: AppCaller | None = AppCaller(app, gateway) if app is not None else None
        self._started = False
        self._watches = _Watches()
        # On gatekeep's own front server, plain gatekeep skips ASGI's messages (``_native``).
        self.gatekeep_native: NativeServe | None = None
        if app is None:
            self.gatekeep_native = NativeServe(gateway, self.request_from_head)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            # Never hand the wrapped app a scope no filter looked at; the ASGI
            # spec has an app raise on a scope type it does not know.
            raise ValueError(f"gatekeep does not serve ASGI {kind!r} scopes")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake: the gateway's filters first, then the wrapped app or a denial."""
        scheme = "https" if scope.get("scheme") == "wss" else "http"
        try:
            request = self.request_from_scope({**scope, "method": "GET", "scheme": scheme}, EMPTY_BODY)
        except GatekeepError as exc:  # a head the gateway refuses (a bad Host ...)
            await deny_websocket(
                scope, send, problem_response(exc, request_id_header=self.gateway.request_id_header)
            )
            return
        request.websocket = True
        exchange = Exchange(request)
        gateway = self.gateway
        response = await gateway.handle(request, exchange, self._caller)
        try:
            if request.state.get(_UPGRADE) is response and self._caller is not None:
                await self._caller.websocket(request, scope, receive, send, exchange)
            elif response.status == 101 and (upstream := request.state.get(UPSTREAM)) is not None:
                # The upstream accepted (gatekeep/_websocket): relay until either side closes.
                settings = gateway.config.gateway.websocket
                await relay(
                    receive, send, upstream, response, exchange, settings=settings, stats=gateway.websockets
                )
            else:
                await deny_websocket(scope, send, response, exchange)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            exchange.end = time.perf_counter()
            if self.gateway.has_log_phase:
                await self.gateway.log(exchange)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with anyio.create_task_group() as tg:
            # Middleware mode: the wrapped app's own lifespan runs inside the gateway's.
            inner = AppLifespan(self.app, scope) if self.app is not None else None
            try:
                await self.gateway.__aenter__()
            except Exception as exc:
                log.exception("gateway failed to start")
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            if inner is not None and self._caller is not None:
                self._caller.state = inner.state
                failure = await inner.startup(tg)
                if failure is not None:
                    await self.gateway.__aexit__(None, None, None)
                    inner.close()
                    tg.cancel_scope.cancel()
                    await send({"type": "lifespan.startup.failed", "message": failure})
                    return
            self._started = True
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            await _close_websockets(self.gateway)
            try:
                if inner is not None:
                    failure = await inner.shutdown()
                    if failure is not None:
                        log.error("wrapped app failed to shut down: %s", failure)
            finally:
                try:
                    await self.gateway.__aexit__(None, None, None)
                finally:
                    self._started = False
                    if inner is not None:
                        inner.close()
            await send({"type": "lifespan.shutdown.complete"})

    def request_from_scope(self, scope: Scope, body: Any) -> Request:
        raw_headers = scope["headers"]
        headers = Headers(raw_headers if isinstance(raw_headers, list) else [tuple(h) for h in raw_headers])
        raw_path = scope.get("raw_path")
        if raw_path is None:
            raw_path = quote(scope["path"]).encode("latin-1")
        elif b"?" in raw_path:
            raw_path = raw_path.split(b"?", 1)[0]
        host_header = None
        for name, value in headers.raw:  # (``Headers.get``, inline)
            if name == b"host":
                host_header = value
                break
        if host_header:
            host = _HOSTS.get(host_header) if type(host_header) is bytes else None
            if host is None:
                host = _host_name(host_header)
        else:
            server = scope.get("server") or ("", None)
            host = (server[0] or "").lower()
        client = scope.get("client")
        extensions = scope.get("extensions")
        tls = extensions.get("tls") if extensions else None
        # Positional in ``Request``'s field order (its public constructor's): a third
        # cheaper than the same call by keyword, on every request.
        return Request(
            scope["method"],  # method
            "",  # path (normalised by the gateway)
            scope.get("query_string", b""),  # query_string
            headers,  # headers
            body,  # body
            scope.get("scheme", "http"),  # scheme
            host,  # host
            raw_path,  # raw_path
            (client[0], client[1]) if client else None,  # client
            scope.get("server"),  # server
            scope.get("http_version", "1.1"),  # http_version
            state={"tls": tls} if tls is not None else {},
        )

    def request_from_head(self, head: NativeHead, body: Any) -> Request:
        """What ``request_from_scope`` makes of ``head.scope()``, without the scope (gatekeep's
        own front server: its parser found the Host field, its connection knows the rest)."""
        value = head.host
        if value:
            host = _HOSTS.get(value) if type(value) is bytes else None
            if host is None:
                host = _host_name(value)
        else:
            server = head.conn.server
            host = server[0].lower() if server else ""
        conn = head.conn
        tls = conn.tls
        return Request(
            head.method,  # method
            "",  # path (normalised by the gateway)
            head.query_string,  # query_string
            Headers(head.headers),  # headers
            body,  # body
            conn.scheme,  # scheme
            host,  # host
            head.raw_path,  # raw_path
            conn.client,  # client
            conn.server,  # server
            head.version,  # http_version
            state={"tls": tls} if tls is not None else {},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        if not _has_body(scope["headers"]):
            body = _NO_BODY
            request = self.request_from_scope(scope, EMPTY_BODY)
        else:
            body = _Body(receive, None)
            request = self.request_from_scope(scope, body)
        exchange = Exchange(request)
        response: Response | None = None
        caller = self._caller
        watches = self._watches
        task_group = self.gateway.task_group
        if task_group is not watches.task_group:
            watches.start(task_group)
        task = _current_task()
        cancel: TaskCancel | anyio.CancelScope = TaskCancel(task) if task is not None else anyio.CancelScope()
        with cancel:
            watch = _DisconnectWatch(receive, cancel, body, watches)
            try:
                response = await self.gateway.handle(request, exchange, caller)
                if response.status != 499:
                    await send_response(response, send, exchange)
                # else the client is gone (ClientClosedRequest): nobody is left to answer
            except BaseException:
                watch.disarm()
                if response is not None:
                    # Cancelled or broken: release the upstream connection whatever happens.
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                    response = None
                raise
            finally:
                watch.disarm()
        if response is not None:
            # The normal way out: nothing can cancel this any more (the watch is off).
            await response.aclose()
        if not exchange.end:
            exchange.end = time.perf_counter()
        exchange.bytes_in = body.received
        if watch.disconnected:
            exchange.error = exchange.error or ClientDisconnected("client disconnected")
            if not exchange.status:
                # Gone before the answer's head (the watch cancelled ``handle``): nginx's 499.
                exchange.status = 499
                log.info("client closed the connection during %s %s", request.method, request.path)
        if self.gateway.has_log_phase:
            pending = self.gateway.log_now(exchange)  # (no coroutine when every log phase answers at once)
            if pending is not None:
                await pending


async def _close_websockets(gateway: Gateway) -> None:
    """Shutdown: proxied WebSockets close with 1001 (going away), given ``close_timeout`` to do so."""
    stats = gateway.websockets
    if stats.close_all(1001, "the gateway is shutting down"):
        with anyio.move_on_after(gateway.config.gateway.websocket.close_timeout):
            await stats.wait_closed()


class Middleware(ASGIApp):
    """The gateway as Starlette-style middleware: the wrapped app first, options as keywords.

    ``starlette_app.add_middleware(gatekeep.Middleware, gateway=gw)`` (FastAPI
    alike) puts ``gw``'s filters in front of the app; ``app://`` routes and,
    with ``fallthrough``, unmatched requests reach it (see the module doc).
    The gateway starts and stops with the server's lifespan.
    """

    def __init__(self, app: ASGI, *, gateway: Gateway) -> None:
        super().__init__(gateway, app)


def _current_task() -> asyncio.Task[Any] | None:
    """The running asyncio task; ``None`` on another backend (trio)."""
    if asyncio._get_running_loop() is None:
        return None
    return asyncio.current_task()


class _Watches:
    """Requests in flight, and the one task that starts their disconnect watches.

    Instead of a timer per request, a ticker on the gateway's lifespan task
    group looks at the requests in flight every ``WATCH_AFTER / 2`` seconds
    and starts a watch for each that has run longer than ``WATCH_AFTER``.
    """

    __slots__ = ("inflight", "task_group")

    def __init__(self) -> None:
        self.inflight: set[_DisconnectWatch] = set()
        self.task_group: TaskGroup | None = None

    def start(self, task_group: TaskGroup | None) -> None:
        self.task_group = task_group
        if task_group is not None:
            task_group.start_soon(self._tick, task_group)

    async def _tick(self, task_group: TaskGroup) -> None:
        while self.task_group is task_group:
            await anyio.sleep(WATCH_AFTER / 2)
            due = time.monotonic() - WATCH_AFTER
            for watch in [w for w in self.inflight if w.since <= due]:
                self.inflight.discard(watch)
                watch.due(task_group)


class _DisconnectWatch:
    """Cancels a request's work when its client goes away (see module doc).

    Most requests finish in a few milliseconds, and a watcher task per
    request would cost more than the rest of the proxy path.  So the watch
    is lazy: the request only registers with ``_Watches``, whose ticker
    starts a watcher, on the gateway's lifespan task group, once the request
    has run for ``WATCH_AFTER`` seconds and its body has been read
    (``receive`` then only reports the disconnect).
    """

    __slots__ = ("body", "cancel", "disconnected", "finished", "receive", "since", "watcher", "watches")

    def __init__(
        self, receive: Receive, cancel: TaskCancel | anyio.CancelScope, body: _Body, watches: _Watches
    ):
        self.receive = receive
        self.cancel = cancel
        self.body = body
        self.disconnected = False
        self.finished = False
        self.watcher: anyio.CancelScope | None = None
        self.watches: _Watches | None = None
        if watches.task_group is not None:
            self.since = time.monotonic()
            self.watches = watches
            watches.inflight.add(self)

    def due(self, task_group: TaskGroup) -> None:
        self.watches = None
        if self.finished:
            return
        if self.body.done:
            task_group.start_soon(self._run)
        else:
            self.body.on_done = lambda: self._start(task_group)

    def _start(self, task_group: TaskGroup) -> None:
        if not self.finished:
            task_group.start_soon(self._run)

    async def _run(self) -> None:
        with anyio.CancelScope() as scope:
            self.watcher = scope
            requests = 0
            while not self.finished:
                try:
                    message = await self.receive()
                except Exception as exc:
                    # This task lives in the gateway's task group: a server's error
                    # must end the watch, never the gateway.
                    if not isinstance(exc, _CONNECTION_ERRORS):
                        return
                    message = {"type": "http.disconnect"}
                if message["type"] == "http.disconnect":
                    if not self.finished:
                        self.disconnected = True
                        self.cancel.cancel()
                    return
                # The one empty body message of a request without a body may
                # come first; a server that keeps answering anything else
                # gives no disconnect signal: stop rather than spin.
                requests += 1
                if requests > 1:
                    return

    def disarm(self) -> None:
        if self.finished:
            return
        self.finished = True
        watches = self.watches
        if watches is not None:
            self.watches = None
            watches.inflight.discard(self)
        self.body.on_done = None
        if self.watcher is not None:
            self.watcher.cancel()


async def send_response(response: Response, send: Send, exchange: Exchange) -> None:
    """Send ``response`` with ASGI ``send``; a body that breaks mid-way aborts."""
    await send({"type": "http.response.start", "status": response.status, "headers": response.headers.raw})

    async def write(body: bytes, more: bool) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": more})

    await write_response(response, exchange, write)
