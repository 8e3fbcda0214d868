"""WebSocket counters of one gateway, read by the metrics collector at scrape time.

A connection holds the ``RouteCounters`` of its route and bumps plain integer
attributes per message (no label lookup on the message path); the collector
(``gatekeep.observability.GatewayCollector``) reads them when Prometheus
scrapes.  ``WebSocketStats`` also knows the open sessions, so that a gateway
that shuts down can close them with 1001.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["RouteCounters", "WebSocketStats"]


class RouteCounters:
    """Counters of one ``(service, route)``; ``closes`` by ``(code, by)``."""

    __slots__ = ("bytes_in", "bytes_out", "closes", "messages_in", "messages_out", "open", "opened")

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0
        self.messages_in = 0  # client -> upstream
        self.messages_out = 0  # upstream -> client
        self.bytes_in = 0
        self.bytes_out = 0
        self.closes: dict[tuple[int, str], int] = {}

    def closed(self, code: int, by: str) -> None:
        key = (code, by)
        self.closes[key] = self.closes.get(key, 0) + 1


class WebSocketStats:
    """Per-route counters and the open sessions of one gateway."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], RouteCounters] = {}
        # Open sessions: a callable each that closes it (code, reason), for shutdown.
        self.sessions: dict[int, Callable[[int, str], Any]] = {}
        self._all_closed: anyio.Event | None = None

    def counters(self, service: str, route: str) -> RouteCounters:
        key = (service, route)
        found = self.routes.get(key)
        if found is None:
            found = self.routes[key] = RouteCounters()
        return found

    @property
    def open(self) -> int:
        """Connections open now, all routes together."""
        return sum(c.open for c in self.routes.values())

    def add(self, key: int, stop: Callable[[int, str], Any]) -> None:
        self.sessions[key] = stop

    def remove(self, key: int) -> None:
        self.sessions.pop(key, None)
        if not self.sessions and self._all_closed is not None:
            self._all_closed.set()
            self._all_closed = None

    async def wait_closed(self) -> None:
        """Return once no session is open."""
        if self.sessions:
            if self._all_closed is None:
                self._all_closed = anyio.Event()
            await self._all_closed.wait()

    def close_all(self, code: int, reason: str) -> int:
        """Ask every open session to close with ``code``; how many were asked."""
        stops = list(self.sessions.values())
        for stop in stops:
            stop(code, reason)
        return len(stops)
