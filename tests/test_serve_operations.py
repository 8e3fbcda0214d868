"""Operating ``gatekeep serve`` (issue 14, point 4): drain under load, crashed workers, Server header.

The acceptance test: SIGTERM in the middle of a 10 s load from concurrent
keep-alive clients loses no request in flight: every request the upstream saw
was answered 200 to its client, and the server exits 0.  A worker killed with
SIGKILL is replaced; one that keeps dying stops the whole (exit 1).  The
``Server`` field is the operator's (``[server] server_header``); the drain asks
long-lived connections (``ServerState.long_lived``) to go away first.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from gatekeep._front import ServerSettings
from gatekeep._front._protocol import ServerState
from gatekeep._front._server import _drain
from tests._servers import ServerProcess, free_port, running, upstream_thread
from tests._wire import exchange, front_server

CONFIG = """
[server]
drain_timeout = 10
keepalive_timeout = 30

[[services]]
name = "work"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "work"
  paths = ["/"]
"""


class CountingUpstream:
    """Answers ``/work/<id>?ms=<delay>`` after the delay, remembering every id it was asked for."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.seen.add(scope["path"].rsplit("/", 1)[-1])
        delay = int(scope["query_string"].decode().partition("=")[2] or 0)
        await anyio.sleep(delay / 1000)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[CountingUpstream, int]]:
    app = CountingUpstream()
    with upstream_thread(app) as port:
        yield app, port


def serve(directory: Path, upstream: int, *extra: str) -> Any:
    config = directory / "gatekeep.toml"
    config.write_text(CONFIG.format(upstream=upstream))
    port = free_port()
    argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port), *extra]
    return running("gatekeep-ops", "", app_dir=directory, argv=argv, port=port)


def wait_for_log(proc: ServerProcess, text: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.log().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.log().count(text) >= count, proc.log()


class Load:
    """Clients on keep-alive connections, each sending requests one after another until the server is gone."""

    def __init__(self, port: int, clients: int, duration: float) -> None:
        self.port = port
        self.deadline = time.monotonic() + duration
        self.answered: dict[str, tuple[float, float]] = {}  # id -> (sent, answered)
        self.failed: dict[str, str] = {}  # id -> what the client saw
        self.bad: list[str] = []  # an answer that was not a whole 200
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deadline = 0.0
        for thread in self.threads:
            thread.join(30)

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        conn: http.client.HTTPConnection | None = None
        count = 0
        refused = 0
        while time.monotonic() < self.deadline and refused < 20:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            ident = f"{n}-{count}"
            count += 1
            sent = time.monotonic()
            try:
                conn.request("GET", f"/work/{ident}?ms={rng.choice((0, 0, 5, 50, 300, 800))}")
                response = conn.getresponse()
                body = response.read()
            except ConnectionRefusedError:
                # The server no longer listens: nothing was sent.
                refused += 1
                conn = None
                time.sleep(0.05)
                continue
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                # Closed before a byte of an answer: an idle keep-alive connection being
                # closed by the drain, which RFC 9112 §9.3.1 lets a client retry.
                with self.lock:
                    self.failed[ident] = repr(exc)
                conn.close()
                conn = None
                continue
            with self.lock:
                if response.status == 200 and body == b"done":
                    self.answered[ident] = (sent, time.monotonic())
                else:
                    self.bad.append(f"{ident}: {response.status} {body[:200]!r}")
            if response.getheader("connection") == "close":
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_a_10_s_load_loses_no_request_in_flight(
    tmp_path: Path, upstream: tuple[CountingUpstream, int], workers: int
) -> None:
    app, upstream_port = upstream
    app.seen.clear()
    with serve(tmp_path, upstream_port, "--workers", str(workers)) as (proc, port):
        wait_for_log(proc, "Application startup complete", workers)
        # A load planned for 10 s; 4 s in, SIGTERM.  Once the port is closed the clients stop.
        with Load(port, clients=16, duration=10.0) as load:
            time.sleep(4.0)
            signalled = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            assert proc.process.wait(20) == 0, proc.log()
        assert not load.bad, load.bad[:5]
        # Every request that reached the upstream was answered to its client ...
        lost = app.seen - load.answered.keys()
        assert not lost, (sorted(lost)[:10], {i: load.failed.get(i) for i in sorted(lost)[:10]})
        # ... including those in flight when the signal came (the test would prove nothing without them).
        in_flight = [i for i, (sent, done) in load.answered.items() if sent < signalled < done]
        assert len(in_flight) >= 5, len(in_flight)
        assert len(load.answered) > 200
        # A client failure is only ever a request the server had not started on.
        assert not (load.failed.keys() & app.seen)
        assert "drain timeout" not in proc.log()


def worker_pids(proc: ServerProcess) -> set[int]:
    workers = set()
    for child in psutil.Process(proc.pid).children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                workers.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return workers


def wait_for_workers(
    proc: ServerProcess, count: int, other_than: set[int], timeout: float = 30.0
) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(proc)
        if len(pids) == count and not pids & other_than:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"no {count} new workers: {worker_pids(proc)}\n{proc.log()}")


