"""The streaming HTTP/1.1 upstream client: a keep-alive pool per origin.

``UpstreamPool.send`` streams a request to one ``Instance`` and returns the
``Response`` as soon as its head arrived; the body streams from the socket
(or is plain ``bytes`` when it arrived whole with the head).
HTTP framing goes through a sans-IO ``Codec`` (h11, or httptools: ``codec_for``).  See
``_pool.py`` for the pool and the stale-connection retry, ``_connection.py``
for one exchange and the error boundary.
"""

from __future__ import annotations

from ._codec import END_OF_RESPONSE, NEED_DATA, Codec, CodecEvent, H11Codec, ResponseHead
from ._codec_choice import codec_for
from ._config import PoolLimits, Timeouts, TLSSettings
from ._pool import (
    UpstreamPool,
    body_untouched,
    check_transfer_coding,
    connect_failed,
    host_header,
    request_sent,
)

__all__ = [
    "END_OF_RESPONSE",
    "NEED_DATA",
    "Codec",
    "CodecEvent",
    "H11Codec",
    "PoolLimits",
    "ResponseHead",
    "TLSSettings",
    "Timeouts",
    "UpstreamPool",
    "body_untouched",
    "check_transfer_coding",
    "codec_for",
    "connect_failed",
    "host_header",
    "request_sent",
]
