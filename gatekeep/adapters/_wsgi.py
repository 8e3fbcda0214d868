"""The WSGI adapter: ``app = gatekeep.wsgi(gateway)``.

There is no second, sync implementation: every WSGI worker thread hands its
request to the same async core through one shared anyio blocking portal (an
event loop in a thread of its own, started on the first request or by
``start()``).  The gateway's lifespan runs in that portal, so filters and
background tasks live as long as the WSGI app.

Bodies stream both ways: the request body is read from ``wsgi.input`` in a
worker thread chunk by chunk as the upstream wants it, and the response body
is a generator that pulls one chunk at a time through the portal.

Middleware mode: ``gatekeep.wsgi(gateway, app=flask_app)`` runs the wrapped
WSGI app (in a worker thread, never on the event loop) for routes whose
service has ``url = "app://"`` and, with ``fallthrough``, for requests no
route matches.  The principal is in ``environ["gatekeep.identity"]``.
"""

from __future__ import annotations

import atexit
import http
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from .._errors import BadRequest, ClientClosedRequest, GatekeepError, UpstreamError
from .._filter import Exchange
from .._forwarding import HOP_BY_HOP
from .._gateway import Gateway
from .._http import Headers, Request, Response

__all__ = ["WSGIApp", "wsgi"]

StartResponse = Callable[..., Any]
WSGI = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_CHUNK = 64 * 1024


def wsgi(gateway: Gateway, app: WSGI | None = None) -> WSGIApp:
    """A WSGI application serving ``gateway`` (in front of ``app``, if given)."""
    return WSGIApp(gateway, app)


