"""Client aborts and malformed bodies: a 499 or a 400, never a 5xx, never a traceback.

A client that closes its connection half-way through its upload is no fault of
the gateway's: it is logged at INFO and counted as ``code="499"`` (nginx's
convention), so that no client can fire 5xx alerts.  A body the server refuses
as malformed (a bad chunk) is answered 400 problem+json where an answer can
still be sent.  Each case runs in process (``serve_asgi``), and under real
servers in child processes: uvicorn (ASGI) and gunicorn (WSGI), standalone and
in middleware mode.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

import gatekeep
from gatekeep.testing import EchoUpstream, TestClient, gateway_for, serve_asgi

from .._servers import running, upstream_thread

pytestmark = pytest.mark.anyio

HALF_BODY = b"POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n" + b"a" * 400
HALF_CHUNKED = b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
BAD_CHUNK = b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
PLUGINS = [{"name": "prometheus"}, {"name": "access-log"}]


def send_and_close(port: int, data: bytes, *, linger: float = 0.3) -> None:
    """Send ``data`` (a request cut short), wait a moment, close the connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        time.sleep(linger)


def send_and_read(port: int, data: bytes) -> bytes:
    """Send ``data`` and read the answer until the server closes or 2 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        s.settimeout(2)
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def codes(metrics_text: str) -> dict[str, float]:
    """``gatekeep_http_requests_total`` by ``code``, for route ``echo``."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "gatekeep_http_requests_total" and s.labels.get("route") in ("echo", "app"):
                out[s.labels["code"]] = out.get(s.labels["code"], 0) + s.value
    return out


async def scrape_until(client: TestClient, want: dict[str, float]) -> dict[str, float]:
    """Scrape ``/metrics`` until ``want`` is counted (the log phase runs after the answer)."""
    found: dict[str, float] = {}
    with anyio.move_on_after(5):
        while True:
            found = codes((await client.get("/metrics")).text)
            if all(found.get(k, 0) >= v for k, v in want.items()):
                break
            await anyio.sleep(0.05)
    return found


