"""Attacks from the upstream side: a bad or hostile upstream must not break the
gateway, reach another client's response, or make it re-send a request.

Raw-socket upstreams on loopback misbehave on purpose (``raw_server``): status
codes outside 100-599, endless informational answers, bytes after a complete
response, transfer codings the gateway does not decode, refused connects.
The gateway runs in-process behind its own small server (and, for a client
framing that llhttp lets through, behind a real uvicorn in a child process).
Every test runs once per upstream codec (h11 and httptools).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import pytest

from gatekeep import BadRequest, Gateway, Instance, asgi, replayable
from gatekeep._upstream import Timeouts, UpstreamPool, request_sent
from gatekeep.testing import ClientResponse, EchoUpstream, TestClient, serve_asgi

from .._servers import running
from .._upstream_servers import ok, raw_server, read_body, read_head

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("each_codec")]

Reply = Callable[[int], bytes]


class Upstream:
    """A raw upstream: answers request ``n`` (1, 2, ...) of each connection with ``reply(n)``,
    then sends ``late`` (if any) ``late_after`` seconds later; counts connections."""

    def __init__(self, reply: Reply, late: bytes = b"", late_after: float = 0.0) -> None:
        self.reply = reply
        self.late = late
        self.late_after = late_after
        self.connections = 0
        self.requests = 0

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        buffer = bytearray()
        n = 0
        while True:
            head, rest = await read_head(stream, buffer)
            if not head:
                return
            _, leftover = await read_body(stream, head, rest)
            buffer[:0] = leftover
            n += 1
            self.requests += 1
            answer = self.reply(n)
            if self.late and not self.late_after:
                answer += self.late  # in the same write as the answer
            await stream.send(answer)
            if self.late and self.late_after:
                await anyio.sleep(self.late_after)
                await stream.send(self.late)


@asynccontextmanager
async def gateway(*ports: int, **service: Any) -> AsyncIterator[tuple[Gateway, TestClient]]:
    config = {
        "services": [
            {
                "name": "up",
                "targets": [{"target": f"127.0.0.1:{p}"} for p in ports],
                "routes": [{"name": "all", "paths": ["/"]}],
                **service,
            }
        ]
    }
    async with Gateway(config) as gw, serve_asgi(asgi(gw)) as port:
        yield gw, TestClient("127.0.0.1", port, timeout=10)


def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    return doc


def idle_connections(gw: Gateway, port: int) -> int:
    return gw.pool.stats().get(f"http://127.0.0.1:{port}", (0, 0))[1]


# -- status codes outside 100-599 ---------------------------------------------------


@pytest.mark.parametrize("status", [b"600", b"999", b"099", b"000"])
async def test_status_outside_100_to_599_is_a_502_and_the_connection_is_discarded(status: bytes) -> None:
    bad = Upstream(lambda n: b"HTTP/1.1 " + status + b" Odd\r\ncontent-length: 2\r\n\r\nhi")
    async with raw_server(bad) as port, gateway(port) as (gw, client):
        doc = problem(await client.get("/"), 502)
        assert "status" in doc["detail"]  # h11 and llhttp word it differently below 100
        assert idle_connections(gw, port) == 0
        # The gateway is not wedged: the next request gets its own 502, on a new connection.
        problem(await client.get("/"), 502)
        assert bad.connections >= 2


async def test_informational_answers_are_skipped() -> None:
    interim = b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
    up = Upstream(lambda n: interim + ok(b"final"))
    async with raw_server(up) as port, gateway(port) as (_, client):
        response = await client.get("/")
        assert (response.status, response.body) == (200, b"final")


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n" * 17,
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
    ],
    ids=["17x100", "101"],
)
async def test_endless_informational_answers_and_unasked_upgrades_are_502(interim: bytes) -> None:
    up = Upstream(lambda n: interim + ok(b"final"))
    async with raw_server(up) as port, gateway(port) as (gw, client):
        problem(await client.get("/"), 502)
        assert idle_connections(gw, port) == 0


# -- bytes after a complete response ------------------------------------------------

POISON = ok(b"POISON")


@pytest.mark.parametrize("late_after", [0.0, 0.05])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bytes_after_a_response_never_answer_the_next_request(late_after: float, method: str) -> None:
    """An upstream that sends a second answer nobody asked for, in the same write as the
    first or 50 ms later: the next request through the gateway gets its own answer."""
    up = Upstream(lambda n: ok(b"real %d" % n), late=POISON, late_after=late_after)
    async with raw_server(up) as port, gateway(port) as (_, client):
        first = await client.request(method, "/", body=b"x")
        assert first.body == b"real 1"
        await anyio.sleep(late_after + 0.05)
        second = await client.request(method, "/", body=b"x")
        assert (second.status, second.body) == (200, b"real 1")  # a new connection's first answer
        assert up.connections == 2


async def test_a_clean_upstream_keeps_its_connection() -> None:
    """The check above costs no reuse: a well-behaved upstream serves both on one connection."""
    up = Upstream(lambda n: ok(b"real %d" % n))
    async with raw_server(up) as port, gateway(port) as (_, client):
        assert (await client.get("/")).body == b"real 1"
        assert (await client.get("/")).body == b"real 2"
        assert up.connections == 1


# -- transfer codings of responses --------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        b"transfer-encoding: chunked, gzip",
        b"transfer-encoding: gzip, chunked",
        b"transfer-encoding: gzip",
        b"transfer-encoding: identity",
        b"transfer-encoding: gzip\r\ntransfer-encoding: chunked",
        b"transfer-encoding: chunked\r\ntransfer-encoding: chunked",
        b"transfer-encoding: chunked\r\ncontent-length: 11",
    ],
)
async def test_transfer_codings_other_than_a_lone_chunked_are_502(framing: bytes) -> None:
    """RFC 9112 §6.1/§6.3: ``chunked`` must be last, and gatekeep decodes no other coding;
    never are chunk-size lines or still-coded bytes forwarded as the body."""
    body = b"5\r\nhello\r\n0\r\n\r\n"
    up = Upstream(lambda n: b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n" + body)
    async with raw_server(up) as port, gateway(port) as (gw, client):
        response = await client.get("/")
        problem(response, 502)
        assert b"5\r\nhello" not in response.body
        assert idle_connections(gw, port) == 0


async def test_a_lone_chunked_coding_any_case_is_decoded() -> None:
    up = Upstream(lambda n: b"HTTP/1.1 200 OK\r\ntransfer-encoding:  Chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    async with raw_server(up) as port, gateway(port) as (_, client):
        response = await client.get("/")
        assert (response.status, response.body) == (200, b"hello")


# -- transfer codings of requests ---------------------------------------------------


@pytest.mark.parametrize("coding", [b"chunked, gzip", b"gzip, chunked", b"gzip", b"chunked, chunked"])
async def test_the_pool_refuses_to_forward_a_request_coding_other_than_chunked(coding: bytes) -> None:
    """Whatever server runs the gateway (llhttp lets ``gzip, chunked`` through), a body whose
    codings the gateway would forward undecoded and unannounced is a 400, never sent."""
    up = Upstream(lambda n: ok())
    async with raw_server(up) as port:
        pool = UpstreamPool()
        with pytest.raises(BadRequest, match="transfer-encoding") as info:
            await pool.send(
                Instance("127.0.0.1", port),
                "POST",
                b"/",
                [(b"host", b"up"), (b"transfer-encoding", coding)],
                replayable(b"ok"),
                timeouts=Timeouts(connect=2, read=2, write=2, pool=2),
            )
        assert request_sent(info.value) is False
        assert up.connections == 0
        await pool.aclose()


async def _raw_exchange(port: int, data: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        out = b""
        with anyio.fail_after(10):
            while True:
                try:
                    out += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return out


@pytest.mark.parametrize("coding", [b"chunked, gzip", b"gzip, chunked", b"gzip"])
async def test_request_codings_are_refused_at_the_gateways_own_server(coding: bytes) -> None:
    echo = EchoUpstream()
    async with serve_asgi(echo) as upstream, gateway(upstream) as (_, client):
        head = b"POST / HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: " + coding + b"\r\n\r\n"
        out = await _raw_exchange(client.port, head + b"2\r\nok\r\n0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 "), out[:200]
        assert b"application/problem+json" in out
        assert echo.requests == []


APP_MODULE = """\
import os
import gatekeep

