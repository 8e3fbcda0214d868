"""WebSocket handshakes go through the gateway's filters, in middleware mode and standalone.

The attack (issue 11, row 1): a Starlette app behind ``gatekeep.asgi(gateway,
app=...)`` with ``key-auth`` on ``/api`` answered ``ws://…/api/ws`` without a
key, because every ``websocket`` scope went straight to the wrapped app.  Now
a handshake is routed and filtered like a GET: without a key it is denied with
the filter's 401 problem+json (the ``websocket.http.response`` extension, which
uvicorn, hypercorn and granian have) or closed before accept (1008: the server
answers 403) where the server lacks the extension; rate limits count
handshakes; paths are normalised before routing, and the app sees the
normalised path; client-sent identity headers never reach the app.  A route to
a remote upstream is proxied after its filters (tests/test_websocket_proxy.py):
an upstream that does not upgrade has its answer relayed, as nginx does.

Every case runs under real servers in child processes with a real WebSocket
client (``websockets``).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import gatekeep
from gatekeep.testing import EchoUpstream, TestClient

from .._servers import running, upstream_thread
from .._wire import access_log, refusal

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        any(importlib.util.find_spec(p) is None for p in ("websockets", "fastapi")),
        reason="needs websockets and fastapi",
    ),
]

KEY = "alice-secret-key"

APP_MODULE = """\
import logging
import os

from fastapi import FastAPI, WebSocket

import gatekeep

logging.basicConfig(level=logging.INFO)
api = FastAPI()


@api.get("/api/data")
async def data():
    return {"data": "secret"}


async def tell(websocket: WebSocket) -> None:
    # What the app learned about the client: the gateway's view, never the client's claims.
    scope = websocket.scope
    await websocket.accept()
    await websocket.send_text(__import__("json").dumps({
        "data": "secret",
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode(),
        "consumer_header": websocket.headers.get("x-consumer-username"),
        "roles_header": websocket.headers.get("x-authenticated-roles"),
        "identity": scope.get("gatekeep.identity") is not None,
        "request_id": scope.get("gatekeep.request_id"),
        "correlation": websocket.headers.get("kong-request-id"),
    }))
    await websocket.close()


api.add_api_websocket_route("/api/ws", tell)
api.add_api_websocket_route("/open/ws", tell)
api.add_api_websocket_route("/limited/ws", tell)


@api.websocket("/api/deny")
async def deny(websocket: WebSocket):
    await websocket.close(code=1008)


@api.websocket("/api/broken")
async def broken(websocket: WebSocket):
    raise RuntimeError("the app's own bug")


def gateway():
    return gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"])


middleware = gatekeep.asgi(gateway(), app=api)
standalone = gatekeep.asgi(gateway())


async def no_extension(scope, receive, send):
    # A server without the websocket.http.response extension (older uvicorn, daphne).
    if scope["type"] == "websocket":
        scope = {k: v for k, v in scope.items() if k != "extensions"}
    await middleware(scope, receive, send)
"""

CONFIG = """\
[gateway]
fallthrough = true

[[plugins]]
name = "correlation-id"

[[plugins]]
name = "access-log"

[[consumers]]
username = "alice"
keyauth_credentials = [{{ key = "{key}" }}]

[[services]]
name = "web"
url = "app://"

  [[services.routes]]
  name = "api"
  paths = ["/api"]

    [[services.routes.plugins]]
    name = "key-auth"

  [[services.routes]]
  name = "limited"
  paths = ["/limited"]

    [[services.routes.plugins]]
    name = "rate-limiting"
    config = {{ minute = 2, policy = "local", limit_by = "ip" }}

[[services]]
name = "remote"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "remote"
  paths = ["/remote"]

    [[services.routes.plugins]]
    name = "key-auth"
"""


class Served:
    def __init__(self, server: str, attribute: str, port: int, log_path: Path) -> None:
        self.server = server
        self.attribute = attribute
        self.port = port
        self.log_path = log_path

    async def statuses(self, path: str, count: int) -> list[int]:
        """The access log's statuses of the requests to ``path`` (waits for ``count`` of them)."""
        found: list[int] = []
        with anyio.move_on_after(5):
            while len(found) < count:
                await anyio.sleep(0.05)
                found = [doc["status"] for doc in access_log(self.log_path) if doc["path"] == path]
        return found

    @property
    def has_extension(self) -> bool:
        return self.attribute != "no_extension"

    def url(self, target: str) -> str:
        return f"ws://127.0.0.1:{self.port}{target}"


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    with upstream_thread(EchoUpstream()) as port:
        yield port


MIDDLEWARE = [
    ("uvicorn", "middleware"),
    ("hypercorn", "middleware"),
    ("granian", "middleware"),
    ("uvicorn", "no_extension"),
]


@contextmanager
def serve_mode(
    tmp_path_factory: pytest.TempPathFactory, upstream: int, server: str, attribute: str
) -> Iterator[Served]:
    if importlib.util.find_spec(server) is None:
        pytest.skip(f"{server} cannot be imported")
    directory = tmp_path_factory.mktemp(f"ws-{server}-{attribute}")
    (directory / "ws_app.py").write_text(APP_MODULE)
    config = directory / "gateway.toml"
    config.write_text(CONFIG.format(key=KEY, upstream=upstream))
    env = {"GATEKEEP_CONFIG": str(config)}
    with running(server, f"ws_app:{attribute}", app_dir=directory, env=env) as (proc, port):
        yield Served(server, attribute, port, proc.log_path)
    # The only traceback is the app's own bug (/api/broken), logged by the gateway.
    for trace in proc.log().split("Traceback")[1:]:
        assert "the app's own bug" in trace, proc.log()


