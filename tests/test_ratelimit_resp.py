"""The limiter's lean RESP2 wire: the parser (property tests), the protocol, a real redis-server."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError

from gatekeep import Limit, RateLimiterUnavailable, RedisRateLimiter
from gatekeep.ratelimit._resp import (
    Call,
    Incomplete,
    ProtocolViolation,
    RespProtocol,
    RespWire,
    pack,
    parse,
    wire_for,
)
from tests._redis_fixture import RedisProcess

# -- the codec, without a server -------------------------------------------------

replies: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.binary(max_size=40)
    | st.builds(lambda t: ("+", t), st.text(alphabet="abcXYZ 019", max_size=10))
    | st.builds(lambda t: ("-", t), st.text(alphabet="ERRNOSCRIPT abc", min_size=1, max_size=20)),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


def encode(reply: Any) -> bytes:
    """RESP2 as a server writes it (written here independently of the module's ``pack``)."""
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, int):
        return f":{reply}\r\n".encode()
    if isinstance(reply, bytes):
        return f"${len(reply)}\r\n".encode() + reply + b"\r\n"
    if isinstance(reply, tuple):
        return f"{reply[0]}{reply[1]}\r\n".encode()
    return f"*{len(reply)}\r\n".encode() + b"".join(encode(r) for r in reply)


def expected(reply: Any) -> Any:
    """What ``parse`` gives for ``reply``: errors as exceptions, simple strings as bytes."""
    if isinstance(reply, tuple):
        return reply[1].encode() if reply[0] == "+" else ("error", reply[1])
    if isinstance(reply, list):
        return [expected(r) for r in reply]
    return reply


def comparable(value: Any) -> Any:
    if isinstance(value, ResponseError):
        return ("error", str(value))
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


@given(st.lists(replies, min_size=1, max_size=6), st.data())
def test_any_replies_split_anywhere_parse_back(found: list[Any], data: st.DataObject) -> None:
    wire = b"".join(encode(r) for r in found)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    protocol = RespProtocol()
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        futures = loop.run_until_complete(_send(protocol, len(found)))
        for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            protocol.data_received(wire[start:end])
        assert all(future.done() for future in futures)
        assert [comparable(future.result()) for future in futures] == [expected(r) for r in found]
    finally:
        loop.close()
    assert transport.written == b"PING"


# The limiter's replies (arrays of integers) next to integers and nested arrays: the shapes
# that the parser's fast path for integer arrays must tell from its own.
integer_replies: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    # Counts of one digit (read by the wire's fast path) and of two.
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=12),
    st.lists(st.one_of(st.integers(), st.lists(st.integers(), max_size=3)), max_size=4),
)


@given(st.lists(integer_replies, min_size=1, max_size=8), st.data())
def test_integer_arrays_split_anywhere_parse_back(found: list[Any], data: st.DataObject) -> None:
    wire = b"".join(encode(r) for r in found)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    protocol = RespProtocol()
    protocol.connection_made(_Transport())  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        futures = loop.run_until_complete(_send(protocol, len(found)))
        for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            protocol.data_received(wire[start:end])
        assert [future.result() for future in futures] == found
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("raw", "reply", "end"),
    [
        (b"*2\r\n:1\r\n:2\r\n:3\r\n", [1, 2], 12),  # an integer reply follows
        (b"*0\r\n:3\r\n", [], 4),
        (b"*1\r\n*1\r\n:5\r\n", [[5]], 12),
        (b"*3\r\n:1\r\n$1\r\nx\r\n:-2\r\n", [1, b"x", -2], 20),
    ],
)
def test_integer_arrays_end_where_they_end(raw: bytes, reply: Any, end: int) -> None:
    assert parse(raw) == (reply, end)


@pytest.mark.parametrize("raw", [b"*2\r\n:1\r\n:2", b"*3\r\n:1\r\n:2\r\n"])
def test_an_integer_array_cut_short_is_incomplete(raw: bytes) -> None:
    with pytest.raises(Incomplete):
        parse(raw)


async def _send(protocol: RespProtocol, count: int) -> list[asyncio.Future[Any]]:
    """``count`` calls written in one go (the first writes PING, the others nothing)."""
    loop = asyncio.get_running_loop()
    calls = [Call(b"PING" if i == 0 else b"", loop.create_future(), loop.time() + 1) for i in range(count)]
    protocol.send(calls)
    return [call.future for call in calls]


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


@given(
    st.lists(st.one_of(st.binary(max_size=30), st.text(max_size=10), st.integers()), min_size=1, max_size=8)
)
def test_pack_writes_an_array_of_bulk_strings(command: list[Any]) -> None:
    value, end = parse(pack(command))
    as_bytes = [c if isinstance(c, bytes) else str(c).encode("utf-8", "surrogatepass") for c in command]
    assert value == as_bytes
    assert end == len(pack(command))


@pytest.mark.parametrize("raw", [b":12", b"$5\r\nab", b"*2\r\n:1\r\n", b""])
def test_a_reply_cut_short_is_incomplete(raw: bytes) -> None:
    with pytest.raises(Incomplete):
        parse(raw)


