"""Middleware mode: the gateway's filters in front of a FastAPI or Flask app.

``gatekeep.asgi(gateway, app=fastapi_app)`` under uvicorn (a child process)
and in process (``serve_asgi`` on an event loop in a thread, lifespan driven
by the test); ``gatekeep.wsgi(gateway, app=flask_app)`` under waitress,
wsgiref and gunicorn.  Routes whose service has ``url = "app://"`` reach the
wrapped app; another route is proxied to a real upstream at the same time;
``[gateway] fallthrough`` decides whether unmatched paths reach the app.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import h11
import jwt
import pytest

import gatekeep
from gatekeep.testing import ClientResponse, TestClient, serve_asgi

from ._servers import StreamUpstream, free_port, running, upstream_thread

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
STREAM_CHUNKS = 10  # the apps' /bulk/stream: 10 chunks of 256 KiB, 0.1 s apart

APP_MODULE = '''\
"""A FastAPI app and a Flask app, each wrapped by a gateway (config in $GATEKEEP_CONFIG)."""

import hashlib
import os
import sys
import time
from contextlib import asynccontextmanager

import flask
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

import gatekeep

CHUNK = bytes(range(256)) * 1024  # 256 KiB


class HeaderAuth(gatekeep.BaseFilter):
    """A stand-in for authentication: ``x-user`` names the principal."""

    name = "header-auth"
    priority = 1000

    async def on_request(self, request):
        user = request.headers.get(b"x-user")
        if user is not None:
            request.identity = {"sub": user.decode()}
            request.consumer = user.decode()
        return None


def probe(what):
    with open(os.environ["GATEKEEP_PROBE"], "a") as f:
        f.write(what + "\\n")


def gateway():
    return gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"], filters=[HeaderAuth()])


def describe(path, headers, scope, body, **extra):
    return {
        "path": path,
        "headers": {k.lower(): v for k, v in headers.items()},
        "request_id": scope.get("gatekeep.request_id"),
        "identity": scope.get("gatekeep.identity"),
        "consumer": scope.get("gatekeep.consumer"),
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        **extra,
    }


# -- FastAPI ------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app):
    probe("fastapi start")
    yield {"greeting": "hello from lifespan"}
    probe("fastapi stop")


api = FastAPI(lifespan=lifespan)


@api.api_route("/app/{rest:path}", methods=["GET", "POST"])
@api.api_route("/bulk/echo", methods=["POST"])
@api.api_route("/own/{rest:path}", methods=["GET", "POST"])
async def fastapi_echo(request: Request):
    body = await request.body()
    probe("fastapi " + request.url.path)
    greeting = getattr(request.state, "greeting", None)
    return describe(request.scope["path"], request.headers, request.scope, body, greeting=greeting)


@api.get("/bulk/stream")
async def fastapi_stream():
    async def chunks():
        import anyio

        for _ in range(STREAM_CHUNKS):
            yield CHUNK
            await anyio.sleep(0.1)

    return StreamingResponse(chunks(), media_type="application/octet-stream")


# -- Flask --------------------------------------------------------------------

web = flask.Flask(__name__)


@web.route("/app/<path:rest>", methods=["GET", "POST"])
@web.route("/bulk/echo", methods=["POST"])
@web.route("/own/<path:rest>", methods=["GET", "POST"])
def flask_echo(rest=""):
    body = flask.request.get_data()
    probe("flask " + flask.request.path)
    return describe(flask.request.path, flask.request.headers, flask.request.environ, body)


@web.route("/bulk/stream")
def flask_stream():
    def chunks():
        for _ in range(STREAM_CHUNKS):
            yield CHUNK
            time.sleep(0.1)

    return flask.Response(chunks(), mimetype="application/octet-stream")


STREAM_CHUNKS = int(os.environ.get("STREAM_CHUNKS", "10"))

asgi_app = gatekeep.asgi(gateway(), app=api)
wsgi_app = gatekeep.wsgi(gateway(), app=web)

if __name__ == "__main__" and sys.argv[1] == "wsgiref":
    import signal
    import threading
    from wsgiref.simple_server import make_server

    with make_server("127.0.0.1", int(sys.argv[2]), wsgi_app) as server:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        server.serve_forever()
'''

CONFIG = """\
[gateway]
fallthrough = {fallthrough}

# Global: reaches every request, including those that fall through to the app.
[[plugins]]
name = "correlation-id"
config = {{ header_name = "X-Global-ID" }}

