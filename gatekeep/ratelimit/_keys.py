"""Bucket keys built from user-controlled input.

A rate-limit key is made of parts that a client controls (a header value, a
path, an IP address), so the encoding must be injective: ``("a:b", "c")`` and
``("a", "b:c")`` must never name the same bucket, or one client could drain
another's budget.  Each part is percent-escaped (``%``, the ``:`` separator,
the Redis Cluster hash-tag braces, ``#``, blanks and control characters) and
the parts are joined with ``:``; since no escaped part holds a ``:``, the
number of parts and each part can be read back.  Long parts are replaced by
``#`` and a 128-bit BLAKE2b digest (escaped parts never hold a ``#``), and a
long joined key is replaced by ``##`` and a digest, so a key is never longer
than ``MAX_KEY_LENGTH`` bytes.  Distinct tuples map to distinct keys unless
BLAKE2b collides.
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_KEY_LENGTH", "MAX_PART_LENGTH", "bucket_key"]

MAX_PART_LENGTH = 64
MAX_KEY_LENGTH = 256

_ESCAPED = "%:{}#" + "".join(chr(c) for c in range(0x21)) + "\x7f"
_ESCAPES = str.maketrans({c: f"%{ord(c):02X}" for c in _ESCAPED})


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _part(part: str) -> str:
    escaped = part.translate(_ESCAPES)
    try:
        if len(escaped.encode()) <= MAX_PART_LENGTH:
            return escaped
    except UnicodeEncodeError:  # lone surrogates cannot be stored as they are
        pass
    return "#" + _digest(part.encode("utf-8", "surrogatepass"))


def bucket_key(*parts: str) -> str:
    """An injective, bounded, brace-free key for the bucket named by ``parts``.

    >>> bucket_key("consumer", "alice")
    'consumer:alice'
    >>> bucket_key("a:b", "c") != bucket_key("a", "b:c")
    True

    Raises:
        ValueError: no part was given.
    """
    if not parts:
        raise ValueError("bucket_key() needs at least one part")
    key = ":".join([_part(p) for p in parts])
    if len(key.encode()) > MAX_KEY_LENGTH:
        return "##" + _digest(key.encode())
    return key
