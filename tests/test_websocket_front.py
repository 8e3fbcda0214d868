"""The front server's WebSocket side with raw sockets: what a client may not do, and what it gets.

The server runs in process with a small ASGI app of our own (an echo); the
proxying through the gateway is in test_websocket_proxy.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gatekeep._front import ServerSettings
from gatekeep._front._server import serve
from gatekeep._websocket import _frames
from gatekeep._websocket._handshake import accept_value

from ._wire import KEY, front_server, upgrade_request

pytestmark = pytest.mark.anyio

SETTINGS = ServerSettings(drain_timeout=5.0)


class EchoApp:
    def __init__(self) -> None:
        self.started = False
        self.disconnects: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.started = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/deny":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept", "subprotocol": (scope["subprotocols"] or [None])[-1]})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message)
                return
            if message.get("text") == "close":
                await send({"type": "websocket.close", "code": 4000, "reason": "as asked"})
                continue
            await send({"type": "websocket.send", **{k: v for k, v in message.items() if k != "type"}})


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = _frames.FrameReader(masked=False, max_message=1 << 24)

    async def head(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        return int(head.split()[1]), head

    async def event(self) -> Any:
        while (event := self.frames.next_event()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                return None
            self.frames.feed(data)
        return event

    async def closed(self) -> bool:
        """Whether the server closes the connection with nothing more to say."""
        return await self.rest() == b""

    async def rest(self) -> bytes:
        """What the server sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), 5)

    def send(self, data: bytes) -> None:
        self.writer.write(data)


@asynccontextmanager
async def client(port: int, data: bytes) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()


async def test_a_handshake_is_accepted_with_the_rfcs_accept_value_and_frames_echo() -> None:
    app = EchoApp()
    async with front_server(app, SETTINGS) as port:
        # A frame in the same packet as the handshake waits for the app's accept.
        first = _frames.encode(_frames.TEXT, b"early", mask=True)
        async with client(port, upgrade_request("/echo", b"sec-websocket-protocol: a, b") + first) as c:
            status, head = await c.head()
            assert status == 101
            assert b"sec-websocket-accept: " + accept_value(KEY) in head
            assert b"sec-websocket-protocol: b" in head and b"sec-websocket-extensions" not in head
            assert (await c.event()).data == "early"
            c.send(_frames.encode(_frames.PING, b"hi", mask=True))
            pong = await c.event()
            assert isinstance(pong, _frames.Pong) and pong.data == b"hi"
            c.send(_frames.encode(_frames.TEXT, b"close", mask=True))
            close = await c.event()
            assert isinstance(close, _frames.Close) and (close.code, close.reason) == (4000, "as asked")
            c.send(_frames.encode(_frames.CLOSE, _frames.close_payload(4000), mask=True))
            assert await c.closed()


async def test_the_clients_close_is_answered_and_reaches_the_app() -> None:
    app = EchoApp()
    async with front_server(app, SETTINGS) as port:
        async with client(port, upgrade_request()) as c:
            assert (await c.head())[0] == 101
            c.send(_frames.encode(_frames.CLOSE, _frames.close_payload(4005, "bye"), mask=True))
            close = await c.event()
            assert isinstance(close, _frames.Close) and close.code == 4005
            assert await c.closed()
        for _ in range(100):
            if app.disconnects:
                break
            await asyncio.sleep(0.01)
        assert app.disconnects == [{"type": "websocket.disconnect", "code": 4005, "reason": "bye"}]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (upgrade_request(version=b"8"), 426),
        (upgrade_request(key=b"short"), 400),
        (upgrade_request(key=base64.b64encode(os.urandom(15))), 400),
        (upgrade_request().replace(b"GET", b"POST", 1), 400),
        (upgrade_request().replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400),
        (upgrade_request("/echo", b"content-length: 5") + b"hello", 400),
    ],
)
async def test_invalid_handshakes_are_refused_before_the_app(request_bytes: bytes, status: int) -> None:
    async with front_server(EchoApp(), SETTINGS) as port:
        async with client(port, request_bytes) as c:
            code, head = await c.head()
            assert code == status and b"application/problem+json" in head
            if status == 426:
                assert b"sec-websocket-version: 13" in head.lower()


async def test_a_close_before_accept_is_a_403() -> None:
    async with front_server(EchoApp(), SETTINGS) as port:
        async with client(port, upgrade_request("/deny")) as c:
            assert (await c.head())[0] == 403
            assert await c.rest() == b"Forbidden"


async def test_unmasked_frames_are_a_protocol_error() -> None:
    async with front_server(EchoApp(), SETTINGS) as port:
        async with client(port, upgrade_request()) as c:
            assert (await c.head())[0] == 101
            c.send(_frames.encode(_frames.TEXT, b"naked", mask=False))
            close = await c.event()
            assert isinstance(close, _frames.Close) and close.code == 1002
            assert await c.closed()


async def test_a_huge_frame_is_refused_from_its_header() -> None:
    async with front_server(EchoApp(), SETTINGS) as port:
        async with client(port, upgrade_request()) as c:
            assert (await c.head())[0] == 101
            c.send(struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + b"mask")  # and never the payload
            close = await c.event()
            assert isinstance(close, _frames.Close) and close.code == 1009
            assert await c.closed()


async def test_bytes_after_a_refused_handshake_are_never_a_request() -> None:
    async with front_server(EchoApp(), SETTINGS) as port:
        smuggled = b"GET /next HTTP/1.1\r\nhost: gk\r\n\r\n"
        async with client(port, upgrade_request("/deny") + smuggled) as c:
            assert (await c.head())[0] == 403
            assert await c.rest() == b"Forbidden"  # one answer, then the connection is closed


async def test_draining_closes_open_websockets_with_1001() -> None:
    app = EchoApp()
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, ServerSettings(drain_timeout=5.0), sock=sock, stop=stop))
    while not app.started:  # noqa: ASYNC110 - the lifespan sets it
        await asyncio.sleep(0.01)
    async with client(port, upgrade_request()) as c:
        assert (await c.head())[0] == 101
        stop.set()
        close = await c.event()
        assert isinstance(close, _frames.Close) and close.code == 1001
        c.send(_frames.encode(_frames.CLOSE, _frames.close_payload(1001), mask=True))
        assert await c.closed()
    assert await asyncio.wait_for(task, 10) == 0
    assert app.disconnects and app.disconnects[0]["code"] == 1001


async def test_a_client_gone_during_the_handshake_is_no_error_of_the_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class SlowApp(EchoApp):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[str] = []

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await super().__call__(scope, receive, send)
                return
            await receive()
            await asyncio.sleep(0.3)  # the gateway's upstream handshake, say
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "late"})
            self.sent.append("done")
            self.disconnects.append(await receive())

    app = SlowApp()
    async with front_server(app, SETTINGS) as port:
        async with client(port, upgrade_request()):
            pass  # gone at once
        for _ in range(100):
            if app.disconnects:
                break
            await asyncio.sleep(0.01)
        assert app.sent == ["done"] and app.disconnects[0]["code"] == 1006
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
