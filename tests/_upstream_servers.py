"""Real loopback servers for the upstream client tests.

- ``raw_server(handler)``: an anyio TCP (or TLS) listener on 127.0.0.1 whose
  handler gets each accepted stream; for scripted, misbehaving upstreams.
- ``read_head(stream)``: read one request head (and what came after it).
- ``uvicorn_process(...)``: a real uvicorn in a child process serving ``app``
  below, so that memory measurements of the test process see only the client.
  Run as ``python tests/_upstream_servers.py PORT_FILE [keep_alive]``.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.tls import TLSListener

Handler = Callable[[Any], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Serve ``handler`` on 127.0.0.1; yield the port.  Every stream is closed after its handler."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port: int = tcp.extra(SocketAttribute.local_port)
    listener: Any = tcp
    if ssl_context is not None:
        listener = TLSListener(tcp, ssl_context, standard_compatible=False)

    async def serve_one(stream: Any) -> None:
        async with stream:
            with suppress(Exception):
                await handler(stream)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve_one)
            try:
                yield port
            finally:
                tg.cancel_scope.cancel()
    finally:
        await listener.aclose()  # also when the body failed: no listening socket left to the GC


async def read_head(stream: SocketStream, buffer: bytearray | None = None) -> tuple[bytes, bytes]:
    """Read up to the end of one request head: ``(head, bytes after it)``; ``(b"", ...)`` at EOF."""
    buf = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in buf:
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return b"", bytes(buf)
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf.clear()
    return head, rest


def header_value(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


async def read_body(stream: SocketStream, head: bytes, rest: bytes) -> tuple[int, bytes]:
    """Consume a request body (content-length or chunked); return (size, leftover)."""
    length = header_value(head, b"content-length")
    buf = bytearray(rest)
    if length is not None:
        need = int(length)
        size = 0
        while size + len(buf) < need:
            size += len(buf)
            buf.clear()
            buf += await stream.receive()
        leftover = bytes(buf[need - size :])
        return need, leftover
    if header_value(head, b"transfer-encoding") != b"chunked":
        return 0, bytes(buf)
    size = 0
    while True:
        while b"\r\n" not in buf:
            buf += await stream.receive()
        line, _, tail = bytes(buf).partition(b"\r\n")
        n = int(line.split(b";")[0], 16)
        buf = bytearray(tail)
        while len(buf) < n + 2:
            buf += await stream.receive()
        size += n
        del buf[: n + 2]
        if n == 0:
            return size, bytes(buf)


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(body)).encode() + b"\r\n"
    for line in extra:
        head += line + b"\r\n"
    return head + b"\r\n" + body


# -- a real uvicorn upstream, in a child process ------------------------------

CHUNK = b"x" * 65536


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Hello world, ``/bytes?n=N`` (streamed download), ``/upload`` (counts the body)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/bytes":
        n = int(scope["query_string"].decode().partition("=")[2] or 0)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(n).encode())]}
        )
        while n > 0:
            part = CHUNK if n >= len(CHUNK) else CHUNK[:n]
            n -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": n > 0})
        return
    if path == "/upload":
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(size).encode()
    else:
        body = b"Hello, world!"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextmanager
def uvicorn_process(keep_alive: float = 5.0, http: str = "httptools") -> Iterator[int]:
    """Start uvicorn serving ``app`` in a child process; yield its port."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        proc = subprocess.Popen(
            [sys.executable, __file__, port_file, str(keep_alive), http],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        try:
            deadline = time.monotonic() + 20
            while not (os.path.exists(port_file) and open_text(port_file)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start")
                time.sleep(0.02)
            yield int(open_text(port_file))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def open_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _main() -> None:
    import uvicorn

    port_file, keep_alive, http = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so,
    # and without it the two writes of a response meet Nagle + delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="error",
        access_log=False,
        http=http,  # type: ignore[arg-type]
        loop="asyncio",
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(sock.getsockname()[1]))
    os.replace(tmp, port_file)
    server.run(sockets=[sock])


if __name__ == "__main__":
    _main()
