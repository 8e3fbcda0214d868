"""Middleware mode's upstream for WSGI: a wrapped WSGI app called as the upstream of a route.

An ``app://`` route (and, with ``fallthrough``, a request no route matches)
is answered by the wrapped app.  ``WSGIAppCaller`` turns a ``Request`` into a
WSGI environ and runs the app in a worker thread, never on the event loop;
the app reads the (filtered) request body through ``wsgi.input`` and its
answer streams back as a ``Response`` whose clean-up closes the app's
iterable (``Response.defer``).  The server adapter (``_wsgi.py``) hands the
caller to ``Gateway.handle``, as ``_asgi_app.py`` does for ASGI.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
import anyio.from_thread
import anyio.to_thread

from .._errors import GatekeepError, UpstreamError
from .._http import Headers, Request, Response
from ._asgi_app import ROUTE_TEMPLATE

__all__ = ["WSGI", "StartResponse", "WSGIAppCaller"]

StartResponse = Callable[..., Any]
WSGI = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


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


class WSGIAppCaller:
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
        if request.route is None:
            # The template a framework integration noted (Flask's rule, Django's route).
            template = environ.get(ROUTE_TEMPLATE)
            if isinstance(template, str):
                request.state[ROUTE_TEMPLATE] = template
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
