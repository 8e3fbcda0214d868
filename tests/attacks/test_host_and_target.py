"""Host and request-target confusion (issue 11, row 13), over raw sockets.

Two services told apart by host (``a.example`` → ``/a``, ``b.example`` →
``/b``).  A client tries to reach one while the gateway, a filter or the
upstream believes it asked for the other: two ``Host`` headers, a ``Host``
with userinfo (``b.example:80@a.example``), an absolute-form target whose
authority disagrees with ``Host`` (RFC 9112 §3.2.2: the target wins).

Each request goes over a raw socket to the gateway served by the test server
(h11) and by uvicorn with h11 and with httptools.  uvicorn's httptools
protocol hands the app the path of an absolute-form target only, so there
``Host`` is all the gateway can see: those rows expect what ``Host`` says.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gatekeep.testing import EchoUpstream, gateway_for

from .._servers import free_port, running, upstream_thread

pytestmark = pytest.mark.anyio


def _config(upstream: str) -> dict[str, Any]:
    return {
        "services": [
            {"name": "a", "url": f"{upstream}/a", "routes": [{"hosts": ["a.example"], "paths": ["/"]}]},
            {"name": "b", "url": f"{upstream}/b", "routes": [{"hosts": ["b.example"], "paths": ["/"]}]},
        ]
    }


# (id, request line and headers, status, path the upstream saw or None; overrides per server)
CASES: list[tuple[str, bytes, int, str | None, dict[str, tuple[int, str | None]]]] = [
    ("origin-form", b"GET /x HTTP/1.1\r\nHost: a.example\r\n", 200, "/a/x", {}),
    ("host-port", b"GET /x HTTP/1.1\r\nHost: b.example:8080\r\n", 200, "/b/x", {}),
    ("host-userinfo", b"GET /x HTTP/1.1\r\nHost: b.example:80@a.example\r\n", 400, None, {}),
    ("two-hosts", b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n", 400, None, {}),
    ("host-space", b"GET /x HTTP/1.1\r\nHost: b.example a.example\r\n", 400, None, {}),
    ("host-comma", b"GET /x HTTP/1.1\r\nHost: b.example,a.example\r\n", 400, None, {}),
    ("host-path", b"GET /x HTTP/1.1\r\nHost: b.example/a\r\n", 400, None, {}),
    ("host-bad-ipv6", b"GET /x HTTP/1.1\r\nHost: [::g]:80\r\n", 400, None, {}),
    ("absolute-form", b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n", 200, "/a/x", {}),
    (
        "absolute-default-port",
        b"GET http://B.example:80/x?q=1 HTTP/1.1\r\nHost: b.example\r\n",
        200,
        "/b/x",
        {},
    ),
    (
        "absolute-disagrees",
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n",
        400,
        None,
        {"uvicorn-httptools": (200, "/b/x")},
    ),
    (
        "absolute-userinfo",
        b"GET http://b.example:80@a.example/x HTTP/1.1\r\nHost: a.example\r\n",
        400,
        None,
        {"uvicorn-httptools": (200, "/a/x")},
    ),
    (
        "absolute-no-host",
        b"GET http://b.example/x HTTP/1.0\r\n",
        200,
        "/b/x",
        {"uvicorn-httptools": (404, None)},
    ),
]

# The server's own parser answers these before the gateway sees them (not as problem+json).
SERVER_REFUSES = {("uvicorn-h11", "two-hosts")}


async def _exchange(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request with ``Connection: close``; read the answer until the server closes."""
    data = bytearray()
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head + b"Connection: close\r\n\r\n")
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head_bytes, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


async def _check(server: str, port: int, upstream: EchoUpstream, case: tuple[Any, ...]) -> None:
    name, head, status, path, overrides = case
    status, path = overrides.get(server, (status, path))
    before = len(upstream.requests)
    got, headers, body = await _exchange(port, head)
    assert got == status, (server, name, body)
    if path is None:
        assert len(upstream.requests) == before, (server, name, upstream.requests[before:])
    else:
        assert upstream.requests[-1].path == path, (server, name)
    if got == 400 and (server, name) not in SERVER_REFUSES:
        assert headers["content-type"] == "application/problem+json", (server, name, body)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_host_and_target_under_the_test_server(case: tuple[Any, ...]) -> None:
    upstream = EchoUpstream()
    async with gateway_for(_config("{upstream}"), upstream=upstream) as gw:
        await _check("test-server", gw.port, upstream, case)


APP = """\
import os
import gatekeep
import json

app = gatekeep.asgi(gatekeep.Gateway(json.loads(os.environ["GATEKEEP_CONFIG_JSON"])))
"""


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[EchoUpstream, int]]:
    app = EchoUpstream()
    with upstream_thread(app) as port:
        yield app, port


@pytest.fixture(scope="module", params=["h11", "httptools"])
def uvicorn_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, echo: tuple[EchoUpstream, int]
) -> Iterator[tuple[str, int, EchoUpstream]]:
    import json

    http: str = request.param
    directory = tmp_path_factory.mktemp(f"uvicorn-{http}")
    (directory / "gk_edge_app.py").write_text(APP)
    upstream, upstream_port = echo
    port = free_port()
    argv = [
        *(sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--http", http),
        *("--lifespan", "on", "--no-access-log", "--no-proxy-headers", "gk_edge_app:app"),
    ]
    env = {"GATEKEEP_CONFIG_JSON": json.dumps(_config(f"http://127.0.0.1:{upstream_port}"))}
    with running("uvicorn", "", app_dir=Path(directory), env=env, argv=argv, port=port):
        yield f"uvicorn-{http}", port, upstream


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_host_and_target_under_uvicorn(
    uvicorn_gateway: tuple[str, int, EchoUpstream], case: tuple[Any, ...]
) -> None:
    server, port, upstream = uvicorn_gateway
    await _check(server, port, upstream, case)
