"""Static verification keys as config: ``KeyConfig`` and the ``Algorithm`` names.

``KeyConfig`` is one static key of a ``JWTVerifier`` (and of the ``jwt``
plugin's ``keys``).  Keys are parsed when the config is loaded, so a bad PEM
or a key of the wrong type is refused with the field's path.  Consumers' own
credentials (``jwt_secrets``, ``keyauth_credentials``) are declared by the
plugins that own them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ..validators import also_named
from ._keys import BadKey, VerificationKey, key_from_jwk, key_from_pem, key_from_secret

__all__ = ["Algorithm", "KeyConfig"]

Algorithm = Literal[
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]


@attrs.frozen
class KeyConfig:
    """A static verification key: a PEM, a JWK or an HMAC secret.

    ``issuer`` (optional) limits the key to tokens whose ``iss`` equals it;
    ``kid`` is matched against the token header's ``kid`` when both have one.
    """

    algorithm: Algorithm | None = None
    kid: str | None = None
    # ``rsa_public_key`` (the name in consumers' jwt_secrets, Kong's) is accepted too.
    pem: str | None = attrs.field(default=None, metadata=also_named("rsa_public_key"))
    jwk: Mapping[str, Any] | None = None
    secret: str | None = attrs.field(default=None, repr=False)
    secret_is_base64: bool = False
    issuer: str | None = None

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return  # a config with errors already reported, built for the other checks
        given = [n for n in ("pem", "jwk", "secret") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("a key needs exactly one of 'pem', 'jwk' or 'secret'")
        if self.jwk is None and self.algorithm is None:
            raise ValueError("a PEM or secret key needs an 'algorithm'")
        try:
            self.build()
        except BadKey as exc:
            raise ValueError(str(exc)) from None

    def build(self) -> VerificationKey:
        """The ``VerificationKey`` (raises ``BadKey``)."""
        if self.jwk is not None:
            key = key_from_jwk(self.jwk, self.algorithm)
            if self.kid is not None and key.kid is None:
                key = attrs.evolve(key, kid=self.kid)
            return key
        assert self.algorithm is not None
        if self.pem is not None:
            return key_from_pem(self.algorithm, self.pem, self.kid)
        assert self.secret is not None
        return key_from_secret(self.algorithm, self.secret, self.kid, base64_encoded=self.secret_is_base64)
