"""Middleware mode's upstream: a wrapped ASGI app called as the upstream of a route.

An ``app://`` route (and, with ``fallthrough``, a request no route matches)
is answered by the wrapped app.  ``AppCaller`` turns a ``Request`` into an
ASGI scope, runs the app on the gateway's lifespan task group and streams
its answer back as a ``Response`` (the app's task is released through
``Response.defer``).  ``AppLifespan`` drives the app's own lifespan inside
the gateway's.  The server adapter (``_asgi.py``) owns neither; it hands the
caller to ``Gateway.handle``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import anyio
from anyio.abc import TaskGroup

from .._errors import GatekeepError, UpstreamError
from .._filter import Exchange
from .._gateway import Gateway
from .._http import Headers, Request, Response, problem_response

__all__ = [
    "ASGI",
    "ROUTE_TEMPLATE",
    "AppCaller",
    "AppLifespan",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "deny_websocket",
    "route_template",
]

log = logging.getLogger("gatekeep")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


# The key of ``Request.state`` where ``_AppCaller`` leaves the answer that hands a
# WebSocket handshake to the wrapped app (the server adapter compares by identity).
_UPGRADE = "gatekeep.websocket.upgrade"
# Where the wrapped app's route template for a request goes: in ``Request.state``
# (read by the ``prometheus`` plugin for a request no gateway route matched), and
# in the scope / WSGI environ when a framework integration puts it there (Flask's
# rule, Django's resolver route; Starlette's own ``scope["route"]`` is read as is).
ROUTE_TEMPLATE = "gatekeep.route_template"
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


def route_template(scope: Scope) -> str | None:
    """The route template the wrapped app matched (never the raw path), or ``None``.

    One an integration left under ``ROUTE_TEMPLATE``, else Starlette's (and
    so FastAPI's) ``scope["route"].path``, e.g. ``/items/{item_id}``.
    """
    template = scope.get(ROUTE_TEMPLATE)
    if template is None:
        template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else None


def _app_state(lifespan_state: dict[str, Any], request: Request) -> dict[str, Any]:
    """The request's ``scope["state"]``: the lifespan's (a shallow copy, as servers
    make it) and the caller's identity (Starlette's ``request.state.identity``)."""
    state = dict(lifespan_state)
    state["identity"] = request.identity
    return state


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


class AppLifespan:
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


class AppCaller:
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
            "state": _app_state(self.state, request),
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
            "state": _app_state(self.state, request),
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
                    await deny_websocket(
                        scope,
                        send,
                        problem_response(
                            error, request.request_id, request_id_header=self.gateway.request_id_header
                        ),
                        exchange,
                    )
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

        scope = self.scope_for(request)
        try:
            await self.app(scope, receive, send)
        except Exception:
            receive.reraise()
            raise
        receive.reraise()
        if not messages or messages[0]["type"] != "http.response.start":
            raise_app_error("the wrapped app returned without a response")
        start = messages[0]
        _note_route(scope, request)
        body = b"".join(m.get("body", b"") for m in messages[1:] if m["type"] == "http.response.body")
        return Response(start["status"], Headers(list(start.get("headers", []))), body, source="service")


def _note_route(scope: Scope, request: Request) -> None:
    """Keep the app's route template of a request no gateway route named (for metrics)."""
    if request.route is None:
        template = route_template(scope)
        if template is not None:
            request.state[ROUTE_TEMPLATE] = template


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
        _note_route(self.scope, self.request)
        headers = Headers([(bytes(k).lower(), bytes(v)) for k, v in start.get("headers", [])])
        return Response(start["status"], headers, self._body(), source="service", deferred=[self._close])

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
