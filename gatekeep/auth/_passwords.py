"""Passwords stored as salted scrypt hashes (``hashlib.scrypt``): hashing, parsing, checking.

The stored form is ``scrypt$<log2 N>$<r>$<p>$<salt b64>$<hash b64>``.  Used by
the ``basic-auth`` plugin for consumers' passwords and by ``gatekeep secret
hash-password``.  Checking is blocking CPU work (tens of milliseconds by
design): async callers run it in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import attrs

__all__ = ["PasswordHash", "hash_password", "is_password_hash", "parse_password_hash", "verify_password"]

_SCHEME = "scrypt"
# scrypt's cost: N = 2**15, r = 8, p = 1 (32 MiB, some 50 ms of one core).
_LOG_N, _R, _P = 15, 8, 1
_SALT, _KEY = 16, 32


def _scrypt(password: bytes, salt: bytes, log_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + (1 << 20), dklen=length)


def hash_password(password: str, *, log_n: int = _LOG_N, r: int = _R, p: int = _P) -> str:
    """The stored form of ``password``: ``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` (base64)."""
    salt = secrets.token_bytes(_SALT)
    digest = _scrypt(password.encode("utf-8"), salt, log_n, r, p, _KEY)
    b64 = base64.b64encode
    return f"{_SCHEME}${log_n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


@attrs.frozen
class PasswordHash:
    log_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def parse_password_hash(stored: str) -> PasswordHash:
    """The parameters of a stored hash.

    Raises:
        ValueError: not a well-formed scrypt hash with sane parameters.
    """
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError("not a scrypt hash (scrypt$<log2 N>$<r>$<p>$<salt>$<hash>)")
    try:
        log_n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("a malformed scrypt hash") from None
    if not (14 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range (log2 N 14-20, r 1-32, p 1-16)")
    if len(salt) < 16 or not 16 <= len(digest) <= 64:
        raise ValueError("a scrypt hash needs a salt of 16 bytes or more and a hash of 16-64 bytes")
    return PasswordHash(log_n, r, p, salt, digest)


def verify_password(password: bytes, stored: str) -> bool:
    """Whether ``password`` matches the stored hash (blocking: call it in a thread)."""
    h = parse_password_hash(stored)
    return hmac.compare_digest(_scrypt(password, h.salt, h.log_n, h.r, h.p, len(h.digest)), h.digest)


def is_password_hash(value: str) -> bool:
    """Whether ``value`` claims to be a stored hash (``scrypt$...``)."""
    return value.startswith(_SCHEME + "$")
