"""The gateway mounted in real servers, each in a child process on loopback.

ASGI (``gatekeep.asgi``) under uvicorn, hypercorn and granian; WSGI
(``gatekeep.wsgi``) under gunicorn (sync and gthread workers), waitress and
wsgiref.  The servers import a small app module written into ``tmp_path``
that builds its gateway from ``$GATEKEEP_CONFIG``, in front of a real
upstream served from a thread of the test process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gatekeep.testing import ClientResponse, TestClient

from ._servers import (
    ASGI_SERVERS,
    SERVER_PACKAGE,
    UPSTREAM_DATE,
    WSGI_SERVERS,
    StreamUpstream,
    free_port,
    running,
    upstream_thread,
)

pytestmark = pytest.mark.anyio

APP_MODULE = '''\
"""The gateway as the servers import it: config in $GATEKEEP_CONFIG."""

import os
import sys
from pathlib import Path

import gatekeep


class LifespanProbe(gatekeep.BaseFilter):
    """Writes "start <pid>" / "stop <pid>" lines to $GATEKEEP_PROBE."""

    name = "lifespan-probe"

    async def start(self, task_group):
        self._write("start")

    async def stop(self):
        self._write("stop")

    def _write(self, what):
        with open(os.environ["GATEKEEP_PROBE"], "a") as f:
            f.write(f"{what} {os.getpid()}\\n")


def gateway():
    return gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"], filters=[LifespanProbe()])


asgi_app = gatekeep.asgi(gateway())
wsgi_app = gatekeep.wsgi(gateway())

if __name__ == "__main__" and sys.argv[1] == "wsgiref":
    import signal
    import threading
    from wsgiref.simple_server import make_server

    with make_server("127.0.0.1", int(sys.argv[2]), wsgi_app) as server:
        # SIGTERM: finish the request in hand, then leave (atexit closes wsgi_app).
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        server.serve_forever()
'''

CONFIG = """\
[[services]]
name = "echo"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "api"
  paths = ["/api"]
