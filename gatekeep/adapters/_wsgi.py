"""The WSGI adapter: ``app = gatekeep.wsgi(gateway)``.

There is no second, sync implementation: every WSGI worker thread hands its
request to the same async core through one shared anyio blocking portal (an
event loop in a thread of its own, started on the first request or by
``start()``; ``gatekeep._portal.LifespanPortal``, as for ``gatekeep.service``).
The gateway's lifespan runs in that portal, so filters and background tasks
live as long as the WSGI app.

Bodies stream both ways: the request body is read from ``wsgi.input`` in a
worker thread chunk by chunk as the upstream wants it, and the response body
is a generator that pulls one chunk at a time through the portal.

Middleware mode: ``gatekeep.wsgi(gateway, app=flask_app)`` runs the wrapped
WSGI app (in a worker thread, never on the event loop) for routes whose
service has ``url = "app://"`` and, with ``fallthrough``, for requests no
route matches.  The principal is in ``environ["gatekeep.identity"]``.
The caller lives in ``_wsgi_app.py``.
"""

from __future__ import annotations

import http
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import anyio.from_thread
import anyio.to_thread

from .._errors import BadRequest, ClientClosedRequest, GatekeepError
from .._filter import Exchange
from .._forwarding import HOP_BY_HOP
from .._gateway import Gateway
from .._http import Headers, Request, Response
from .._portal import LifespanPortal
from ._wsgi_app import WSGI, StartResponse, WSGIAppCaller

__all__ = ["WSGIApp", "wsgi"]

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
        self._caller: WSGIAppCaller | None = WSGIAppCaller(app) if app is not None else None
        # The gateway's lifespan runs in the portal's loop for as long as the app lives;
        # a server that never calls ``close()`` leaves it at interpreter exit.
        self._lifespan = LifespanPortal(lambda: gateway, close_at_exit=True)

    def start(self) -> None:
        """Start the event loop thread and enter the gateway's lifespan."""
        self._lifespan.portal  # noqa: B018 - starts it

    @property
    def portal(self) -> anyio.from_thread.BlockingPortal:
        """The blocking portal every request goes through (started on first use)."""
        return self._lifespan.portal

    def close(self) -> None:
        """Leave the gateway's lifespan and stop the event loop thread."""
        self._lifespan.close()

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
        portal = self.owner._lifespan.running
        if portal is None:
            return  # the app was closed meanwhile: nothing is left to release
        try:
            portal.call(self.response.aclose)
        finally:
            body = self.exchange.request.state.get("wsgi.input.body")
            if body is not None:
                self.exchange.bytes_in = body.received
            portal.call(self.owner.gateway.log, self.exchange)