[[services]]
name = "app"
url = "app://"

  [[services.routes]]
  name = "app"
  paths = ["/app"]

  [[services.plugins]]
  name = "request-size-limiting"
  config = {{ allowed_payload_size = 64, size_unit = "kilobytes" }}

  [[services.plugins]]
  name = "correlation-id"
  config = {{ header_name = "X-Correlation-ID" }}

[[services]]
name = "bulk"
url = "app://"

  [[services.routes]]
  name = "bulk"
  paths = ["/bulk"]

[[services]]
name = "remote"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "remote"
  paths = ["/remote"]
"""


def _skip_unless(*packages: str) -> list[Any]:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return [pytest.mark.skip(reason=f"{', '.join(missing)} cannot be imported")] if missing else []


def write_app(directory: Path, upstream_port: int, *, fallthrough: bool) -> dict[str, str]:
    (directory / "mw_app.py").write_text(APP_MODULE)
    config = directory / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream_port, fallthrough=str(fallthrough).lower()))
    return {"GATEKEEP_CONFIG": str(config), "GATEKEEP_PROBE": str(directory / "probe.log")}


def probe_lines(directory: Path) -> list[str]:
    path = directory / "probe.log"
    return path.read_text().splitlines() if path.exists() else []


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Drive an ASGI app's lifespan the way a server does."""
    to_app, app_receive = anyio.create_memory_object_stream[dict[str, Any]](1)
    app_send, from_app = anyio.create_memory_object_stream[dict[str, Any]](1)
    with to_app, app_receive, app_send, from_app:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                app,
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                app_receive.receive,
                app_send.send,
            )
            await to_app.send({"type": "lifespan.startup"})
            assert (await from_app.receive())["type"] == "lifespan.startup.complete"
            try:
                yield
            finally:
                await to_app.send({"type": "lifespan.shutdown"})
                assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


def import_app(directory: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location(f"mw_app_{uuid.uuid4().hex}", directory / "mw_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Served:
    def __init__(self, kind: str, port: int, directory: Path, fallthrough: bool) -> None:
        self.kind = kind  # "fastapi" or "flask"
        self.port = port
        self.client = TestClient("127.0.0.1", port, timeout=20)
        self.directory = directory
        self.fallthrough = fallthrough


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[StreamUpstream, int]]:
    app = StreamUpstream()
    with upstream_thread(app) as port:
        yield app, port


MODES = [
    pytest.param(("uvicorn", True), marks=_skip_unless("uvicorn", "fastapi"), id="fastapi-uvicorn"),
    pytest.param(("in-process", True), marks=_skip_unless("fastapi"), id="fastapi-in-process"),
    pytest.param(
        ("in-process", False), marks=_skip_unless("fastapi"), id="fastapi-in-process-no-fallthrough"
    ),
    pytest.param(("waitress", True), marks=_skip_unless("waitress", "flask"), id="flask-waitress"),
    pytest.param(("wsgiref", True), marks=_skip_unless("flask"), id="flask-wsgiref"),
    pytest.param(
        ("gunicorn-gthread", False),
        marks=_skip_unless("gunicorn", "flask"),
        id="flask-gunicorn-no-fallthrough",
    ),
]


@pytest.fixture(scope="module", params=MODES)
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: tuple[StreamUpstream, int],
) -> Iterator[Served]:
    server, fallthrough = request.param
    directory = tmp_path_factory.mktemp(server)
    env = write_app(directory, upstream[1], fallthrough=fallthrough)
    kind = "fastapi" if server in ("uvicorn", "in-process") else "flask"
    if server == "in-process":
        with pytest.MonkeyPatch.context() as mp:
            module = import_app(directory, env, mp)
            with anyio.from_thread.start_blocking_portal("asyncio") as portal:

                @asynccontextmanager
                async def serve() -> AsyncIterator[int]:
                    async with lifespan(module.asgi_app), serve_asgi(module.asgi_app) as port:
                        yield port

                with portal.wrap_async_context_manager(serve()) as port:
                    yield Served(kind, port, directory, fallthrough)
            assert probe_lines(directory)[-1] == "fastapi stop"
        return
    target = "mw_app:asgi_app" if kind == "fastapi" else "mw_app:wsgi_app"
    with running(server, target, app_dir=directory, env=env) as (_, port):
        yield Served(kind, port, directory, fallthrough)


def _problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status and doc["request_id"] == response.header("x-request-id")
    return doc