@pytest.mark.parametrize(
    "raw", [b"!3\r\n", b":x1\r\n", b"*z\r\n", b"$2\r\nabcd\r\n", b"HTTP/1.1 400 Bad Request\r\n"]
)
def test_what_is_not_resp2_is_a_protocol_violation(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse(raw)


def test_server_errors_keep_their_kind() -> None:
    assert isinstance(parse(b"-NOSCRIPT No matching script\r\n")[0], NoScriptError)
    assert isinstance(parse(b"-WRONGPASS invalid username-password pair\r\n")[0], AuthenticationError)
    error = parse(b"-WRONGTYPE Operation against a key\r\n")[0]
    assert type(error) is ResponseError and "WRONGTYPE" in str(error)


@pytest.mark.anyio
async def test_a_reply_nobody_asked_for_ends_the_connection() -> None:
    protocol = RespProtocol()
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b":1\r\n")
    assert transport.aborted and not protocol.alive


@pytest.mark.anyio
async def test_garbage_fails_every_waiting_call() -> None:
    protocol = RespProtocol()
    protocol.connection_made(_Transport())  # type: ignore[arg-type]
    first, second, third = await _send(protocol, 3)
    protocol.data_received(b":1\r\n:2\r\n?bad\r\n")
    assert await first == 1 and await second == 2
    assert isinstance(await third, ProtocolViolation)


# -- against a real redis-server ---------------------------------------------------


@pytest.mark.anyio
async def test_only_a_plain_tcp_pool_gets_the_wire(redis_url: str, tmp_path: Any) -> None:
    plain = aioredis.Redis.from_url(redis_url)
    unix = aioredis.Redis(unix_socket_path=str(tmp_path / "redis.sock"))
    tls = aioredis.Redis(host="127.0.0.1", port=1, ssl=True)
    try:
        assert isinstance(wire_for(plain), RespWire)
        assert wire_for(unix) is None
        assert wire_for(tls) is None
    finally:
        for client in (plain, unix, tls):
            await client.aclose()


@pytest.mark.anyio
async def test_the_wire_authenticates_and_selects_its_database(redis_process: RedisProcess) -> None:
    admin = aioredis.Redis.from_url(redis_process.url)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    admin = aioredis.Redis(host="127.0.0.1", port=redis_process.port, password="s3cret")
    await admin.execute_command("ACL", "SETUSER", "gk", "on", ">gk-pass", "~*", "+@all")
    client = aioredis.Redis(
        host="127.0.0.1", port=redis_process.port, username="gk", password="gk-pass", db=3
    )
    limiter = RedisRateLimiter(client)
    try:
        assert (await limiter.acquire("k", [Limit(rate=5, period=60.0)])).remaining == (4,)
        in_db3 = aioredis.Redis(host="127.0.0.1", port=redis_process.port, password="s3cret", db=3)
        assert await in_db3.keys("gk:rl:*") == [b"gk:rl:{k}:5/60.0/5"]
        assert await admin.keys("gk:rl:*") == []
        await in_db3.aclose()
    finally:
        await limiter.aclose()
        await client.aclose()
        await admin.aclose()


@pytest.mark.anyio
async def test_a_wrong_password_is_an_unavailable_store_not_a_traceback(redis_process: RedisProcess) -> None:
    admin = aioredis.Redis.from_url(redis_process.url)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    client = aioredis.Redis(host="127.0.0.1", port=redis_process.port, password="wrong")
    limiter = RedisRateLimiter(client)
    try:
        with pytest.raises(RateLimiterUnavailable, match="WRONGPASS|invalid"):
            await limiter.acquire("k", [Limit(rate=5, period=60.0)])
    finally:
        await limiter.aclose()
        await client.aclose()


@pytest.mark.anyio
async def test_a_server_restart_between_calls_costs_no_decision(redis_process: RedisProcess) -> None:
    """The idle connection died with the server: the next call reconnects and succeeds."""
    client = aioredis.Redis.from_url(redis_process.url)
    limiter = RedisRateLimiter(client, timeout=2.0)
    limit = Limit(rate=100, period=60.0)
    try:
        assert (await limiter.acquire("k", [limit])).allowed
        redis_process.restart()
        decision = await limiter.acquire("k", [limit])
        assert decision.allowed and decision.remaining == (99,)  # a fresh server
    finally:
        await limiter.aclose()
        await client.aclose()


@pytest.mark.anyio
async def test_a_pipelined_wave_shares_one_connection(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client)
    limit = Limit(rate=1000, period=60.0)
    try:
        decisions = await asyncio.gather(*(limiter.acquire(f"k{i % 7}", [limit]) for i in range(300)))
        assert all(d.allowed for d in decisions)
        remaining = sorted(d.remaining[0] for d in decisions)
        # Every key saw its own exact sequence of decisions.
        assert remaining.count(999) == 7
        clients = await client.client_list()
        # The limiter's own connection plus the checking client's: no pool of connections.
        assert len(clients) == 2
    finally:
        await limiter.aclose()
        await client.aclose()


