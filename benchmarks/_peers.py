"""The proxies gatekeep is compared with, and the one way every target is served.

Each Python target is an ASGI app served by :func:`serve` with exactly the
same uvicorn settings (httptools, uvloop, one worker, access log off,
lifespan on), in a process of its own::

    python -m benchmarks._peers KIND PORT [UPSTREAM_URL] [--config FILE] [--cprofile FILE]

``KIND`` is one of :data:`KINDS`:

``upstream``
    the hello-world upstream (``benchmarks._upstream_app``).
``gatekeep``
    ``gatekeep.asgi(gatekeep.Gateway(config))`` with one service, one route
    for ``/`` and no filters; with ``--config FILE`` (JSON) that config
    instead (the benchmark's gatekeep variants: filters on, several
    instances, another HTTP codec), on the same server settings.
``aiohttp``
    what a careful user writes without gatekeep: a bare ASGI app forwarding
    on one shared ``aiohttp.ClientSession``, streaming the body both ways and
    dropping hop-by-hop headers.
``httpx``
    the same on one shared ``httpx.AsyncClient`` (keep-alive pool raised to
    100 so that 50 client connections do not churn upstream connections).
``asgiproxy``
    the ``asgiproxy`` package as its README shows it (``BaseURLProxyConfigMixin``
    + ``make_simple_proxy_app``), with its defaults.
``aiohttp-native``
    no ASGI at all: aiohttp's own server (``aiohttp.web``, uvloop, access log
    off) forwarding on one shared ``ClientSession``, streaming both ways and
    dropping hop-by-hop headers: the fastest way to proxy that stays in
    Python's mainstream, and the one server here that is not uvicorn.

nginx is not a Python target: :func:`nginx_conf` writes its configuration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]

KINDS = ("upstream", "gatekeep", "aiohttp", "httpx", "asgiproxy", "aiohttp-native")

# RFC 9110 §7.6.1, plus Host (the client library sets the upstream's).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
_SKIP_REQUEST = HOP_BY_HOP | {b"host"}

BAD_GATEWAY = b"bad gateway"


def _request_headers(scope: Scope) -> tuple[list[tuple[str, str]], bool]:
    """Headers to forward (latin-1 strings) and whether the request has a body."""
    headers = []
    has_body = False
    for name, value in scope["headers"]:
        if name in (b"content-length", b"transfer-encoding"):
            has_body = True
        if name not in _SKIP_REQUEST:
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return headers, has_body


def _target(upstream: str, scope: Scope) -> str:
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    target: bytes = path + b"?" + query if query else path
    return upstream + target.decode("latin-1")


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise ConnectionResetError("client disconnected")
        more = message.get("more_body", False)
        chunk = message.get("body", b"")
        if chunk:
            yield chunk


async def _bad_gateway(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [(b"content-length", str(len(BAD_GATEWAY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": BAD_GATEWAY})


async def _lifespan(
    receive: Receive,
    send: Send,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


class AiohttpProxy:
    """A bare ASGI reverse proxy on one shared ``aiohttp.ClientSession``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: Any = None

    async def _start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
        )

    async def _stop(self) -> None:
        await self.session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self._start, self._stop)
            return
        if scope["type"] != "http":
            return
        import aiohttp

        headers, has_body = _request_headers(scope)
        started = False
        try:
            async with self.session.request(
                scope["method"],
                _target(self.upstream, scope),
                headers=headers,
                data=_body(receive) if has_body else None,
                allow_redirects=False,
            ) as response:
                out = [(k, v) for k, v in response.raw_headers if k.lower() not in HOP_BY_HOP]
                await send({"type": "http.response.start", "status": response.status, "headers": out})
                started = True
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (aiohttp.ClientError, OSError):
            if not started:
                await _bad_gateway(send)


class HttpxProxy:
    """The same proxy on one shared ``httpx.AsyncClient``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.client: Any = None

    async def _start(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
            timeout=httpx.Timeout(30.0, connect=5.0),
            follow_redirects=False,
        )

    async def _stop(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self._start, self._stop)
            return
        if scope["type"] != "http":
            return
        import httpx

        headers, has_body = _request_headers(scope)
        request = self.client.build_request(
            scope["method"],
            _target(self.upstream, scope),
            headers=headers,
            content=_body(receive) if has_body else None,
        )
        try:
            response = await self.client.send(request, stream=True)
        except (httpx.HTTPError, OSError):
            await _bad_gateway(send)
            return
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except (httpx.HTTPError, OSError):
            pass
        finally:
            await response.aclose()


def serve_aiohttp_native(upstream: str, port: int) -> None:
    """aiohttp's own server in front of one shared ``ClientSession`` (no ASGI in between)."""
    import asyncio

    import aiohttp
    import uvloop
    from aiohttp import web

    base = upstream.rstrip("/")
    skip_request = {h.decode() for h in _SKIP_REQUEST}
    skip_response = {h.decode() for h in HOP_BY_HOP} | {"content-length"}

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in skip_request]
        try:
            async with request.app["session"].request(
                request.method,
                base + request.raw_path,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as upstream_response:
                response = web.StreamResponse(status=upstream_response.status)
                for k, v in upstream_response.headers.items():
                    if k.lower() not in skip_response:
                        response.headers.add(k, v)
                if upstream_response.content_length is not None:
                    response.content_length = upstream_response.content_length
                await response.prepare(request)
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError):
            return web.Response(status=502, body=BAD_GATEWAY)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def asgiproxy_app(upstream: str) -> ASGI:
    """``asgiproxy`` as its README builds it, closing its session on shutdown."""
    from asgiproxy.config import BaseURLProxyConfigMixin, ProxyConfig
    from asgiproxy.context import ProxyContext
    from asgiproxy.simple_proxy import make_simple_proxy_app

    class Config(BaseURLProxyConfigMixin, ProxyConfig):  # type: ignore[misc]
        upstream_base_url = upstream.rstrip("/") + "/"

    context = ProxyContext(Config())
    proxy = make_simple_proxy_app(context)

    async def noop() -> None:
        return None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, noop, context.close)
            return
        await proxy(scope, receive, send)

    return app