"""

MiB = 1024 * 1024


def _available(server: str) -> Any:
    package = SERVER_PACKAGE[server]
    if importlib.util.find_spec(package) is None:
        return pytest.param(server, marks=pytest.mark.skip(reason=f"{package} cannot be imported"))
    return server


def write_app(directory: Path, upstream_port: int) -> dict[str, str]:
    """Write the app module and its config into ``directory``; return the env the servers need."""
    (directory / "gk_app.py").write_text(APP_MODULE)
    config = directory / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream_port))
    return {"GATEKEEP_CONFIG": str(config), "GATEKEEP_PROBE": str(directory / "probe.log")}


def _problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    assert doc["request_id"] == response.header("x-request-id")
    return doc


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[StreamUpstream, int]]:
    app = StreamUpstream()
    with upstream_thread(app) as port:
        yield app, port


class Served:
    def __init__(self, name: str, port: int, directory: Path, upstream: StreamUpstream) -> None:
        self.name = name
        self.client = TestClient("127.0.0.1", port, timeout=20)
        self.directory = directory
        self.upstream = upstream


@pytest.fixture(scope="module", params=[_available(s) for s in ASGI_SERVERS + WSGI_SERVERS])
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: tuple[StreamUpstream, int],
) -> Iterator[Served]:
    name: str = request.param
    directory = tmp_path_factory.mktemp(name)
    env = write_app(directory, upstream[1])
    target = "gk_app:asgi_app" if name in ASGI_SERVERS else "gk_app:wsgi_app"
    with running(name, target, app_dir=directory, env=env) as (_, port):
        yield Served(name, port, directory, upstream[0])


async def test_get_is_proxied_with_headers(served: Served) -> None:
    response = await served.client.get("/api/orders/7?x=1", headers={"x-custom": "yes"})
    assert response.status == 200, response.text
    seen = response.json()
    assert seen["path"] == "/orders/7" and seen["query"] == "x=1"
    assert seen["headers"]["x-custom"] == "yes"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert "gatekeep" in seen["headers"]["via"]
    assert response.header("x-request-id") == seen["headers"]["x-request-id"]


async def test_post_1_mib_streams_and_echoes_byte_exact(served: Served) -> None:
    body = os.urandom(MiB)
    response = await served.client.post("/api/raw", body=body, headers={"content-type": "octet/stream"})
    assert response.status == 200, response.text
    assert len(response.body) == MiB
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(body).digest()


async def test_the_client_sees_one_date_and_one_server_never_the_upstreams(served: Served) -> None:
    # The server adds its own Date and Server; passing the upstream's too
    # would send two of each (Date is a singleton field): they are hidden.
    response = await served.client.get("/api/dated")
    assert response.status == 200, response.text
    dates, servers = response.header_all("date"), response.header_all("server")
    assert len(dates) == 1 and len(servers) <= 1, response.headers  # every server here dates its answers
    assert UPSTREAM_DATE.decode() not in dates and "upstream-server" not in servers


async def test_unknown_path_is_404_problem(served: Served) -> None:
    doc = _problem(await served.client.get("/nowhere"), 404)
    assert "/nowhere" in doc["detail"]


async def test_request_id_is_echoed(served: Served) -> None:
    response = await served.client.get("/api/x", headers={"x-request-id": f"rid-{served.name}"})
    assert response.header("x-request-id") == f"rid-{served.name}"
    assert response.json()["headers"]["x-request-id"] == f"rid-{served.name}"
    generated = await served.client.get("/api/x")
    assert len(generated.header("x-request-id") or "") == 32


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _probe_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().split("\n")[:-1] if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    return path.read_text().split("\n")[:-1] if path.exists() else []


@pytest.mark.parametrize("name", [_available(s) for s in ASGI_SERVERS])
def test_lifespan_enters_and_leaves_the_gateway(
    name: str, tmp_path: Path, upstream: tuple[StreamUpstream, int]
) -> None:
    env = write_app(tmp_path, upstream[1])
    probe = tmp_path / "probe.log"
    with running(name, "gk_app:asgi_app", app_dir=tmp_path, env=env) as (proc, _):
        started = _probe_lines(probe, 1, timeout=20)
        assert len(started) == 1 and started[0].startswith("start "), proc.log()
        worker = started[0].split()[1]  # hypercorn and granian serve from a child process
        code = proc.stop(timeout=20)
    assert _probe_lines(probe, 2, timeout=5) == [f"start {worker}", f"stop {worker}"], proc.log()
    assert code in (0, -signal.SIGTERM), proc.log()  # uvicorn re-raises the signal once done


@pytest.mark.parametrize("name", [_available(s) for s in WSGI_SERVERS])
def test_wsgi_portal_starts_the_gateway_and_stops_it_at_exit(
    name: str, tmp_path: Path, upstream: tuple[StreamUpstream, int]
) -> None:
    env = write_app(tmp_path, upstream[1])
    probe = tmp_path / "probe.log"
    with running(name, "gk_app:wsgi_app", app_dir=tmp_path, env=env) as (proc, port):
        assert not probe.exists()  # the portal starts on the first request
        response = anyio.run(TestClient("127.0.0.1", port).get, "/api/x")
        assert response.status == 200
        started = _probe_lines(probe, 1, timeout=20)
        assert len(started) == 1, proc.log()
        worker = started[0].split()[1]
        # waitress leaves at once on SIGTERM, without atexit: stop it with Ctrl+C.
        proc.stop(timeout=20, sig=signal.SIGINT if name == "waitress" else signal.SIGTERM)
    assert _probe_lines(probe, 2, timeout=5) == [f"start {worker}", f"stop {worker}"], proc.log()


@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="uvicorn cannot be imported")
async def test_cli_serve_with_two_workers(tmp_path: Path, upstream: tuple[StreamUpstream, int]) -> None:
    env = write_app(tmp_path, upstream[1])
    port = free_port()
    argv = [sys.executable, "-m", "gatekeep", "serve", env["GATEKEEP_CONFIG"], "--port", str(port)]
    argv += ["--workers", "2"]
    with running("gatekeep-serve", "", app_dir=tmp_path, argv=argv, port=port) as (proc, _):
        client = TestClient("127.0.0.1", port, timeout=20)
        for _ in range(4):
            response = await client.get("/api/cli")
            assert response.status == 200, proc.log()
            assert response.json()["path"] == "/cli"
        _problem(await client.get("/nope"), 404)
        assert _wait_for(lambda: proc.log().count("Application startup complete") == 2), proc.log()


@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="uvicorn cannot be imported")
def test_client_disconnect_cancels_the_upstream_call(tmp_path: Path) -> None:
    upstream = StreamUpstream()
    with upstream_thread(upstream) as upstream_port:
        env = write_app(tmp_path, upstream_port)
        with running("uvicorn", "gk_app:asgi_app", app_dir=tmp_path, env=env) as (proc, port):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /api/slow HTTP/1.1\r\nhost: gk\r\n\r\n")
                first = sock.recv(65536)
                assert first.startswith(b"HTTP/1.1 200"), first
                assert upstream.slow_started.wait(5)
                time.sleep(0.2)
                assert not upstream.slow_stopped.is_set()
                sock.shutdown(socket.SHUT_RDWR)
            gone = time.monotonic()
            assert upstream.slow_stopped.wait(5), proc.log()
            assert upstream.slow_stopped_at - gone < 2.0
            assert upstream.slow_error, "the upstream should see its send fail"
            # The gateway lives on.
            response = anyio.run(TestClient("127.0.0.1", port).get, "/api/after")
            assert response.status == 200
