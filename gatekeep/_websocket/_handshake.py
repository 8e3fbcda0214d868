"""The opening handshake's fields (RFC 6455 §4), for both ends gatekeep plays.

The gateway is the server of the client's handshake and the client of the
upstream's: it checks the client's key, makes a fresh key for the upstream
and checks the upstream's ``Sec-WebSocket-Accept`` against it, so neither
side can be fooled by the other's fields.  Extensions are per hop: each side
negotiates its own permessage-deflate (``_deflate.py``), the client's offer
is never relayed; the client's subprotocol offer is relayed and the
upstream's choice must be one of it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Final

__all__ = [
    "RESPONSE_DROPS",
    "accept_value",
    "has_token",
    "new_key",
    "subprotocols",
    "valid_key",
]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Fields of a 101 that belong to one hop's handshake, never relayed as they are.
RESPONSE_DROPS: Final = frozenset(
    {
        b"connection",
        b"upgrade",
        b"keep-alive",
        b"content-length",
        b"transfer-encoding",
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-version",
    }
)


def new_key() -> bytes:
    """A fresh ``Sec-WebSocket-Key`` (16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16))


def valid_key(key: bytes) -> bool:
    """Whether ``key`` is base64 of 16 bytes (§4.2.1)."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def accept_value(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` that answers ``key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())  # noqa: S324 - RFC 6455 says SHA-1


def has_token(headers: list[tuple[bytes, bytes]], name: bytes, token: bytes) -> bool:
    """Whether a comma-separated field ``name`` lists ``token`` (case-insensitive)."""
    for k, v in headers:
        if k == name and any(part.strip().lower() == token for part in v.split(b",")):
            return True
    return False


def subprotocols(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The subprotocols a client offers, in its order."""
    offered: list[str] = []
    for k, v in headers:
        if k == b"sec-websocket-protocol":
            offered += [p.strip().decode("latin-1") for p in v.split(b",") if p.strip()]
    return offered