def gatekeep_config(upstream: str) -> dict[str, Any]:
    """One service, one catch-all route, no filters: plain gatekeep."""
    return {"services": [{"name": "up", "url": upstream, "routes": [{"paths": ["/"]}]}]}


def gatekeep_app(upstream: str, config: dict[str, Any] | None = None) -> ASGI:
    """gatekeep with ``config`` (default: :func:`gatekeep_config`)."""
    import gatekeep

    return gatekeep.asgi(gatekeep.Gateway(config or gatekeep_config(upstream)))


def build(kind: str, upstream: str | None, config_file: str | None = None) -> ASGI:
    if kind == "upstream":
        from ._upstream_app import app

        return app
    if upstream is None:
        raise SystemExit(f"{kind} needs an upstream URL")
    if config_file is not None:
        if kind != "gatekeep":
            raise SystemExit("--config is for the gatekeep kind only")
        import json
        from pathlib import Path

        return gatekeep_app(upstream, json.loads(Path(config_file).read_text()))
    factories: dict[str, Callable[[str], ASGI]] = {
        "gatekeep": gatekeep_app,
        "aiohttp": AiohttpProxy,
        "httpx": HttpxProxy,
        "asgiproxy": asgiproxy_app,
    }
    return factories[kind](upstream)


def serve(app: ASGI, port: int) -> None:
    """Every Python target runs on exactly these settings."""
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


def nginx_conf(
    prefix: str, port: int, upstream_port: int, *, cache: bool = False, tls: tuple[str, str] | None = None
) -> str:
    """A one-worker nginx ``proxy_pass`` with upstream keep-alive, run in the foreground.

    ``cache``: with ``proxy_cache`` (a 64 MiB keys zone on disk under ``prefix``, GET/HEAD 200
    answers kept 300 s, ``X-Cache-Status`` from ``$upstream_cache_status``): the peer of
    gatekeep's ``proxy-cache``.
    """
    cache_zone = cache_use = user = ""
    listen = f"listen 127.0.0.1:{port};"
    if tls is not None:
        # HTTPS as gatekeep serve's [server.tls] does it: TLS 1.2+, the library's ciphers.
        listen = (
            f"listen 127.0.0.1:{port} ssl;\n        ssl_certificate {tls[0]};\n"
            f"        ssl_certificate_key {tls[1]};\n        ssl_protocols TLSv1.2 TLSv1.3;"
        )
    if cache:
        if os.geteuid() == 0:
            # Run as root, nginx's workers become "nobody", who cannot write the cache files
            # under this private (0700) prefix: keep them as the benchmark's user.
            user = "user root;\n"
        cache_zone = (
            f"    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=gk:64m max_size=256m inactive=10m"
            " use_temp_path=off;\n"
        )
        cache_use = (
            "            proxy_cache gk;\n"
            "            proxy_cache_valid 200 301 404 300s;\n"
            "            proxy_cache_lock on;\n"
            "            add_header X-Cache-Status $upstream_cache_status;\n"
        )
    return f"""\
{user}daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{cache_zone}    client_body_buffer_size 128k;
    client_max_body_size 1m;
    keepalive_requests 1000000;
    upstream up {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        {listen}
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
{cache_use}        }}
    }}
}}
"""


def main(argv: list[str]) -> None:
    args = list(argv)
    options: dict[str, str | None] = {"--cprofile": None, "--config": None}
    for option in options:
        if option in args:
            at = args.index(option)
            options[option] = args[at + 1]
            del args[at : at + 2]
    profile_to = options["--cprofile"]
    if len(args) not in (2, 3) or args[0] not in KINDS:
        raise SystemExit(
            f"usage: python -m benchmarks._peers {{{'|'.join(KINDS)}}} PORT [UPSTREAM_URL]"
            " [--config FILE] [--cprofile FILE]"
        )
    if args[0] == "aiohttp-native":
        if len(args) != 3:
            raise SystemExit("aiohttp-native needs an upstream URL")
        serve_aiohttp_native(args[2], int(args[1]))
        return
    app = build(args[0], args[2] if len(args) == 3 else None, options["--config"])
    if profile_to is None:
        serve(app, int(args[1]))
        return
    import cProfile
    import signal

    def stop(signum: int, frame: object) -> None:
        # uvicorn re-raises the signal it shut down on; end normally so the profile is written.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        serve(app, int(args[1]))
    finally:
        profiler.disable()
        profiler.dump_stats(profile_to)


if __name__ == "__main__":
    main(sys.argv[1:])