class _SlowReplies:
    """A TCP relay to Redis on loopback that passes requests on at once and holds each reply
    chunk ``delay`` seconds: what a client writes while replies are still out shows."""

    def __init__(self, port: int, delay: float) -> None:
        self.port = port
        self.delay = delay
        self.requests: list[float] = []  # when each request chunk reached the relay
        self.replies: list[float] = []  # when each reply chunk was passed back
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.port)
        loop = asyncio.get_running_loop()

        async def up() -> None:
            while data := await client_r.read(65536):
                self.requests.append(loop.time())
                redis_w.write(data)

        async def down() -> None:
            while data := await redis_r.read(65536):
                await asyncio.sleep(self.delay)
                self.replies.append(loop.time())
                client_w.write(data)

        try:
            await asyncio.gather(up(), down())
        finally:
            client_w.close()
            redis_w.close()


@pytest.mark.anyio
async def test_calls_do_not_wait_for_the_round_trip_in_flight(redis_process: RedisProcess) -> None:
    """A second wave is written while the first wave's replies are still out (pipelining),
    each wave in one write, and every caller gets its own reply in order."""
    relay = _SlowReplies(redis_process.port, delay=0.3)
    async with relay as port:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        limiter = RedisRateLimiter(client, timeout=5.0)
        limit = Limit(rate=100, period=60.0)
        try:
            assert (await limiter.acquire("warm", [limit])).allowed  # connected, script loaded
            relay.requests.clear()
            relay.replies.clear()
            first = [asyncio.ensure_future(limiter.acquire("k", [limit])) for _ in range(10)]
            await asyncio.sleep(0.1)
            second = [asyncio.ensure_future(limiter.acquire("k", [limit])) for _ in range(10)]
            started = asyncio.get_running_loop().time()
            decisions = await asyncio.gather(*first, *second)
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            await limiter.aclose()
            await client.aclose()
    assert len(relay.requests) == 2  # one write per wave
    assert relay.requests[1] < relay.replies[0]  # the second wave did not wait for the first
    assert elapsed < 0.3 + 0.25  # one delay, not two
    assert [d.remaining[0] for d in decisions] == list(range(99, 79, -1))


@pytest.mark.anyio
async def test_a_caller_that_gives_up_does_not_shift_the_others_replies(redis_process: RedisProcess) -> None:
    relay = _SlowReplies(redis_process.port, delay=0.2)
    async with relay as port:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        limiter = RedisRateLimiter(client, timeout=5.0)
        limit = Limit(rate=100, period=60.0)
        try:
            assert (await limiter.acquire("warm", [limit])).allowed
            calls = [asyncio.ensure_future(limiter.acquire(f"k{i}", [limit], cost=i + 1)) for i in range(6)]
            await asyncio.sleep(0.05)  # written, replies held by the relay
            calls[2].cancel()
            done = await asyncio.gather(*calls, return_exceptions=True)
            again = await limiter.acquire("k2", [limit])
        finally:
            await limiter.aclose()
            await client.aclose()
    assert isinstance(done[2], asyncio.CancelledError)
    assert [d.remaining[0] for i, d in enumerate(done) if i != 2] == [99, 98, 96, 95, 94]
    assert again.remaining == (96,)  # the cancelled call was decided all the same: 3 taken, then 1


@pytest.mark.anyio
async def test_a_connect_that_hangs_costs_each_call_at_most_the_timeout() -> None:
    """A Redis whose accept queue is full never completes the handshake: every call still
    answers within the limiter's timeout, and a later wave is not stuck behind the first."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # the one slot of the queue
    client = aioredis.Redis(host="127.0.0.1", port=port)
    limiter = RedisRateLimiter(client, timeout=0.3)
    limit = Limit(rate=10, period=60.0)
    try:
        for _ in range(2):  # a lone call, then a wave
            started = asyncio.get_running_loop().time()
            outcomes = await asyncio.gather(
                *(limiter.acquire(f"k{i}", [limit]) for i in range(20)), return_exceptions=True
            )
            elapsed = asyncio.get_running_loop().time() - started
            assert all(isinstance(o, RateLimiterUnavailable) for o in outcomes)
            assert all("within 0.3 s" in str(o) for o in outcomes)
            assert elapsed < 0.3 + 0.25
    finally:
        await limiter.aclose()
        await client.aclose()
        filler.close()
        server.close()


@pytest.mark.anyio
async def test_closing_the_limiter_gives_up_a_connection_still_being_opened() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # the one slot of the accept queue
    client = aioredis.Redis(host="127.0.0.1", port=port)
    limiter = RedisRateLimiter(client, timeout=30.0)

    def opening() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if "_connect" in t.get_coro().__qualname__]  # type: ignore[union-attr]

    try:
        caller = asyncio.ensure_future(limiter.acquire("k", [Limit(rate=10, period=60.0)]))
        await asyncio.sleep(0.1)  # the connection is being opened, and hangs
        assert opening()
        caller.cancel()  # the caller gives up; then the gateway stops
        await limiter.aclose()
        await asyncio.sleep(0)
        assert not [t for t in opening() if not t.done()]
    finally:
        await client.aclose()
        filler.close()
        server.close()
