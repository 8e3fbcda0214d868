"""Verification keys: one key, one algorithm, of the type the algorithm needs.

A ``VerificationKey`` is built once (config time, or when a JWKS arrives)
from a PEM, a JWK or an HMAC secret, and checked against its algorithm so
that the classic confusions cannot happen: an RSA public key is never an
HMAC secret (pyjwt also refuses PEM-looking HMAC secrets), an Ed25519 key
is only for ``EdDSA``, a P-256 key only for ``ES256``.  pyjwt's and
cryptography's errors are translated here into ``KeyError_`` with a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

import attrs
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

__all__ = [
    "ALGORITHMS",
    "ASYMMETRIC",
    "HMAC",
    "BadKey",
    "VerificationKey",
    "key_from_jwk",
    "key_from_pem",
    "key_from_secret",
]

HMAC: Final = frozenset({"HS256", "HS384", "HS512"})
_RSA: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
ASYMMETRIC: Final = _RSA | frozenset(_EC_CURVES) | {"EdDSA"}
# Every algorithm gatekeep verifies.  "none" is not one of them, ever.
ALGORITHMS: Final = HMAC | ASYMMETRIC
_IMPL: Final[dict[str, Algorithm]] = {
    name: impl for name, impl in get_default_algorithms().items() if name in ALGORITHMS
}
_MIN_RSA_BITS: Final = 2048


class BadKey(ValueError):
    """A key that cannot be used (unparsable, or of the wrong type for its algorithm)."""


@attrs.frozen(eq=False)
class VerificationKey:
    """A public key or secret bound to exactly one algorithm.

    ``id`` is a stable fingerprint (kid and key material), used to tell
    whether a key set still holds the key a cached token was verified with.
    """

    algorithm: str
    key: Any = attrs.field(repr=False)
    kid: str | None = None
    id: str = ""

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Check one signature (pyjwt's algorithm does the crypto)."""
        try:
            return bool(_IMPL[self.algorithm].verify(signing_input, self.key, signature))
        except (PyJWTError, ValueError, TypeError):
            return False


