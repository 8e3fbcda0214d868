"""Headers a proxy changes on the way through (RFC 9110 §7.6, RFC 7239).

Two pure functions, called once per request and once per response:

``upstream_request_headers``
    the client's headers minus the hop-by-hop ones (every header named in
    ``Connection``, then ``Connection``, ``Keep-Alive``, ``Proxy-Connection``,
    ``TE``, ``Transfer-Encoding``, ``Upgrade``, ``Trailer``,
    ``Proxy-Authenticate``, ``Proxy-Authorization``) and minus ``Expect``;
    ``Host`` set; ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` and ``Via``
    added (and RFC 7239 ``Forwarded`` on request).
``downstream_response_headers``
    the upstream's headers minus the hop-by-hop ones.

Choices:

- ``TE`` is dropped whole, ``TE: trailers`` included: the upstream client does
  not relay trailers, so promising the upstream that we accept them would be
  false.
- ``Expect`` is dropped: the upstream client sends the body without waiting
  for ``100 Continue`` and the ASGI server already answered the client's.
- ``Content-Length`` is kept: the body is passed through unchanged and the
  upstream client frames it by that length (``Transfer-Encoding`` is dropped
  because the body is re-framed on each side).
- ``X-Forwarded-For`` and ``Forwarded`` keep what earlier proxies wrote and
  append the peer (the connection's other end, ``Request.peer_ip``, not the
  client address derived from them).  In the gateway, the edge step
  (``gatekeep._edge``) has already removed every forwarding header that did
  not come from a trusted proxy, so what is kept here was written by one.
  ``X-Forwarded-Proto`` / ``-Host`` describe this hop; with ``trusted=True``
  (the peer is a trusted proxy) values it already set are kept.
- The headers named in ``Connection`` are removed here too, for callers
  that did not go through the edge step; in the gateway that step already
  applied them before the filters ran and left a ``Connection`` header that
  names only ``close`` / ``keep-alive`` / ``upgrade``, so a client cannot
  remove a header the gateway added (RFC 9110 §7.6.1).
"""

from __future__ import annotations

from operator import itemgetter
from typing import Final

from ._http import Request

__all__ = ["HOP_BY_HOP", "downstream_response_headers", "forwarded_element", "upstream_request_headers"]


HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Dropped from requests, and handled specially (replaced or merged) below.
_REQUEST_SKIP: Final = HOP_BY_HOP | {
    b"expect",
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
# Names whose presence takes the slow path of ``upstream_request_headers``.
_SPECIAL: Final = _REQUEST_SKIP - {b"host"}
_EMPTY: Final[frozenset[bytes]] = frozenset()
_COMMA: Final = b", "
_NAME: Final = itemgetter(0)


def _connection_options(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lower-case names listed in every ``Connection`` header."""
    names: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    names.add(token)
    return frozenset(names)


def forwarded_element(client_ip: str, proto: str, host: bytes) -> bytes:
    """One RFC 7239 ``Forwarded`` element: ``for=…;proto=…;host=…``."""
    parts = []
    if client_ip:
        # IPv6 must be bracketed and quoted; "unknown" when the peer is not known.
        parts.append(f'for="[{client_ip}]"' if ":" in client_ip else f"for={client_ip}")
    else:
        parts.append("for=unknown")
    parts.append(f"proto={proto}")
    element = ";".join(parts).encode("latin-1")
    if host:
        element += b';host="' + host.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return element


def upstream_request_headers(
    request: Request,
    *,
    host_header: bytes,
    via: bytes = b"1.1 gatekeep",
    trusted: bool = False,
    forwarded: bool = False,
) -> list[tuple[bytes, bytes]]:
    """The headers to send upstream for ``request``.

    Args:
        request: the client's request (its ``headers`` are not changed).
        host_header: the ``Host`` to send (the client's when preserving the
            host, else the upstream's).
        via: this hop's ``Via`` entry.
        trusted: the peer is a trusted proxy: keep the ``X-Forwarded-Proto``
            and ``X-Forwarded-Host`` it set.
        forwarded: also append an RFC 7239 ``Forwarded`` element.

    Returns:
        ``Host`` first, then the client's end-to-end headers in order, then
        ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host``,
        (``Forwarded``,) ``Via``.
    """
    raw = request.headers.raw
    names = set(map(_NAME, raw))  # (``header_names``, inline)
    if names.isdisjoint(_SPECIAL) and not forwarded:
        # The common case: nothing to drop or merge but Host (C-speed copies).
        if b"host" in names:
            first = raw[0]
            if first[0] == b"host" and len(names) == len(raw):
                # Host first and only once (as clients send it): replace it in a copy.
                out = list(raw)
                out[0] = (b"host", host_header)
                this_host = first[1]
            else:
                out = [(b"host", host_header)]
                out += [pair for pair in raw if pair[0] != b"host"]
                this_host = first[1] if first[0] == b"host" else next(p[1] for p in raw if p[0] == b"host")
        else:
            out = [(b"host", host_header), *raw]
            this_host = request.host.encode("latin-1") if request.host else b""
        client = request.client
        client_ip = client[0] if client else ""  # (``Request.peer_ip``, inline)
        if client_ip:
            out.append((b"x-forwarded-for", client_ip.encode("latin-1")))
        out.append((b"x-forwarded-proto", request.scheme.encode("latin-1")))
        if this_host:
            out.append((b"x-forwarded-host", this_host))
        out.append((b"via", via))
        return out
    options = _connection_options(raw) if b"connection" in names else _EMPTY
    out = [(b"host", host_header)]
    xff: list[bytes] = []
    proto: bytes | None = None
    fwd_host: bytes | None = None
    client_host: bytes | None = None
    skip = _REQUEST_SKIP
    for pair in raw:
        name = pair[0]
        if name in skip:
            if name == b"x-forwarded-for":
                xff.append(pair[1])
            elif name == b"host":
                if client_host is None:
                    client_host = pair[1]
            elif trusted:
                if name == b"x-forwarded-proto":
                    if proto is None:
                        proto = pair[1]
                elif name == b"x-forwarded-host" and fwd_host is None:
                    fwd_host = pair[1]
            continue
        if options and name in options:
            continue
        out.append(pair)
    client_ip = request.peer_ip
    if client_ip:
        xff.append(client_ip.encode("latin-1"))
    if xff:
        out.append((b"x-forwarded-for", xff[0] if len(xff) == 1 else _COMMA.join(xff)))
    if client_host is None:
        client_host = request.host.encode("latin-1") if request.host else b""
    out.append((b"x-forwarded-proto", proto if proto is not None else request.scheme.encode("latin-1")))
    if fwd_host is not None:
        out.append((b"x-forwarded-host", fwd_host))
    elif client_host:
        out.append((b"x-forwarded-host", client_host))
    if forwarded:
        out.append((b"forwarded", forwarded_element(client_ip, request.scheme, client_host)))
    out.append((b"via", via))
    return out


def downstream_response_headers(
    headers: list[tuple[bytes, bytes]], hide: frozenset[bytes] = HOP_BY_HOP
) -> list[tuple[bytes, bytes]]:
    """``headers`` of an upstream response without the hop-by-hop ones.

    ``Content-Length`` stays (the body passes through unchanged);
    ``Transfer-Encoding`` goes (the server re-frames the body).  ``hide``
    is ``HOP_BY_HOP`` plus any other lower-case names to drop (the gateway's
    ``hide_upstream_headers``).  When there is nothing to drop, ``headers``
    itself comes back (no copy).
    """
    names = set(map(_NAME, headers))  # (``header_names``, inline)
    if names.isdisjoint(hide):
        return headers
    options = _connection_options(headers) if b"connection" in names else _EMPTY
    hop = hide
    if options:
        return [pair for pair in headers if pair[0] not in hop and pair[0] not in options]
    return [pair for pair in headers if pair[0] not in hop]
