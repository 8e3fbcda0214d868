"""Upstreams for the resilience tests: instances that count what they saw and fail on demand."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import attrs

from gatekeep import Gateway, asgi
from gatekeep.testing import TestClient, serve_asgi


class Instance:
    """An ASGI upstream: answers ``status`` (``health_status`` on ``/health``), counts requests.

    ``seen`` counts request ids (the ``x-call-id`` header) so a test can prove
    that no request was executed twice; ``hang`` makes it never answer.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.health_status = 200
        self.hang = False
        self.delay = 0.0
        self.requests = 0
        self.health_checks = 0
        self.seen: Counter[str] = Counter()
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if scope["path"] == "/health":
            self.health_checks += 1
            await _answer(send, self.health_status, b"ok")
            return
        self.requests += 1
        headers = dict(scope["headers"])
        call_id = headers.get(b"x-call-id")
        if call_id is not None:
            self.seen[call_id.decode()] += 1
        self.bodies.append(body)
        if self.hang:
            await anyio.sleep_forever()
        if self.delay:
            await anyio.sleep(self.delay)
        await _answer(send, self.status, self.name.encode())


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@attrs.define
class Cluster:
    gateway: Gateway
    client: TestClient
    instances: list[Instance]
    ports: list[int]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def cluster(
    n: int = 3,
    *,
    dead: Sequence[int] = (),
    **service: Any,
) -> AsyncIterator[Cluster]:
    """``n`` instances (those at the ``dead`` indexes refuse connections) behind one gateway."""
    instances = [Instance(f"i{k}") for k in range(n)]
    async with AsyncExitStack() as stack:
        ports = []
        for k, inst in enumerate(instances):
            if k in dead:
                ports.append(free_port())
            else:
                ports.append(await stack.enter_async_context(serve_asgi(inst)))
        config = {
            "services": [
                {
                    "name": "svc",
                    "targets": [{"target": f"127.0.0.1:{p}"} for p in ports],
                    "routes": [{"name": "all", "paths": ["/"]}],
                    **service,
                }
            ]
        }
        gateway = Gateway(config)
        await stack.enter_async_context(gateway)
        port = await stack.enter_async_context(serve_asgi(asgi(gateway)))
        yield Cluster(gateway, TestClient("127.0.0.1", port, timeout=20), instances, ports)
