"""Slow clients must not pin the upstream pool (issue 11, row 5).

Attack: many connections each trickle a request body a byte at a time.  Before
request buffering every one of them held a pooled upstream connection for as
long as it trickled, and every other client of the service got 504 "pool
timeout".  Now a body is read whole before a connection is taken (up to
``request_buffer_size``), a body that streams anyway holds one of the
service's ``max_streaming_uploads`` slots, and a client that stalls gets 408.

Everything runs over real loopback sockets: the attacker and the victim are
raw TCP clients of the gateway (served by gatekeep's mini server), the
upstream is an ASGI app behind it that records when each body byte arrived.
Timeouts are scaled down so that each test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
import uvicorn
from anyio.abc import SocketStream

from gatekeep import ConfigError, Gateway, asgi
from gatekeep.testing import TestClient, serve_asgi

from .._upstream_servers import uvicorn_process

pytestmark = pytest.mark.anyio


class Recorder:
    """An upstream that records, per request, when its head and body bytes arrived."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.first_byte = anyio.Event()
        self.broken = anyio.Event()

    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        record: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "head": time.monotonic(),
            "first": None,
            "last": None,
            "size": 0,
            "broken": False,
        }
        self.requests.append(record)
        while True:
            try:
                message = await receive()
            except Exception:  # the gateway closed the connection mid-body
                record["broken"] = True
                self.broken.set()
                return
            if message["type"] != "http.request":
                record["broken"] = True
                self.broken.set()
                return
            chunk = message.get("body", b"")
            if chunk:
                if record["first"] is None:
                    record["first"] = time.monotonic()
                    self.first_byte.set()
                record["size"] += len(chunk)
            if not message.get("more_body", False):
                break
        record["last"] = time.monotonic()
        body = str(record["size"]).encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def config(address: str, *, gateway: dict[str, Any] | None = None, **service: Any) -> dict[str, Any]:
    route = service.pop("route", {})
    return {
        "gateway": {"pool": {"pool_timeout": 1.0}, **(gateway or {})},
        "services": [
            {"name": "svc", "url": address, "routes": [{"name": "all", "paths": ["/"], **route}], **service}
        ],
    }


@asynccontextmanager
async def running(
    *, gateway: dict[str, Any] | None = None, **service: Any
) -> AsyncIterator[tuple[Gateway, Recorder, int]]:
    upstream = Recorder()
    async with AsyncExitStack() as stack:
        upstream_port = await stack.enter_async_context(serve_asgi(upstream))
        gw = Gateway(config(f"http://127.0.0.1:{upstream_port}", gateway=gateway, **service))
        await stack.enter_async_context(gw)
        port = await stack.enter_async_context(serve_asgi(asgi(gw)))
        yield gw, upstream, port


async def start_upload(port: int, length: int | None, first: bytes = b"") -> SocketStream:
    """Open a connection and send a POST head (chunked when ``length`` is None) and ``first``."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    head = b"POST /upload HTTP/1.1\r\nhost: gw\r\n" + framing + b"\r\n\r\n"
    await stream.send(head + (chunk(first) if length is None and first else first))
    return stream


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_response(stream: SocketStream) -> tuple[int, dict[str, str], bytes]:
    """Read one response (content-length framed, as gatekeep's answers here are)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = await stream.receive(65536)
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += await stream.receive(65536)
    return status, headers, body


async def trickle(stream: SocketStream, every: float, stop: anyio.Event) -> None:
    """Send one body byte every ``every`` seconds until ``stop`` (or the gateway hangs up)."""
    try:
        while not stop.is_set():
            await stream.send(b"x")
            await anyio.sleep(every)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
        pass


# -- the attack -----------------------------------------------------------------


@pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "streaming"])
async def test_101_slow_uploads_do_not_starve_a_get(buffering: bool) -> None:
    """The issue's attack: 101 x 200 KB trickled; a GET to the same service still answers 200.

    Buffered (the default), no slow upload reaches the upstream at all.  With
    ``request_buffering = false`` the first ``max_streaming_uploads`` (50, half
    of the 100-connection pool) stream, the rest wait for a slot, then get 503.
    """
    service: dict[str, Any] = {"retries": 0}
    if not buffering:
        service["route"] = {"request_buffering": False}
    async with running(gateway={"client_body_timeout": 10.0}, **service) as (gw, upstream, port):
        stop = anyio.Event()
        streams: list[SocketStream] = []
        async with anyio.create_task_group() as tg:
            for _ in range(101):
                stream = await start_upload(port, 200_000, b"x" * 1000)
                streams.append(stream)
                tg.start_soon(trickle, stream, 0.2, stop)
            await anyio.sleep(0.5)  # every upload is in the gateway by now
            with anyio.fail_after(5):
                response = await TestClient("127.0.0.1", port).get("/after")
            in_use = sum(used for used, _ in gw.pool.stats().values())
            posted = len(upstream.posts())
            stop.set()
            for stream in streams:
                await stream.aclose()
        assert response.status == 200, response.text
        if buffering:
            assert posted == 0  # not one incomplete body took a connection
        else:
            assert posted == 50
            assert in_use <= 51  # the GET's connection may not be back yet


