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
A route to a remote upstream answers 501 (WebSocket proxying is not
supported yet).  No other scope type is served.

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
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

import anyio
from anyio.abc import TaskGroup

from ._errors import BadRequest, ClientClosedRequest, GatekeepError, UpstreamError
from ._filter import Exchange
from ._gateway import Gateway
from ._http import EMPTY_BODY, Headers, Request, Response, header_names, problem_response

__all__ = ["ASGIApp", "asgi"]

log = logging.getLogger("gatekeep")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


# A request still running after this many seconds starts watching for its
# client's disconnect (see ``_DisconnectWatch``).
WATCH_AFTER = 0.5


class ClientDisconnected(ClientClosedRequest):
    """The client went away before its request body was read."""


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
        self._caller: _AppCaller | None = None
        if app is not None:
            self._caller = _AppCaller(app, gateway)
            gateway.app = self._caller
        self._started = False
        self._watches = _Watches()

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
            await deny_websocket(scope, send, problem_response(exc))
            return
        request.websocket = True
        exchange = Exchange(request)
        response = await self.gateway.handle(request, exchange)
        try:
            if request.state.get(_UPGRADE) is response and self._caller is not None:
                await self._caller.websocket(request, scope, receive, send, exchange)
            else:
                await deny_websocket(scope, send, response, exchange)
        finally:
            await response.aclose()
            exchange.end = time.perf_counter()
            if self.gateway.has_log_phase:
                await self.gateway.log(exchange)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with anyio.create_task_group() as tg:
            # Middleware mode: the wrapped app's own lifespan runs inside the gateway's.
            inner = _AppLifespan(self.app, scope) if self.app is not None else None
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
        else:
            raw_path = raw_path.split(b"?", 1)[0]
        host_header = headers.get(b"host")
        if host_header:
            host = host_header.decode("latin-1")
            if host.startswith("["):
                host = host.split("]", 1)[0] + "]"
            else:
                host = host.rsplit(":", 1)[0]
        else:
            server = scope.get("server") or ("", None)
            host = server[0] or ""
        client = scope.get("client")
        extensions = scope.get("extensions")
        tls = extensions.get("tls") if extensions else None
        return Request(
            method=scope["method"],
            path="",
            query_string=scope.get("query_string", b""),
            headers=headers,
            body=body,
            scheme=scope.get("scheme", "http"),
            host=host.lower(),
            raw_path=raw_path,
            client=(client[0], client[1]) if client else None,
            server=scope.get("server"),
            http_version=scope.get("http_version", "1.1"),
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
        watches = self._watches
        task_group = self.gateway.task_group
        if task_group is not watches.task_group:
            watches.start(task_group)
        task = _current_task()
        cancel: _TaskCancel | anyio.CancelScope = (
            _TaskCancel(task) if task is not None else anyio.CancelScope()
        )
        with cancel:
            watch = _DisconnectWatch(receive, cancel, body, watches)
            try:
                response = await self.gateway.handle(request, exchange)
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
            await self.gateway.log(exchange)


def _current_task() -> asyncio.Task[Any] | None:
    """The running asyncio task; ``None`` on another backend (trio)."""
    if asyncio._get_running_loop() is None:
        return None
    return asyncio.current_task()


class _TaskCancel:
    """What ``anyio.CancelScope`` does for one request, at a fraction of its cost, on asyncio.

    ``cancel()`` cancels the request's task; leaving the ``with`` block
    swallows that one cancellation (and only that one: a server shutting
    the task down still gets its ``CancelledError``).
    """

    __slots__ = ("cancel_called", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancel_called = False

    def cancel(self) -> None:
        if not self.cancel_called:
            self.cancel_called = True
            self.task.cancel()

    def __enter__(self) -> _TaskCancel:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if self.cancel_called and self.task.uncancel() == 0 and isinstance(exc, asyncio.CancelledError):
            return True  # our own cancellation, nobody else's: the request just ends
        return False


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
        self, receive: Receive, cancel: _TaskCancel | anyio.CancelScope, body: _Body, watches: _Watches
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
    body = response.body
    if isinstance(body, bytes):
        exchange.bytes_out = len(body)
        await send({"type": "http.response.body", "body": body})
        exchange.end = time.perf_counter()
        return
    sent = 0
    try:
        async for chunk in body:
            if chunk:
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except Exception as exc:
        # Headers are gone already: the only honest signal left is to cut the
        # connection short, which returning without the final message does.
        exchange.bytes_out = sent
        exchange.error = exc
        log.warning("response body broke after %d bytes: %s", sent, exc)
        return
    exchange.bytes_out = sent
    await send({"type": "http.response.body", "body": b""})
    exchange.end = time.perf_counter()


# The key of ``Request.state`` where ``_AppCaller`` leaves the answer that hands a
# WebSocket handshake to the wrapped app (``ASGIApp`` compares by identity).
_UPGRADE = "gatekeep.websocket.upgrade"
# Framing of a denial is the adapter's: a filter's or upstream's is dropped.
_DENIAL_DROPS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade"})


async def deny_websocket(
    scope: Scope, send: Send, response: Response, exchange: Exchange | None = None
) -> None:
    """Refuse a WebSocket handshake with ``response`` (see the module doc)."""
    extensions = scope.get("extensions")
    if extensions and "websocket.http.response" in extensions:
        body = await response.read()
        headers = [(k, v) for k, v in response.headers.raw if k not in _DENIAL_DROPS]
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "websocket.http.response.start", "status": response.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        if exchange is not None:
            exchange.bytes_out = len(body)
    else:
        # Before accept no close code reaches the client (the server answers 403);
        # the code is for the server's own log: a policy denial, or our failure.
        await send({"type": "websocket.close", "code": 1008 if response.status < 500 else 1011})


class _Handshake:
    """The wrapped app's ``send`` on a WebSocket: notes how it answered the handshake."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if self.status is None:
            kind = message["type"]
            if kind == "websocket.accept":
                self.status = 101
            elif kind == "websocket.close":
                self.status = 403  # what servers answer to a close before accept
            elif kind == "websocket.http.response.start":
                self.status = int(message["status"])
        await self.send(message)


class _AppLifespan:
    """The wrapped app's own lifespan (a FastAPI ``lifespan=``), driven by the gateway's.

    An app that raises or returns on a ``lifespan`` scope has none; that is
    not an error (as with uvicorn's ``--lifespan auto``).
    """

    def __init__(self, app: ASGI, scope: Scope) -> None:
        self.app = app
        # Lifespan state (ASGI 2.3): shared with the app's requests as shallow copies.
        self.state: dict[str, Any] = scope.setdefault("state", {})
        self.scope: Scope = {
            "type": "lifespan",
            "asgi": scope.get("asgi", {"version": "3.0"}),
            "state": self.state,
        }
        self.to_app, self.app_receive = anyio.create_memory_object_stream[Message](1)
        self.app_send, self.from_app = anyio.create_memory_object_stream[Message](1)
        self.supported = True

    async def _run(self) -> None:
        with self.app_send:
            try:
                await self.app(self.scope, self.app_receive.receive, self.app_send.send)
            except Exception:
                log.debug("the wrapped app's lifespan raised (or it has none)", exc_info=True)

    async def startup(self, tg: TaskGroup) -> str | None:
        """Start the app's lifespan; the failure message if it failed."""
        tg.start_soon(self._run)
        return await self._step("lifespan.startup")

    async def shutdown(self) -> str | None:
        return await self._step("lifespan.shutdown")

    async def _step(self, kind: str) -> str | None:
        if not self.supported:
            return None
        await self.to_app.send({"type": kind})
        try:
            answer = await self.from_app.receive()
        except anyio.EndOfStream:
            self.supported = False  # the app returned without answering: no lifespan
            return None
        if str(answer["type"]).endswith(".failed"):
            return str(answer.get("message", ""))
        return None

    def close(self) -> None:
        for stream in (self.to_app, self.app_receive, self.app_send, self.from_app):
            stream.close()


class _AppCaller:
    """Calls a wrapped ASGI app as the upstream of a route (middleware mode)."""

    def __init__(self, app: ASGI, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self._warned = False
        self.state: dict[str, Any] = {}

    def scope_for(self, request: Request) -> Scope:
        path = request.path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.http_version,
            "method": request.method,
            "scheme": request.scheme,
            "path": unquote(path),  # ASGI: decoded; the normalised path has no %2F to confuse
            "raw_path": path.encode("latin-1"),
            "query_string": request.query_string,
            "root_path": "",
            "headers": request.headers.raw,
            "client": request.client,
            "server": request.server,
            "state": dict(self.state),
            "gatekeep.identity": request.identity,
            "gatekeep.consumer": request.consumer,
            "gatekeep.request_id": request.request_id,
        }

    async def __call__(self, request: Request) -> Response:
        if request.websocket:
            # The handshake passed the filters: ``ASGIApp`` hands the connection to the app.
            upgrade = Response(101, Headers(), b"", source="service")
            request.state[_UPGRADE] = upgrade
            return upgrade
        tg = self.gateway.task_group
        if tg is None:
            return await self._buffered(request)
        return await _StreamedApp(self.app, self.scope_for(request), request).start(tg)

    async def websocket(
        self, request: Request, scope: Scope, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        """Run the app on a handshake its filters let through, with the server's ``receive``/``send``.

        The app sees what it would see for HTTP: the headers after the
        filters (client-sent identity headers stripped, the gateway's added),
        the normalised path and the principal.
        """
        path = request.path
        app_scope = {
            **scope,
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": request.query_string,
            "headers": request.headers.raw,
            "state": dict(self.state),
            "gatekeep.identity": request.identity,
            "gatekeep.consumer": request.consumer,
            "gatekeep.request_id": request.request_id,
        }
        handshake = _Handshake(send)
        try:
            await self.app(app_scope, receive, handshake)
        except Exception as exc:  # the app's own bug: report it, keep the gateway alive
            exchange.error = exc
            log.exception("wrapped app failed on a WebSocket")
            try:
                if handshake.status is None:
                    error = UpstreamError("the wrapped app failed before answering the handshake")
                    handshake.status = error.status
                    await deny_websocket(scope, send, problem_response(error, request.request_id), exchange)
                else:
                    await send({"type": "websocket.close", "code": 1011})
            except Exception:
                log.debug("could not close the WebSocket after the app failed", exc_info=True)
        # An app that returns without answering the handshake gets a 500 from the server.
        exchange.status = handshake.status or 500

    async def _buffered(self, request: Request) -> Response:
        # No lifespan ran (no task group to stream from): collect the answer.
        if not self._warned:
            self._warned = True
            log.warning(
                "the ASGI lifespan did not run (e.g. uvicorn --lifespan off): the wrapped app's "
                "answers are buffered whole and filters were not started; enable the lifespan"
            )
        messages: list[Message] = []
        receive = _AppReceive(request)

        async def send(message: Message) -> None:
            messages.append(message)

        try:
            await self.app(self.scope_for(request), receive, send)
        except Exception:
            receive.reraise()
            raise
        receive.reraise()
        if not messages or messages[0]["type"] != "http.response.start":
            raise_app_error("the wrapped app returned without a response")
        start = messages[0]
        body = b"".join(m.get("body", b"") for m in messages[1:] if m["type"] == "http.response.body")
        return Response(start["status"], Headers(list(start.get("headers", []))), body, source="service")


def raise_app_error(detail: str) -> None:
    raise UpstreamError(detail)


class _AppReceive:
    """The wrapped app's ``receive``: the request body as the filters pass it on.

    When the body fails with a gatekeep error (the client went away, a
    malformed chunk, a size limit) the app gets ``http.disconnect``, all that
    ASGI can tell it, and the error is kept: whatever the app makes of it
    (Starlette answers 500), the client's answer is the body's error (400,
    413, or nothing: 499), and nothing is logged as the app's failure.
    """

    __slots__ = ("error", "finished", "iterator")

    def __init__(self, request: Request) -> None:
        self.iterator = request.body.__aiter__()
        self.finished = False
        self.error: GatekeepError | None = None

    async def __call__(self) -> Message:
        if self.error is not None:
            return {"type": "http.disconnect"}
        if self.finished:
            await anyio.sleep_forever()
        try:
            chunk = await self.iterator.__anext__()
        except StopAsyncIteration:
            self.finished = True
            return {"type": "http.request", "body": b"", "more_body": False}
        except GatekeepError as exc:
            self.error = exc
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": True}

    def reraise(self) -> None:
        """Raise the body's error, if it failed."""
        if self.error is not None:
            raise self.error


class _StreamedApp:
    """Runs the wrapped app in the gateway's task group and streams its answer."""

    def __init__(self, app: ASGI, scope: Scope, request: Request) -> None:
        self.app = app
        self.scope = scope
        self.request = request
        self.send_stream, self.receive_stream = anyio.create_memory_object_stream[Message](1)
        self.cancel = anyio.CancelScope()
        self.error: BaseException | None = None
        self.receive = _AppReceive(request)

    async def start(self, tg: TaskGroup) -> Response:
        tg.start_soon(self._run)
        try:
            start = await self.receive_stream.receive()
        except anyio.EndOfStream:
            await self._close()
            self.receive.reraise()
            raise_app_error(f"the wrapped app failed before answering: {self.error!r}")
            raise
        if self.receive.error is not None:
            # The body failed before the app answered: its answer is about that failure.
            await self._close()
            self.receive.reraise()
        if start["type"] != "http.response.start":
            await self._close()
            raise_app_error("the wrapped app sent a body before its response head")
        headers = Headers([(bytes(k).lower(), bytes(v)) for k, v in start.get("headers", [])])
        return Response(start["status"], headers, self._body(), source="service", on_close=self._close)

    async def _run(self) -> None:
        with self.cancel:
            try:
                async with self.send_stream:
                    await self.app(self.scope, self.receive, self.send_stream.send)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # the app's own bug: report it, keep the gateway alive
                self.error = exc
                if self.receive.error is not None:
                    # Not a bug: the request body failed under it (see ``_AppReceive``).
                    log.debug("wrapped app failed after its request body did", exc_info=exc)
                else:
                    log.exception("wrapped app failed")

    async def _body(self) -> AsyncIterator[bytes]:
        async for message in self.receive_stream:
            if message["type"] != "http.response.body":
                continue
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return
        self.receive.reraise()
        if self.error is not None:
            raise_app_error("the wrapped app failed while sending its body")

    async def _close(self) -> None:
        self.cancel.cancel()
        self.receive_stream.close()
