"""Serving ``/metrics``: on the gateway's own port or a separate one, in one or many processes.

On the gateway's port the endpoint is a gateway endpoint (``add_endpoint``),
so it works the same under every ASGI and WSGI server.  With
``metrics_port`` a small listener (gatekeep's h11 server) is started on the
lifespan's task group instead, so metrics never share a port with traffic.

Multiprocess mode (gunicorn, ``uvicorn --workers``) is prometheus-client's:
when ``PROMETHEUS_MULTIPROC_DIR`` is set before the workers start, every
worker writes its counters to mmap files in that directory, and a scrape of
any worker adds them all up (``MultiProcessCollector``).  The component
state (breakers, discovery ...) is the answering worker's own.  Reading the
files is blocking I/O, so it runs in a worker thread; the component state is
read on the event loop first, where it is consistent.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .._errors import Forbidden
from .._http import Headers, Request, Response
from .._miniserver import serve_asgi
from .._netaddr import in_networks

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["MetricsEndpoint", "multiprocess_dir"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, if it is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class _Snapshot(Collector):
    """A collector that returns metrics already collected (on the event loop)."""

    def __init__(self, metrics: Sequence[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


class MetricsEndpoint:
    """Renders a registry in Prometheus' text format (or OpenMetrics when asked).

    Args:
        registry: the gateway's registry (per-request metrics and ``collector``).
        collector: the component-state collector (read on the event loop).
        allow: client networks allowed to scrape; empty allows everyone.
    """

    def __init__(self, registry: CollectorRegistry, collector: Any, allow: Sequence[Network] = ()) -> None:
        self.registry = registry
        self.collector = collector
        self.allow = tuple(allow)
        self.multiprocess = multiprocess_dir()
        self._app: _MetricsApp | None = None  # its separate listener, once serving one

    def allowed(self, client_ip: str) -> bool:
        if not self.allow:
            return True
        return in_networks(client_ip, self.allow)

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        if self.multiprocess is None:
            return encoder(self.registry), content_type
        from prometheus_client import multiprocess

        snapshot = _Snapshot(list(self.collector.collect()))
        path = self.multiprocess

        def build() -> bytes:
            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
            registry.register(snapshot)
            return encoder(registry)

        return await anyio.to_thread.run_sync(build), content_type

    async def __call__(self, request: Request) -> Response:
        if not self.allowed(request.client_ip):
            raise Forbidden(
                "metrics are not served to this address (see the prometheus filter's metrics_allow)"
            )
        accept = request.headers.get(b"accept")
        data, content_type = await self.render(accept.decode("latin-1") if accept else None)
        return _response(data, content_type)

    async def serve(self, task_group: TaskGroup, host: str, port: int, path: str) -> int:
        """Serve ``path`` on a separate listener in ``task_group``; returns the bound port.

        Binding happens before this returns, so a port in use fails the
        gateway's startup instead of a background task.  A listener this
        process already runs on ``host:port`` for ``path`` (a reload's
        predecessor) is taken over instead: binding it twice would fail.
        """
        app = _LISTENERS.get((host, port)) if port else None
        if app is not None and app.path == path and not app.scope.cancel_called:
            app.stack.append(self)
            app.endpoint = self
            self._app = app
            return app.port
        bound: int = await task_group.start(self._listen, host, port, path)
        return bound

    def close(self) -> None:
        """Stop serving: the listener goes back to the endpoint this one took it from, if that
        one still serves (a reload refused after its start); else it closes."""
        app = self._app
        self._app = None
        if app is None:
            return
        if self in app.stack:
            app.stack.remove(self)
        if app.stack:
            app.endpoint = app.stack[-1]
        else:
            app.scope.cancel()

    async def _listen(self, host: str, port: int, path: str, *, task_status: Any) -> None:
        app = _MetricsApp(self, path)
        self._app = app
        with app.scope:
            async with serve_asgi(app, host, port) as bound:
                app.port = bound
                if port:
                    _LISTENERS[(host, port)] = app
                try:
                    task_status.started(bound)
                    await anyio.sleep_forever()
                finally:
                    if _LISTENERS.get((host, port)) is app:
                        del _LISTENERS[(host, port)]


# The separate metrics listeners this process runs, by the (host, port) asked for: a reload's
# new endpoint takes the running listener over (``MetricsEndpoint.serve``).
_LISTENERS: dict[tuple[str, int], _MetricsApp] = {}


def _response(data: bytes, content_type: str) -> Response:
    return Response(
        200,
        Headers(
            [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
            ]
        ),
        data,
    )


class _MetricsApp:
    """The ASGI app of the separate metrics port: ``path`` or 404."""

    def __init__(self, endpoint: MetricsEndpoint, path: str) -> None:
        self.endpoint = endpoint  # the one serving now: the last of ``stack``
        self.stack = [endpoint]
        self.path = path
        self.port = 0
        self.scope = anyio.CancelScope()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        client = scope.get("client") or ("", 0)
        status, headers, body = 404, [(b"content-type", b"text/plain")], b"not found\n"
        if scope["path"] == self.path and scope["method"] in ("GET", "HEAD"):
            if not self.endpoint.allowed(client[0]):
                status, body = 403, b"forbidden\n"
            else:
                accept = dict(scope["headers"]).get(b"accept")
                data, content_type = await self.endpoint.render(accept.decode("latin-1") if accept else None)
                status, headers, body = 200, [(b"content-type", content_type.encode())], data
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
