"""WebSocket proxying (issue 14, point 3): ``gatekeep serve`` and ``gatekeep.asgi()`` under uvicorn.

Every case runs the gateway as users run it, in a child process (``gatekeep
serve CONFIG`` with its front server, or uvicorn serving ``gatekeep._serve:app``),
with the ``websockets`` library as the client and as the upstream.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gatekeep._websocket._deflate import OFFER
from gatekeep.testing import TestClient

from ._servers import free_port, running
from ._websocket_upstream import WebSocketUpstream, websocket_upstream
from ._wire import access_log, exchange, front_server, refusal, upgrade_request

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(importlib.util.find_spec("websockets") is None, reason="needs websockets"),
]

KEY = "alice-key"

CONFIG = """\
[gateway.websocket]
max_message_bytes = 65536
idle_timeout = 2.0
close_timeout = 1.0

[[plugins]]
name = "access-log"

[[plugins]]
name = "prometheus"

[[consumers]]
username = "alice"
keyauth_credentials = [{{ key = "{key}" }}]

[[services]]
name = "chat"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "open"
  paths = ["/ws"]

  [[services.routes]]
  name = "keyed"
  paths = ["/keyed"]

    [[services.routes.plugins]]
    name = "key-auth"

  [[services.routes]]
  name = "limited"
  paths = ["/limited"]

    [[services.routes.plugins]]
    name = "rate-limiting"
    config = {{ minute = 2, policy = "local", limit_by = "ip" }}

  [[services.routes]]
  name = "http-only"
  paths = ["/plain"]
  websocket = false

[[services]]
name = "down"
url = "http://127.0.0.1:{down}"

  [[services.routes]]
  name = "down"
  paths = ["/down"]
"""


# What a user writes to run the gateway under uvicorn (logging on, for the access log).
APP_MODULE = """\
import logging
import os

import gatekeep