async def test_app_route_reaches_the_app_through_its_filters(served: Served) -> None:
    response = await served.client.get(
        "/app/orders?x=1", headers={"x-user": "alice", "x-request-id": "rid-1"}
    )
    assert response.status == 200, response.text
    seen = response.json()
    assert seen["path"] == "/app/orders"
    assert seen["request_id"] == "rid-1" and seen["headers"]["x-request-id"] == "rid-1"
    assert response.header("x-request-id") == "rid-1"
    assert seen["headers"]["x-correlation-id"]  # the service's correlation-id filter ran
    assert "x-global-id" not in seen["headers"]  # ... in place of the global one
    assert seen["identity"] == {"sub": "alice"} and seen["consumer"] == "alice"
    if served.kind == "fastapi":
        assert seen["greeting"] == "hello from lifespan"  # the app's lifespan state reached its request


async def test_app_sees_the_decoded_path(served: Served) -> None:
    response = await served.client.get("/app/caf%C3%A9%20au%20lait")
    assert response.status == 200, response.text
    assert response.json()["path"] == "/app/café au lait"


async def test_size_limit_answers_413_and_the_app_is_never_called(served: Served) -> None:
    marker = f"/app/too-big-{uuid.uuid4().hex}"
    response = await served.client.post(marker, body=b"x" * (65 * 1024))
    _problem(response, 413)
    small = await served.client.post(marker + "-small", body=b"x" * 1024)
    assert small.status == 200 and small.json()["length"] == 1024
    lines = probe_lines(served.directory)
    assert f"{served.kind} {marker}-small" in lines
    assert f"{served.kind} {marker}" not in lines


async def test_post_body_reaches_the_app_intact(served: Served) -> None:
    body = os.urandom(MiB)
    response = await served.client.post(
        "/bulk/echo", body=body, headers={"content-type": "application/x-raw"}
    )
    assert response.status == 200, response.text
    seen = response.json()
    assert seen["length"] == MiB and seen["sha256"] == hashlib.sha256(body).hexdigest()


async def test_remote_route_is_proxied_beside_the_app(served: Served) -> None:
    response = await served.client.get("/remote/items", headers={"x-request-id": "rid-remote"})
    assert response.status == 200, response.text
    seen = response.json()
    assert seen["path"] == "/items" and seen["headers"]["x-request-id"] == "rid-remote"
    assert seen["headers"]["x-global-id"]


async def test_fallthrough(served: Served) -> None:
    response = await served.client.post("/own/page", body=b"y" * (100 * 1024))
    if not served.fallthrough:
        _problem(response, 404)
        return
    assert response.status == 200, response.text
    seen = response.json()
    assert seen["path"] == "/own/page" and seen["length"] == 100 * 1024  # no size limit here
    assert seen["headers"]["x-global-id"]  # only the global filters ran
    assert "x-correlation-id" not in seen["headers"]
    assert seen["request_id"] == response.header("x-request-id")


def _timed_get(port: int, target: str) -> tuple[float, float, bytes]:
    """GET over a plain socket: (seconds to the first body byte, seconds in all, body)."""
    conn = h11.Connection(h11.CLIENT)
    chunks: list[bytes] = []
    first = 0.0
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(conn.send(h11.Request(method="GET", target=target, headers=[("host", "gk")])))
        sock.sendall(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                first = first or time.monotonic() - start
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return first, time.monotonic() - start, b"".join(chunks)


def test_large_response_streams_from_the_app(served: Served) -> None:
    first, total, body = _timed_get(served.port, "/bulk/stream")
    expected = bytes(range(256)) * 1024 * STREAM_CHUNKS
    assert len(body) == len(expected) and body == expected
    # The app sleeps 0.1 s between chunks: the first one must not wait for the last.
    assert total >= 0.9
    assert first < total - 0.5, (first, total)


@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="uvicorn cannot be imported")
def test_uvicorn_lifespan_runs_the_wrapped_apps_lifespan(
    tmp_path: Path, upstream: tuple[StreamUpstream, int]
) -> None:
    env = write_app(tmp_path, upstream[1], fallthrough=True)
    with running("uvicorn", "mw_app:asgi_app", app_dir=tmp_path, env=env) as (proc, _):
        assert probe_lines(tmp_path) == ["fastapi start"], proc.log()
        proc.stop()
    assert probe_lines(tmp_path) == ["fastapi start", "fastapi stop"], proc.log()


