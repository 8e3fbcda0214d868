"""Authentication libraries: JWT/OIDC verification with JWKS, keys, peer certificates.

``JWTVerifier`` is usable without the gateway (service-side helpers).  The
built-in auth plugins build on this package: ``jwt``
(``gatekeep.plugins.jwt``), ``key-auth`` (``gatekeep.plugins.key_auth``) and
``mtls-auth`` (``gatekeep.plugins.mtls_auth``); so may third-party ones
(``authenticate`` records an identity and sets Kong's identity headers;
``resolve_anonymous`` gives the ``anonymous`` option Kong's meaning).
See ``docs/authentication.md``.
"""

from __future__ import annotations

from .._identity_headers import (
    IDENTITY_HEADERS,
    identity_header_pairs,
    is_identity_header,
    set_identity_headers,
    strip_identity_headers,
)
from ._anonymous import (
    HeaderCache,
    already_authenticated,
    anonymous_identity,
    authenticate,
    resolve_anonymous,
)
from ._certificates import (
    CertificateNames,
    NameKind,
    certificate_names,
    peer_certificate,
    peer_certificate_from_environ,
    peer_certificate_from_tls,
)
from ._errors import InvalidCredentials, InvalidToken, KeysUnavailable, MissingCredentials
from ._jwks import JWKSPolicy, JWKSStats, KeySetState, RemoteKeySet
from ._jwt import Credential, IssuerConfig, JWTVerifier, VerifierConfig
from ._key_config import Algorithm, KeyConfig
from ._keys import BadKey, VerificationKey, key_from_jwk, key_from_pem, key_from_secret
from ._passwords import (
    PasswordHash,
    hash_password,
    is_password_hash,
    parse_password_hash,
    verify_password,
)

__all__ = [
    "IDENTITY_HEADERS",
    "Algorithm",
    "BadKey",
    "CertificateNames",
    "Credential",
    "HeaderCache",
    "InvalidCredentials",
    "InvalidToken",
    "IssuerConfig",
    "JWKSPolicy",
    "JWKSStats",
    "JWTVerifier",
    "KeyConfig",
    "KeySetState",
    "KeysUnavailable",
    "MissingCredentials",
    "PasswordHash",
    "NameKind",
    "RemoteKeySet",
    "VerificationKey",
    "VerifierConfig",
    "already_authenticated",
    "anonymous_identity",
    "authenticate",
    "certificate_names",
    "hash_password",
    "identity_header_pairs",
    "is_password_hash",
    "is_identity_header",
    "key_from_jwk",
    "key_from_pem",
    "key_from_secret",
    "parse_password_hash",
    "peer_certificate",
    "peer_certificate_from_environ",
    "peer_certificate_from_tls",
    "resolve_anonymous",
    "set_identity_headers",
    "strip_identity_headers",
    "verify_password",
]
