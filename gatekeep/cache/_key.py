"""The cache key: what two requests must share to be answered by one entry.

Method (HEAD as GET: a HEAD is answered from the GET's entry), host, path
(lower-cased with ``ignore_uri_case``), the query parameters (all of them,
sorted by name, or only ``vary_query_params``), the ``vary_headers`` values,
the route and the consumer (or, for a request with ``Authorization`` cached
under ``cache_authorized`` without a consumer, a digest of its credentials):
one consumer never reads another's entry.  Each part is length-prefixed
before hashing, so no value can be made to look like two parts.  The key is a
BLAKE2b digest, 32 hex digits (Kong's ``X-Cache-Key`` is 32 hex digits too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from urllib.parse import unquote_plus

from .._http import Headers

__all__ = ["KeyBuilder"]


class KeyBuilder:
    """Builds keys for one plugin instance; everything config-dependent is precomputed."""

    __slots__ = ("headers", "ignore_case", "query_params")

    def __init__(
        self, *, vary_headers: Sequence[str], vary_query_params: Sequence[str], ignore_uri_case: bool
    ) -> None:
        self.headers = tuple(sorted({h.lower().encode("latin-1") for h in vary_headers}))
        self.query_params = frozenset(vary_query_params) or None
        self.ignore_case = ignore_uri_case

    def query(self, query_string: bytes) -> bytes:
        """The query as keyed: raw pairs, stably sorted by name (order within one name kept)."""
        if not query_string:
            return b""
        pairs = [p for p in query_string.split(b"&") if p]
        named = [(unquote_plus(p.partition(b"=")[0].decode("latin-1")), p) for p in pairs]
        if self.query_params is not None:
            named = [(n, p) for n, p in named if n in self.query_params]
        named.sort(key=lambda np: np[0])
        return b"&".join(p for _, p in named)

    def key(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query_string: bytes,
        header_values: Sequence[bytes | None],
        route: str,
        principal: str,
    ) -> str:
        h = hashlib.blake2b(digest_size=16)
        if self.ignore_case:
            path = path.lower()
        parts: list[bytes] = [
            b"GET" if method == "HEAD" else method.encode("latin-1"),
            host.lower().encode("latin-1", "replace"),
            path.encode("utf-8", "surrogateescape"),
            self.query(query_string),
            route.encode("utf-8", "surrogateescape"),
            principal.encode("utf-8", "surrogateescape"),
        ]
        parts += [b"-" if v is None else b"=" + v for v in header_values]
        for part in parts:
            h.update(b"%d:" % len(part))
            h.update(part)
        return h.hexdigest()

    def header_values(self, headers: Headers) -> list[bytes | None]:
        """The request's values of the ``vary_headers`` (all lines of one name joined)."""
        get_all = headers.get_all
        values: list[bytes | None] = []
        for name in self.headers:
            found = get_all(name)
            values.append(b", ".join(found) if found else None)
        return values
