"""Consumer credentials and static keys, as config classes.

``JWTSecret`` and ``KeyAuthCredential`` are the types of a consumer's
``jwt_secrets`` and ``keyauth_credentials`` (Kong's shapes); ``KeyConfig`` is
one static verification key of the ``jwt`` filter or a ``JWTVerifier``.
Keys are parsed when the config is loaded, so a bad PEM or a key of the
wrong type is refused with the field's path.

This module imports nothing from gatekeep's core (``_config`` imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ._keys import BadKey, VerificationKey, key_from_jwk, key_from_pem, key_from_secret

__all__ = ["Algorithm", "JWTSecret", "KeyAuthCredential", "KeyConfig"]

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


def _non_empty(_: Any, attribute: Any, value: str) -> None:
    if not value:
        raise ValueError("must not be empty")


@attrs.frozen
class JWTSecret:
    """A consumer's JWT credential (Kong's ``jwt_secrets`` entry).

    ``key`` is matched against the token's ``key_claim_name`` claim (``iss``
    by default).  HS algorithms take ``secret``; the others take
    ``rsa_public_key`` (Kong's name, used for EC and EdDSA PEMs too).
    """

    key: str = attrs.field(validator=_non_empty)
    algorithm: Algorithm = "HS256"
    secret: str | None = attrs.field(default=None, repr=False)
    rsa_public_key: str | None = None
    id: str | None = None
    tags: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return  # a config with errors already reported, built for the other checks
        if self.algorithm.startswith("HS"):
            if not self.secret:
                raise ValueError(f"{self.algorithm} needs a 'secret'")
            if self.rsa_public_key:
                raise ValueError(f"{self.algorithm} takes a 'secret', not an 'rsa_public_key'")
        else:
            if not self.rsa_public_key:
                raise ValueError(f"{self.algorithm} needs an 'rsa_public_key' (a PEM public key)")
            if self.secret:
                raise ValueError(f"{self.algorithm} takes an 'rsa_public_key', not a 'secret'")
            try:
                key_from_pem(self.algorithm, self.rsa_public_key)
            except BadKey as exc:
                raise ValueError(f"rsa_public_key: {exc}") from None

    def verification_key(self, *, secret_is_base64: bool = False) -> VerificationKey:
        """The key tokens of this credential are verified with.

        Raises:
            BadKey: the secret is not valid base64 (with ``secret_is_base64``) or unusable.
        """
        if self.secret is not None:
            return key_from_secret(self.algorithm, self.secret, base64_encoded=secret_is_base64)
        assert self.rsa_public_key is not None
        return key_from_pem(self.algorithm, self.rsa_public_key)


@attrs.frozen
class KeyAuthCredential:
    """A consumer's API key (Kong's ``keyauth_credentials`` entry)."""

    key: str = attrs.field(validator=_non_empty, repr=False)
    id: str | None = None
    tags: tuple[str, ...] = ()


@attrs.frozen
class KeyConfig:
    """A static verification key: a PEM, a JWK or an HMAC secret.

    ``issuer`` (optional) limits the key to tokens whose ``iss`` equals it;
    ``kid`` is matched against the token header's ``kid`` when both have one.
    """

    algorithm: Algorithm | None = None
    kid: str | None = None
    pem: str | None = None
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
