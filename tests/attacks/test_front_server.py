"""Attacks on ``gatekeep serve``'s front server, over real sockets to a real process.

Issue 11, rows 4 and 6: the head of a request is bounded in bytes, fields,
target length and time (431, 414, 408, problem+json, connection closed), idle
connections are closed, memory stays flat under unfinished heads, and
``X-Forwarded-For`` is believed only from ``[gateway] trusted_proxies`` (never
because the server decided so), under both ``--server gatekeep`` and
``--server uvicorn``.  Plus what a server must get right on the way: pipelining,
chunked bodies, ``Expect: 100-continue``, a client leaving mid-body, upgrades,
``Host`` rules, graceful drain and ``--workers``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from tests._servers import ServerProcess, StreamUpstream, free_port, running, upstream_thread

HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.5
BIG = 64 << 20

CONFIG = """
[server]
header_timeout = {header_timeout}
keepalive_timeout = {keepalive_timeout}
drain_timeout = 5

[[services]]
name = "up"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "all"
  paths = ["/"]

[[services]]
name = "limited"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "limited"
  paths = ["/limited"]

    [[services.routes.plugins]]
    name = "rate-limiting"
    config = {{ second = 2, limit_by = "ip", policy = "local" }}

  [[services.routes]]
  name = "small"
  paths = ["/small"]

    [[services.routes.plugins]]
    name = "request-size-limiting"
    config = {{ allowed_payload_size = 10, size_unit = "bytes" }}
"""


class Upstream(StreamUpstream):
    """``StreamUpstream``, plus ``/sleep``: answer after 1.5 s; ``/big``: 64 MiB."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"].startswith("/big"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            chunk = b"z" * (64 << 10)
            for _ in range(BIG // len(chunk)):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["path"].startswith("/sleep"):
            await anyio.sleep(1.5)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
            await send({"type": "http.response.body", "body": b"slept"})
            return
        await super().__call__(scope, receive, send)


@pytest.fixture(scope="module")
def upstream_app() -> Iterator[tuple[Upstream, int]]:
    app = Upstream()
    with upstream_thread(app) as port:
        yield app, port


@pytest.fixture(scope="module")
def upstream(upstream_app: tuple[Upstream, int]) -> int:
    return upstream_app[1]


def write_config(directory: Path, upstream: int) -> Path:
    config = directory / "gatekeep.toml"
    config.write_text(
        CONFIG.format(upstream=upstream, header_timeout=HEADER_TIMEOUT, keepalive_timeout=KEEPALIVE_TIMEOUT)
    )
    return config


def serve(directory: Path, upstream: int, *extra: str, port: int | None = None) -> Any:
    port = port or free_port()
    config = write_config(directory, upstream)
    argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port), *extra]
    return running("gatekeep-serve", "", app_dir=directory, argv=argv, port=port)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: int) -> Iterator[tuple[ServerProcess, int]]:
    with serve(tmp_path_factory.mktemp("front"), upstream) as (proc, port):
        yield proc, port