def _reason(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


_STATUS_LINES = {s.value: _reason(s.value) for s in http.HTTPStatus}
_STATUS_LINES[499] = "499 Client Closed Request"  # nginx's; written to a client that is gone


def _input_failed(exc: Exception) -> GatekeepError:
    """What an exception raised by the server's ``wsgi.input`` means for the request.

    ``OSError`` is the connection (a reset; gunicorn's ``NoMoreData`` when the
    client left mid-chunk); anything else is the server refusing the body
    (gunicorn's ``InvalidChunkSize`` ...).
    """
    if isinstance(exc, OSError):
        return ClientClosedRequest(f"the connection broke while the request body was read: {exc!r}")
    return BadRequest("the request body is malformed")


class _InputBody:
    """The request body read from ``wsgi.input`` off the event loop."""

    __slots__ = ("received", "remaining", "stream")

    def __init__(self, stream: Any, length: int | None) -> None:
        self.stream = stream
        self.remaining = length
        self.received = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while self.remaining is None or self.remaining > 0:
            size = _CHUNK if self.remaining is None else min(_CHUNK, self.remaining)
            try:
                chunk: bytes = await anyio.to_thread.run_sync(self.stream.read, size)
            except Exception as exc:
                raise _input_failed(exc) from exc
            if not chunk:
                if self.remaining is not None:
                    # Short of its content-length: the client closed the connection.
                    raise ClientClosedRequest("client disconnected while sending the request body")
                return
            if self.remaining is not None:
                self.remaining -= len(chunk)
            self.received += len(chunk)
            yield chunk


class WSGIApp:
    """The WSGI application (see ``wsgi``)."""

    def __init__(self, gateway: Gateway, app: WSGI | None = None) -> None:
        self.gateway = gateway
        self.app = app
        # Middleware mode: the wrapped app is the upstream of ``app://`` routes, handed to
        # ``Gateway.handle`` with each request (the gateway itself is never changed).
        self._caller: _WSGIAppCaller | None = _WSGIAppCaller(app) if app is not None else None
        self._lock = threading.Lock()
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._lifespan: Future[None] | None = None
        self._stop: anyio.Event | None = None

    def start(self) -> None:
        """Start the event loop thread and enter the gateway's lifespan."""
        self.portal  # noqa: B018 - starts it

    @property
    def portal(self) -> anyio.from_thread.BlockingPortal:
        portal = self._portal
        if portal is not None:
            return portal
        with self._lock:
            if self._portal is None:
                cm = anyio.from_thread.start_blocking_portal("asyncio")
                portal = cm.__enter__()
                try:
                    # The gateway's task group must be entered and left by one
                    # task, so its lifespan runs as a task of its own.
                    self._lifespan, self._stop = portal.start_task(self._run_lifespan)
                except BaseException:
                    cm.__exit__(*sys.exc_info())
                    raise
                self._portal_cm = cm
                self._portal = portal
                atexit.register(self.close)
            return self._portal

    def close(self) -> None:
        """Leave the gateway's lifespan and stop the event loop thread."""
        with self._lock:
            portal, cm = self._portal, self._portal_cm
            lifespan, stop = self._lifespan, self._stop
            self._portal = self._portal_cm = None
            self._lifespan = self._stop = None
        if portal is None or cm is None or lifespan is None or stop is None:
            return
        try:
            portal.call(stop.set)
            lifespan.result()
        finally:
            cm.__exit__(None, None, None)
            atexit.unregister(self.close)

    async def _run_lifespan(self, *, task_status: anyio.abc.TaskStatus[anyio.Event]) -> None:
        stop = anyio.Event()
        async with self.gateway:
            task_status.started(stop)
            await stop.wait()

    def request_from_environ(self, environ: dict[str, Any]) -> Request:
        raw: list[tuple[bytes, bytes]] = []
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                raw.append((key[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1")))
        ctype = environ.get("CONTENT_TYPE")
        if ctype:
            raw.append((b"content-type", ctype.encode("latin-1")))
        clen = environ.get("CONTENT_LENGTH")
        length: int | None = None
        if clen:
            raw.append((b"content-length", clen.encode("latin-1")))
            try:
                length = int(clen)
            except ValueError:
                length = 0
        elif "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            length = None
        else:
            length = 0
        headers = Headers(raw)
        body = _InputBody(environ["wsgi.input"], length)
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw_uri:
            raw_path = raw_uri.split("?", 1)[0].encode("latin-1")
        else:
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            raw_path = quote(path.encode("latin-1").decode("utf-8", "replace")).encode("latin-1")
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        host = host.split("]", 1)[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
        addr = environ.get("REMOTE_ADDR")
        port = environ.get("REMOTE_PORT")
        client = (addr, int(port) if port and str(port).isdigit() else 0) if addr else None
        server_port = environ.get("SERVER_PORT")
        return Request(
            method=environ["REQUEST_METHOD"].upper(),
            path="",
            query_string=environ.get("QUERY_STRING", "").encode("latin-1"),
            headers=headers,
            body=body,
            scheme=environ.get("wsgi.url_scheme", "http"),
            host=host.lower(),
            raw_path=raw_path,
            client=client,
            server=(environ.get("SERVER_NAME", ""), int(server_port) if server_port else None),
            http_version=environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1",
            state={"wsgi.environ": environ, "wsgi.input.body": body},
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        portal = self.portal
        request = self.request_from_environ(environ)
        exchange = Exchange(request)
        response: Response = portal.call(self.gateway.handle, request, exchange, self._caller)
        # PEP 3333: no hop-by-hop fields from an app (wsgiref asserts); the server decides
        # about the connection (a refusal's "Connection: close" is the ASGI servers' hint).
        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw if k not in HOP_BY_HOP
        ]
        start_response(_STATUS_LINES.get(response.status) or _reason(response.status), headers)
        return _ResponseIterator(self, response, exchange)


class _ResponseIterator:
    """The WSGI body: pulls chunks through the portal; ``close`` releases and logs."""

    def __init__(self, owner: WSGIApp, response: Response, exchange: Exchange) -> None:
        self.owner = owner
        self.response = response
        self.exchange = exchange
        self._iter: AsyncIterator[bytes] | None = None
        self._closed = False
        body = response.body
        if isinstance(body, bytes):
            self._chunks: list[bytes] | None = [body]
            exchange.bytes_out = len(body)
        else:
            self._chunks = None
            self._iter = body.__aiter__()

    def __iter__(self) -> Iterator[bytes]:
        if self._chunks is not None:
            yield from self._chunks
            self.exchange.end = time.perf_counter()
            return
        assert self._iter is not None
        anext_ = self._iter.__anext__
        portal = self.owner.portal
        while True:
            try:
                chunk = portal.call(anext_)
            except StopAsyncIteration:
                break
            except Exception as exc:
                # Headers are out: abort the connection by raising to the server.
                self.exchange.error = exc
                raise
            self.exchange.bytes_out += len(chunk)
            yield chunk
        self.exchange.end = time.perf_counter()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        portal = self.owner._portal
        if portal is None:
            return  # the app was closed meanwhile: nothing is left to release
        try:
            portal.call(self.response.aclose)
        finally:
            body = self.exchange.request.state.get("wsgi.input.body")
            if body is not None:
                self.exchange.bytes_in = body.received
            portal.call(self.owner.gateway.log, self.exchange)


class _WSGIInput:
    """``wsgi.input`` for the wrapped app: reads the (filtered) async body from its thread.

    When the body fails with a gatekeep error (the client went away, a
    malformed chunk, a size limit) the app reads a short body, as from a
    server whose client left, and the error is kept in ``error``: the
    client's answer is the body's error, whatever the app made of it.
    """

    def __init__(self, body: Any) -> None:
        self._iter = body.__aiter__()
        self._buffer = b""
        self._eof = False
        self.error: GatekeepError | None = None

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk: bytes = anyio.from_thread.run(self._iter.__anext__)
        except StopAsyncIteration:
            self._eof = True
            return False
        except GatekeepError as exc:
            self.error = exc
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data, self._buffer = self._buffer, b""
            return data
        while len(self._buffer) < size and self._fill():
            pass
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readline(self, size: int = -1) -> bytes:
        while b"\n" not in self._buffer and self._fill():
            pass
        end = self._buffer.find(b"\n") + 1 or len(self._buffer)
        if size is not None and 0 <= size < end:
            end = size
        data, self._buffer = self._buffer[:end], self._buffer[end:]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class _WSGIAppCaller:
    """Calls a wrapped WSGI app in a worker thread as the upstream of a route."""

    def __init__(self, app: WSGI) -> None:
        self.app = app

    def environ_for(self, request: Request) -> dict[str, Any]:
        base = request.state.get("wsgi.environ")
        environ: dict[str, Any] = {k: v for k, v in (base or {}).items() if not k.startswith("HTTP_")}
        environ.update(
            {
                "REQUEST_METHOD": request.method,
                "SCRIPT_NAME": "",
                # PEP 3333: decoded, as bytes in latin-1 (the normalised path has no %2F).
                "PATH_INFO": unquote_to_bytes(request.path).decode("latin-1"),
                "QUERY_STRING": request.query_string.decode("latin-1"),
                "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
                "wsgi.url_scheme": request.scheme,
                "wsgi.input": _WSGIInput(request.body),
                "wsgi.errors": sys.stderr,
                "wsgi.version": (1, 0),
                "wsgi.multithread": True,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
                "gatekeep.identity": request.identity,
                "gatekeep.consumer": request.consumer,
                "gatekeep.request_id": request.request_id,
            }
        )
        environ.setdefault("SERVER_NAME", request.host or "localhost")
        environ.setdefault("SERVER_PORT", "80")
        if request.client:
            environ.setdefault("REMOTE_ADDR", request.client[0])
        environ.pop("CONTENT_TYPE", None)
        environ.pop("CONTENT_LENGTH", None)
        for k, v in request.headers.raw:
            name = k.decode("latin-1").upper().replace("-", "_")
            value = v.decode("latin-1")
            if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[name] = value
                continue
            key = "HTTP_" + name
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    async def __call__(self, request: Request) -> Response:
        environ = self.environ_for(request)
        wsgi_input: _WSGIInput = environ["wsgi.input"]
        head: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            head[:] = [status, headers]
            return lambda data: None  # the write() callable: not supported for streaming

        def run() -> Any:
            result = self.app(environ, start_response)
            iterator = iter(result)
            first = next(iterator, None)
            return result, iterator, first

        try:
            result, iterator, first = await anyio.to_thread.run_sync(run)
        except Exception as exc:
            if wsgi_input.error is not None:
                raise wsgi_input.error from exc
            raise UpstreamError(f"the wrapped app failed: {exc!r}") from exc
        if wsgi_input.error is not None:
            # The body failed before the app answered: its answer is about that failure.
            closer = getattr(result, "close", None)
            if closer is not None:
                await anyio.to_thread.run_sync(closer)
            raise wsgi_input.error
        if not head:
            raise UpstreamError("the wrapped app returned without calling start_response")
        status = int(str(head[0]).split(" ", 1)[0])
        headers = Headers([(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in head[1]])

        async def body() -> AsyncIterator[bytes]:
            if first:
                yield first
            while True:
                chunk = await anyio.to_thread.run_sync(next, iterator, None)
                if chunk is None:
                    return
                if chunk:
                    yield chunk

        async def close() -> None:
            closer = getattr(result, "close", None)
            if closer is not None:
                await anyio.to_thread.run_sync(closer)

        return Response(status, headers, body(), source="service", deferred=[close])
