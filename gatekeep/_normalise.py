"""Request path normalisation: one canonical text for every way to spell a path.

Theory of operation
-------------------
The router, the RBAC rules and every filter see the path that this module
returns, never the bytes the client sent.  Two requests that an origin server
would treat as the same resource must therefore normalise to the same text,
or a client could route around a rule by spelling a path differently
("No bypass" in DESIGN.md).  ``normalise_path`` applies, in this order:

1. The path must start with ``/`` (origin-form).  The asterisk form (``*``)
   and the absolute form (``http://host/path``) are the adapter's business.
2. Percent-escapes: an escape of an *unreserved* character (ALPHA / DIGIT /
   ``-`` ``.`` ``_`` ``~``) is decoded (``/%6Frders`` -> ``/orders``); every
   other escape is kept encoded with upper-case hex (``%3a`` -> ``%3A``).
   A malformed escape (``%zz``, ``%4``) is refused.
3. Refused outright (400), so that no route can be bypassed through them:
   an encoded slash ``%2F`` or backslash ``%5C`` (a backend that decodes them
   would see a different path than the router did), an encoded NUL ``%00``
   (C backends truncate at it), a raw backslash, and raw control characters
   (bytes < 0x20 and 0x7F).  Other encoded control characters (``%0A`` ...)
   are legal in a URI and are kept encoded.
4. Raw bytes that may not appear in a URI path (bytes >= 0x80, space, ``"``,
   ``<``, ``>``, ``^``, backquote, ``{``, ``|``, ``}``, ``[``, ``]``, ``?``,
   ``#``) are percent-encoded, so the result is always plain ASCII and a
   valid RFC 3986 ``path-absolute``.  The caller passes the path without its
   query string, so a ``?`` here is data.
5. Dot-segments are removed as in RFC 3986 section 5.2.4, after step 2, so
   ``%2e%2e`` is removed like ``..``; a path never climbs above ``/``.
6. Empty segments are merged (``//orders///1`` -> ``/orders/1``).
7. A trailing slash is kept (``/orders/`` stays ``/orders/``); so is the one
   left by a final dot-segment (``/a/b/..`` -> ``/a/``), as RFC 3986 says.

The result is a fixed point: ``normalise_path(result.encode()) == result``.

Most paths are already canonical, so the first thing done is one regex
``fullmatch`` that recognises a canonical path made of safe characters
(segments of unreserved and sub-delim characters, none starting with a dot,
no empty segment); such a path is returned as is.  Nothing is cached, so
memory cannot grow with the traffic.
"""

from __future__ import annotations

import re
from typing import Final

from ._errors import BadRequest

__all__ = ["is_canonical_path", "normalise_path"]

# RFC 3986: unreserved characters, and the other characters allowed raw in a
# path segment (sub-delims, ":" and "@").
_UNRESERVED: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_PCHAR_EXTRA: Final = b"!$&'()*+,;=:@"

# A canonical path of safe characters: "/" or "/seg(/seg)*" with an optional
# trailing "/", where no segment is empty or starts with a dot.
_SAFE = "A-Za-z0-9_~!$&'()*+,;=:@-"
_FAST: Final = re.compile(f"/(?:[{_SAFE}][.{_SAFE}]*(?:/[{_SAFE}][.{_SAFE}]*)*/?)?".encode())
# Whether a path is such a canonical one (``normalise_path`` returns it decoded, as is):
# for a caller that would rather not make the call when it is.
is_canonical_path: Final = _FAST.fullmatch

# Everything that needs a look in the slow path: a "%" with whatever follows
# it, or one byte that is not allowed raw in a path.
_TOKEN: Final = re.compile(rb"%(?:[0-9A-Fa-f]{2})?|[^A-Za-z0-9\-._~!$&'()*+,;=:@/]")


def _build_tables() -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    # Every "%XX" spelling (either hex case) that is accepted -> its output,
    # and every single raw byte that _TOKEN catches and is accepted -> "%XX".
    escapes: dict[bytes, bytes] = {}
    for value in range(256):
        if value in (0x00, 0x2F, 0x5C):
            continue
        out = bytes([value]) if value in _UNRESERVED else b"%%%02X" % value
        hi, lo = f"{value:02x}"[0], f"{value:02x}"[1]
        for a in {hi, hi.upper()}:
            for b in {lo, lo.upper()}:
                escapes[f"%{a}{b}".encode()] = out
    raw = {bytes([value]): b"%%%02X" % value for value in range(0x20, 256) if value not in (0x25, 0x5C, 0x7F)}
    return escapes, raw


_ESCAPES, _RAW = _build_tables()


def _refusal(token: bytes) -> str:
    if token.startswith(b"%"):
        if len(token) < 3:
            return "malformed percent-escape in request path ('%' must be followed by two hex digits)"
        value = int(token[1:], 16)
        if value == 0x2F:
            return "an encoded slash (%2F) in the request path is not allowed"
        if value == 0x5C:
            return "an encoded backslash (%5C) in the request path is not allowed"
        return "an encoded NUL (%00) in the request path is not allowed"
    if token == b"\\":
        return "a backslash in the request path is not allowed"
    return f"a control character (0x{token[0]:02X}) in the request path is not allowed"


def _replace(match: re.Match[bytes]) -> bytes:
    token = match.group()
    out = _ESCAPES.get(token) if len(token) == 3 else _RAW.get(token)
    if out is None:
        raise BadRequest(_refusal(token))
    return out


def normalise_path(raw_path: bytes) -> str:
    """The canonical text of a request path (see the module comment for the rules).

    Args:
        raw_path: the path as the client sent it, without the query string.

    Returns:
        An ASCII path that starts with ``/``, without dot-segments or empty
        segments, with only unreserved escapes decoded.

    Raises:
        BadRequest: the path is not origin-form, has a malformed escape, an
            encoded slash, backslash or NUL, or a control character.
    """
    if is_canonical_path(raw_path):
        return raw_path.decode("ascii")
    if not raw_path.startswith(b"/"):
        raise BadRequest("the request path must start with '/'")
    path = _TOKEN.sub(_replace, raw_path).decode("ascii")
    if "//" not in path and "/." not in path:
        return path
    return _remove_dot_segments(path)


def _remove_dot_segments(path: str) -> str:
    # ``path`` starts with "/", so split() yields "" first; every later part is
    # one segment, and a last "" means the path ended with "/".
    parts = path.split("/")
    # A final "", "." or ".." leaves the path ending in a slash (RFC 3986).
    trailing = parts[-1] in ("", ".", "..")
    out: list[str] = []
    for segment in parts[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != "" and segment != ".":
            out.append(segment)
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")
