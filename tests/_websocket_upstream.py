"""A real WebSocket upstream for the proxy tests: the ``websockets`` library's server in a thread.

Paths (after the gateway stripped its route prefix):

- ``/echo``: echoes every message; the text ``close:CODE:REASON`` makes it
  close with that code and reason; ``big:N`` sends ``N`` bytes back;
  ``ping`` makes it ping the gateway and answer ``pong-ok`` once the pong came;
  ``drop`` makes it drop the TCP connection without a close frame;
- ``/hello``: sends its view of the handshake (path, headers, subprotocol, negotiated
  extensions) as JSON, then echoes;
- ``/deny``: refuses the upgrade with ``403`` and a body;
- anything else: echo.

Every connection's end is recorded in ``closes``: ``(path, code, reason)``
as the upstream saw the close.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import anyio


class WebSocketUpstream:
    def __init__(self) -> None:
        self.port = 0
        self.closes: list[tuple[str, int | None, str | None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    async def handler(self, ws: Any) -> None:
        path = ws.request.path
        try:
            if path == "/hello":
                await ws.send(
                    json.dumps(
                        {
                            "path": path,
                            "headers": {k.lower(): v for k, v in ws.request.headers.raw_items()},
                            "subprotocol": ws.subprotocol,
                            "extensions": [e.name for e in ws.protocol.extensions],
                        }
                    )
                )
            async for message in ws:
                if isinstance(message, str) and message.startswith("close:"):
                    _, code, reason = message.split(":", 2)
                    await ws.close(int(code), reason)
                    break
                if isinstance(message, str) and message.startswith("big:"):
                    await ws.send(b"x" * int(message[4:]))
                    continue
                if message == "drop":  # gone without a close frame
                    ws.transport.abort()
                    break
                if message == "ping":
                    pong = await ws.ping(b"are-you-there")
                    await asyncio.wait_for(pong, 5)
                    await ws.send("pong-ok")
                    continue
                await ws.send(message)
        except Exception:  # noqa: S110 - the close is what the tests look at
            pass
        finally:
            await ws.wait_closed()
            received = ws.protocol.close_rcvd
            self.closes.append(
                (path, received.code if received else None, received.reason if received else None)
            )

    def process_request(self, connection: Any, request: Any) -> Any:
        if request.path == "/deny":
            return connection.respond(HTTPStatus.FORBIDDEN, "upstream says no\n")
        return None

    def closes_of(self, path: str) -> list[tuple[int | None, str | None]]:
        return [(code, reason) for p, code, reason in self.closes if p == path]

    async def wait_closes(self, path: str, seconds: float = 5.0) -> list[tuple[int | None, str | None]]:
        """``closes_of(path)`` once the upstream has recorded a close there (``seconds`` at most)."""
        with anyio.fail_after(seconds):
            while not self.closes_of(path):  # noqa: ASYNC110 - the upstream's thread appends
                await anyio.sleep(0.05)
        return self.closes_of(path)


@contextmanager
def websocket_upstream(
    ssl_context: ssl.SSLContext | None = None, **options: Any
) -> Iterator[WebSocketUpstream]:
    """Serve a ``WebSocketUpstream`` on 127.0.0.1 (over TLS with ``ssl_context``) from a thread's loop.

    ``options`` go to the library's ``serve``: ``compression="deflate"`` accepts a
    permessage-deflate offer, ``extensions=[...]`` with chosen parameters.
    """
    from websockets.asyncio.server import serve

    upstream = WebSocketUpstream()
    ready = threading.Event()
    stop: asyncio.Future[None] | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.get_running_loop().create_future()
        async with serve(
            upstream.handler,
            "127.0.0.1",
            0,
            select_subprotocol=lambda connection, offered: "chat.v2" if "chat.v2" in offered else None,
            process_request=upstream.process_request,
            max_size=None,
            ping_interval=None,
            ssl=ssl_context,
            **{"compression": None, **options},
        ) as server:
            upstream.port = next(iter(server.sockets)).getsockname()[1]
            upstream.loop = asyncio.get_running_loop()
            ready.set()
            await stop

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield upstream
    finally:
        loop = upstream.loop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