def _fingerprint(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big") + p)
    return h.hexdigest()[:32]


def _check_type(algorithm: str, key: Any) -> None:
    if algorithm in _RSA:
        if not isinstance(key, rsa.RSAPublicKey):
            raise BadKey(f"{algorithm} needs an RSA public key, got {_kind(key)}")
        if key.key_size < _MIN_RSA_BITS:
            raise BadKey(f"RSA keys must have at least {_MIN_RSA_BITS} bits, got {key.key_size}")
    elif algorithm in _EC_CURVES:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise BadKey(f"{algorithm} needs an EC public key, got {_kind(key)}")
        if key.curve.name != _EC_CURVES[algorithm]:
            raise BadKey(f"{algorithm} needs a {_EC_CURVES[algorithm]} key, got {key.curve.name}")
    elif algorithm == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            raise BadKey(f"EdDSA needs an Ed25519 or Ed448 public key, got {_kind(key)}")
    elif algorithm in HMAC:
        if not isinstance(key, bytes):
            raise BadKey(f"{algorithm} needs a secret, got {_kind(key)}")
    else:
        raise BadKey(f"unsupported algorithm {algorithm!r}; supported: {', '.join(sorted(ALGORITHMS))}")


def _kind(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "an RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC {key.curve.name} key"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PublicKey):
        return "an Ed448 key"
    if isinstance(key, bytes):
        return "a secret"
    return type(key).__name__


def _public(key: Any) -> Any:
    # A private key given by mistake: verify with its public half only.
    public = getattr(key, "public_key", None)
    if callable(public) and not isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        return public()
    return key


def key_from_pem(algorithm: str, pem: str | bytes, kid: str | None = None) -> VerificationKey:
    """A public key from PEM (``-----BEGIN PUBLIC KEY-----``; a certificate also works).

    Raises:
        BadKey: not a PEM public key, or not of the type ``algorithm`` needs.
    """
    if algorithm in HMAC:
        raise BadKey(f"{algorithm} takes a secret, not a PEM key (HMAC/RSA confusion)")
    data = pem.encode() if isinstance(pem, str) else pem
    key: Any
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            from cryptography.x509 import load_pem_x509_certificate

            key = load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BadKey(f"not a PEM public key: {exc}") from exc
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and friends
        raise BadKey(f"not a usable PEM public key: {exc}") from exc
    _check_type(algorithm, key)
    return VerificationKey(algorithm, key, kid, _fingerprint(algorithm.encode(), (kid or "").encode(), data))


def key_from_secret(
    algorithm: str, secret: str | bytes, kid: str | None = None, *, base64_encoded: bool = False
) -> VerificationKey:
    """An HMAC secret (optionally base64, as Kong's ``secret_is_base64``).

    Raises:
        BadKey: not an HMAC algorithm, empty, bad base64, or PEM-looking.
    """
    if algorithm not in HMAC:
        raise BadKey(f"{algorithm} takes a public key, not a secret")
    data = secret.encode() if isinstance(secret, str) else secret
    if base64_encoded:
        try:
            data = base64.b64decode(
                data + b"=" * (-len(data) % 4),
                altchars=b"-_" if b"-" in data or b"_" in data else None,
                validate=True,
            )
        except (binascii.Error, ValueError) as exc:
            raise BadKey("secret is not valid base64") from exc
    try:
        prepared = _IMPL[algorithm].prepare_key(data)
    except PyJWTError as exc:
        raise BadKey(str(exc)) from exc
    return VerificationKey(
        algorithm, prepared, kid, _fingerprint(algorithm.encode(), (kid or "").encode(), data)
    )


_JWK_KTY: Final = {"RSA": _RSA, "EC": frozenset(_EC_CURVES), "OKP": frozenset({"EdDSA"}), "oct": HMAC}
_CRV_ALG: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA", "Ed448": "EdDSA"}


def key_from_jwk(jwk: Mapping[str, Any], algorithm: str | None = None) -> VerificationKey:
    """A key from a JWK; the algorithm is the JWK's ``alg``, or ``algorithm`` when it has none.

    Raises:
        BadKey: malformed, private-only members missing, or type/algorithm mismatch.
    """
    if not isinstance(jwk, Mapping):
        raise BadKey("a JWK must be an object")
    kty = jwk.get("kty")
    if kty not in _JWK_KTY:
        raise BadKey(f"unsupported key type {kty!r}")
    alg = jwk.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise BadKey("'alg' must be a string")
    if alg is not None and algorithm is not None and alg != algorithm:
        raise BadKey(f"the JWK is for {alg}, not {algorithm}")
    alg = alg or algorithm
    if alg is None and kty in ("EC", "OKP"):
        alg = _CRV_ALG.get(str(jwk.get("crv")))
    if alg is None:
        raise BadKey(f"a {kty} JWK without 'alg' needs an algorithm")
    if alg not in _JWK_KTY[kty]:
        raise BadKey(f"a {kty} key cannot be used with {alg}")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise BadKey("'kid' must be a string")
    # Only the public members: a JWK that also carries "d" is read as its public half.
    try:
        key = _public(_IMPL[alg].from_jwk(dict(jwk)))
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise BadKey(f"invalid {kty} JWK: {exc}") from exc
    except Exception as exc:  # cryptography's errors for curves it does not support, etc.
        raise BadKey(f"unusable {kty} JWK: {exc}") from exc
    if kty == "oct":
        key = _IMPL[alg].prepare_key(key) if key else key
    _check_type(alg, key)
    material = json.dumps({k: jwk[k] for k in sorted(jwk) if isinstance(k, str)}, sort_keys=True, default=str)
    return VerificationKey(alg, key, kid, _fingerprint(alg.encode(), material.encode()))
