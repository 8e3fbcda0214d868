"""The identity headers sent upstream (Kong's names), and stripping spoofed ones.

A client must never be able to claim an identity by sending these headers
itself, so every header whose name starts with ``x-consumer-``,
``x-authenticated-``, ``x-credential-`` or ``x-anonymous-`` is removed before
the gateway sets its own, in every spelling: names are compared in lower case
with ``_`` read as ``-``, because CGI and WSGI servers (wsgiref, and
``request.headers`` of most WSGI frameworks) give ``X_Consumer_Username`` and
``X-Consumer-Username`` the same ``HTTP_X_CONSUMER_USERNAME`` key:

``X-Consumer-ID``, ``X-Consumer-Custom-ID``, ``X-Consumer-Username``
    the consumer (when the credential maps to one);
``X-Credential-Identifier``
    the credential (API key id, JWT secret key, or the token's ``azp``/``client_id``);
``X-Anonymous-Consumer: true``
    the request runs as the ``anonymous`` consumer;
``X-Consumer-Groups``
    the consumer's groups and the identity's groups, comma-separated;
``X-Authenticated-UserId``
    the token's subject;
``X-Authenticated-Roles`` / ``X-Authenticated-Scope``
    comma-separated roles / space-separated scopes, sorted.

Values are sanitised: characters outside visible ASCII are percent-encoded
so that no claim can inject a header.
"""

from __future__ import annotations

import re
from typing import Any, Final

from ._http import Headers
from ._protocols import Identity

__all__ = [
    "IDENTITY_HEADERS",
    "IDENTITY_PREFIXES",
    "identity_header_pairs",
    "is_identity_header",
    "set_identity_headers",
    "strip_identity_headers",
]

IDENTITY_HEADERS: Final = frozenset(
    {
        b"x-consumer-id",
        b"x-consumer-custom-id",
        b"x-consumer-username",
        b"x-consumer-groups",
        b"x-credential-identifier",
        b"x-anonymous-consumer",
        b"x-authenticated-userid",
        b"x-authenticated-roles",
        b"x-authenticated-scope",
    }
)
# Every name starting with one of these (lower case, "-" spelling) is the gateway's to set.
IDENTITY_PREFIXES: Final = (b"x-consumer-", b"x-authenticated-", b"x-credential-", b"x-anonymous-")


def is_identity_header(name: bytes) -> bool:
    """Whether ``name``, in any case and with ``_`` for ``-``, is reserved for the identity headers."""
    # Every prefix starts with "x": most names are ruled out before any copy is made.
    return name[:1] in b"xX" and name.lower().replace(b"_", b"-").startswith(IDENTITY_PREFIXES)


# Names already found not to be identity headers (bounded): most requests carry only these.
_OTHER_NAMES: set[bytes] = set()
_OTHER_NAMES_MAX: Final = 1024


def strip_identity_headers(headers: Headers) -> None:
    """Remove every identity header, in any spelling, from ``headers`` (in place; cheap if none)."""
    raw = headers.raw
    others = _OTHER_NAMES
    for name, _ in raw:
        if name in others:
            continue
        if is_identity_header(name):
            headers.raw = [pair for pair in raw if not is_identity_header(pair[0])]
            return
        if len(others) < _OTHER_NAMES_MAX:
            others.add(name)


_SAFE = re.compile(r"[\x20-\x24\x26-\x7e]*")


def _value(text: str) -> bytes:
    if _SAFE.fullmatch(text):
        return text.encode("ascii")
    data = text.encode("utf-8", "replace")
    return b"".join(bytes([b]) if 0x20 <= b < 0x7F and b != 0x25 else b"%%%02X" % b for b in data)


def identity_header_pairs(identity: Identity | None, consumer: Any = None) -> list[tuple[bytes, bytes]]:
    """The identity headers for ``identity`` and ``consumer`` (a ``ConsumerConfig`` or alike)."""
    out: list[tuple[bytes, bytes]] = []
    add = out.append
    if consumer is not None:
        for name, attr in (
            (b"x-consumer-id", "id"),
            (b"x-consumer-custom-id", "custom_id"),
            (b"x-consumer-username", "username"),
        ):
            value = getattr(consumer, attr, None)
            if value:
                add((name, _value(str(value))))
    if identity is None:
        return out
    if identity.credential:
        add((b"x-credential-identifier", _value(identity.credential)))
    if identity.anonymous:
        add((b"x-anonymous-consumer", b"true"))
    groups = set(identity.groups)
    if consumer is not None:
        groups.update(getattr(consumer, "groups", ()) or ())
    if groups:
        add((b"x-consumer-groups", _value(", ".join(sorted(groups)))))
    if identity.subject and not identity.anonymous:
        add((b"x-authenticated-userid", _value(identity.subject)))
    if identity.roles:
        add((b"x-authenticated-roles", _value(", ".join(sorted(identity.roles)))))
    if identity.scopes:
        add((b"x-authenticated-scope", _value(" ".join(sorted(identity.scopes)))))
    return out


def set_identity_headers(
    headers: Headers,
    identity: Identity | None,
    consumer: Any = None,
    pairs: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Replace the identity headers of ``headers`` with those of ``identity`` and ``consumer``.

    ``pairs`` may pass ``identity_header_pairs(identity, consumer)`` computed earlier.
    """
    strip_identity_headers(headers)
    headers.raw.extend(identity_header_pairs(identity, consumer) if pairs is None else pairs)
