"""Test helpers for plugin authors and gateway users.

A gateway in front of a real in-process upstream, and a client, in a few
lines::

    from gatekeep.testing import gateway_for

    async def test_my_filter() -> None:
        async with gateway_for(plugins=[{"name": "my-filter", "config": {...}}]) as gw:
            response = await gw.client.get("/anything")
            assert response.status == 200
            assert gw.upstream.requests[-1].headers["x-added"] == "yes"

Both sides use real loopback sockets: the upstream is an echo service (or
any ASGI app you pass) served by gatekeep's small h11 server, and the
gateway is served the same way, so requests cross the proxy exactly as in
production.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import attrs
import h11

from ._gateway import Gateway
from ._miniserver import ASGI, serve_asgi
from .adapters import asgi

__all__ = [
    "ClientResponse",
    "EchoUpstream",
    "Harness",
    "TestClient",
    "gateway_for",
    "serve_asgi",
]


@attrs.frozen
class SeenRequest:
    """A request as the upstream received it."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


class EchoUpstream:
    """An ASGI app that answers every request with a JSON echo of it.

    ``requests`` records each request; ``status`` and ``extra_headers`` shape
    the answers.
    """

    def __init__(self, status: int = 200, extra_headers: Sequence[tuple[str, str]] = ()) -> None:
        self.requests: list[SeenRequest] = []
        self.status = status
        self.extra_headers = list(extra_headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1")
            headers[name] = (
                f"{headers[name]}, {v.decode('latin-1')}" if name in headers else v.decode("latin-1")
            )
        seen = SeenRequest(
            scope["method"],
            scope["raw_path"].decode("latin-1"),
            scope["query_string"].decode("latin-1"),
            headers,
            body,
        )
        self.requests.append(seen)
        payload = json.dumps(
            {
                "method": seen.method,
                "path": seen.path,
                "query": seen.query,
                "headers": headers,
                "body": body.decode("utf-8", "replace"),
            }
        ).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        response_headers += [(k.lower().encode(), v.encode()) for k, v in self.extra_headers]
        await send({"type": "http.response.start", "status": self.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})


@attrs.define
class ClientResponse:
    """What the client received."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class TestClient:
    """A plain HTTP/1.1 client (h11 over anyio), one connection per request."""

    __test__ = False  # not a pytest class

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        host: str | None = None,
    ) -> ClientResponse:
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        names = {k.lower() for k, _ in pairs}
        if "host" not in names:
            pairs.insert(0, ("host", host or f"{self.host}:{self.port}"))
        if body and "content-length" not in names and "transfer-encoding" not in names:
            pairs.append(("content-length", str(len(body))))
        conn = h11.Connection(h11.CLIENT)
        with anyio.fail_after(self.timeout):
            async with await anyio.connect_tcp(self.host, self.port) as stream:
                data = conn.send(h11.Request(method=method, target=target, headers=pairs)) or b""
                if body:
                    data += conn.send(h11.Data(data=body)) or b""
                data += conn.send(h11.EndOfMessage()) or b""
                await stream.send(data)
                status = 0
                response_headers: list[tuple[str, str]] = []
                chunks: list[bytes] = []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        try:
                            conn.receive_data(await stream.receive(65536))
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            conn.receive_data(b"")
                        continue
                    if isinstance(event, h11.Response):
                        status = event.status_code
                        response_headers = [
                            (k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers
                        ]
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
        return ClientResponse(status, response_headers, b"".join(chunks))

    async def get(self, target: str, **kwargs: Any) -> ClientResponse:
        return await self.request("GET", target, **kwargs)

    async def post(self, target: str, **kwargs: Any) -> ClientResponse:
        return await self.request("POST", target, **kwargs)

    async def put(self, target: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PUT", target, **kwargs)

    async def delete(self, target: str, **kwargs: Any) -> ClientResponse:
        return await self.request("DELETE", target, **kwargs)


@attrs.define
class Harness:
    """A running gateway, its upstream and a client."""

    gateway: Gateway
    upstream: Any
    client: TestClient
    port: int
    upstream_port: int


@asynccontextmanager
async def gateway_for(
    config: Mapping[str, Any] | None = None,
    *,
    plugins: Sequence[Mapping[str, Any]] = (),
    upstream: ASGI | None = None,
    routes: Sequence[Mapping[str, Any]] | None = None,
    filters: Sequence[Any] = (),
    plugin_classes: Sequence[type[Any]] = (),
    **parts: Any,
) -> AsyncIterator[Harness]:
    """Start an upstream and a gateway in front of it, on loopback.

    Args:
        config: a full config; ``{upstream}`` in a service ``url`` is
            replaced by the upstream's address.  Default: one service
            ``upstream`` with a catch-all route ``/``.
        plugins: global plugins to add (``{"name": ..., "config": {...}}``).
        upstream: the upstream ASGI app (default: an ``EchoUpstream``).
        routes: the routes of the default service (default ``[{"paths": ["/"]}]``).
        filters: plugin instances to attach globally (no entry point needed).
        plugin_classes: plugin classes the config may name without an entry
            point (``Gateway(plugins=...)``: the plugin under test).
        parts: your own ``router``, ``discovery``, ``balancer``, ``breaker``,
            ``rate_limiters``, ``authenticators``, ``authorizers`` (passed to
            ``Gateway``; see docs/composing.md).
    """
    app = upstream if upstream is not None else EchoUpstream()
    async with AsyncExitStack() as stack:
        upstream_port = await stack.enter_async_context(serve_asgi(app))
        address = f"http://127.0.0.1:{upstream_port}"
        if config is None:
            config = {
                "services": [
                    {
                        "name": "upstream",
                        "url": address,
                        "routes": list(routes) if routes is not None else [{"name": "all", "paths": ["/"]}],
                    }
                ],
            }
        else:
            config = _substitute(config, address)
        config = dict(config)
        config["plugins"] = list(config.get("plugins", ())) + list(plugins)
        gateway = Gateway(config, filters=filters, plugins=plugin_classes, **parts)
        await stack.enter_async_context(gateway)
        port = await stack.enter_async_context(serve_asgi(asgi(gateway)))
        yield Harness(gateway, app, TestClient("127.0.0.1", port), port, upstream_port)


def _substitute(value: Any, address: str) -> Any:
    if isinstance(value, str):
        return value.replace("{upstream}", address)
    if isinstance(value, Mapping):
        return {k: _substitute(v, address) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute(v, address) for v in value]
    return value
