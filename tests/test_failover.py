"""Failover in the default config: one of two targets SIGKILLed under load.

Real processes on loopback: two uvicorn upstreams and the gateway under
uvicorn (a config with nothing but the two targets and a route), and a load
of keep-alive clients in the test process, half GETs and half POSTs.  Every
POST carries a unique id that the upstream appends to a file of its own
*before* it answers, so the files survive the SIGKILL and tell whether any
POST was executed twice.

While target B is dead, a refused connect never reached it: the request is
failed over to A outside the retry budget, and passive health ejects B after
its first refused connect.  Only requests in flight at B when it died may
fail (a POST that reached B is never re-sent), so the first second after the
kill is left out of the error rate, as in the issue's acceptance criterion
(there: 15 s of load; here 5 s, which at this rate is some thousands of
requests, enough to see a 0.1 % error rate).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import h11
import pytest

from ._servers import free_port, running

pytestmark = pytest.mark.anyio

UPSTREAM = """\
import os

LOG = os.open(os.environ["POST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST":
        os.write(LOG, body + b"\\n")  # in the kernel before the answer: survives SIGKILL
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""

GATEWAY = """\
import os

import gatekeep

asgi_app = gatekeep.asgi(gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"]))
"""

CONFIG = """\
[[services]]
name = "orders"
targets = [{{ target = "127.0.0.1:{a}" }}, {{ target = "127.0.0.1:{b}" }}]

  [[services.routes]]
  paths = ["/"]
"""

CLIENTS = 16
BEFORE_KILL = 1.0
GRACE = 1.0  # after the kill, left out of the error rate
MEASURED = 5.0


def _upstream_argv(port: int) -> list[str]:
    return [
        *(sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)),
        *("--lifespan", "off", "--no-access-log", "--log-level", "warning", "fo_upstream:app"),
    ]


class Load:
    def __init__(self, port: int) -> None:
        self.port = port
        # (start time, method, status; 0 = no answer)
        self.results: list[tuple[float, str, int]] = []
        self.posted: list[bytes] = []  # ids answered 2xx

    async def client(self, k: int, until: float) -> None:
        n = 0
        while time.monotonic() < until:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", self.port)
            except OSError:
                self.results.append((time.monotonic(), "CONNECT", 0))
                await anyio.sleep(0.01)
                continue
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                while time.monotonic() < until:
                    n += 1
                    method = "POST" if n % 2 else "GET"
                    body = f"{k}-{n}".encode() if method == "POST" else b""
                    started = time.monotonic()
                    status = await self._exchange(stream, conn, method, body)
                    self.results.append((started, method, status))
                    if status and 200 <= status < 300 and body:
                        self.posted.append(body)
                    if not status or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break  # a new connection
                    conn.start_next_cycle()

    @staticmethod
    async def _exchange(
        stream: anyio.abc.SocketStream, conn: h11.Connection, method: str, body: bytes
    ) -> int:
        headers = [("host", "gw"), ("content-length", str(len(body)))]
        try:
            with anyio.fail_after(10):
                data = conn.send(h11.Request(method=method, target="/orders", headers=headers)) or b""
                data += conn.send(h11.Data(data=body)) or b"" if body else b""
                data += conn.send(h11.EndOfMessage()) or b""
                await stream.send(data)
                status = 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.EndOfMessage):
                        return status
                    elif isinstance(event, h11.ConnectionClosed):
                        return 0
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError, h11.ProtocolError, TimeoutError):
            return 0


def test_one_of_two_targets_sigkilled_under_load(tmp_path: Path) -> None:
    (tmp_path / "fo_upstream.py").write_text(UPSTREAM)
    (tmp_path / "gk_app.py").write_text(GATEWAY)
    logs = [tmp_path / "posts-a.log", tmp_path / "posts-b.log"]
    ports = [free_port(), free_port()]
    (tmp_path / "gateway.toml").write_text(CONFIG.format(a=ports[0], b=ports[1]))
    with (
        running(
            "uvicorn",
            "",
            app_dir=tmp_path,
            argv=_upstream_argv(ports[0]),
            port=ports[0],
            env={"POST_LOG": str(logs[0])},
        ) as _,
        running(
            "uvicorn",
            "",
            app_dir=tmp_path,
            argv=_upstream_argv(ports[1]),
            port=ports[1],
            env={"POST_LOG": str(logs[1])},
        ) as (victim, _),
        running(
            "uvicorn",
            "gk_app:asgi_app",
            app_dir=tmp_path,
            env={"GATEKEEP_CONFIG": str(tmp_path / "gateway.toml")},
        ) as (_, gateway_port),
    ):
        load = Load(gateway_port)
        killed_at = anyio.run(_run, load, victim.pid)

    measured = [r for r in load.results if r[0] >= killed_at + GRACE]
    failed = Counter((method, status) for _, method, status in measured if not 200 <= status < 300)
    total_failed = sum(failed.values())
    around_kill = sum(
        1 for t, _, s in load.results if killed_at <= t < killed_at + GRACE and not 200 <= s < 300
    )
    print(
        f"\nfailover: {len(load.results)} requests, {len(measured)} measured "
        f"({MEASURED:g} s from {GRACE:g} s after the kill), non-2xx measured: {total_failed} {dict(failed)}, "
        f"non-2xx in the first {GRACE:g} s: {around_kill}"
    )
    assert len(measured) >= 1000, "too little load to measure a 0.1 % error rate"
    assert total_failed <= len(measured) / 1000, dict(failed)

    executed = Counter(line for log in logs for line in log.read_bytes().split(b"\n") if line)
    doubled = {post: n for post, n in executed.items() if n > 1}
    assert doubled == {}, f"POSTs executed twice: {doubled}"
    # Every POST answered 2xx was executed (exactly once, by the check above).
    assert set(load.posted) <= set(executed)


async def _run(load: Load, victim: int) -> float:
    start = time.monotonic()
    until = start + BEFORE_KILL + GRACE + MEASURED
    async with anyio.create_task_group() as tg:
        for k in range(CLIENTS):
            tg.start_soon(load.client, k, until)
        await anyio.sleep(BEFORE_KILL)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
    return killed_at
