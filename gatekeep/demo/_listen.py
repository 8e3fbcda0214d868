"""Getting the demo's ports, and the one-line message when one cannot be had.

The services and the dev issuer take any free port on ``--host`` (gatekeep's small h11
server); the gateway takes ``--port``, on uvicorn when it is installed (the ``serve`` extra),
otherwise on the same small server. A busy or forbidden port is a ``ListenError`` whose
message is the line ``gatekeep demo`` prints, naming the option to change.
"""

from __future__ import annotations

import errno
import socket
from contextlib import AsyncExitStack
from typing import Any

import anyio

from .. import Gateway, asgi
from ..testing import serve_asgi

__all__ = ["ListenError", "serve_gateway", "serve_on"]


class ListenError(Exception):
    """A port the demo needs cannot be had; the message is the one line ``gatekeep demo`` prints."""


def _cannot_listen(host: str, port: int, what: str, exc: OSError) -> ListenError:
    reason = exc.strerror or str(exc)
    if what != "gateway":
        # The services and the issuer take any free port: only the address can be wrong.
        return ListenError(
            f"gatekeep demo: cannot listen on {host} for the {what} ({reason}); pick another with --host"
        )
    if exc.errno == errno.EADDRINUSE:
        return ListenError(f"gatekeep demo: port {port} on {host} is in use; pick another with --port")
    flag = "--port" if exc.errno == errno.EACCES else "--host"
    return ListenError(f"gatekeep demo: cannot listen on {host}:{port} ({reason}); pick another with {flag}")


async def serve_on(stack: AsyncExitStack, app: Any, host: str, what: str, port: int = 0) -> int:
    """Serve ``app`` on gatekeep's small server until ``stack`` closes; the port it got."""
    try:
        bound: int = await stack.enter_async_context(serve_asgi(app, host, port))
    except OSError as exc:
        raise _cannot_listen(host, port, what, exc) from None
    return bound


def _listening_socket(host: str, port: int) -> socket.socket:
    """The gateway's socket, bound here so that a busy port is our one-line error, not uvicorn's exit."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise _cannot_listen(host, port, "gateway", exc) from None
    try:
        # As uvicorn: a restart may reuse a port whose old connections linger in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise _cannot_listen(host, port, "gateway", exc) from None
    return sock


async def serve_gateway(
    stack: AsyncExitStack, gateway: Gateway, host: str, port: int
) -> tuple[int, anyio.Event]:
    """Serve the gateway; its port, and an event set when the server stopped (on a signal)."""
    app = asgi(gateway)
    stopped = anyio.Event()
    try:
        import uvicorn
    except ImportError:
        await stack.enter_async_context(gateway)
        return await serve_on(stack, app, host, "gateway", port), stopped
    sock = _listening_socket(host, port)
    stack.callback(sock.close)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stopped.set()

    async def shut_down() -> None:
        # Before the task group exits: with an exception in flight it would cancel uvicorn
        # mid-shutdown (its lifespan task then fails noisily); let it stop on its own instead.
        server.should_exit = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await stopped.wait()

    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.push_async_callback(shut_down)
    tg.start_soon(serve)
    while not server.started:
        if server.should_exit or stopped.is_set():
            raise OSError(f"could not start the gateway on {host}:{port}")
        await anyio.sleep(0.01)
    sockets = [s for srv in server.servers for s in srv.sockets]
    bound: int = sockets[0].getsockname()[1] if sockets else port
    return bound, stopped
