"""The Admin API's own listener, and how ``gatekeep serve`` starts it beside the gateway.

The listener is gatekeep's small h11 server (``gatekeep._miniserver``) on an
anyio TCP listener, wrapped in TLS when ``[admin.tls]`` is set; with
``client_ca_file`` a client without a certificate from that CA fails the
handshake and never reaches the app.

``with_admin(app, gateway)`` wraps the gateway's ASGI app so that its lifespan
also runs the Admin API: it starts listening once the gateway started (a busy
port fails the start-up, so ``gatekeep serve`` exits with the error), and stops
before the gateway shuts down.  With ``--workers N`` every worker listens on
the same port (``SO_REUSEPORT``): the Admin API keeps nothing in memory, the
store is the truth, so any worker can answer any request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio import aclose_forcefully
from anyio.abc import AnyByteStream, SocketAttribute, SocketStream, TaskStatus
from anyio.streams.tls import TLSListener

from .._check import check_config
from .._miniserver import _connection
from ._app import AdminAPI
from ._explain import Explainer
from ._settings import AdminSettings

__all__ = ["serve_admin", "with_admin"]

log = logging.getLogger("gatekeep.admin")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


class _TLSListener(TLSListener):
    """anyio's TLS listener, with a failed handshake (a client without the right
    certificate, a port scanner) logged as one line instead of a traceback."""

    @staticmethod
    async def handle_handshake_error(exc: BaseException, stream: AnyByteStream) -> None:
        await aclose_forcefully(stream)
        if isinstance(exc, anyio.get_cancelled_exc_class()) or not isinstance(exc, Exception):
            raise exc
        log.info("Admin API: TLS handshake refused: %s", exc)


def tls_context(settings: AdminSettings) -> ssl.SSLContext | None:
    if settings.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls.cert_file, settings.tls.key_file)
    if settings.tls.client_ca_file is not None:
        ctx.load_verify_locations(settings.tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@asynccontextmanager
async def serve_admin(
    api: AdminAPI, settings: AdminSettings, *, reuse_port: bool = False
) -> AsyncIterator[tuple[str, int]]:
    """Serve ``api`` where ``settings.listen`` says while the context is open; yields the bound address."""
    host, port = settings.address
    context = tls_context(settings)
    tcp = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=reuse_port)
    bound = tcp.extra(SocketAttribute.local_address)
    listener: Any = tcp if context is None else _TLSListener(tcp, context, standard_compatible=False)

    async def handle(stream: SocketStream) -> None:
        await _connection(stream, api)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle, tg)
        log.info("Admin API on %s://%s:%d", "https" if context else "http", bound[0], bound[1])
        try:
            yield str(bound[0]), int(bound[1])
        finally:
            tg.cancel_scope.cancel()


def admin_for(gateway: Any) -> AdminAPI | None:
    """The Admin API of a gateway whose config has an ``[admin]`` table (else ``None``).

    Raises:
        RuntimeError: the gateway has no config store to write to.
    """
    settings: AdminSettings | None = getattr(gateway.config, "admin", None)
    if settings is None:
        return None
    source = getattr(gateway, "config_source", None)
    if source is None:
        raise RuntimeError("the Admin API needs the gateway's config in a store (a file or Consul KV)")
    status: Callable[[], Mapping[str, Any]] | None = getattr(gateway, "config_status", None)
    registry = getattr(gateway, "plugins_registry", None)
    kwargs: dict[str, Any] = {
        "settings": settings,
        "status": status,
        "refresh": getattr(source, "refresh", None),
        "explain": Explainer(gateway) if hasattr(gateway, "compiled") else None,
    }
    if registry is not None:
        kwargs["registry"] = registry
        # What the gateway was built with besides the config, so that a write is checked as a reload is.
        options = getattr(gateway, "_compile_options", {})
        extras = {k: options.get(k) for k in ("rate_limiters", "authenticators", "authorizers")}

        def validate(data: Mapping[str, Any]) -> object:
            return check_config(data, plugins=tuple(registry.given.values()), **extras)

        kwargs["validate"] = validate
    return AdminAPI(source.store, **kwargs)


def with_admin(app: ASGI, gateway: Any, *, reuse_port: bool = True) -> ASGI:
    """``app`` whose lifespan also serves the gateway's Admin API (``app`` itself when there is none)."""
    if getattr(gateway.config, "admin", None) is None:
        return app

    async def wrapped(
        scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        async with anyio.create_task_group() as tg:
            admin_scope = anyio.CancelScope()

            async def run(task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
                api = admin_for(gateway)
                assert api is not None
                with admin_scope:
                    async with serve_admin(api, api.settings, reuse_port=reuse_port):
                        task_status.started()
                        await anyio.sleep_forever()

            async def inner_send(message: Message) -> None:
                if message["type"] == "lifespan.startup.complete":
                    try:
                        await tg.start(run)
                    except (OSError, RuntimeError, ssl.SSLError) as exc:
                        listen = gateway.config.admin.listen
                        await send(
                            {"type": "lifespan.startup.failed", "message": f"Admin API on {listen}: {exc}"}
                        )
                        return
                await send(message)

            async def inner_receive() -> Message:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    admin_scope.cancel()
                return message

            await app(scope, inner_receive, inner_send)
            admin_scope.cancel()

    # gatekeep's front server may call the gateway without ASGI for plain requests (adapters/_native.py).
    wrapped.gatekeep_native = getattr(app, "gatekeep_native", None)  # type: ignore[attr-defined]
    return wrapped
