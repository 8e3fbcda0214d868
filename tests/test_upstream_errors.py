"""UpstreamPool against misbehaving upstreams: bad responses, the four timeouts, cancellation."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from gatekeep import BadRequest, Instance, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from gatekeep._http import empty_body
from gatekeep._upstream import PoolLimits, Timeouts, UpstreamPool, request_sent

from ._upstream_servers import ok, raw_server, read_body, read_head

# Every test runs once per HTTP/1.1 codec (see tests/conftest.py).
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("each_codec")]

FAST = Timeouts(connect=2, read=2, write=2, pool=2)


def answering(*replies: bytes, close: bool = True) -> object:
    """A server that reads one request head and sends ``replies`` (then closes)."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_head(stream)
        for reply in replies:
            await stream.send(reply)
            await anyio.sleep(0.01)
        if not close:
            await anyio.sleep_forever()

    return handler


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"HELLO\r\n\r\n", "invalid HTTP/1.1 response"),
        (b"HTTP/1.1 200 OK\r\nContent-", "closed the connection in the response head"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n", "invalid HTTP/1.1 response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", "invalid HTTP/1.1 response"),
        (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", "invalid HTTP/1.1 response"),
        (b"", "without sending a response"),
    ],
)
async def test_malformed_head(reply: bytes, match: str) -> None:
    async with raw_server(answering(reply)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        with pytest.raises(UpstreamProtocolError, match=match) as info:
            await pool.send(Instance("127.0.0.1", port), "GET", b"/", [], empty_body(), timeouts=FAST)
        assert request_sent(info.value)
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
)
async def test_body_breaking_mid_stream(reply: bytes) -> None:
    """Bad framing is raised by ``send`` (when it came with the head) or by the body iterator."""
    async with raw_server(answering(reply[:40], reply[40:])) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        with pytest.raises(UpstreamProtocolError):
            response = await pool.send(
                Instance("127.0.0.1", port), "GET", b"/", [], empty_body(), timeouts=FAST
            )
            await response.read()
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def test_close_delimited_body_is_read_to_eof_and_not_reused() -> None:
    reply = b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
    async with raw_server(answering(reply)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        response = await pool.send(Instance("127.0.0.1", port), "GET", b"/", [], empty_body(), timeouts=FAST)
        assert await response.read() == b"until the end"
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def big_body(total: int, chunk: bytes = b"u" * 65536) -> AsyncIterator[bytes]:
    while total > 0:
        yield chunk
        total -= len(chunk)


async def test_early_error_response_stops_the_upload() -> None:
    """The upstream answers 413 after the head and closes: the client sees the 413."""
    reply = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!"
    async with raw_server(answering(reply)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        response = await pool.send(
            Instance("127.0.0.1", port), "POST", b"/", [], big_body(64 << 20), timeouts=FAST
        )
        assert response.status == 413
        assert await response.read() == b"too big!"
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def test_early_error_response_on_open_connection_is_not_reused() -> None:
    reply = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
    async with raw_server(answering(reply, close=False)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        response = await pool.send(
            Instance("127.0.0.1", port), "POST", b"/", [(b"content-length", b"67108864")], big_body(64 << 20)
        )
        assert response.status == 401
        assert await response.read() == b""
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def test_body_not_matching_content_length_is_a_bad_request() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        head, rest = await read_head(stream)
        await anyio.sleep_forever()

    async with raw_server(handler) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port)
        with pytest.raises(BadRequest, match="Too much data"):
            await pool.send(instance, "POST", b"/", [(b"content-length", b"2")], big_body(10, b"abcde"))
        with pytest.raises(BadRequest, match="Too little data"):
            await pool.send(instance, "POST", b"/", [(b"content-length", b"20")], big_body(10, b"abcde"))
        with pytest.raises(BadRequest, match="invalid content-length") as info:
            await pool.send(instance, "POST", b"/", [(b"content-length", b"-1")], empty_body())
        assert request_sent(info.value) is False
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def test_client_body_error_propagates_and_closes() -> None:
    class ClientGone(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield b"first"
        raise ClientGone

    async with raw_server(answering(close=False)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        with pytest.raises(ClientGone):
            await pool.send(Instance("127.0.0.1", port), "POST", b"/", [], broken(), timeouts=FAST)
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


# -- the four timeouts --------------------------------------------------------


async def test_read_timeout_waiting_for_the_head() -> None:
    async with raw_server(answering(close=False)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        with pytest.raises(UpstreamTimeout, match="read timeout") as info:
            await pool.send(
                Instance("127.0.0.1", port), "GET", b"/", [], empty_body(), timeouts=Timeouts(read=0.2)
            )
        assert request_sent(info.value)
        assert info.value.status == 504
        await pool.aclose()


async def test_read_timeout_waiting_for_the_head_after_an_upload() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        head, rest = await read_head(stream)
        await read_body(stream, head, rest)
        await anyio.sleep_forever()

    async with raw_server(handler) as port:
        pool = UpstreamPool()
        with pytest.raises(UpstreamTimeout, match="read timeout"):
            await pool.send(
                Instance("127.0.0.1", port), "POST", b"/", [], big_body(1 << 20), timeouts=Timeouts(read=0.2)
            )
        await pool.aclose()


async def test_read_timeout_between_body_chunks() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n01234"
    async with raw_server(answering(head, close=False)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        response = await pool.send(
            Instance("127.0.0.1", port), "GET", b"/", [], empty_body(), timeouts=Timeouts(read=0.2)
        )
        with pytest.raises(UpstreamTimeout, match="read timeout"):
            await response.read()
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def test_a_short_body_split_from_its_head_is_awaited_before_the_response_is_handed_on() -> None:
    # Small bodies are read whole (one send to the client), so a stall there
    # is a read timeout of the call itself, before any byte reached the client.
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234"
    async with raw_server(answering(head, close=False)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        with pytest.raises(UpstreamTimeout, match="read timeout") as info:
            await pool.send(
                Instance("127.0.0.1", port), "GET", b"/", [], empty_body(), timeouts=Timeouts(read=0.2)
            )
        assert request_sent(info.value)
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def test_write_timeout_when_the_upstream_does_not_read() -> None:
    async with raw_server(answering(close=False)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        with pytest.raises(UpstreamTimeout, match="write timeout") as info:
            await pool.send(
                Instance("127.0.0.1", port),
                "PUT",
                b"/",
                [],
                big_body(256 << 20),
                timeouts=Timeouts(write=0.3),
            )
        assert request_sent(info.value)
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def test_pool_timeout_when_every_connection_is_busy() -> None:
    async with raw_server(
        answering(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n", close=False)
    ) as port:  # type: ignore[arg-type]
        pool = UpstreamPool(PoolLimits(max_connections=1))
        instance = Instance("127.0.0.1", port)
        held = await pool.send(instance, "GET", b"/", [], empty_body())
        with pytest.raises(UpstreamTimeout, match="pool timeout") as info:
            await pool.send(instance, "GET", b"/", [], empty_body(), timeouts=Timeouts(pool=0.1))
        assert request_sent(info.value) is False
        await held.aclose()
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A listener whose accept queue is full: further connects hang (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_connect_timeout(blackhole: int) -> None:
    pool = UpstreamPool()
    with pytest.raises(UpstreamTimeout, match="connect timeout") as info:
        await pool.send(
            Instance("127.0.0.1", blackhole), "GET", b"/", [], empty_body(), timeouts=Timeouts(connect=0.3)
        )
    assert request_sent(info.value) is False
    await pool.aclose()


async def test_connect_refused() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    pool = UpstreamPool()
    with pytest.raises(UpstreamConnectError, match="cannot connect") as info:
        await pool.send(Instance("127.0.0.1", port), "GET", b"/", [], empty_body())
    assert request_sent(info.value) is False
    assert info.value.status == 502
    await pool.aclose()


async def test_unresolvable_host() -> None:
    pool = UpstreamPool()
    with pytest.raises(UpstreamConnectError):
        await pool.send(Instance("no-such-host.invalid", 80), "GET", b"/", [], empty_body())
    await pool.aclose()


# -- cancellation -------------------------------------------------------------


async def test_cancelled_caller_closes_the_upstream_connection() -> None:
    closed = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_head(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            closed.set()

    async with raw_server(handler) as port:
        pool = UpstreamPool()
        with anyio.move_on_after(0.2):
            response = await pool.send(Instance("127.0.0.1", port), "GET", b"/", [], empty_body())
            await response.read()  # blocks: 97 bytes never come
        with anyio.fail_after(2):
            await closed.wait()
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        await pool.aclose()


async def test_cancelled_while_waiting_for_the_head() -> None:
    async with raw_server(answering(close=False)) as port:  # type: ignore[arg-type]
        pool = UpstreamPool()
        with anyio.move_on_after(0.1):
            await pool.send(Instance("127.0.0.1", port), "POST", b"/", [], big_body(1000, b"x" * 100))
        assert pool.stats()[f"http://127.0.0.1:{port}"] == (0, 0)
        # the pool is still usable
        with pytest.raises(UpstreamTimeout):
            await pool.send(
                Instance("127.0.0.1", port), "GET", b"/", [], empty_body(), timeouts=Timeouts(read=0.1)
            )
        await pool.aclose()


async def test_closed_pool_refuses() -> None:
    pool = UpstreamPool()
    await pool.aclose()
    with pytest.raises(UpstreamConnectError, match="closed"):
        await pool.send(Instance("127.0.0.1", 1), "GET", b"/", [], empty_body())


async def test_keep_alive_after_ok_for_reference() -> None:
    """A well-behaved exchange after all those failures: sanity of the helpers."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_head(stream)
        await stream.send(ok(b"fine"))

    async with raw_server(handler) as port:
        pool = UpstreamPool()
        r = await pool.send(Instance("127.0.0.1", port), "GET", b"/", [], empty_body())
        assert await r.read() == b"fine"
        await pool.aclose()