async def _lifespan_messages(app: Any) -> list[str]:
    """Run startup (and shutdown, if startup completed); the message types the app sent."""
    sent: list[str] = []
    inbox = ["lifespan.startup", "lifespan.shutdown"]

    async def receive() -> dict[str, Any]:
        if not inbox or (sent and sent[-1].endswith("failed")):
            await anyio.sleep_forever()
        return {"type": inbox.pop(0)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    with anyio.fail_after(5):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


async def test_wrapped_app_without_lifespan_is_fine() -> None:
    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"  # raises on lifespan, as many small apps do

    app = gatekeep.asgi(gatekeep.Gateway({"services": []}), app=http_only)
    assert await _lifespan_messages(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_wrapped_app_failing_startup_fails_the_lifespan() -> None:
    @asynccontextmanager
    async def broken(app: Any) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    fastapi = pytest.importorskip("fastapi")
    app = gatekeep.asgi(gatekeep.Gateway({"services": []}), app=fastapi.FastAPI(lifespan=broken))
    assert await _lifespan_messages(app) == ["lifespan.startup.failed"]


# -- docs/embedding.md: every file and command line in it, run as written --------

DOC = Path(__file__).parent.parent / "docs" / "embedding.md"
DOC_FILES = dict(re.findall(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", DOC.read_text(), re.DOTALL))
DOC_COMMANDS = [
    line[2:]
    for block in re.findall(r"```console\n(.*?)```", DOC.read_text(), re.DOTALL)
    for line in block.splitlines()
    if line.startswith("$ ") and not line.startswith("$ export ")  # the test sets the variables
]
# The page's middleware config reads the HS256 key from $JWT_SECRET: tokens are real.
DOC_JWT_SECRET = "embedding-doc-secret-" + "s" * 32


def _doc_argv(command: str, port: int) -> list[str]:
    argv = [a.replace("8000", str(port)) for a in shlex.split(command)]
    bindir = Path(sys.executable).parent
    argv[0] = sys.executable if argv[0] == "python" else str(bindir / argv[0])
    return argv


@pytest.mark.parametrize("command", DOC_COMMANDS)
async def test_embedding_doc(command: str, tmp_path: Path, upstream: tuple[StreamUpstream, int]) -> None:
    program = shlex.split(command)[0]
    package = {"python": "wsgiref", "waitress-serve": "waitress"}.get(program, program)
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} cannot be imported")
    port = free_port()
    for name, text in DOC_FILES.items():
        text = text.replace("127.0.0.1:9001", f"127.0.0.1:{upstream[1]}")
        (tmp_path / name).write_text(text.replace("8000", str(port)) if name.endswith(".py") else text)
    middleware = any(m in command for m in ("fastapi_app", "fastapi_middleware", "flask_app"))
    env = {"JWT_SECRET": DOC_JWT_SECRET}
    argv = _doc_argv(command, port)
    with running(program, "", app_dir=tmp_path, argv=argv, port=port, env=env) as (proc, _):
        client = TestClient("127.0.0.1", port, timeout=20)
        response = await client.get("/orders/1")
        assert response.status == 200, proc.log()
        assert response.json()["path"] == "/1"
        if not middleware:
            _problem(await client.get("/nowhere"), 404)
        else:
            # Authentication on: the app answers the caller's identity as JSON.
            claims = {"sub": "doc-user", "roles": ["reader"], "exp": int(time.time()) + 600}
            auth = {"authorization": "Bearer " + jwt.encode(claims, DOC_JWT_SECRET, algorithm="HS256")}
            hello = await client.get("/api/hello", headers={"x-request-id": "doc-1", **auth})
            assert hello.status == 200, proc.log()
            assert hello.json()["request_id"] == "doc-1" and hello.json()["hello"] == "world"
            user = hello.json()["user"]
            assert user["subject"] == "doc-user" and user["roles"] == ["reader"]
            assert user["claims"]["sub"] == "doc-user"
            denied = await client.get("/api/hello")
            _problem(denied, 401)
            assert denied.header("www-authenticate") == "Bearer"
            _problem(await client.post("/api/hello", body=b"x" * (MiB + 1), headers=auth), 413)


def test_embedding_doc_is_complete() -> None:
    assert set(DOC_FILES) == {
        "gateway.toml",
        "asgi_app.py",
        "wsgi_app.py",
        "serve_wsgiref.py",
        "middleware.toml",
        "fastapi_app.py",
        "fastapi_middleware.py",
        "flask_app.py",
    }
    servers = {shlex.split(c)[0] for c in DOC_COMMANDS}
    assert servers == {"uvicorn", "hypercorn", "granian", "gunicorn", "waitress-serve", "python"}