async def test_streaming_uploads_over_the_cap_get_503() -> None:
    async with running(max_streaming_uploads=2, retries=0, route={"request_buffering": False}) as (
        _,
        upstream,
        port,
    ):
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            holders = [await start_upload(port, 100_000, b"x") for _ in range(2)]
            for stream in holders:
                tg.start_soon(trickle, stream, 0.1, stop)
            await anyio.sleep(0.2)
            late = await start_upload(port, 100_000, b"x")
            started = time.monotonic()
            with anyio.fail_after(5):
                status, headers, body = await read_response(late)
            waited = time.monotonic() - started
            stop.set()
            for stream in [*holders, late]:
                await stream.aclose()
        assert status == 503
        assert headers["content-type"] == "application/problem+json"
        assert headers["retry-after"] == "1"
        assert "streams 2 request bodies" in json.loads(body)["detail"]
        assert 0.8 < waited < 3  # it waited the pool timeout for a slot
        assert len(upstream.posts()) == 2


async def test_a_streaming_slot_is_free_again_once_its_body_ended() -> None:
    async with running(max_streaming_uploads=1, retries=0, route={"request_buffering": False}) as (
        _,
        upstream,
        port,
    ):
        client = TestClient("127.0.0.1", port, timeout=5)
        for _ in range(3):
            assert (await client.post("/upload", body=b"y" * 100_000)).status == 200
        assert [r["size"] for r in upstream.posts()] == [100_000] * 3


# -- client body timeouts ---------------------------------------------------------


