"""Authentication: JWT/OIDC verification with JWKS, API keys, identity headers.

``JWTVerifier`` is usable without the gateway (service-side helpers);
``JWTFilter`` (``jwt``) and ``KeyAuthFilter`` (``key-auth``) are the
built-in filters.  See ``docs/authentication.md``.
"""

from __future__ import annotations

from ._credentials import JWTSecret, KeyAuthCredential, KeyConfig
from ._errors import InvalidCredentials, InvalidToken, KeysUnavailable, MissingCredentials
from ._identity_headers import (
    IDENTITY_HEADERS,
    is_identity_header,
    set_identity_headers,
    strip_identity_headers,
)
from ._jwks import JWKSPolicy, JWKSStats, KeySetState, RemoteKeySet
from ._jwt import Credential, IssuerConfig, JWTVerifier, VerifierConfig
from ._keys import BadKey, VerificationKey, key_from_jwk, key_from_pem, key_from_secret
from .jwt_filter import JWTFilter, JWTFilterConfig
from .key_auth import KeyAuthConfig, KeyAuthFilter

__all__ = [
    "IDENTITY_HEADERS",
    "BadKey",
    "Credential",
    "InvalidCredentials",
    "InvalidToken",
    "IssuerConfig",
    "JWKSPolicy",
    "JWKSStats",
    "JWTFilter",
    "JWTFilterConfig",
    "JWTSecret",
    "JWTVerifier",
    "KeyAuthConfig",
    "KeyAuthCredential",
    "KeyAuthFilter",
    "KeyConfig",
    "KeySetState",
    "KeysUnavailable",
    "MissingCredentials",
    "RemoteKeySet",
    "VerificationKey",
    "VerifierConfig",
    "is_identity_header",
    "key_from_jwk",
    "key_from_pem",
    "key_from_secret",
    "set_identity_headers",
    "strip_identity_headers",
]
