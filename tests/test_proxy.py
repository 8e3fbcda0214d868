"""The upstream stage seen from a client of the gateway: streaming, timeouts,
TLS, and the rule that a non-idempotent request is never sent twice."""

from __future__ import annotations

import gc
import ssl
from pathlib import Path
from typing import Any

import anyio
import h11
import psutil
import pytest
import trustme

from gatekeep.testing import gateway_for, serve_asgi

# Every test runs once per HTTP/1.1 codec (see tests/conftest.py).
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("each_codec")]

MiB = 1024 * 1024


def _single_service(url: str, **service: Any) -> dict[str, Any]:
    return {"services": [{"name": "up", "url": url, "routes": [{"paths": ["/"]}], **service}]}


class StreamingUpstream:
    """Counts uploaded bytes without keeping them; streams downloads it never holds whole."""

    def __init__(self) -> None:
        self.received = 0
        self.posts = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "POST":
            self.posts += 1
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if scope["path"].startswith("/download/"):
            size = int(scope["path"].rsplit("/", 1)[1])
            headers = [(b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            chunk = b"x" * (64 * 1024)
            left = size
            while left > 0:
                piece = chunk[: min(left, len(chunk))]
                left -= len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
            return
        body = str(self.received).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _stream_exchange(port: int, method: str, path: str, upload: int) -> tuple[int, int]:
    """Send ``upload`` bytes and read the answer, holding neither in memory."""
    conn = h11.Connection(h11.CLIENT)
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        headers = [("host", "gw"), ("content-length", str(upload))]
        await stream.send(conn.send(h11.Request(method=method, target=path, headers=headers)) or b"")
        chunk = b"u" * (64 * 1024)
        left = upload
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            left -= len(piece)
            await stream.send(conn.send(h11.Data(data=piece)) or b"")
        await stream.send(conn.send(h11.EndOfMessage()) or b"")
        status, received = 0, 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive(256 * 1024))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, received


@pytest.mark.timeout(120)
async def test_large_bodies_stream_both_ways_with_flat_memory() -> None:
    upstream = StreamingUpstream()
    size = 96 * MiB
    async with gateway_for(upstream=upstream) as gw:
        # Warm up (imports, pools), then measure.
        await _stream_exchange(gw.port, "POST", "/upload", MiB)
        gc.collect()
        before = psutil.Process().memory_info().rss
        status, _ = await _stream_exchange(gw.port, "POST", "/upload", size)
        assert status == 200
        assert upstream.received == size + MiB
        status, received = await _stream_exchange(gw.port, "GET", f"/download/{size}", 0)
        assert status == 200 and received == size
        growth = psutil.Process().memory_info().rss - before
    # Client, gateway and upstream share this process: one buffered copy would be 96 MiB.
    assert growth < 24 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"


class Hanging:
    """Accepts the request and never answers."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep_forever()


async def test_read_timeout_answers_504_problem() -> None:
    async with serve_asgi(Hanging()) as port:
        config = _single_service(f"http://127.0.0.1:{port}", read_timeout=200)
        async with gateway_for(config) as gw:
            with anyio.fail_after(5):
                response = await gw.client.get("/")
            assert response.status == 504
            assert response.header("content-type") == "application/problem+json"
            assert "read" in response.json()["detail"]


@pytest.mark.parametrize(
    "reply",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nshort",
        b"",
    ],
    ids=["garbage", "truncated-small", "truncated-large", "closed"],
)
async def test_a_broken_upstream_answers_502_and_a_post_is_sent_once(reply: bytes) -> None:
    seen: list[bytes] = []

    async def handle(stream: Any) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"hello"):
                data += await stream.receive()
            seen.append(data)
            if reply:
                await stream.send(reply)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        async with gateway_for(_single_service(f"http://127.0.0.1:{port}")) as gw:
            if b"100000" in reply:
                # A large body streams: the head was already forwarded, and the
                # only honest signal left is to cut the client's connection
                # short, never to pad the body.  (A small body is read whole
                # before anything is forwarded, so its truncation is a 502.)
                with pytest.raises(h11.RemoteProtocolError, match="without sending complete message body"):
                    await gw.client.post("/orders", body=b"hello")
            else:
                response = await gw.client.post("/orders", body=b"hello")
                assert response.status == 502
                assert response.header("content-type") == "application/problem+json"
        tg.cancel_scope.cancel()
    # Never retried: the upstream saw the POST exactly once.
    assert len(seen) == 1


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def _tls_upstream(
    ca: trustme.CA, tmp_path: Path, *, require_client_cert: bool
) -> tuple[ssl.SSLContext, dict[str, str]]:
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    files = {"ca": str(tmp_path / "ca.pem")}
    ca.cert_pem.write_to_path(files["ca"])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
        client_cert = ca.issue_cert("gateway.internal")
        files["client"] = str(tmp_path / "client.pem")
        client_cert.private_key_and_cert_chain_pem.write_to_path(files["client"])
    return context, files


async def _serve_tls(context: ssl.SSLContext, seen: list[str]) -> Any:
    from anyio.streams.tls import TLSListener

    async def handle(stream: Any) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            peer = stream.extra(anyio.streams.tls.TLSAttribute.peer_certificate)
            seen.append(str(peer.get("subjectAltName")) if peer else "")
            body = b"secure"
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\n" + body)

    listener = TLSListener(
        await anyio.create_tcp_listener(local_host="127.0.0.1"), context, standard_compatible=False
    )
    return listener, handle


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
async def test_tls_upstream_with_custom_ca_and_client_certificate(
    ca: trustme.CA, tmp_path: Path, mtls: bool
) -> None:
    context, files = await _tls_upstream(ca, tmp_path, require_client_cert=mtls)
    seen: list[str] = []
    listener, handle = await _serve_tls(context, seen)
    port = listener.listener.extra(anyio.abc.SocketAttribute.local_port)
    tls: dict[str, Any] = {"ca_file": files["ca"]}
    if mtls:
        tls["cert_file"] = files["client"]
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        async with gateway_for(_single_service(f"https://127.0.0.1:{port}", tls=tls)) as gw:
            response = await gw.client.get("/")
            assert response.status == 200, response.text
            assert response.body == b"secure"
        tg.cancel_scope.cancel()
    if mtls:
        assert "gateway.internal" in seen[0]


async def test_tls_verification_failure_is_a_502_that_says_why(ca: trustme.CA, tmp_path: Path) -> None:
    context, _ = await _tls_upstream(ca, tmp_path, require_client_cert=False)
    listener, handle = await _serve_tls(context, [])
    port = listener.listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        # No custom CA: the system store does not know trustme's CA.
        async with gateway_for(_single_service(f"https://127.0.0.1:{port}")) as gw:
            response = await gw.client.get("/")
            assert response.status == 502
            assert "certificate" in response.json()["detail"].lower()
        tg.cancel_scope.cancel()


async def test_weighted_targets_are_balanced() -> None:
    hits: list[int] = []

    def make(n: int) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            hits.append(n)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

        return app

    async with serve_asgi(make(1)) as p1, serve_asgi(make(2)) as p2:
        config = {
            "services": [
                {
                    "name": "up",
                    "targets": [
                        {"target": f"127.0.0.1:{p1}", "weight": 3},
                        {"target": f"127.0.0.1:{p2}", "weight": 1},
                    ],
                    "routes": [{"paths": ["/"]}],
                }
            ]
        }
        async with gateway_for(config) as gw:
            for _ in range(40):
                assert (await gw.client.get("/")).status == 200
    assert hits.count(1) == 30 and hits.count(2) == 10


class Dated:
    """An upstream that sends its own Date and Server."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"date", b"Mon, 01 Jan 2001 00:00:00 GMT"), (b"server", b"up/1"), (b"x-up", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("hide", "passed"),
    [(None, {"x-up"}), ([], {"date", "server", "x-up"}), (["x-up"], {"date", "server"})],
    ids=["default", "none", "x-up"],
)
async def test_hide_upstream_headers_decides_which_upstream_headers_reach_the_client(
    hide: list[str] | None, passed: set[str]
) -> None:
    async with serve_asgi(Dated()) as port:
        config = _single_service(f"http://127.0.0.1:{port}")
        if hide is not None:
            config["gateway"] = {"hide_upstream_headers": hide}
        async with gateway_for(config) as gw:
            response = await gw.client.get("/")
    assert response.status == 200
    assert {name for name in ("date", "server", "x-up") if response.header(name) is not None} == passed
