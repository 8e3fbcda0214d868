"""An operator's view of proxied WebSockets: many at once, memory, shutdown.

``gatekeep serve`` (and uvicorn for the load test) in a child process, the
``websockets`` library as clients and upstream.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from ._servers import ServerProcess, free_port, running
from ._websocket_upstream import WebSocketUpstream, websocket_upstream

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        any(importlib.util.find_spec(p) is None for p in ("websockets", "psutil")),
        reason="needs websockets and psutil",
    ),
]

CONFIG = """\
[server]
drain_timeout = 10.0

[[services]]
name = "chat"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "chat"
  paths = ["/ws"]
"""

APP_MODULE = """\
import os

import gatekeep

app = gatekeep.asgi(gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"]))
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[WebSocketUpstream]:
    with websocket_upstream() as found:
        yield found


@pytest.fixture(scope="module")
def deflating_upstream() -> Iterator[WebSocketUpstream]:
    with websocket_upstream(compression="deflate") as found:
        yield found


@contextmanager
def gateway(
    directory: Path, upstream: WebSocketUpstream, mode: str = "serve"
) -> Iterator[tuple[ServerProcess, int]]:
    config = directory / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream.port))
    port = free_port()
    if mode == "serve":
        argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port)]
        with running("gatekeep-serve", "", app_dir=directory, argv=argv, port=port) as found:
            yield found
    else:
        (directory / "ws_gateway.py").write_text(APP_MODULE)
        env = {"GATEKEEP_CONFIG": str(config)}
        with running("uvicorn", "ws_gateway:app", app_dir=directory, env=env, port=port) as found:
            yield found


async def connect(url: str, compression: str | None = None) -> Any:
    from websockets.asyncio.client import connect as ws_connect

    return await ws_connect(
        url, open_timeout=30, close_timeout=10, compression=compression, ping_interval=None
    )


async def test_shutdown_closes_websockets_with_1001_on_both_sides(
    tmp_path: Path, upstream: WebSocketUpstream
) -> None:
    with gateway(tmp_path, upstream) as (proc, port):
        path = "/drained"
        ws = await connect(f"ws://127.0.0.1:{port}/ws{path}")
        await ws.send("still here")
        assert await ws.recv() == "still here"
        proc.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            await ws.wait_closed()
        assert ws.close_code == 1001
        assert (await upstream.wait_closes(path, 10))[0][0] == 1001
        assert await anyio.to_thread.run_sync(proc.process.wait, 15) == 0
        assert "Traceback" not in proc.log(), proc.log()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("compression", [None, "deflate"])
@pytest.mark.parametrize("mode", ["serve", "uvicorn"])
async def test_a_thousand_concurrent_sockets_with_flat_memory(
    tmp_path: Path,
    upstream: WebSocketUpstream,
    deflating_upstream: WebSocketUpstream,
    mode: str,
    compression: str | None,
) -> None:
    import psutil

    # With compression, both hops negotiate permessage-deflate and every socket sends one
    # compressed message each way: the zlib state is part of what is measured.
    chosen = deflating_upstream if compression else upstream
    with gateway(tmp_path, chosen, mode) as (proc, port):
        process = psutil.Process(proc.pid)
        url = f"ws://127.0.0.1:{port}/ws/load"

        async def round_of(count: int) -> int:
            """Open ``count`` sockets, echo on each, measure the gateway's RSS, close them all."""
            async with AsyncExitStack() as stack:
                sockets: list[Any] = []

                async def open_one() -> None:
                    sockets.append(await stack.enter_async_context(await connect(url, compression)))

                for start in range(0, count, 100):  # 100 handshakes at a time
                    async with anyio.create_task_group() as tg:
                        for _ in range(min(100, count - start)):
                            tg.start_soon(open_one)

                async def echo(ws: Any, n: int) -> None:
                    message = f"m{n} " * 50 if compression else f"m{n}"
                    await ws.send(message)
                    assert await ws.recv() == message

                async with anyio.create_task_group() as tg:
                    for n, ws in enumerate(sockets):
                        tg.start_soon(echo, ws, n)
                assert len(sockets) == count
                rss: int = process.memory_info().rss
            return rss

        await round_of(50)  # warm up: imports, caches, the first buffers
        base = process.memory_info().rss
        first = await round_of(1000)
        second = await round_of(1000)
        mib = 1024 * 1024
        # 1 000 open proxied sockets (each a client and an upstream connection) cost well under
        # 100 KiB each, and a second thousand after the first closed costs nothing new.
        print(f"{mode} compression={compression}: {(first - base) / 1000 / 1024:.1f} KiB per socket")
        assert first - base < 100 * mib, (base / mib, first / mib)
        assert second - first < 16 * mib, (first / mib, second / mib)
        assert "Traceback" not in proc.log(), proc.log()


async def test_the_asgi_lifespan_shutdown_closes_proxied_sockets_with_1001(
    upstream: WebSocketUpstream,
) -> None:
    # Under a server that leaves open WebSockets to the app at shutdown, the gateway closes them itself.
    import gatekeep

    app = gatekeep.asgi(
        gatekeep.Gateway(
            {
                "services": [
                    {
                        "name": "chat",
                        "url": f"http://127.0.0.1:{upstream.port}",
                        "routes": [{"paths": ["/ws"]}],
                    }
                ]
            }
        )
    )
    to_lifespan, lifespan_inbox = anyio.create_memory_object_stream[dict[str, Any]](10)
    to_socket, socket_inbox = anyio.create_memory_object_stream[dict[str, Any]](10)
    lifespan_sent: list[dict[str, Any]] = []
    socket_sent: list[dict[str, Any]] = []

    async def lifespan_send(message: dict[str, Any]) -> None:
        lifespan_sent.append(message)

    async def socket_send(message: dict[str, Any]) -> None:
        socket_sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws/lifespan",
        "raw_path": b"/ws/lifespan",
        "query_string": b"",
        "headers": [
            (b"host", b"gk"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"sec-websocket-version", b"13"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "scheme": "ws",
        "subprotocols": [],
    }
    async with to_lifespan, lifespan_inbox, to_socket, socket_inbox, anyio.create_task_group() as tg:
        tg.start_soon(
            app, {"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_inbox.receive, lifespan_send
        )
        await to_lifespan.send({"type": "lifespan.startup"})
        with anyio.fail_after(5):
            while not lifespan_sent:  # noqa: ASYNC110 - the app appends
                await anyio.sleep(0.01)
        await to_socket.send({"type": "websocket.connect"})
        tg.start_soon(app, scope, socket_inbox.receive, socket_send)
        with anyio.fail_after(5):
            while not socket_sent:  # noqa: ASYNC110 - the app appends
                await anyio.sleep(0.01)
        assert socket_sent[0]["type"] == "websocket.accept"
        await to_lifespan.send({"type": "lifespan.shutdown"})
        with anyio.fail_after(10):
            while len(lifespan_sent) < 2:  # noqa: ASYNC110 - the app appends
                await anyio.sleep(0.01)
        assert socket_sent[-1] == {
            "type": "websocket.close",
            "code": 1001,
            "reason": "the gateway is shutting down",
        }
        await to_socket.send({"type": "websocket.disconnect", "code": 1001})
    assert (await upstream.wait_closes("/lifespan"))[0][0] == 1001
