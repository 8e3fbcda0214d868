"""``gatekeep serve`` calls the gateway without ASGI messages in between (adapters/_native.py).

What a client sees must not change (the front-server and attack suites run on
this path, since ``gatekeep serve`` takes it); what changes is that a client
who goes away cancels its request's work at once, not after ``WATCH_AFTER``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import gatekeep
from gatekeep._front import ServerSettings
from gatekeep._front._protocol import ServerState
from gatekeep._front._server import serve
from gatekeep.adapters._asgi import WATCH_AFTER
from gatekeep.admin._server import with_admin
from gatekeep.testing import serve_asgi

pytestmark = pytest.mark.anyio


class SlowUpstream:
    """``/slow`` answers after 5 s; anything else says how many body bytes it got."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        if scope["path"] == "/slow":
            started = time.monotonic()
            try:
                await asyncio.wait_for(receive(), 5)  # http.disconnect when the gateway lets go
            except TimeoutError:
                pass
            else:
                self.gone_after.append(time.monotonic() - started)
                return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"got " + str(len(body)).encode()})


def config(upstream: int, **extra: Any) -> dict[str, Any]:
    return {
        "services": [{"name": "up", "url": f"http://127.0.0.1:{upstream}", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "prometheus"}],
        **extra,
    }


@asynccontextmanager
async def front(app: Any) -> AsyncIterator[int]:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, ServerSettings(), sock=sock, stop=stop))
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        break
    try:
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def ask(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def metric(port: int, code: str) -> float:
    answer = await ask(port, b"GET /metrics HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
    total = 0.0
    for line in answer.decode().splitlines():
        if line.startswith("gatekeep_http_requests_total{") and f'code="{code}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_plain_gatekeep_offers_the_native_handler_and_middleware_mode_does_not() -> None:
    gateway = gatekeep.Gateway(config(1))

    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    assert ServerState(gatekeep.asgi(gateway), ServerSettings()).native is not None
    assert ServerState(gatekeep.asgi(gateway, app), ServerSettings()).native is None
    admin = gatekeep.Gateway(config(1, admin={"listen": "127.0.0.1:0"}))
    wrapped = with_admin(gatekeep.asgi(admin), admin)
    assert wrapped is not gatekeep.asgi(admin) and ServerState(wrapped, ServerSettings()).native is not None


async def test_bodies_go_both_ways() -> None:
    upstream = SlowUpstream()
    async with serve_asgi(upstream) as up, front(gatekeep.asgi(gatekeep.Gateway(config(up)))) as port:
        answer = await ask(
            port, b"POST /x HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        )
        assert answer.startswith(b"HTTP/1.1 200 ") and b"got 5" in answer
        chunked = b"POST /x HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        answer = await ask(port, chunked + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        assert b"got 7" in answer
        assert upstream.bodies[-2:] == [b"hello", b"abcdefg"]


async def test_a_client_that_leaves_cancels_the_upstream_call_at_once() -> None:
    upstream = SlowUpstream()
    async with serve_asgi(upstream) as up, front(gatekeep.asgi(gatekeep.Gateway(config(up)))) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nhost: gw\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)  # the upstream has the request
        left = time.monotonic()
        writer.close()
        for _ in range(500):
            if await metric(port, "499") >= 1:
                break
            await asyncio.sleep(0.01)
        # The request's work ended (and was logged as 499) at once, not after the ASGI
        # adapter's watch delay; the upstream call was cancelled with it.
        assert await metric(port, "499") == 1
        assert time.monotonic() - left < WATCH_AFTER


async def test_an_upload_cut_short_is_a_499_not_a_5xx() -> None:
    upstream = SlowUpstream()
    async with serve_asgi(upstream) as up, front(gatekeep.asgi(gatekeep.Gateway(config(up)))) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000\r\n\r\n" + b"a" * 400)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        for _ in range(100):
            if await metric(port, "499") == 1:
                break
            await asyncio.sleep(0.02)
        assert await metric(port, "499") == 1
        assert await metric(port, "500") == 0 and await metric(port, "502") == 0


async def ingress(port: int) -> float:
    answer = await ask(port, b"GET /metrics HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in answer.decode().splitlines()
        if line.startswith("gatekeep_bandwidth_bytes_total{") and 'direction="ingress"' in line
    )


async def test_a_body_that_came_with_its_head_and_one_that_trickles_arrive_the_same() -> None:
    """A body already here is taken at once (no read, no timer); one still arriving is read
    as it comes. Both reach the upstream intact, are counted, and leave the buffer budget whole."""
    upstream = SlowUpstream()
    plugins = [{"name": "prometheus", "config": {"bandwidth_metrics": True}}]
    async with serve_asgi(upstream) as up:
        gateway = gatekeep.Gateway(config(up, plugins=plugins))
        budget = gateway.bodies._budget.free
        async with front(gatekeep.asgi(gateway)) as port:
            body = bytes(range(256)) * 40
            head = b"POST /x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % (
                len(body)
            )
            answer = await ask(port, head + body)  # one write: the body comes with its head
            assert answer.startswith(b"HTTP/1.1 200 ") and b"got %d" % len(body) in answer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body[:1000])
            await writer.drain()
            await asyncio.sleep(0.1)  # the gateway is waiting for the rest
            writer.write(body[1000:])
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 ") and b"got %d" % len(body) in answer
            assert upstream.bodies == [body, body]
            assert await ingress(port) == 2 * len(body)
        assert gateway.bodies._budget.free == budget
