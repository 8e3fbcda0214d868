"""The WebSocket member of gatekeep's error family."""

from __future__ import annotations

from .._errors import Forbidden

__all__ = ["WebSocketRefused"]


class WebSocketRefused(Forbidden):
    """A route with ``websocket = false`` refuses upgrades (403)."""

    title = "WebSocket Upgrade Refused"
    slug = "websocket-refused"