def get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/work/w", headers={"connection": "close"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_killed_worker_is_replaced(tmp_path: Path, upstream: tuple[CountingUpstream, int]) -> None:
    with serve(tmp_path, upstream[1], "--workers", "2") as (proc, port):
        wait_for_log(proc, "Application startup complete", 2)
        workers = wait_for_workers(proc, 2, set())
        victim = min(workers)
        psutil.Process(victim).kill()
        wait_for_log(proc, f"worker {victim} exited with -9; starting a new one", 1)
        wait_for_workers(proc, 2, {victim})
        wait_for_log(proc, "Application startup complete", 3)
        assert all(get(port) == 200 for _ in range(10))
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(15) == 0, proc.log()


def test_a_worker_that_keeps_dying_stops_the_whole(
    tmp_path: Path, upstream: tuple[CountingUpstream, int]
) -> None:
    with serve(tmp_path, upstream[1], "--workers", "1") as (proc, _):
        proc.process.send_signal(signal.SIGTERM)  # 1 worker: the server runs in place, not supervised
        assert proc.process.wait(15) == 0
    with serve(tmp_path, upstream[1], "--workers", "2") as (proc, _):
        gone: set[int] = set()
        for _ in range(6):  # _MAX_RESTARTS replacements, then one death too many
            pids = wait_for_workers(proc, 2, gone)
            victim = min(pids)
            gone.add(victim)
            psutil.Process(victim).kill()
            if proc.process.poll() is not None:
                break
        assert proc.process.wait(20) == 1, proc.log()
        assert "replaced in 60 s); stopping" in proc.log()


# -- in process -----------------------------------------------------------------------


class Plain:
    """Answers 200; ``/own`` with a Server field of its own."""

    started = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                self.started = True
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = [(b"content-length", b"2")]
        if scope["path"] == "/own":
            headers.append((b"server", b"the-app"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.anyio
async def test_the_server_field_is_the_operators() -> None:
    close = b"host: x\r\nconnection: close\r\n\r\n"
    async with front_server(Plain()) as port:
        assert b"\r\nserver:" not in (await exchange(port, b"GET / HTTP/1.1\r\n" + close)).lower()
    async with front_server(Plain(), ServerSettings(server_header="edge/1")) as port:
        answer = await exchange(port, b"GET / HTTP/1.1\r\n" + close)
        assert answer.count(b"server: edge/1\r\n") == 1 and b"\r\ndate: " in answer
        own = await exchange(port, b"GET /own HTTP/1.1\r\n" + close)
        assert b"server: the-app\r\n" in own and b"edge/1" not in own
        refused = await exchange(port, b"GET / HTTP/1.1\r\n\r\n")  # no Host: the server's own 400
        assert refused.startswith(b"HTTP/1.1 400") and b"server: edge/1\r\n" in refused


def test_server_header_must_be_printable_ascii() -> None:
    from gatekeep import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"server.server_header: must be printable ASCII"):
        load_config({"server": {"server_header": "evil\r\nset-cookie: x=1"}})


class GoingAway:
    """A stand-in WebSocket: asked to go away, it closes and its task ends."""

    def __init__(self, shared: ServerState) -> None:
        self.shared = shared
        self.asked = 0
        self.closed = asyncio.Event()

    def going_away(self) -> None:
        self.asked += 1
        self.shared.long_lived.discard(self)
        self.closed.set()


@pytest.mark.anyio
async def test_the_drain_asks_long_lived_connections_to_go_away_first() -> None:
    shared = ServerState(Plain(), ServerSettings())
    closing = GoingAway(shared)
    shared.long_lived.add(closing)

    async def websocket() -> None:  # its task ends once the connection is closed
        await closing.closed.wait()

    task = asyncio.get_running_loop().create_task(websocket())
    shared.tasks.add(task)
    task.add_done_callback(shared.tasks.discard)
    await asyncio.wait_for(_drain(shared, 5), 2)
    assert closing.asked == 1 and task.done() and not task.cancelled()
