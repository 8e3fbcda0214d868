"""UpstreamPool: keep-alive reuse, request framing, idle and stale connections."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from gatekeep import Instance, UpstreamProtocolError, replayable
from gatekeep._http import empty_body
from gatekeep._upstream import PoolLimits, Timeouts, UpstreamPool, request_sent

from ._upstream_servers import header_value, ok, raw_server, read_body, read_head, uvicorn_process

# Every test runs once per HTTP/1.1 codec (see tests/conftest.py).
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("each_codec")]

FAST = Timeouts(connect=5, read=5, write=5, pool=5)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class Recorder:
    """A keep-alive HTTP/1.1 server that records each request (head, body size, connection no.)."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, int, int]] = []
        self.connections = 0

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        buf = bytearray()
        while True:
            head, rest = await read_head(stream, buf)
            if not head:
                return
            size, leftover = await read_body(stream, head, rest)
            buf[:] = leftover
            self.requests.append((head, size, number))
            await stream.send(ok(b"got %d" % size))


async def test_get_reuses_one_connection() -> None:
    recorder = Recorder()
    async with raw_server(recorder) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port)
        for _ in range(3):
            response = await pool.send(instance, "GET", b"/a?b=1", [], empty_body(), timeouts=FAST)
            assert response.status == 200
            assert response.source == "service"
            assert await response.read() == b"got 0"
        assert recorder.connections == 1
        assert pool.stats() == {f"http://127.0.0.1:{port}": (0, 1)}
        await pool.aclose()
    head = recorder.requests[0][0]
    assert head.startswith(b"GET /a?b=1 HTTP/1.1\r\n")
    assert header_value(head, b"host") == f"127.0.0.1:{port}".encode()
    assert header_value(head, b"content-length") is None
    assert header_value(head, b"transfer-encoding") is None


async def test_framing_of_request_bodies() -> None:
    recorder = Recorder()
    async with raw_server(recorder) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port)
        host = [(b"host", b"svc.internal")]
        # no content-length: chunked
        r = await pool.send(instance, "POST", b"/", host, chunks(b"ab", b"", b"cd"), timeouts=FAST)
        assert await r.read() == b"got 4"
        # content-length given: kept; a caller's transfer-encoding is dropped
        cl = [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")]
        r = await pool.send(instance, "PUT", b"/", cl, chunks(b"x", b"yz"), timeouts=FAST)
        assert await r.read() == b"got 3"
        # empty POST body: content-length 0
        r = await pool.send(instance, "POST", b"/", [], empty_body(), timeouts=FAST)
        assert await r.read() == b"got 0"
        await pool.aclose()
    heads = [h for h, _, _ in recorder.requests]
    assert header_value(heads[0], b"transfer-encoding") == b"chunked"
    assert header_value(heads[0], b"host") == b"svc.internal"
    assert header_value(heads[1], b"content-length") == b"3"
    assert header_value(heads[1], b"transfer-encoding") is None
    assert header_value(heads[2], b"content-length") == b"0"
    assert recorder.connections == 1


async def test_head_response_and_early_close_release_the_slot() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        buf = bytearray()
        while True:
            head, rest = await read_head(stream, buf)
            if not head:
                return
            if head.startswith(b"HEAD"):
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            else:
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"z" * 1000)

    async with raw_server(handler) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port)
        r = await pool.send(instance, "HEAD", b"/", [], empty_body(), timeouts=FAST)
        assert r.headers.get(b"content-length") == b"5"
        assert await r.read() == b""
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 1)
        r = await pool.send(instance, "GET", b"/", [], empty_body(), timeouts=FAST)
        async for _ in r.body:  # type: ignore[union-attr]
            break
        await r.aclose()
        await r.aclose()  # idempotent
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)  # half-read: closed, not pooled
        await pool.aclose()


async def test_idle_timeout_uses_the_injected_clock() -> None:
    now = [0.0]
    recorder = Recorder()
    async with raw_server(recorder) as port:
        pool = UpstreamPool(PoolLimits(idle_timeout=4.0), clock=lambda: now[0])
        instance = Instance("127.0.0.1", port)
        for step in (0.0, 3.9, 4.1):
            now[0] += step
            await (await pool.send(instance, "GET", b"/", [], empty_body(), timeouts=FAST)).read()
        await pool.aclose()
    # reused after 3.9 s idle, not after 4.1 s
    assert [c for _, _, c in recorder.requests] == [1, 1, 2]