async def test_a_stalled_body_gets_408_and_never_reaches_the_upstream() -> None:
    async with running(gateway={"client_body_timeout": 0.3}) as (_, upstream, port):
        stream = await start_upload(port, 1000, b"x" * 10)
        started = time.monotonic()
        with anyio.fail_after(3):
            status, headers, body = await read_response(stream)
        elapsed = time.monotonic() - started
        await stream.aclose()
    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == 408
    assert problem["detail"] == "no request body data for 0.3 s"
    assert 0.25 < elapsed < 1.5
    assert upstream.posts() == []


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_under_uvicorn_a_stalled_body_gets_408_and_the_connection_closes(http: str) -> None:
    """The timer is the gateway's, so an embedder's ASGI server gets it too."""
    async with serve_asgi(Recorder()) as upstream_port:
        gw = Gateway(config(f"http://127.0.0.1:{upstream_port}", gateway={"client_body_timeout": 0.3}))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(asgi(gw), http=http, lifespan="on", log_level="warning"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            with anyio.fail_after(5):
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                    await anyio.sleep(0.01)
            stream = await start_upload(port, 1000, b"abc")
            with anyio.fail_after(3):
                status, headers, _ = await read_response(stream)
                with pytest.raises(anyio.EndOfStream):
                    await stream.receive()  # and uvicorn closed the connection
            await stream.aclose()
        finally:
            server.should_exit = True
            await task
    assert status == 408
    assert headers["connection"] == "close"


@pytest.mark.parametrize("length", [1000, None], ids=["content-length", "chunked"])
async def test_the_idle_timer_restarts_with_every_read(length: int | None) -> None:
    """Slow but steady (a read every 0.1 s, idle timeout 0.3 s) is not a stall."""
    async with running(gateway={"client_body_timeout": 0.3}) as (_, upstream, port):
        stream = await start_upload(port, length, b"x")
        parts = [b"x"] * 9 if length is None else [b"x" * 111] * 9
        for part in parts:
            await anyio.sleep(0.1)
            await stream.send(chunk(part) if length is None else part)
        if length is None:
            await stream.send(b"0\r\n\r\n")
        with anyio.fail_after(3):
            status, _, body = await read_response(stream)
        await stream.aclose()
    assert status == 200
    assert body == (b"10" if length is None else b"1000")


async def test_a_stalled_streaming_body_gets_408_and_its_connection_is_discarded() -> None:
    """A partial body already went upstream: that connection is closed, never pooled again."""
    async with running(
        gateway={"client_body_timeout": 0.3}, retries=0, route={"request_buffering": False}
    ) as (gw, upstream, port):
        stream = await start_upload(port, 100_000, b"x" * 5000)
        with anyio.fail_after(3):
            await upstream.first_byte.wait()
            status, headers, _ = await read_response(stream)
        await stream.aclose()
        assert status == 408
        assert headers["connection"] == "close"
        with anyio.fail_after(3):
            await upstream.broken.wait()
        assert list(gw.pool.stats().values()) == [(0, 0)]  # not in use, not idle: closed
        # The service is fine for everyone else, on a fresh connection.
        response = await TestClient("127.0.0.1", port, timeout=3).get("/next")
        assert response.status == 200


async def test_total_body_timeout() -> None:
    """A body that keeps coming, but too slowly overall, gets 408 at the total deadline."""
    async with running(gateway={"client_body_timeout": 5.0, "client_body_total_timeout": 0.5}) as (
        _,
        upstream,
        port,
    ):
        stream = await start_upload(port, 1000, b"x")
        stop = anyio.Event()
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle, stream, 0.05, stop)
            with anyio.fail_after(3):
                status, _, body = await read_response(stream)
            stop.set()
        elapsed = time.monotonic() - started
        await stream.aclose()
    assert status == 408
    assert json.loads(body)["detail"] == "the request body did not arrive within 0.5 s"
    assert 0.4 < elapsed < 1.5
    assert upstream.posts() == []


# -- buffering ----------------------------------------------------------------------


@pytest.mark.parametrize("length", [200_000, None], ids=["content-length", "chunked"])
async def test_a_buffered_body_reaches_the_upstream_at_full_speed(length: int | None) -> None:
    """The client takes 0.4 s to send its body; the upstream sees it whole, at once."""
    async with running(retries=0) as (_, upstream, port):
        stream = await start_upload(port, length)
        for _ in range(4):
            await anyio.sleep(0.1)
            part = b"x" * 50_000
            await stream.send(chunk(part) if length is None else part)
        finished = time.monotonic()
        if length is None:
            await stream.send(b"0\r\n\r\n")
        with anyio.fail_after(3):
            status, _, body = await read_response(stream)
        await stream.aclose()
    assert (status, body) == (200, b"200000")
    [post] = upstream.posts()
    assert post["head"] >= finished - 0.01  # no connection before the body was complete
    assert post["last"] - post["head"] < 0.05