logging.basicConfig(level=logging.INFO)
app = gatekeep.asgi(gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"]))
"""


class Gateway:
    """A gateway process and what it logged."""

    def __init__(self, mode: str, port: int, log_path: Path) -> None:
        self.mode = mode
        self.port = port
        self.log_path = log_path

    def url(self, target: str) -> str:
        return f"ws://127.0.0.1:{self.port}{target}"

    def access(self, path: str) -> list[dict[str, Any]]:
        return [doc for doc in access_log(self.log_path) if doc["path"] == path]

    async def wait_access(self, path: str, count: int = 1) -> list[dict[str, Any]]:
        with anyio.move_on_after(5):
            while len(self.access(path)) < count:  # noqa: ASYNC110 - polls the gateway's log file
                await anyio.sleep(0.05)
        return self.access(path)

    async def metrics(self) -> str:
        response = await TestClient("127.0.0.1", self.port).get("/metrics")
        assert response.status == 200
        return response.text


@pytest.fixture(scope="module")
def upstream() -> Iterator[WebSocketUpstream]:
    with websocket_upstream() as found:
        yield found


def start(directory: Path, mode: str, config: Path) -> Any:
    port = free_port()
    if mode == "serve":
        argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port), "--access-log"]
        return running("gatekeep-serve", "", app_dir=directory, argv=argv, port=port)
    (directory / "ws_gateway.py").write_text(APP_MODULE)
    return running(
        "uvicorn", "ws_gateway:app", app_dir=directory, env={"GATEKEEP_CONFIG": str(config)}, port=port
    )


@pytest.fixture(scope="module", params=["serve", "uvicorn"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: WebSocketUpstream
) -> Iterator[Gateway]:
    mode = request.param
    directory = tmp_path_factory.mktemp(f"ws-proxy-{mode}")
    config = directory / "gateway.toml"
    config.write_text(CONFIG.format(key=KEY, upstream=upstream.port, down=free_port()))
    with start(directory, mode, config) as (proc, port):
        yield Gateway(mode, port, proc.log_path)
    assert "Traceback" not in proc.log(), proc.log()


async def connect(url: str, **kwargs: Any) -> Any:
    from websockets.asyncio.client import connect as ws_connect

    return await ws_connect(url, open_timeout=10, close_timeout=5, compression=None, **kwargs)


async def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    """The HTTP answer that refused the handshake."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        with anyio.fail_after(10):
            ws = await connect(url, **kwargs)
            await ws.close()
    return refusal(info.value)


def problem(answer: tuple[int, dict[str, str], bytes], status: int) -> dict[str, Any]:
    code, headers, body = answer
    assert code == status, answer
    assert headers["content-type"] == "application/problem+json", answer
    doc: dict[str, Any] = json.loads(body)
    assert doc["status"] == status
    return doc


# -- acceptance: echo through both modes; a denied handshake ----------------------------


async def test_a_client_echoes_through_the_gateway(gateway: Gateway) -> None:
    async with await connect(gateway.url("/ws/echo")) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        # Fragmented by the client: one message upstream.
        await ws.send(["frag", "mented"])
        assert await ws.recv() == "fragmented"
    docs = await gateway.wait_access("/ws/echo")
    assert docs[-1]["status"] == 101 and docs[-1]["route"] == "open"
    assert docs[-1]["bytes_in"] == len("hello") + 8 + len("fragmented")


async def test_a_handshake_without_credentials_on_a_key_auth_route_is_refused(gateway: Gateway) -> None:
    doc = problem(await refused(gateway.url("/keyed/echo")), 401)
    assert doc["request_id"]
    async with await connect(gateway.url("/keyed/hello"), additional_headers={"apikey": KEY}) as ws:
        seen = json.loads(await ws.recv())
    # The upstream sees the gateway's identity headers, not the client's key handshake fields.
    assert seen["headers"]["x-consumer-username"] == "alice"
    assert seen["headers"]["sec-websocket-version"] == "13"
    # The gateway's own extension offer (per hop), though this client offered none.
    assert seen["headers"]["sec-websocket-extensions"].startswith("permessage-deflate")
    assert seen["path"] == "/hello"


async def test_spoofed_identity_headers_never_reach_the_upstream(gateway: Gateway) -> None:
    headers = {"apikey": KEY, "X-Consumer-Username": "root", "X_Consumer_Username": "root"}
    async with await connect(gateway.url("/keyed/hello"), additional_headers=headers) as ws:
        seen = json.loads(await ws.recv())
    assert seen["headers"]["x-consumer-username"] == "alice"
    assert "x_consumer_username" not in seen["headers"]


async def test_an_upstream_that_is_down_is_a_502_before_the_upgrade(gateway: Gateway) -> None:
    doc = problem(await refused(gateway.url("/down/echo")), 502)
    assert "connect" in doc["detail"]


async def test_the_upstreams_own_refusal_is_relayed(gateway: Gateway) -> None:
    code, _, body = await refused(gateway.url("/ws/deny"))
    assert code == 403 and body == b"upstream says no\n"


async def test_no_request_is_smuggled_behind_a_refused_upgrade(gateway: Gateway) -> None:
    # WebSocket smuggling: a proxy that believes an upgrade happened tunnels what follows, and the
    # upstream, which refused it, reads it as a new request. The gateway never tunnels bytes, and
    # after a refused handshake nothing more is read from the client's connection.
    smuggled = b"GET /ws/internal HTTP/1.1\r\nhost: gk\r\n\r\n"
    for version in (b"13", b"1337"):
        answer = await exchange(gateway.port, upgrade_request("/ws/deny", version=version) + smuggled)
        assert answer.count(b"HTTP/1.1 ") == 1, answer
        assert answer.startswith((b"HTTP/1.1 403", b"HTTP/1.1 426", b"HTTP/1.1 400")), answer  # uvicorn: 400


async def test_a_route_can_refuse_upgrades(gateway: Gateway) -> None:
    doc = problem(await refused(gateway.url("/plain/echo")), 403)
    assert doc["type"].endswith("/websocket-refused") and "http-only" in doc["detail"]


async def test_unknown_paths_are_404_problems(gateway: Gateway) -> None:
    problem(await refused(gateway.url("/nowhere")), 404)


# -- negotiation --------------------------------------------------------------------------


async def test_the_subprotocol_is_the_upstreams_choice_among_the_clients(gateway: Gateway) -> None:
    async with await connect(gateway.url("/ws/hello"), subprotocols=["chat.v1", "chat.v2"]) as ws:
        seen = json.loads(await ws.recv())
        assert ws.subprotocol == "chat.v2"
    assert seen["subprotocol"] == "chat.v2"
    assert seen["headers"]["sec-websocket-protocol"] == "chat.v1, chat.v2"
    async with await connect(gateway.url("/ws/hello"), subprotocols=["other"]) as ws:
        await ws.recv()
        assert ws.subprotocol is None


async def test_extensions_are_negotiated_per_hop(gateway: Gateway) -> None:
    from websockets.asyncio.client import connect as ws_connect

    async with ws_connect(gateway.url("/ws/hello"), open_timeout=10) as ws:  # offers permessage-deflate
        seen = json.loads(await ws.recv())
        await ws.send("x" * 1000)
        assert await ws.recv() == "x" * 1000
        # The client's hop compresses (gatekeep's front server or uvicorn, each its own way).
        assert ws.response.headers["sec-websocket-extensions"].startswith("permessage-deflate")
    # The client's offer is not relayed: the gateway makes its own, which this upstream declines
    # (tests/test_websocket_compression.py has upstreams that accept it).
    assert seen["headers"]["sec-websocket-extensions"] == OFFER.decode()
    assert seen["extensions"] == []


# -- closing ------------------------------------------------------------------------------


async def test_the_upstreams_close_code_and_reason_reach_the_client(gateway: Gateway) -> None:
    async with await connect(gateway.url("/ws/echo")) as ws:
        await ws.send("close:4001:upstream is done")
        with anyio.fail_after(5):
            await ws.wait_closed()
    assert ws.close_code == 4001 and ws.close_reason == "upstream is done"


async def test_the_clients_close_code_and_reason_reach_the_upstream(
    gateway: Gateway, upstream: WebSocketUpstream
) -> None:
    path = f"/client-close-{gateway.mode}"
    async with await connect(gateway.url("/ws" + path)) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        await ws.close(4002, "client is done")
    assert await upstream.wait_closes(path) == [(4002, "client is done")]


async def test_a_message_over_the_limit_closes_with_1009(
    gateway: Gateway, upstream: WebSocketUpstream
) -> None:
    path = f"/too-big-{gateway.mode}"
    async with await connect(gateway.url("/ws" + path), max_size=None) as ws:
        await ws.send(b"y" * 65536)  # at the limit: relayed
        assert len(await ws.recv()) == 65536
        await ws.send(b"y" * 65537)
        with anyio.fail_after(5):
            await ws.wait_closed()
    assert ws.close_code == 1009
    assert (await upstream.wait_closes(path))[0][0] == 1009
    # And from the upstream's side.
    async with await connect(gateway.url("/ws/echo"), max_size=None) as ws:
        await ws.send("big:70000")
        with anyio.fail_after(5):
            await ws.wait_closed()
    assert ws.close_code == 1009


async def test_an_idle_connection_is_closed_with_1001(gateway: Gateway, upstream: WebSocketUpstream) -> None:
    path = f"/idle-{gateway.mode}"
    async with await connect(gateway.url("/ws" + path)) as ws:
        with anyio.fail_after(8):
            await ws.wait_closed()
    assert ws.close_code == 1001 and ws.close_reason == "idle timeout"
    assert await upstream.wait_closes(path) == [(1001, "idle timeout")]


async def test_an_upstream_that_drops_the_connection_is_a_1014(gateway: Gateway) -> None:
    async with await connect(gateway.url("/ws/echo")) as ws:
        await ws.send("drop")
        with anyio.fail_after(5):
            await ws.wait_closed()
    assert ws.close_code == 1014


async def test_rate_limits_count_connections(gateway: Gateway) -> None:
    for _ in range(2):
        async with await connect(gateway.url("/limited/echo")) as ws:
            await ws.send("in")
            assert await ws.recv() == "in"
    answer = await refused(gateway.url("/limited/echo"))
    problem(answer, 429)
    assert int(answer[1]["retry-after"]) > 0


async def test_pings_from_the_upstream_are_answered(gateway: Gateway) -> None:
    async with await connect(gateway.url("/ws/echo")) as ws:
        await ws.send("ping")
        assert await ws.recv() == "pong-ok"
        pong = await ws.ping(b"client-ping")  # answered by the server of the client's hop
        with anyio.fail_after(5):
            await pong


async def test_a_wss_upstream_is_reached_over_tls_with_the_services_ca(tmp_path: Path) -> None:
    import ssl

    import trustme

    from gatekeep import Gateway as GatewayApp
    from gatekeep import asgi

    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with websocket_upstream(context) as upstream:
        config = {
            "services": [
                {
                    "name": "secure",
                    "url": f"https://127.0.0.1:{upstream.port}",
                    "tls": {"ca_file": str(tmp_path / "ca.pem")},
                    "routes": [{"paths": ["/secure"]}],
                }
            ]
        }
        async with front_server(asgi(GatewayApp(config))) as port:
            async with await connect(f"ws://127.0.0.1:{port}/secure/hello") as ws:
                seen = json.loads(await ws.recv())
                assert seen["path"] == "/hello"
                await ws.send("over tls")
                assert await ws.recv() == "over tls"
        # Without the service's CA the certificate is refused: a 502 before the upgrade.
        config["services"][0]["tls"] = {}
        async with front_server(asgi(GatewayApp(config))) as port:
            doc = problem(await refused(f"ws://127.0.0.1:{port}/secure/hello"), 502)
            assert "certificate" in doc["detail"]


async def test_ip_rules_apply_to_the_handshake(upstream: WebSocketUpstream) -> None:
    from gatekeep import Gateway as GatewayApp
    from gatekeep import asgi

    deny = [{"name": "ip-restriction", "config": {"deny": ["127.0.0.0/8"]}}]
    config = {
        "services": [
            {
                "name": "chat",
                "url": f"http://127.0.0.1:{upstream.port}",
                "routes": [{"paths": ["/open"]}, {"paths": ["/closed"], "plugins": deny}],
            }
        ]
    }
    async with front_server(asgi(GatewayApp(config))) as port:
        problem(await refused(f"ws://127.0.0.1:{port}/closed/echo"), 403)
        async with await connect(f"ws://127.0.0.1:{port}/open/echo") as ws:
            await ws.send("allowed")
            assert await ws.recv() == "allowed"


async def test_wss_through_gatekeep_serve_with_mtls_auth_on_the_handshake(
    tmp_path: Path, upstream: WebSocketUpstream
) -> None:
    import ssl

    import trustme

    from gatekeep import Gateway as GatewayApp
    from gatekeep import asgi, load_config

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "gateway.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "gateway.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    config = {
        "server": {
            "tls": {
                "cert_file": str(tmp_path / "gateway.pem"),
                "key_file": str(tmp_path / "gateway.key"),
                "client_ca_file": str(tmp_path / "clients.pem"),
                "verify_client": "optional",
            }
        },
        "plugins": [{"name": "mtls-auth"}],
        "consumers": [{"username": "payments.internal"}],
        "services": [
            {"name": "chat", "url": f"http://127.0.0.1:{upstream.port}", "routes": [{"paths": ["/ws"]}]}
        ],
    }

    def client_context(with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        if with_certificate:
            ca.issue_cert("payments.internal").configure_cert(context)
        return context

    async with front_server(asgi(GatewayApp(config)), load_config(config).server) as port:
        url = f"wss://127.0.0.1:{port}/ws/hello"
        async with await connect(url, ssl=client_context(True)) as ws:
            seen = json.loads(await ws.recv())
            await ws.send("mutual")
            assert await ws.recv() == "mutual"
        assert seen["headers"]["x-consumer-username"] == "payments.internal"
        assert seen["headers"]["x-forwarded-proto"] == "https"
        problem(await refused(url, ssl=client_context(False)), 401)


# -- observability --------------------------------------------------------------------------


async def test_metrics_count_connections_messages_bytes_and_closes(gateway: Gateway) -> None:
    async with await connect(gateway.url("/ws/echo")) as ws:
        await ws.send("metrics")
        assert await ws.recv() == "metrics"
        text = await gateway.metrics()
        assert re.search(r'gatekeep_websocket_connections\{route="open",service="chat"\} [1-9]', text), text
        await ws.close(4003, "bye")
    with anyio.fail_after(5):
        while 'code="4003"' not in (text := await gateway.metrics()):  # noqa: ASYNC110 - polls /metrics
            await anyio.sleep(0.05)
    assert re.search(
        r'gatekeep_websocket_closes_total\{by="client",code="4003",route="open",service="chat"\} 1', text
    )
    assert re.search(
        r'gatekeep_websocket_messages_total\{direction="ingress",route="open",service="chat"\} [1-9]', text
    )
    assert re.search(
        r'gatekeep_websocket_message_bytes_total\{direction="egress",route="open",service="chat"\} [1-9]',
        text,
    )


async def test_one_access_log_line_per_connection(gateway: Gateway) -> None:
    path = f"/logged-{gateway.mode}"
    async with await connect(gateway.url("/ws" + path)) as ws:
        for n in range(3):
            await ws.send(f"m{n}")
            await ws.recv()
        await ws.close(4004, "")
    docs = await gateway.wait_access("/ws" + path)
    await anyio.sleep(0.2)
    docs = gateway.access("/ws" + path)
    assert len(docs) == 1
    assert docs[0]["status"] == 101 and docs[0]["bytes_in"] == 6 and docs[0]["bytes_out"] == 6
    assert docs[0]["websocket"] == {"code": 4004, "by": "client"}
    if gateway.mode == "serve":  # --access-log: the server's own line, once per connection
        lines = [line for line in gateway.log_path.read_text().splitlines() if f"/ws{path} HTTP/1.1" in line]
        assert len(lines) == 1 and "101 websocket close=4004 " in lines[0], lines
