"""The upstream every proxy benchmark target talks to.

A hello-world-sized raw ASGI app, so that the upstream costs as little as
possible and the proxy in front of it is what gets measured:

- ``GET`` (any path) answers 200 with a fixed 1 KiB body;
- ``POST`` (any path) reads the whole body and answers with its size in bytes
  as ``text/plain``.

It is served by ``benchmarks._peers.serve`` on uvicorn (httptools, uvloop,
one worker, no access log), in a process of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GET_BODY = b"x" * 1024
GET_HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", b"1024")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = str(size).encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": GET_HEADERS})
    await send({"type": "http.response.body", "body": GET_BODY})