# -- a raw HTTP/1.1 client ------------------------------------------------------------


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length or chunked framing) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed before a whole head: {data!r}")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 100:
        return status, headers, rest
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            more = sock.recv(65536)
            if not more:
                break
            rest += more
        return status, headers, rest[:length]
    if headers.get("transfer-encoding") == "chunked":
        buffer, parts = bytearray(rest), []
        while True:
            while b"\r\n" not in buffer:
                buffer += sock.recv(65536)
            end = buffer.index(b"\r\n")
            size = int(buffer[:end], 16)
            del buffer[: end + 2]
            while len(buffer) < size + 2:
                buffer += sock.recv(1 << 20)
            parts.append(bytes(buffer[:size]))
            del buffer[: size + 2]
            if size == 0:
                return status, headers, b"".join(parts)
    return status, headers, rest


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True if the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, body
    assert headers["content-type"] == "application/problem+json"
    assert headers.get("connection") == "close"
    document: dict[str, Any] = json.loads(body)
    assert document["status"] == expected
    return document


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send ``data`` from a thread, ignoring the server hanging up on us half-way."""

    def run() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- head limits ----------------------------------------------------------------------


def test_a_10_mib_header_is_431_and_the_connection_closed(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sender = send_in_background(
            sock, b"GET / HTTP/1.1\r\nhost: gk\r\nx-big: " + b"a" * (10 << 20) + b"\r\n\r\n"
        )
        problem(*read_response(sock), 431)
        assert closed_by_peer(sock, 5)
        sender.join(10)


def test_100_000_headers_are_431(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sender = send_in_background(sock, b"GET / HTTP/1.1\r\nhost: gk\r\n" + b"x: y\r\n" * 100_000 + b"\r\n")
        problem(*read_response(sock), 431)
        assert closed_by_peer(sock, 5)
        sender.join(10)


def test_more_header_fields_than_max_headers_are_431(gateway: tuple[ServerProcess, int]) -> None:
    # 101 short fields: far below the byte limit, one over the count (Envoy's 100).
    with connect(gateway[1]) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: gk\r\n" + b"x: y\r\n" * 100 + b"\r\n")
        document = problem(*read_response(sock), 431)
        assert "100 header fields" in document["detail"]
    with connect(gateway[1]) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: gk\r\n" + b"x: y\r\n" * 99 + b"\r\n")
        assert read_response(sock)[0] == 200


def test_a_long_target_is_414(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sock.sendall(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nhost: gk\r\n\r\n")
        problem(*read_response(sock), 414)
        assert closed_by_peer(sock, 5)


def test_a_malformed_head_is_400(gateway: tuple[ServerProcess, int]) -> None:
    for head in (
        b"GET / HTTP/1.1\r\nhost: gk\r\nbad header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n",
    ):
        with connect(gateway[1]) as sock:
            sock.sendall(head)
            problem(*read_response(sock), 400)
            assert closed_by_peer(sock, 5)


# -- head and idle timeouts -----------------------------------------------------------


def test_slowloris_gets_408_after_header_timeout(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nhost: gk\r\n")
        time.sleep(0.5)
        sock.sendall(b"x-a: 1\r\n")  # a trickle does not extend the deadline
        document = problem(*read_response(sock), 408)
        assert HEADER_TIMEOUT * 0.8 < time.monotonic() - started < HEADER_TIMEOUT + 2, document
        assert closed_by_peer(sock, 5)


def test_a_connection_that_sends_nothing_is_closed_silently(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        started = time.monotonic()
        sock.settimeout(HEADER_TIMEOUT + 3)
        assert sock.recv(1024) == b""
        assert HEADER_TIMEOUT * 0.8 < time.monotonic() - started < HEADER_TIMEOUT + 2


def test_an_idle_keep_alive_connection_is_closed_silently(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nhost: gk\r\n\r\n")
        assert read_response(sock)[0] == 200
        # Well within the keep-alive timeout, the connection is reused.
        time.sleep(KEEPALIVE_TIMEOUT / 2)
        sock.sendall(b"GET /b HTTP/1.1\r\nhost: gk\r\n\r\n")
        assert read_response(sock)[0] == 200
        idle = time.monotonic()
        sock.settimeout(KEEPALIVE_TIMEOUT + 3)
        assert sock.recv(1024) == b""
        assert KEEPALIVE_TIMEOUT * 0.8 < time.monotonic() - idle < KEEPALIVE_TIMEOUT + 2


def test_400_slowloris_connections_are_all_closed(gateway: tuple[ServerProcess, int]) -> None:
    socks = [connect(gateway[1]) for _ in range(400)]
    try:
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: gk\r\n")
        time.sleep(HEADER_TIMEOUT + 0.5)
        for sock in socks:
            assert read_response(sock)[0] == 408
            assert closed_by_peer(sock, 3)
    finally:
        for sock in socks:
            sock.close()
    assert len(psutil.Process(gateway[0].pid).net_connections("tcp")) < 20


def test_unfinished_5_mib_heads_keep_memory_flat(gateway: tuple[ServerProcess, int]) -> None:
    process = psutil.Process(gateway[0].pid)
    before = process.memory_info().rss
    socks = [connect(gateway[1]) for _ in range(20)]
    try:
        senders = [
            send_in_background(sock, b"GET / HTTP/1.1\r\nhost: gk\r\nx-big: " + b"a" * (5 << 20))
            for sock in socks
        ]
        for sock in socks:
            problem(*read_response(sock), 431)
        grown = process.memory_info().rss - before
        assert grown < 8 << 20, f"RSS grew by {grown / (1 << 20):.1f} MiB"
        for sender in senders:
            sender.join(10)
    finally:
        for sock in socks:
            sock.close()


# -- what the server must get right ---------------------------------------------------


def test_a_pipelined_request_after_a_body_is_answered_in_order(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sock.sendall(
            b"POST /raw HTTP/1.1\r\nhost: gk\r\ncontent-length: 5\r\n\r\nhello"
            b"GET /second HTTP/1.1\r\nhost: gk\r\n\r\n"
            b"GET /third?q=1 HTTP/1.1\r\nhost: gk\r\n\r\n"
        )
        status, _, body = read_response(sock)
        assert (status, body) == (200, b"hello")
        status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["path"] == "/second"
        status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["query"] == "q=1"


def test_a_chunked_body_streams_through(gateway: tuple[ServerProcess, int]) -> None:
    chunks = [b"a" * 100_000, b"b" * 3, b"c" * 70_000]
    with connect(gateway[1]) as sock:
        sock.sendall(b"POST /raw HTTP/1.1\r\nhost: gk\r\ntransfer-encoding: chunked\r\n\r\n")
        for chunk in chunks:
            sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 200 and body == b"".join(chunks)
        assert headers["transfer-encoding"] == "chunked"


def test_a_malformed_chunked_body_is_400_not_500(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nhost: gk\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n")
        status, _, _ = read_response(sock)
        assert status == 400
    assert "Traceback" not in gateway[0].log()


def test_expect_100_continue_waits_for_the_go_ahead(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sock.sendall(b"POST /raw HTTP/1.1\r\nhost: gk\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        status, _, rest = read_response(sock)
        assert status == 100 and rest == b""
        sock.sendall(b"body")
        status, _, body = read_response(sock)
        assert (status, body) == (200, b"body")


def test_a_client_leaving_mid_body_leaves_the_gateway_healthy(gateway: tuple[ServerProcess, int]) -> None:
    for _ in range(3):
        with connect(gateway[1]) as sock:
            sock.sendall(b"POST /raw HTTP/1.1\r\nhost: gk\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 10_000)
            time.sleep(0.2)
    with connect(gateway[1]) as sock:
        sock.sendall(b"GET /after HTTP/1.1\r\nhost: gk\r\n\r\n")
        assert read_response(sock)[0] == 200
    assert "Traceback" not in gateway[0].log()


def test_a_client_gone_mid_response_cancels_the_upstream_call(
    gateway: tuple[ServerProcess, int], upstream_app: tuple[Upstream, int]
) -> None:
    app = upstream_app[0]
    with connect(gateway[1]) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: gk\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert app.slow_started.wait(5)
        sock.shutdown(socket.SHUT_RDWR)
    gone = time.monotonic()
    assert app.slow_stopped.wait(5), gateway[0].log()
    assert app.slow_stopped_at - gone < 2.0


def test_a_client_that_does_not_read_holds_bounded_memory(gateway: tuple[ServerProcess, int]) -> None:
    # 64 MiB to a client that reads nothing for a while: the server's send waits on its
    # write buffer, the gateway stops reading the upstream; nothing piles up.
    process = psutil.Process(gateway[0].pid)
    before = process.memory_info().rss
    with connect(gateway[1], timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /big HTTP/1.1\r\nhost: gk\r\n\r\n")
        time.sleep(2)
        grown = process.memory_info().rss - before
        assert grown < 16 << 20, f"RSS grew by {grown / (1 << 20):.1f} MiB"
        status, _, body = read_response(sock)
        assert status == 200 and len(body) == BIG


def test_an_early_answer_drops_the_unread_body_and_keeps_the_connection(
    gateway: tuple[ServerProcess, int],
) -> None:
    with connect(gateway[1]) as sock:
        # request-size-limiting answers 413 from Content-Length, before the body is read.
        sock.sendall(b"POST /small HTTP/1.1\r\nhost: gk\r\ncontent-length: 200000\r\n\r\n")
        assert read_response(sock)[0] == 413
        sock.sendall(b"x" * 200_000)
        sock.sendall(b"GET /x HTTP/1.1\r\nhost: gk\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["path"] == "/x"


def test_http_1_0_without_host_is_served_and_closed(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 200 and json.loads(body)["path"] == "/old"
        assert closed_by_peer(sock, 3)


# -- upgrades and Host ----------------------------------------------------------------


def test_a_websocket_upgrade_is_never_a_plain_get(gateway: tuple[ServerProcess, int]) -> None:
    # Proxied now (tests/test_websocket_proxy.py); the upstream here is plain HTTP and does not
    # upgrade, so its answer is relayed, and the connection, which the client meant to hand over
    # to another protocol, is closed: what follows the head is never read as a request.
    with connect(gateway[1]) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nhost: gk\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nhost: gk\r\n\r\n"
        )
        status, headers, body = read_response(sock)
        assert status == 200 and json.loads(body)["path"] == "/ws"
        assert closed_by_peer(sock, 5)
    # Without "Connection: upgrade" it is no handshake at all: 400, closed.
    with connect(gateway[1]) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nhost: gk\r\nupgrade: websocket\r\nconnection: keep-alive\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        document = problem(*read_response(sock), 400)
        assert "Connection: upgrade" in document["detail"]
        assert closed_by_peer(sock, 5)


def test_an_h2c_upgrade_is_ignored_and_served_as_http_1_1(gateway: tuple[ServerProcess, int]) -> None:
    with connect(gateway[1]) as sock:
        sock.sendall(
            b"POST /raw HTTP/1.1\r\nhost: gk\r\nupgrade: h2c\r\nconnection: upgrade, http2-settings\r\n"
            b"http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\ncontent-length: 5\r\n\r\nhello"
            b"GET /next HTTP/1.1\r\nhost: gk\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
            b"GET /last HTTP/1.1\r\nhost: gk\r\n\r\n"
        )
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"hello")
        status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["path"] == "/next"
        status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["path"] == "/last"


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET ftp://a.example/x HTTP/1.1\r\nhost: a.example\r\n\r\n",
    ],
    ids=["two-hosts", "no-host", "not-http"],
)
def test_host_rules_of_rfc_9112(gateway: tuple[ServerProcess, int], head: bytes) -> None:
    with connect(gateway[1]) as sock:
        sock.sendall(head)
        problem(*read_response(sock), 400)


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://b.example/x HTTP/1.1\r\nhost: a.example\r\n\r\n",
        b"GET http://b.example:80@a.example/x HTTP/1.1\r\nhost: a.example\r\n\r\n",
    ],
    ids=["authority-disagrees", "userinfo"],
)
def test_the_gateway_checks_an_absolute_form_authority(
    gateway: tuple[ServerProcess, int], head: bytes
) -> None:
    # The front server passes the target whole; the gateway's edge step refuses it
    # (the same rule under every server), and the connection stays usable.
    with connect(gateway[1]) as sock:
        sock.sendall(head)
        status, headers, body = read_response(sock)
        assert status == 400 and headers["content-type"] == "application/problem+json", body
        sock.sendall(b"GET /abs HTTP/1.1\r\nhost: a.example\r\n\r\n")
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize("host", [b"a.example", b"A.example:80", b"a.example:"])
def test_an_absolute_form_target_routes_by_its_path(gateway: tuple[ServerProcess, int], host: bytes) -> None:
    # Host agrees with the target's authority up to case and the scheme's default port.
    with connect(gateway[1]) as sock:
        sock.sendall(b"GET http://a.example/abs?q=2 HTTP/1.1\r\nhost: " + host + b"\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 200
        echo = json.loads(body)
        assert (echo["path"], echo["query"]) == ("/abs", "q=2")


# -- forwarded headers (row 4) --------------------------------------------------------


@pytest.mark.parametrize("server", ["gatekeep", "uvicorn"])
def test_x_forwarded_for_from_localhost_is_not_trusted(tmp_path: Path, upstream: int, server: str) -> None:
    with serve(tmp_path, upstream, "--server", server) as (_, port):
        with connect(port) as sock:
            sock.sendall(b"GET /who HTTP/1.1\r\nhost: gk\r\nx-forwarded-for: 6.6.6.6\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 200
            forwarded = json.loads(body)["headers"]["x-forwarded-for"]
            # The client's claim is kept as a claim; the hop the gateway adds is the real peer.
            assert forwarded.split(", ")[-1] == "127.0.0.1", forwarded
        admitted = 0
        with connect(port) as sock:
            for n in range(8):
                sock.sendall(b"GET /limited HTTP/1.1\r\nhost: gk\r\nx-forwarded-for: 10.0.0.%d\r\n\r\n" % n)
                admitted += read_response(sock)[0] == 200
        assert admitted <= 3, f"{admitted}/8 admitted at second = 2 by rotating X-Forwarded-For"


# -- process life ---------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_request_finish(tmp_path: Path, upstream: int) -> None:
    with serve(tmp_path, upstream, "--access-log") as (proc, port):
        with connect(port) as sock, connect(port) as idle:
            sock.sendall(b"GET /sleep HTTP/1.1\r\nhost: gk\r\n\r\n")
            time.sleep(0.3)
            proc.process.send_signal(signal.SIGTERM)
            status, headers, body = read_response(sock)
            assert (status, body) == (200, b"slept")
            assert headers.get("connection") == "close"
            assert closed_by_peer(idle, 3)  # idle keep-alive connections are closed at once
        assert proc.process.wait(10) == 0, proc.log()
        assert "Application shutdown complete" in proc.log()
        assert '"GET /sleep HTTP/1.1" 200' in proc.log()  # --access-log


def test_two_workers_share_the_port_and_stop_cleanly(tmp_path: Path, upstream: int) -> None:
    with serve(tmp_path, upstream, "--workers", "2") as (proc, port):
        deadline = time.monotonic() + 30
        while proc.log().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.log().count("Application startup complete") == 2, proc.log()
        workers = psutil.Process(proc.pid).children()
        assert len(workers) >= 2
        for _ in range(10):
            with connect(port) as sock:
                sock.sendall(b"GET /w HTTP/1.1\r\nhost: gk\r\nconnection: close\r\n\r\n")
                assert read_response(sock)[0] == 200
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(15) == 0, proc.log()
        # Every child (the workers, and multiprocessing's resource tracker, which
        # leaves a moment after the parent) is gone soon after.
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, alive


def test_a_busy_port_is_one_line_naming_port(tmp_path: Path, upstream: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, upstream)
        for workers in ("1", "2"):
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gatekeep",
                    "serve",
                    str(config),
                    "--port",
                    str(port),
                    "--workers",
                    workers,
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 1
            assert "--port" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_server_settings_errors_name_their_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nmax_headers = 0\nheader_timeout = 'soon'\n")
    result = subprocess.run(
        [sys.executable, "-m", "gatekeep", "serve", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "server.max_headers" in result.stderr and "server.header_timeout" in result.stderr