@pytest.mark.parametrize(
    ("service", "gateway", "length"),
    [
        ({"route": {"request_buffering": False}}, {}, 100_000),  # the route says so
        ({"request_buffering": False}, {}, 100_000),  # the service says so
        ({}, {"request_buffer_size": 100_000}, 200_000),  # too big to buffer
        ({}, {"request_buffer_size": 100_000}, None),  # chunked, grows past the limit
    ],
    ids=["route-off", "service-off", "over-limit", "chunked-over-limit"],
)
async def test_unbuffered_bodies_stream(
    service: dict[str, Any], gateway: dict[str, Any], length: int | None
) -> None:
    """The upstream has the first bytes before the client sent the rest.

    (Bodies over 64 KiB: up to ``retry_policy.body_limit`` the retry layer reads a
    body ahead, so that a failed connect can go to another instance.)
    """
    async with running(gateway=gateway, retries=0, **service) as (_, upstream, port):
        first = b"x" * (150_000 if length is None else 500)
        stream = await start_upload(port, length, first)
        with anyio.fail_after(3):
            await upstream.first_byte.wait()
        rest = b"y" * ((length or 150_000 + 500) - len(first))
        await stream.send(chunk(rest) + b"0\r\n\r\n" if length is None else rest)
        with anyio.fail_after(3):
            status, _, body = await read_response(stream)
        await stream.aclose()
    assert status == 200
    assert int(body) == (length or 150_500)


async def test_bodies_stream_once_the_buffer_memory_is_spent() -> None:
    async with running(
        gateway={"request_buffer_size": 100_000, "request_buffer_memory": 180_000}, retries=0
    ) as (gw, upstream, port):
        # Holds 100 000 of the 180 000 bytes while it trickles.
        holder = await start_upload(port, 100_000, b"h")
        await anyio.sleep(0.2)
        assert gw.bodies._budget.free == 80_000
        stream = await start_upload(port, 90_000, b"x" * 100)
        with anyio.fail_after(3):
            await upstream.first_byte.wait()  # no room: it streams
        await stream.send(b"x" * 89_900)
        with anyio.fail_after(3):
            assert (await read_response(stream))[0] == 200
        await holder.send(b"h" * 99_999)
        with anyio.fail_after(3):
            assert (await read_response(holder))[0] == 200
        for s in (stream, holder):
            await s.aclose()
        assert gw.bodies._budget.free == 180_000


@pytest.fixture(scope="module")
def uvicorn_port() -> Iterator[int]:
    with uvicorn_process() as port:
        yield port


async def test_a_64_mib_upload_over_the_buffer_limit_streams_with_flat_memory(uvicorn_port: int) -> None:
    size = 64 << 20
    gw = Gateway(config(f"http://127.0.0.1:{uvicorn_port}"))
    async with gw, serve_asgi(asgi(gw)) as port:
        tracemalloc.start()
        try:
            stream = await start_upload(port, size)
            piece = b"u" * 65536
            with anyio.fail_after(60):
                for _ in range(size // len(piece)):
                    await stream.send(piece)
                status, _, body = await read_response(stream)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await stream.aclose()
    assert (status, body) == (200, str(size).encode())
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"


# -- config --------------------------------------------------------------------------


def test_config_errors_name_their_path() -> None:
    bad = {
        "gateway": {"client_body_timeout": 0, "request_buffer_size": -1, "client_body_total_timeout": "1s"},
        "services": [
            {
                "name": "svc",
                "url": "http://127.0.0.1:1",
                "max_streaming_uploads": 0,
                "routes": [{"paths": ["/"], "request_buffering": "yes"}],
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        Gateway(bad)
    paths = {e.path for e in info.value.errors}
    assert paths == {
        "gateway.client_body_timeout",
        "gateway.request_buffer_size",
        "gateway.client_body_total_timeout",
        "services[0].max_streaming_uploads",
        "services[0].routes[0].request_buffering",
    }


def test_defaults() -> None:
    gw = Gateway(config("http://127.0.0.1:1"))
    settings = gw.config.gateway
    assert settings.client_body_timeout == 30.0
    assert settings.client_body_total_timeout is None
    assert settings.request_buffer_size == 1 << 20
    assert settings.request_buffer_memory == 64 << 20
    assert gw.config.services[0].request_buffering is True
    assert gw.bodies._uploads["svc"].limit == 50  # half of the default 100-connection pool
