"""Every resource a proxied response holds is released exactly once.

A response holds, until it is closed: the pooled upstream connection, the
balancer's pick (a ``CountingBalancer``'s ``release``), the streaming-upload
slot of its request body, and in middleware mode the wrapped app's task.
Each must come back once -- not leaked, not returned twice -- when the
answer succeeds, when the client leaves in the middle of the response body
or of its request body, and when the upstream resets its connection in the
middle of the body.  Real loopback sockets throughout; the client's
disconnects are raw sockets closed mid-way.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from gatekeep import CountingBalancer, Gateway, Instance, Request, asgi
from gatekeep.testing import TestClient, serve_asgi

pytestmark = pytest.mark.anyio

_CHUNK = b"x" * 16384
_BIG = 1_000_000  # a declared body this long streams (no buffering, no eager read)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- what is counted --------------------------------------------------------------


class Counting:
    """A ``CountingBalancer``: the first instance, with picks and releases counted."""

    def __init__(self) -> None:
        self.picks = 0
        self.releases = 0
        self.negative = False

    def pick(self, instances: Sequence[Instance], request: Request) -> Instance:
        self.picks += 1
        return instances[0]

    def release(self, instance: Instance) -> None:
        self.releases += 1
        self.negative = self.negative or self.releases > self.picks


class Upstream:
    """The proxied service: a finite answer, an endless one, and an upload sink."""

    def __init__(self) -> None:
        self.receiving = anyio.Event()
        self.sending = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/up/upload":
            received = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                received += len(message.get("body", b""))
                self.receiving.set()
                if not message.get("more_body", False):
                    break
            answer = str(received).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"%d" % len(answer))],
                }
            )
            await send({"type": "http.response.body", "body": answer})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        n = 0
        while path == "/up/endless" or n < 16:  # 256 KiB: more than the pool reads eagerly
            await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
            self.sending.set()
            n += 1
            await anyio.sleep(0.005 if path == "/up/endless" else 0)
        await send({"type": "http.response.body", "body": b""})


@asynccontextmanager
async def resetting_upstream() -> AsyncIterator[int]:
    """An upstream that sends a head and part of a long body, then resets the connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port: int = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % _BIG + _CHUNK * 8)
            await anyio.sleep(0.1)
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


class Proxy:
    """A gateway on loopback in front of ``Upstream`` and the resetting upstream."""

    def __init__(self, gateway: Gateway, port: int, balancer: Counting, upstream: Upstream) -> None:
        self.gateway = gateway
        self.port = port
        self.balancer = balancer
        self.upstream = upstream

    def leftovers(self) -> list[str]:
        """What is not (or more than) released; empty when every resource came back once."""
        problems = []
        for origin, (busy, idle) in self.gateway.pool.stats().items():
            # One request at a time: at most the one connection may idle; busy must be 0.
            if busy != 0 or idle > 1:
                problems.append(f"pool {origin}: {busy} busy, {idle} idle")
        b = self.balancer
        if b.picks != b.releases or b.negative:
            problems.append(f"balancer: {b.picks} picks, {b.releases} releases")
        for service, streaming in self.gateway.bodies.streaming().items():
            if streaming != 0:
                problems.append(f"service {service}: {streaming} upload slots held")
        return problems


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    upstream = Upstream()
    balancer = Counting()
    assert isinstance(balancer, CountingBalancer)
    async with AsyncExitStack() as stack:
        up = await stack.enter_async_context(serve_asgi(upstream))
        reset = await stack.enter_async_context(resetting_upstream())
        config = {
            "services": [
                {
                    "name": "up",
                    "url": f"http://127.0.0.1:{up}",
                    "retries": 0,
                    "request_buffering": False,  # every body streams, holding an upload slot
                    "max_streaming_uploads": 2,
                    "routes": [{"paths": ["/up"], "strip_path": False}],
                },
                {
                    "name": "reset",
                    "url": f"http://127.0.0.1:{reset}",
                    "retries": 0,
                    "routes": [{"paths": ["/reset"]}],
                },
            ]
        }
        gateway = Gateway(config, balancer=lambda service: balancer)
        await stack.enter_async_context(gateway)
        port = await stack.enter_async_context(serve_asgi(asgi(gateway)))
        yield Proxy(gateway, port, balancer, upstream)


async def settled(leftovers: Callable[[], list[str]]) -> list[str]:
    """Wait until nothing is left over (releases run after the response), then a little more.

    The second look catches a release that comes twice, late.
    """
    with anyio.move_on_after(5):
        while leftovers():  # noqa: ASYNC110 - the counters have no event to wait on
            await anyio.sleep(0.01)
    await anyio.sleep(0.2)
    return leftovers()


async def connect(port: int, head: bytes) -> SocketStream:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    await stream.send(head)
    return stream


async def read_until(stream: SocketStream, marker: bytes, at_least: int = 0) -> bytes:
    data = b""
    with anyio.fail_after(5):
        while marker not in data or len(data) < at_least:
            data += await stream.receive()
    return data


# -- proxied ----------------------------------------------------------------------


