"""A small HTTP/1.1 server for ASGI apps, on h11 and anyio.

It exists so that ``gatekeep.testing`` and ``gatekeep demo`` can run real
upstream services on loopback sockets without any extra dependency.  It is
not a production server: keep-alive, streaming bodies both ways and
``http.disconnect`` are supported; lifespan, WebSockets and HTTP/2 are not.
A malformed request head is answered 400, an oversized one (still incomplete
past h11's 16 KiB limit after a read) 431, as problem+json, and the
connection closed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import h11
from anyio.abc import SocketStream

from ._errors import BadRequest, HeaderFieldsTooLarge
from ._http import problem_response

__all__ = ["serve_asgi"]

log = logging.getLogger("gatekeep.miniserver")

ASGI = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


@asynccontextmanager
async def serve_asgi(app: ASGI, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Serve ``app`` on ``host:port`` while the context is open; yields the port."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:

        async def handle(stream: SocketStream) -> None:
            await _connection(stream, app)

        tg.start_soon(listener.serve, handle, tg)
        try:
            yield bound
        finally:
            tg.cancel_scope.cancel()


async def _connection(stream: SocketStream, app: ASGI) -> None:
    conn = h11.Connection(h11.SERVER)
    local = stream.extra(anyio.abc.SocketAttribute.local_address)
    remote = stream.extra(anyio.abc.SocketAttribute.remote_address)
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    async with stream:
        try:
            while True:
                try:
                    event = await _next_event(conn, stream)
                except h11.RemoteProtocolError as exc:
                    # A bad or oversized request head: answer (400, 431) and close.
                    await _refuse(conn, stream, exc.error_status_hint, str(exc))
                    return
                if isinstance(event, h11.ConnectionClosed) or event is None:
                    return
                if not isinstance(event, h11.Request):
                    return
                keep = await _cycle(conn, stream, event, app, local, remote)
                if not keep or conn.our_state is not h11.DONE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (anyio.BrokenResourceError, anyio.EndOfStream, ConnectionError, h11.ProtocolError):
            return


async def _refuse(conn: h11.Connection, stream: SocketStream, status: int, detail: str) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    error = HeaderFieldsTooLarge(detail) if status == 431 else BadRequest(detail)
    answer = problem_response(error)
    assert isinstance(answer.body, bytes)
    headers = [*answer.headers.raw, (b"content-length", b"%d" % len(answer.body)), (b"connection", b"close")]
    try:
        parts = [conn.send(h11.Response(status_code=answer.status, headers=headers))]
        parts += [conn.send(h11.Data(data=answer.body)), conn.send(h11.EndOfMessage())]
        await stream.send(b"".join(p for p in parts if p))
    except h11.LocalProtocolError:
        return


async def _next_event(conn: h11.Connection, stream: SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                data = b""
            if not data and conn.their_state is h11.SEND_BODY:
                # The client left mid-body: a disconnect (ASGI), not a malformed body.
                return h11.ConnectionClosed()
            conn.receive_data(data)
            continue
        if event is h11.PAUSED:
            return None
        return event


async def _cycle(
    conn: h11.Connection,
    stream: SocketStream,
    request: h11.Request,
    app: ASGI,
    local: Any,
    remote: Any,
) -> bool:
    target = bytes(request.target)
    path, _, query = target.partition(b"?")
    from urllib.parse import unquote

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": request.http_version.decode(),
        "method": request.method.decode(),
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(bytes(k), bytes(v)) for k, v in request.headers],
        "client": tuple(remote[:2]),
        "server": tuple(local[:2]),
    }
    body_done = False
    response_started = False
    response_done = False

    async def receive() -> dict[str, Any]:
        nonlocal body_done
        if body_done:
            if response_done:
                return {"type": "http.disconnect"}
            await anyio.sleep_forever()
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        body_done = True
        if isinstance(event, h11.EndOfMessage):
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        nonlocal response_started, response_done
        if message["type"] == "http.response.start":
            response_started = True
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            await stream.send(conn.send(h11.Response(status_code=message["status"], headers=headers)) or b"")
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            data = conn.send(h11.Data(data=chunk)) if chunk else b""
            last = not message.get("more_body", False)
            if last:
                data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
            if data:
                await stream.send(data)
            if last:
                # Only now is the response sent, and ``receive`` may say ``http.disconnect``.
                # Said while this write waited, an app watching ``receive`` (the gateway's
                # ASGI adapter) cancelled the write, and the client was never answered on a
                # connection kept alive.
                response_done = True

    try:
        await app(scope, receive, send)
    except Exception:
        log.exception("ASGI app failed")
        if not response_started:
            await stream.send(
                conn.send(h11.Response(status_code=500, headers=[("content-length", "0")])) or b""
            )
            await stream.send(conn.send(h11.EndOfMessage()) or b"")
        return False
    if not response_done:
        return False
    # Drain an unread request body so the connection can be reused.
    while conn.their_state is h11.SEND_BODY:
        event = await _next_event(conn, stream)
        if not isinstance(event, h11.Data):
            break
    return conn.their_state is h11.DONE