async def test_stale_idle_connection_is_detected_before_reuse() -> None:
    """The upstream closes idle connections; even a POST goes through on a new one."""
    served: list[int] = []

    async def one_shot(stream: anyio.abc.SocketStream) -> None:
        head, rest = await read_head(stream)
        await read_body(stream, head, rest)
        served.append(1)
        await stream.send(ok())  # keep-alive promised, then closed

    async with raw_server(one_shot) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port)
        for _ in range(3):
            r = await pool.send(instance, "POST", b"/", [], chunks(b"data"), timeouts=FAST)
            assert await r.read() == b"ok"
            await anyio.sleep(0.05)  # let the FIN arrive
        await pool.aclose()
    assert len(served) == 3


def closes_second_request_unanswered() -> tuple[list[bytes], object]:
    """First request answered with keep-alive; a second one on it is read, then the connection closes."""
    seen: list[bytes] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        head, rest = await read_head(stream)
        seen.append(head.split(b"\r\n")[0])
        await read_body(stream, head, rest)
        await stream.send(ok())
        head, _ = await read_head(stream)
        if head:
            seen.append(b"dropped " + head.split(b"\r\n")[0])
        # closing now is the race: the request arrived just as we closed

    return seen, handler


async def test_stale_race_is_retried_once_when_retry_safe() -> None:
    seen, handler = closes_second_request_unanswered()
    async with raw_server(handler) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port)
        assert (
            await (await pool.send(instance, "GET", b"/1", [], empty_body(), timeouts=FAST)).read() == b"ok"
        )
        r = await pool.send(instance, "GET", b"/2", [], empty_body(), timeouts=FAST, retry_safe=True)
        assert await r.read() == b"ok"
        # a small non-streamed body is kept and replayed too
        r = await pool.send(instance, "PUT", b"/3", [], chunks(b"abc"), timeouts=FAST, retry_safe=True)
        assert await r.read() == b"ok"
        await pool.aclose()
    assert seen == [
        b"GET /1 HTTP/1.1",
        b"dropped GET /2 HTTP/1.1",
        b"GET /2 HTTP/1.1",
        b"dropped PUT /3 HTTP/1.1",
        b"PUT /3 HTTP/1.1",
    ]


async def test_stale_race_is_not_retried_for_unsafe_requests() -> None:
    seen, handler = closes_second_request_unanswered()
    async with raw_server(handler) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port)
        await (await pool.send(instance, "POST", b"/1", [], replayable(b"x"), timeouts=FAST)).read()
        with pytest.raises(UpstreamProtocolError, match="127.0.0.1") as info:
            await pool.send(instance, "POST", b"/2", [], replayable(b"x"), timeouts=FAST)
        assert request_sent(info.value) is True
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()
    assert seen == [b"POST /1 HTTP/1.1", b"dropped POST /2 HTTP/1.1"]


async def test_fresh_connection_failure_is_not_retried() -> None:
    calls: list[int] = []

    async def hang_up(stream: anyio.abc.SocketStream) -> None:
        calls.append(1)
        await read_head(stream)

    async with raw_server(hang_up) as port:
        pool = UpstreamPool()
        with pytest.raises(UpstreamProtocolError) as info:
            await pool.send(Instance("127.0.0.1", port), "GET", b"/", [], empty_body(), retry_safe=True)
        assert request_sent(info.value)
        await pool.aclose()
    assert calls == [1]


async def test_uvicorn_keep_alive_expiry_race_shows_no_error() -> None:
    """The classic: uvicorn closes idle connections after 0.3 s; requests arrive right then."""
    with uvicorn_process(keep_alive=0.3) as port:
        # idle_timeout above the server's on purpose, so the pool does meet closing connections
        pool = UpstreamPool(PoolLimits(idle_timeout=30))
        instance = Instance("127.0.0.1", port)
        errors: list[BaseException] = []

        async def client(delay: float) -> None:
            for _ in range(6):
                try:
                    r = await pool.send(
                        instance, "GET", b"/", [], empty_body(), timeouts=FAST, retry_safe=True
                    )
                    assert await r.read() == b"Hello, world!"
                except Exception as exc:  # pragma: no cover - the failure we guard against
                    errors.append(exc)
                await anyio.sleep(delay)

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(client, 0.27 + i * 0.01)  # straddle the 0.3 s expiry
        await pool.aclose()
    assert errors == []