@pytest.fixture(scope="module", params=MIDDLEWARE, ids=[f"{s}-{a}" for s, a in MIDDLEWARE])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: int
) -> Iterator[Served]:
    """The gateway in middleware mode in front of a Starlette app, under each server."""
    with serve_mode(tmp_path_factory, upstream, *request.param) as found:
        yield found


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory, upstream: int) -> Iterator[Served]:
    """``gatekeep.asgi(gateway)`` without a wrapped app, under uvicorn."""
    with serve_mode(tmp_path_factory, upstream, "uvicorn", "standalone") as found:
        yield found


async def handshake(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """Connect; ``(101, {}, first message)`` when accepted, else ``(status, headers, body)``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    try:
        with anyio.fail_after(10):
            async with connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
                return 101, {}, json.loads(await ws.recv())
    except InvalidStatus as exc:
        return refusal(exc)


def assert_denied(served: Served, answer: tuple[int, dict[str, str], Any], status: int) -> dict[str, Any]:
    """The handshake was refused with ``status`` (problem+json), or a 403 without the extension."""
    code, headers, body = answer
    if not served.has_extension:
        assert code == 403, answer  # closed before accept (1008): the server's own 403
        return {}
    assert code == status, answer
    assert headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = json.loads(body)
    assert doc["status"] == status and doc["request_id"] == headers["x-request-id"]
    return doc


async def test_handshake_without_a_key_is_denied(served: Served) -> None:
    assert (await TestClient("127.0.0.1", served.port).get("/api/data")).status == 401
    assert_denied(served, await handshake(served.url("/api/ws")), 401)


async def test_handshake_with_a_key_reaches_the_app_with_the_gateways_identity(served: Served) -> None:
    spoofed = {"apikey": KEY, "X-Consumer-Username": "root", "X_Authenticated_Roles": "admin"}
    code, _, seen = await handshake(served.url("/api/ws"), spoofed)
    assert code == 101, seen
    assert seen["data"] == "secret" and seen["identity"] is True
    assert seen["consumer_header"] == "alice"  # key-auth's, not the client's "root"
    assert seen["roles_header"] is None
    assert seen["request_id"] and seen["correlation"]  # the global correlation-id filter ran
    assert 101 in await served.statuses("/api/ws", 1)


async def test_spoofed_identity_alone_is_denied(served: Served) -> None:
    headers = {
        "X-Consumer-Username": "alice",
        "X-Anonymous-Consumer": "false",
        "X-Credential-Identifier": "x",
    }
    assert_denied(served, await handshake(served.url("/api/ws"), headers), 401)


@pytest.mark.parametrize(
    "target",
    ["/open/../api/ws", "/open/%2e%2e/api/ws", "/open/%2E%2E/api/ws", "//api/ws", "/api//ws", "/api/./ws"],
)
async def test_path_tricks_are_normalised_before_routing(served: Served, target: str) -> None:
    assert_denied(served, await handshake(served.url(target)), 401)
    code, _, seen = await handshake(served.url(target), {"apikey": KEY})
    assert code == 101, seen
    assert seen["path"] == "/api/ws" and seen["raw_path"] == "/api/ws"  # the app routes what was filtered


async def test_fallthrough_reaches_the_app_through_the_global_filters(served: Served) -> None:
    code, _, seen = await handshake(served.url("/open/ws"))
    assert code == 101, seen
    assert seen["identity"] is False and seen["correlation"]


async def test_rate_limit_counts_handshakes(served: Served) -> None:
    answers = [await handshake(served.url("/limited/ws")) for _ in range(3)]
    assert [a[0] for a in answers[:2]] == [101, 101]
    assert_denied(served, answers[2], 429)
    if served.has_extension:
        assert int(answers[2][1]["retry-after"]) > 0


async def test_the_apps_own_denial_and_failure(served: Served) -> None:
    code, _, _ = await handshake(served.url("/api/deny"), {"apikey": KEY})
    assert code == 403  # the app closed before accept: the server's 403, as without the gateway
    assert_denied(served, await handshake(served.url("/api/broken"), {"apikey": KEY}), 502)
    assert_denied(served, await handshake(served.url("/api/deny")), 401)
    # The access log has what happened: the app's refusal, its failure, the gateway's 401.
    assert await served.statuses("/api/deny", 2) == [403, 401]
    assert await served.statuses("/api/broken", 1) == [502]


async def upstream_route_is_proxied_after_its_filters(served: Served) -> None:
    assert_denied(served, await handshake(served.url("/remote/ws")), 401)
    # The upstream (an HTTP echo) does not upgrade: its own answer is the client's.
    code, headers, body = await handshake(served.url("/remote/ws"), {"apikey": KEY})
    if not served.has_extension:
        assert code == 403
        return
    assert code == 200 and headers["content-type"] == "application/json"
    seen = json.loads(body)
    assert seen["headers"]["x-consumer-username"] == "alice" and seen["headers"]["upgrade"] == "websocket"


async def test_upstream_route_is_proxied_after_its_filters(served: Served) -> None:
    await upstream_route_is_proxied_after_its_filters(served)


async def test_standalone_upstream_route_is_proxied_after_its_filters(standalone: Served) -> None:
    await upstream_route_is_proxied_after_its_filters(standalone)


async def test_standalone_unknown_path_is_a_404(standalone: Served) -> None:
    assert_denied(standalone, await handshake(standalone.url("/nowhere/ws")), 404)


async def test_unknown_scope_types_never_reach_the_app(tmp_path: Path) -> None:
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    gateway = gatekeep.Gateway({"services": []})
    wrapped = gatekeep.asgi(gateway, app=app)

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    with pytest.raises(ValueError, match="webtransport"):
        await wrapped({"type": "webtransport", "asgi": {"version": "3.0"}}, receive, send)
    assert called == []
