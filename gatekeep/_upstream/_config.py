"""Settings of the upstream client: timeouts, TLS and pool limits."""

from __future__ import annotations

import attrs

from .. import validators

__all__ = ["PoolLimits", "TLSSettings", "Timeouts"]


@attrs.frozen
class Timeouts:
    """Limits in seconds for each phase of an upstream call (``None``: no limit).

    Attributes:
        connect: TCP connect plus TLS handshake.
        read: the response head after the request was sent, then each gap
            between two reads of the response body.
        write: each write of the request head or of a body chunk.
        pool: waiting for a free connection when the origin's pool is full.
    """

    connect: float | None = attrs.field(default=5.0, validator=validators.non_negative)
    read: float | None = attrs.field(default=60.0, validator=validators.non_negative)
    write: float | None = attrs.field(default=60.0, validator=validators.non_negative)
    pool: float | None = attrs.field(default=5.0, validator=validators.non_negative)


@attrs.frozen
class TLSSettings:
    """How to talk TLS to an ``https`` instance.

    Attributes:
        verify: check the certificate chain and the host name.
        ca_file: a PEM bundle of trusted CAs instead of the system's.
        cert_file: a client certificate for mTLS (PEM; may also hold the key).
        key_file: the client key, when not in ``cert_file``.
        server_name: SNI and the name to verify; default the instance host.
    """

    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")


@attrs.frozen
class PoolLimits:
    """Per-origin limits of ``UpstreamPool``.

    ``idle_timeout`` stays below the keep-alive timeout of common servers
    (uvicorn 5 s, gunicorn 2 s is the odd one out, nginx 75 s) so that the pool
    drops an idle connection before the upstream closes it.
    """

    max_connections: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    max_idle: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    idle_timeout: float = attrs.field(default=4.0, validator=validators.positive)
