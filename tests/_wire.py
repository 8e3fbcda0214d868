"""Helpers shared by the front-server and WebSocket tests: an in-process front server, raw exchanges.

- ``front_server``: an ASGI app under gatekeep's front server on a loopback
  port, in the test's event loop; stopped at the end (it must exit 0);
- ``exchange``: send raw bytes, read until the server closes;
- ``upgrade_request``: a raw WebSocket handshake (RFC 6455 §4.1);
- ``refusal``: the HTTP answer that refused a ``websockets`` client's handshake;
- ``access_log``: the access-log documents a gateway process wrote to its log.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gatekeep._front import ServerSettings
from gatekeep._front._server import serve

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


@asynccontextmanager
async def front_server(app: Any, settings: ServerSettings | None = None) -> AsyncIterator[int]:
    """Serve ``app``; yields the port.  An app with a ``started`` flag is waited for (2 s at most)."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, settings or ServerSettings(), sock=sock, stop=stop))
    for _ in range(200):
        if getattr(app, "started", True):
            break
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes (10 s at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def upgrade_request(path: str = "/echo", *extra: bytes, key: bytes = KEY, version: bytes = b"13") -> bytes:
    """A WebSocket handshake's request head, with ``extra`` header lines."""
    lines = [
        b"GET " + path.encode() + b" HTTP/1.1",
        b"host: gk",
        b"upgrade: websocket",
        b"connection: Upgrade",
        b"sec-websocket-key: " + key,
        b"sec-websocket-version: " + version,
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def refusal(exc: Any) -> tuple[int, dict[str, str], bytes]:
    """``(status, lower-case headers, body)`` of a ``websockets`` ``InvalidStatus``."""
    response = exc.response
    return response.status_code, {k.lower(): v for k, v in response.headers.raw_items()}, response.body


def access_log(log_path: Path) -> list[dict[str, Any]]:
    """Every ``gatekeep.access`` document in a process's log, in order."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [json.loads(line.split("gatekeep.access:", 1)[1]) for line in lines if "gatekeep.access:" in line]
