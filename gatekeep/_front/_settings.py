"""The ``[server]`` table: limits and timeouts of ``gatekeep serve``'s front server.

Defaults follow what a hardened nginx or Envoy does at the edge (see
docs/serving.md for what each limit answers).  They are read once, when the
server starts; a config reload does not change them.
"""

from __future__ import annotations

from typing import Any

import attrs

from .. import validators
from ._tls import TLSSettings

__all__ = ["ServerSettings"]


def _field_value(_: Any, attribute: Any, value: str | None) -> None:
    if value is not None and (not value or not value.isascii() or not value.isprintable()):
        raise ValueError(f"must be printable ASCII, got {value!r}")


@attrs.frozen
class ServerSettings:
    """Limits of the front server (the ``[server]`` table of the config).

    Attributes:
        max_header_bytes: the whole request head (request line and fields); more → 431.
            nginx's ``large_client_header_buffers 4 8k`` allows 32 KiB.
        max_headers: header fields per request; more → 431 (Envoy's ``max_headers_count``).
        max_target_bytes: the request target (path and query); longer → 414.
        header_timeout: seconds for the whole head to arrive, from the connection's
            first byte (or its accept); late → 408 and close.
        keepalive_timeout: seconds a connection may sit idle between requests; then closed silently.
        write_buffer_bytes: bytes queued for a slow reader before the app's ``send`` waits.
        drain_timeout: on SIGTERM/SIGINT, seconds in-flight requests get to finish.
        server_header: the ``Server`` field of every answer the app sends without one
            (``None``: no ``Server`` field; the upstream's is hidden by ``[gateway]``).
        tls: HTTPS on the port (``[server.tls]``, see ``TLSSettings``); ``None``: plain HTTP.
    """

    max_header_bytes: int = attrs.field(default=32 * 1024, validator=validators.positive)
    max_headers: int = attrs.field(default=100, validator=validators.positive)
    max_target_bytes: int = attrs.field(default=8 * 1024, validator=validators.positive)
    header_timeout: float = attrs.field(default=10.0, validator=validators.positive)
    keepalive_timeout: float = attrs.field(default=75.0, validator=validators.positive)
    write_buffer_bytes: int = attrs.field(default=64 * 1024, validator=validators.positive)
    drain_timeout: float = attrs.field(default=30.0, validator=validators.positive)
    server_header: str | None = attrs.field(default=None, validator=_field_value)
    tls: TLSSettings | None = None