def no_errors(records: list[logging.LogRecord]) -> None:
    bad = [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def access_statuses(records: list[logging.LogRecord]) -> list[int]:
    return [r.access["status"] for r in records if hasattr(r, "access")]


# -- in process ----------------------------------------------------------------------------------


async def test_upload_cut_short_is_a_499_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = {
        "services": [{"name": "echo", "url": "{upstream}", "routes": [{"name": "echo", "paths": ["/echo"]}]}]
    }
    async with gateway_for(config, plugins=PLUGINS) as gw:
        await anyio.to_thread.run_sync(send_and_close, gw.port, HALF_BODY)
        found = await scrape_until(gw.client, {"499": 1})
    assert found == {"499": 1}
    no_errors(caplog.records)
    assert 499 in access_statuses(caplog.records)
    [closed] = [r for r in caplog.records if "client closed" in r.getMessage()]
    assert closed.levelno == logging.INFO


async def test_malformed_chunk_is_a_400_problem(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = {
        "services": [{"name": "echo", "url": "{upstream}", "routes": [{"name": "echo", "paths": ["/echo"]}]}]
    }
    async with gateway_for(config, plugins=PLUGINS) as gw:
        answer = await anyio.to_thread.run_sync(send_and_read, gw.port, BAD_CHUNK)
        assert status_of(answer) == 400, answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/problem+json" in head.lower()
        assert json.loads(body)["status"] == 400
        found = await scrape_until(gw.client, {"400": 1})
    assert found == {"400": 1}
    no_errors(caplog.records)


MIDDLEWARE_CONFIG = {
    "services": [{"name": "app", "url": "app://", "routes": [{"name": "app", "paths": ["/echo"]}]}],
    "plugins": PLUGINS,
}


async def _starlette_echo() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        return Response(await request.body())

    return Starlette(routes=[Route("/echo", echo, methods=["POST"])])


@pytest.mark.parametrize(
    ("data", "status"),
    [(HALF_BODY, 499), (HALF_CHUNKED, 499), (BAD_CHUNK, 400)],
    ids=["cut-short", "chunked-cut-short", "bad-chunk"],
)
async def test_middleware_mode_body_failure_is_not_the_apps(
    caplog: pytest.LogCaptureFixture, data: bytes, status: int
) -> None:
    # Starlette answers 500 when its body read ends in http.disconnect; the
    # client's answer (and the log) must be about the body, not the app.
    pytest.importorskip("starlette")
    caplog.set_level(logging.INFO)
    gateway = gatekeep.Gateway(MIDDLEWARE_CONFIG)
    async with gateway, serve_asgi(gatekeep.asgi(gateway, app=await _starlette_echo())) as port:
        if status == 499:
            await anyio.to_thread.run_sync(send_and_close, port, data)
        else:
            answer = await anyio.to_thread.run_sync(send_and_read, port, data)
            assert status_of(answer) == status, answer
            assert b"application/problem+json" in answer
        found = await scrape_until(TestClient("127.0.0.1", port), {str(status): 1})
    assert found == {str(status): 1}
    no_errors(caplog.records)


async def test_middleware_mode_chunked_body_over_the_limit_is_a_413(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("starlette")
    caplog.set_level(logging.INFO)
    limit = {"name": "request-size-limiting", "config": {"allowed_payload_size": 100, "size_unit": "bytes"}}
    config = {**MIDDLEWARE_CONFIG, "plugins": [*PLUGINS, limit]}
    gateway = gatekeep.Gateway(config)
    big = b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + b"c8\r\n" + b"x" * 200
    async with gateway, serve_asgi(gatekeep.asgi(gateway, app=await _starlette_echo())) as port:
        answer = await anyio.to_thread.run_sync(send_and_read, port, big + b"\r\n0\r\n\r\n")
        assert status_of(answer) == 413, answer
        found = await scrape_until(TestClient("127.0.0.1", port), {"413": 1})
    assert found == {"413": 1}
    no_errors(caplog.records)


# -- real servers in child processes -------------------------------------------------------------

APP_MODULE = """\
import logging
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
import flask

import gatekeep

logging.basicConfig(level=logging.INFO)


async def echo(request: Request) -> Response:
    return Response(await request.body())


web = flask.Flask(__name__)


@web.post("/echo")
def flask_echo():
    return flask.request.get_data()


config = os.environ["GATEKEEP_CONFIG"]
asgi_app = gatekeep.asgi(gatekeep.Gateway(config))
wsgi_app = gatekeep.wsgi(gatekeep.Gateway(config))
starlette_app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
asgi_mw = gatekeep.asgi(gatekeep.Gateway(config), app=starlette_app)
wsgi_mw = gatekeep.wsgi(gatekeep.Gateway(config), app=web)
"""

CONFIG = """\
[[plugins]]
name = "prometheus"

[[plugins]]
name = "access-log"

[[services]]
name = "echo"
url = "{url}"

  [[services.routes]]
  name = "echo"
  paths = ["/echo"]

[[services]]
name = "hang"
url = "{hang}"

  [[services.routes]]
  name = "hang"
  paths = ["/hang"]
"""


async def _hang(scope: Any, receive: Any, send: Any) -> None:
    await anyio.sleep_forever()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[int, int]]:
    with upstream_thread(EchoUpstream()) as echo, upstream_thread(_hang) as hang:
        yield echo, hang


SERVED = [
    ("uvicorn", "asgi_app", False),
    ("uvicorn", "asgi_mw", True),
    ("gunicorn-gthread", "wsgi_app", False),
    ("gunicorn-gthread", "wsgi_mw", True),
]


@pytest.mark.parametrize(("server", "app", "middleware"), SERVED, ids=[f"{s}-{a}" for s, a, _ in SERVED])
def test_under_a_real_server(
    tmp_path: Path, upstreams: tuple[int, int], server: str, app: str, middleware: bool
) -> None:
    pytest.importorskip(server.split("-")[0])
    pytest.importorskip("starlette" if server == "uvicorn" else "flask")
    echo, hang = upstreams
    (tmp_path / "abort_app.py").write_text(APP_MODULE)
    url = "app://" if middleware else f"http://127.0.0.1:{echo}"
    (tmp_path / "gw.toml").write_text(CONFIG.format(url=url, hang=f"http://127.0.0.1:{hang}"))
    env = {"GATEKEEP_CONFIG": str(tmp_path / "gw.toml")}
    with running(server, f"abort_app:{app}", app_dir=tmp_path, env=env) as (proc, port):
        send_and_close(port, HALF_BODY)
        send_and_close(port, HALF_CHUNKED)
        answer = send_and_read(port, BAD_CHUNK)
        # uvicorn refuses the chunk itself (its own text 400) before gatekeep sees it.
        assert status_of(answer) == 400, answer
        if server != "uvicorn":
            assert b"application/problem+json" in answer
        want = {"499": 2} if server == "uvicorn" else {"499": 2, "400": 1}
        if server == "uvicorn" and not middleware:
            # Gone while the upstream thinks: the disconnect watch cancels the call.
            send_and_close(port, b"GET /hang HTTP/1.1\r\nHost: gw\r\n\r\n", linger=1.5)
            want = {"499": 3}
        found = anyio.run(scrape_until, TestClient("127.0.0.1", port), want)
        if server == "uvicorn" and not middleware:
            # The access-log line comes from the same log phase as the metric: wait for it too.
            deadline = time.monotonic() + 5
            while '"path":"/hang"' not in proc.log():
                assert time.monotonic() < deadline, proc.log()
                time.sleep(0.05)
        log = proc.log()
    assert found.get("499", 0) >= 2 and not [c for c in found if c.startswith("5")], (found, log)
    if server != "uvicorn":
        assert found.get("400") == 1, found
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "client closed the connection" in log, log
    if server == "uvicorn" and not middleware:
        [line] = [line for line in log.splitlines() if '"path":"/hang"' in line]
        assert '"status":499' in line, log
