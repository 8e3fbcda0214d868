"""SSL contexts for upstream connections, built once per ``TLSSettings``.

Building a context reads CA bundles and key files (milliseconds), so the pool
keeps one per settings value; contexts are safe to share between connections.
"""

from __future__ import annotations

import ssl

from ._config import TLSSettings

__all__ = ["make_ssl_context"]


def make_ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """A client context for ``settings``.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: a file is not valid PEM, or the key does not match.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file is not None:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
