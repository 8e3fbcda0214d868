"""The errors of authentication, as problem+json with RFC 6750 challenges.

Every failure of a token or key becomes one of these; pyjwt's and
cryptography's errors are translated where they are raised (``_keys.py``,
``_jwt.py``) and never reach a client.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .._errors import AuthError, ServiceUnavailable

__all__ = ["InvalidCredentials", "InvalidToken", "KeysUnavailable", "MissingCredentials", "challenge"]

# RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E.
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def challenge(scheme: str, realm: str | None = None, **params: str) -> str:
    """A ``WWW-Authenticate`` value: ``Bearer realm="x", error="invalid_token", ...``."""
    parts = []
    if realm:
        parts.append(f'realm="{_UNSAFE.sub("?", realm)}"')
    parts += [f'{k}="{_UNSAFE.sub("?", v)}"' for k, v in params.items()]
    return scheme + (" " + ", ".join(parts) if parts else "")


class MissingCredentials(AuthError):
    """No credential at all (401; the challenge carries no ``error``, RFC 6750 §3.1)."""

    slug = "missing-credentials"

    def __init__(self, detail: str, *, scheme: str = "Bearer", realm: str | None = None) -> None:
        super().__init__(detail, headers=[("www-authenticate", challenge(scheme, realm))])


class InvalidToken(AuthError):
    """A bearer token that was refused (401 ``invalid_token``).

    ``detail`` is written by gatekeep (never copied from the token) and is
    both the problem's detail and the challenge's ``error_description``.
    """

    slug = "invalid-token"

    def __init__(self, detail: str, *, realm: str | None = None) -> None:
        super().__init__(
            detail,
            headers=[
                (
                    "www-authenticate",
                    challenge("Bearer", realm, error="invalid_token", error_description=detail),
                )
            ],
        )


class InvalidCredentials(AuthError):
    """An API key (or other non-bearer credential) that matches no consumer (401)."""

    slug = "invalid-credentials"

    def __init__(self, detail: str, *, scheme: str = "Key", realm: str | None = None) -> None:
        super().__init__(detail, headers=[("www-authenticate", challenge(scheme, realm))])


class KeysUnavailable(ServiceUnavailable):
    """The signing keys of a configured issuer were never obtained (503).

    Once any key set was fetched it is served stale when the issuer is down,
    so this only happens before the first successful fetch.
    """

    title = "Signing Keys Unavailable"
    slug = "signing-keys-unavailable"

    def __init__(self, detail: str, retry_after: int = 5, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail, headers=[("retry-after", str(retry_after)), *headers])
