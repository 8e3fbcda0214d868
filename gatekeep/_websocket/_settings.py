"""The ``[gateway.websocket]`` table: limits of proxied WebSocket connections."""

from __future__ import annotations

import attrs

from .. import validators

__all__ = ["WebSocketSettings"]


@attrs.frozen
class WebSocketSettings:
    """Limits of every proxied WebSocket (``[gateway.websocket]``; docs/serving.md).

    Attributes:
        max_message_bytes: the largest message either side may send (its
            payload, fragments joined, once decompressed); a bigger one closes
            the connection with 1009 on both sides.  The ``websockets``
            library's default.
        idle_timeout: seconds without a data message in either direction
            before the gateway closes both sides with 1001 (Envoy's stream
            idle timeout).
        close_timeout: seconds the gateway waits for a peer to answer its
            close frame before it drops the connection.
        compression: negotiate permessage-deflate (RFC 7692) on each hop the
            gateway terminates: with the client under ``gatekeep serve`` (under
            another ASGI server, that server decides) and with the upstream.
            Messages are compressed per hop, with a 4 KiB window.
    """

    max_message_bytes: int = attrs.field(default=1024 * 1024, validator=validators.positive)
    idle_timeout: float = attrs.field(default=300.0, validator=validators.positive)
    close_timeout: float = attrs.field(default=5.0, validator=validators.positive)
    compression: bool = True
