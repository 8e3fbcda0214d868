"""WebSocket proxying (RFC 6455): the upstream client, the frame codec, the session.

A handshake goes through ``Gateway.handle`` like a GET (``Request.websocket``):
edge hygiene, routing, the route's request filters, then the service's
upstream guard with ``_upstream.connect_upstream`` as the try.  On a 101 the
adapter (``gatekeep.asgi``, under any ASGI server or gatekeep's front server)
runs ``_session.relay`` between the ASGI WebSocket messages and the upstream
socket.  See docs/serving.md ("WebSockets").

Only the leaf modules are imported here (the config imports the settings):
the gateway and the adapter import ``_upstream`` and ``_session`` themselves.
"""

from __future__ import annotations

from ._errors import WebSocketRefused
from ._settings import WebSocketSettings
from ._stats import RouteCounters, WebSocketStats

__all__ = ["RouteCounters", "WebSocketRefused", "WebSocketSettings", "WebSocketStats"]
