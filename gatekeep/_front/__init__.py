"""gatekeep's front server: what ``gatekeep serve`` runs (see docs/serving.md).

An asyncio HTTP/1.1 server on httptools (uvloop when installed) that serves an
ASGI 3 app with the edge limits of the ``[server]`` table (and HTTPS from its
``[server.tls]`` table).  Only the settings are
imported here: the config declares the ``[server]`` table without needing
httptools, which ``run`` imports when it starts.
"""

from __future__ import annotations

from typing import Any

from ._settings import ServerSettings
from ._tls import CertificateSettings, TLSSettings, check_tls

__all__ = ["CertificateSettings", "ServerSettings", "TLSSettings", "check_tls", "run"]


def run(*args: Any, **kwargs: Any) -> int:
    """Serve until SIGTERM/SIGINT; see ``gatekeep._front._server.run``."""
    from ._server import run as _run

    return _run(*args, **kwargs)
