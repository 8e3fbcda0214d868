"""Who may use the Admin API: the holder of the token, when one is configured.

The token is compared in constant time.  mTLS needs nothing here: the TLS
listener (``_server``) refuses a handshake without a client certificate that
chains to ``tls.client_ca_file``, so no request reaches the app without one.
"""

from __future__ import annotations

import hmac
from collections.abc import MutableMapping
from typing import Any

from ._errors import AdminError
from ._settings import AdminSettings

__all__ = ["Authenticator"]


class Authenticator:
    def __init__(self, settings: AdminSettings) -> None:
        self.token = settings.token.encode() if settings.token is not None else None
        self.header = settings.token_header.lower().encode("latin-1")

    def check(self, scope: MutableMapping[str, Any]) -> None:
        """Raises a 401 ``AdminError`` unless the request carries the token (or none is needed)."""
        if self.token is None:
            return
        sent = [v for k, v in scope.get("headers", ()) if k.lower() == self.header]
        if len(sent) != 1 or not hmac.compare_digest(bytes(sent[0]), self.token):
            raise AdminError("Invalid credentials. Token or User credentials required", 401)