asgi_app = gatekeep.asgi(gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"]))
"""


def test_request_codings_llhttp_accepts_are_refused_under_uvicorn(tmp_path: Path, each_codec: str) -> None:
    """uvicorn's httptools server passes ``gzip, chunked`` (and ``identity, chunked``) to the
    app, having de-chunked the body: the gateway answers 400 instead of forwarding gzip
    bytes as a plain chunked body."""
    pytest.importorskip("httptools")
    seen: list[bytes] = []

    async def upstream(stream: anyio.abc.SocketStream) -> None:
        head, _ = await read_head(stream)
        seen.append(head)
        await stream.send(ok())

    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(raw_server(upstream)) as upstream_port,
    ):
        (tmp_path / "gk_app.py").write_text(APP_MODULE)
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'[gateway]\nhttp_codec = "{each_codec}"\n'
            f'[[services]]\nname = "up"\nurl = "http://127.0.0.1:{upstream_port}"\n'
            '  [[services.routes]]\n  paths = ["/"]\n'
        )
        env = {"GATEKEEP_CONFIG": str(config)}
        with running("uvicorn", "gk_app:asgi_app", app_dir=tmp_path, env=env) as (_, port):
            for coding in (b"gzip, chunked", b"identity, chunked"):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(
                        b"POST / HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ntransfer-encoding: "
                        + coding
                        + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    )
                    out = _read_all(sock)
                assert out.startswith(b"HTTP/1.1 400 "), out[:300]
                doc = json.loads(out.partition(b"\r\n\r\n")[2])
                assert "transfer-encoding" in doc["detail"]
    assert seen == []


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


# -- refused connects: failover ------------------------------------------------------


def dead_port() -> int:
    """A loopback port nobody listens on (connects are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_one_refusing_target_of_two_costs_no_request_in_the_default_config() -> None:
    """Before: every fourth request was a 502 (the retry budget blocked the retry of a
    refused connect, and nothing ejected the target).  A refused connect never reached
    the upstream, so it is failed over for any method, outside the budget."""
    live = Upstream(lambda n: ok(b"live"))
    async with raw_server(live) as port, gateway(port, dead_port()) as (gw, client):
        statuses = []
        for _ in range(150):
            statuses.append((await client.get("/")).status)
            statuses.append((await client.post("/", body=b"order")).status)
        assert statuses == [200] * 300
        assert live.requests == 300  # every POST arrived once
        health = gw.services["up"].guard.stats()["instances"]
        assert "ejected" in {v.get("health") for v in health.values()}


class Blackhole:
    """A loopback port whose accept queue is full: a connect gets no answer at all."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port: int = self.listener.getsockname()[1]
        self.fill: list[socket.socket] = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fill.append(c)

    def close(self) -> None:
        for c in [*self.fill, self.listener]:
            c.close()


async def test_a_connect_timeout_fails_over_and_ejects_the_target() -> None:
    hole = Blackhole()
    live = Upstream(lambda n: ok(b"live"))
    try:
        async with raw_server(live) as port, gateway(hole.port, port, connect_timeout=300) as (gw, client):
            start = time.monotonic()
            for _ in range(10):
                response = await client.post("/", body=b"order")
                assert (response.status, response.body) == (200, b"live")
            assert time.monotonic() - start < 0.3 * 3  # one connect timeout, then ejected
            assert live.requests == 10
            health = gw.services["up"].guard.stats()["instances"]
            assert health[f"127.0.0.1:{hole.port}"]["health"] == "ejected"
    finally:
        hole.close()


async def test_a_fully_dead_service_answers_502_fast() -> None:
    dead = [dead_port() for _ in range(3)]
    async with gateway(*dead) as (_, client):
        start = time.monotonic()
        for _ in range(20):
            problem(await client.get("/"), 502)
            problem(await client.post("/", body=b"x"), 502)
        assert time.monotonic() - start < 5


async def test_a_post_that_reached_an_upstream_is_never_sent_again() -> None:
    """Failover is for connects only: an upstream that read the POST and hung up without an
    answer gets it once, even with two targets, retries and an idempotent-looking path."""
    hung_up: list[bytes] = []

    async def hang_up(stream: anyio.abc.SocketStream) -> None:
        head, rest = await read_head(stream)
        await read_body(stream, head, rest)
        hung_up.append(head.split(b"\r\n")[0])

    async with raw_server(hang_up) as a, raw_server(hang_up) as b, gateway(a, b, retries=5) as (_, client):
        for _ in range(10):
            problem(await client.post("/orders", body=b"x"), 502)
        assert len(hung_up) == 10