async def test_a_response_read_to_the_end_releases_everything_once(proxy: Proxy) -> None:
    client = TestClient("127.0.0.1", proxy.port)
    response = await client.get("/up/big")
    assert response.status == 200 and len(response.body) == 16 * len(_CHUNK)
    assert await settled(proxy.leftovers) == []
    assert proxy.balancer.picks == 1
    assert list(proxy.gateway.pool.stats().values()) == [(0, 1)]  # kept alive

    response = await client.post("/up/upload", body=b"y" * 100_000)  # a streamed upload
    assert response.status == 200 and response.body == b"100000"
    assert await settled(proxy.leftovers) == []
    assert proxy.balancer.picks == 2


async def test_a_client_leaving_mid_response_body_releases_everything_once(proxy: Proxy) -> None:
    stream = await connect(proxy.port, b"GET /up/endless HTTP/1.1\r\nhost: gk\r\n\r\n")
    await read_until(stream, b"\r\n\r\n", at_least=4 * len(_CHUNK))
    await stream.aclose()
    assert await settled(proxy.leftovers) == []
    assert proxy.balancer.picks == 1
    # The half-read connection was closed, not pooled.
    assert list(proxy.gateway.pool.stats().values()) == [(0, 0)]


async def test_a_client_leaving_mid_request_body_releases_everything_once(proxy: Proxy) -> None:
    head = b"POST /up/upload HTTP/1.1\r\nhost: gk\r\ncontent-length: %d\r\n\r\n" % _BIG
    stream = await connect(proxy.port, head)
    await stream.send(_CHUNK * 4)
    with anyio.fail_after(5):
        await proxy.upstream.receiving.wait()
    assert proxy.gateway.bodies.streaming()["up"] == 1  # the slot is held while the body streams
    await stream.aclose()
    assert await settled(proxy.leftovers) == []
    assert proxy.balancer.picks == 1


async def test_an_upstream_reset_mid_body_releases_everything_once(proxy: Proxy) -> None:
    stream = await connect(proxy.port, b"GET /reset HTTP/1.1\r\nhost: gk\r\n\r\n")
    data = await read_until(stream, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    with anyio.fail_after(5):  # the gateway cuts the client's connection short
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
    await stream.aclose()
    assert await settled(proxy.leftovers) == []
    assert proxy.balancer.picks == 1
    assert all(idle == 0 for _, idle in proxy.gateway.pool.stats().values())


# -- middleware mode: the wrapped app's task ----------------------------------------


class WrappedApp:
    """The wrapped ASGI app; counts its tasks that started and that ended."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0
        self.receiving = anyio.Event()

    def leftovers(self) -> list[str]:
        return (
            [] if self.started == self.ended else [f"app: {self.started} tasks started, {self.ended} ended"]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.started += 1
        try:
            path = scope["path"]
            if path == "/upload":
                while True:
                    message = await receive()
                    self.receiving.set()
                    if message["type"] == "http.disconnect" or not message.get("more_body", False):
                        break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            n = 0
            while path == "/endless" or n < 4:
                await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
                n += 1
                if path == "/fail":
                    raise RuntimeError("the app breaks mid-body")
                await anyio.sleep(0.005)
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.ended += 1


@pytest.fixture
async def middleware() -> AsyncIterator[tuple[WrappedApp, int]]:
    app = WrappedApp()
    config = {"services": [{"name": "app", "url": "app://", "routes": [{"paths": ["/"]}]}]}
    async with Gateway(config) as gateway, serve_asgi(asgi(gateway, app=app)) as port:
        yield app, port


async def test_the_wrapped_apps_task_ends_once_on_success(middleware: tuple[WrappedApp, int]) -> None:
    app, port = middleware
    response = await TestClient("127.0.0.1", port).get("/ok")
    assert response.status == 200 and len(response.body) == 4 * len(_CHUNK)
    assert await settled(app.leftovers) == [] and app.started == 1


async def test_the_wrapped_apps_task_ends_once_when_the_client_leaves_mid_response(
    middleware: tuple[WrappedApp, int],
) -> None:
    app, port = middleware
    stream = await connect(port, b"GET /endless HTTP/1.1\r\nhost: gk\r\n\r\n")
    await read_until(stream, b"\r\n\r\n", at_least=4 * len(_CHUNK))
    await stream.aclose()
    assert await settled(app.leftovers) == [] and app.started == 1


async def test_the_wrapped_apps_task_ends_once_when_the_client_leaves_mid_request(
    middleware: tuple[WrappedApp, int],
) -> None:
    app, port = middleware
    stream = await connect(port, b"POST /upload HTTP/1.1\r\nhost: gk\r\ncontent-length: %d\r\n\r\n" % _BIG)
    await stream.send(_CHUNK)
    with anyio.fail_after(5):
        await app.receiving.wait()
    await stream.aclose()
    assert await settled(app.leftovers) == [] and app.started == 1


async def test_the_wrapped_apps_task_ends_once_when_it_fails_mid_body(
    middleware: tuple[WrappedApp, int],
) -> None:
    app, port = middleware
    stream = await connect(port, b"GET /fail HTTP/1.1\r\nhost: gk\r\n\r\n")
    assert (await read_until(stream, b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await stream.aclose()
    assert await settled(app.leftovers) == [] and app.started == 1
