"""Edge hygiene: what the gateway does to a client's request before anything reads it.

Theory of operation
-------------------
``Gateway.handle`` calls ``Edge.apply(request)`` once per request (HTTP and
the WebSocket handshake alike), before routing and before any filter runs, so
that no filter, rule or upstream ever sees what it removes:

1. **One spelling.** Header names are compared in lower case with ``_`` read
   as ``-``: CGI and WSGI servers (wsgiref; most WSGI frameworks'
   ``request.headers``) give ``X_Consumer_Username`` and
   ``X-Consumer-Username`` the same ``HTTP_X_CONSUMER_USERNAME`` key.
2. **Identity.** Every ``X-Consumer-*``, ``X-Authenticated-*``,
   ``X-Credential-*`` and ``X-Anonymous-*`` header, in any spelling, is
   removed: only the gateway's auth filters set them.
3. **Underscores.** The ``_`` spelling of a header the gateway sets or reads
   (``PROTECTED``, the request-id header, the method-override headers) is
   always removed; any other name with ``_`` follows
   ``[gateway] headers_with_underscores`` (``drop``, as nginx's
   ``underscores_in_headers off`` and Envoy's recommended ``DROP_HEADER``;
   ``reject`` → 400; ``allow``).
4. **Method override.** ``X-HTTP-Method-Override``, ``X-HTTP-Method`` and
   ``X-Method-Override`` follow ``[gateway] method_override_headers``
   (``strip``; ``refuse`` → 400; ``forward``): authorization is decided on the
   request's real method, so an upstream must not be told another one.
5. **Forwarding headers** (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``)
   are believed only from a peer in ``[gateway] trusted_proxies``; from
   anyone else they are removed (the gateway writes its own when it forwards).
   Behind a trusted proxy the client address (``Request.client_ip``, which
   ``rate-limiting`` with ``limit_by = "ip"`` and the ``ip`` hash use) is the
   right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy.
6. **Connection options** (RFC 9110 §7.6.1): the headers the client names in
   ``Connection`` are removed *here*, before the filters add theirs; a token
   naming a protected header is ignored.  The ``Connection`` header left
   behind names only ``close``, ``keep-alive`` and ``upgrade``, so nothing
   later (``upstream_request_headers``) can remove a gateway header through it.
7. **Host** (RFC 9112 §3.2): more than one ``Host`` → 400; a ``Host`` that is
   not an RFC 3986 authority (``host[:port]`` with a reg-name, IPv4 or
   ``[IPv6]``; no userinfo, no ``,``, no space or path) → 400.  With an
   absolute-form target (``GET http://a.example/x``) the target's authority
   is the request's host (§3.2.2) and must agree with ``Host`` (else 400);
   the path alone is routed.
8. **Framing** (RFC 9112 §6.3): ``Content-Length`` together with
   ``Transfer-Encoding`` → 400 and the connection closed.  h11 servers
   (uvicorn ``--http h11``) pass such a request on, framed by the chunks; kept
   alive, what follows the last chunk would be read as a second request where
   a proxy in front (or the upstream, were the length forwarded) reads body.

Cost: a request without anything to remove (almost every one) pays for one
set of its header names and a subset test against the names already found
harmless (and its ``Host`` against the hosts already found valid; both sets
are bounded).  The rest runs only when a name asks for it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from operator import itemgetter
from typing import Final, Literal

from ._errors import BadRequest
from ._http import DEFAULT_REQUEST_ID_HEADER, Request, header_names
from ._identity_headers import IDENTITY_PREFIXES
from ._netaddr import in_networks

__all__ = ["FORWARDING_HEADERS", "METHOD_OVERRIDE_HEADERS", "PROTECTED_HEADERS", "Edge"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METHOD_OVERRIDE_HEADERS: Final = frozenset(
    {b"x-http-method-override", b"x-http-method", b"x-method-override"}
)
# Believed only from trusted proxies (plus every other x-forwarded-* name).
FORWARDING_HEADERS: Final = frozenset(
    {b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"}
)
_FORWARDED_PREFIX: Final = b"x-forwarded-"
# Names the gateway sets or reads itself (besides the identity prefixes, the
# x-forwarded-* ones and the request-id header): a client's Connection header
# cannot remove them, and their "_" spelling is always dropped.
PROTECTED_HEADERS: Final = FORWARDING_HEADERS | {
    b"host",
    b"via",
    b"connection",
    b"content-length",
    b"transfer-encoding",
}
_PROTECTED_PREFIXES: Final = (*IDENTITY_PREFIXES, _FORWARDED_PREFIX)
# Connection options that are about the connection itself (their headers, if
# any, are hop-by-hop and dropped when forwarding anyway).
_CONNECTION_KEEP: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Connection values seen on almost every request (one header): nothing to remove.
_PLAIN_CONNECTION: Final = frozenset(
    {b"keep-alive", b"close", b"upgrade", b"keep-alive, upgrade", b"upgrade, keep-alive"}
)
# Header names and Host values already found harmless are remembered, up to
# this many each, so that a request made of them costs one subset test.
_KNOWN_MAX: Final = 1024

# RFC 3986 authority without userinfo: IP-literal, or a reg-name (IPv4 is one)
# without ",", which no host name contains and which a folded pair of Host
# headers ("a, b") would; then an optional port.
_AUTHORITY: Final = re.compile(
    rb"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|\[v[0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+\]"
    rb"|(?:[-A-Za-z0-9._~!$&'()*+;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]{0,5})?"
)
_ABSOLUTE: Final = re.compile(rb"(?i)(https?)://([^/?#]*)([^#]*)")
_DEFAULT_PORT: Final = {b"http": b":80", b"https": b":443"}
_NAME: Final = itemgetter(0)

UnderscoreAction = Literal["drop", "reject", "allow"]
OverrideAction = Literal["strip", "refuse", "forward"]


class Edge:
    """The edge-hygiene step, compiled from ``[gateway]`` settings.

    Args:
        trusted_proxies: networks whose forwarding headers are believed.
        request_id_header: the gateway's request-id header (lower case).
        headers_with_underscores: what to do with other names containing ``_``.
        method_override_headers: what to do with method-override headers.
    """

    def __init__(
        self,
        *,
        trusted_proxies: Sequence[Network] = (),
        request_id_header: bytes = DEFAULT_REQUEST_ID_HEADER,
        headers_with_underscores: UnderscoreAction = "drop",
        method_override_headers: OverrideAction = "strip",
    ) -> None:
        self.trusted_proxies = tuple(trusted_proxies)
        self.underscores = headers_with_underscores
        self.override = method_override_headers
        self.protected = PROTECTED_HEADERS | {request_id_header}
        # Names that, present exactly so, need the careful path.
        triggers = set(FORWARDING_HEADERS)
        if method_override_headers != "forward":
            triggers |= METHOD_OVERRIDE_HEADERS
        self._triggers = frozenset(triggers)
        self._plain_names: set[bytes] = set()
        self._valid_hosts: set[bytes] = set()

    def apply(self, request: Request) -> BadRequest | None:
        """Clean ``request`` in place; return why it must be refused (400), or ``None``."""
        raw = request.headers.raw
        names = set(map(_NAME, raw))  # (``header_names``, inline)
        if b"transfer-encoding" in names and b"content-length" in names:
            return BadRequest(
                "a request may not carry both Content-Length and Transfer-Encoding (RFC 9112 §6.3)",
                headers=[("Connection", "close")],
            )
        if raw and (b"connection" in names or not names <= self._plain_names) and not self._plain(raw, names):
            refusal = self._clean(request)
            if refusal is not None:
                return refusal
            raw = request.headers.raw
            names = header_names(raw)
        elif b"host" in names and len(names) == len(raw) and request.raw_path[:1] == b"/":
            # The common case, inline: one Host, one already found valid, an origin-form target.
            for name, value in raw:
                if name == b"host":
                    if value in self._valid_hosts:
                        return None
                    break
        return self._check_host(request, raw, names)

    # -- headers ----------------------------------------------------------------

    def _plain(self, raw: list[tuple[bytes, bytes]], names: set[bytes]) -> bool:
        """Whether there is nothing to do (lower-case names, no "_", nothing protected)."""
        if not names <= self._plain_names and not self._learn(names):
            return False
        if b"connection" in names:
            for name, value in raw:
                if name == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                    for token in value.split(b","):
                        if token.strip().lower() not in _CONNECTION_KEEP:
                            return False
        return True

    def _learn(self, names: set[bytes]) -> bool:
        """Whether every name in ``names`` is harmless; remember those that are."""
        known = self._plain_names
        plain = True
        for name in names - known:
            if (
                b"_" in name
                or name != name.lower()
                or name in self._triggers
                or name.startswith(_PROTECTED_PREFIXES)
            ):
                plain = False
            elif len(known) < _KNOWN_MAX:
                known.add(name)
        return plain

    def is_protected(self, name: bytes) -> bool:
        """Whether ``name`` (lower case, ``-`` spelling) is a header the gateway sets or reads."""
        return name in self.protected or name.startswith(_PROTECTED_PREFIXES)

    def _connection(self, raw: list[tuple[bytes, bytes]]) -> tuple[set[bytes], list[bytes]]:
        """The names the client's ``Connection`` asks to remove, and the plain options to keep."""
        remove: set[bytes] = set()
        keep: list[bytes] = []
        for name, value in raw:
            if name.lower() != b"connection":
                continue
            for token in value.split(b","):
                token = token.strip().lower().replace(b"_", b"-")
                if not token:
                    continue
                if token in _CONNECTION_KEEP:
                    if token not in keep:
                        keep.append(token)
                elif not self.is_protected(token):
                    remove.add(token)
        return remove, keep

    def _clean(self, request: Request) -> BadRequest | None:
        raw = request.headers.raw
        trusted = self._peer_trusted(request.peer_ip)
        remove, keep = self._connection(raw)
        out: list[tuple[bytes, bytes]] = []
        xff: list[bytes] = []
        connection_at = -1
        for name, value in raw:
            low = name.lower()
            norm = low.replace(b"_", b"-")
            if norm.startswith(IDENTITY_PREFIXES):
                continue
            if b"_" in low:
                if self.underscores == "reject":
                    return BadRequest(f"header names with '_' are refused: {name.decode('latin-1')!r}")
                if self.underscores == "drop" or self.is_protected(norm) or norm in METHOD_OVERRIDE_HEADERS:
                    continue
            if norm in METHOD_OVERRIDE_HEADERS:
                if self.override == "refuse":
                    return BadRequest(
                        f"method override headers are refused: {name.decode('latin-1')!r} "
                        f"(send the method itself)"
                    )
                if self.override == "strip":
                    continue
            if norm in FORWARDING_HEADERS or norm.startswith(_FORWARDED_PREFIX):
                if not trusted:
                    continue
                if norm == b"x-forwarded-for":
                    xff.append(value)
            if norm == b"connection":
                if connection_at < 0 and keep:
                    connection_at = len(out)
                    out.append((b"connection", b", ".join(keep)))
                continue
            if norm in remove:
                continue
            out.append((low, value))
        request.headers.raw = out
        if xff:
            request.forwarded_ip = self._client_from(xff)
        return None

    # -- the client's address -----------------------------------------------------

    def _peer_trusted(self, peer: str) -> bool:
        return in_networks(peer, self.trusted_proxies)

    def _client_from(self, values: list[bytes]) -> str:
        """The client behind trusted proxies: walk ``X-Forwarded-For`` from the right.

        Every entry a trusted proxy appended is skipped; the first one that is
        not a trusted proxy is the client.  An entry that is not an address
        ends the walk (it cannot be believed): the last address read is used,
        or the peer's ("") when there was none.
        """
        client = ""
        for value in reversed(values):
            for entry in reversed(value.split(b",")):
                address = _address(entry.strip())
                if address is None:
                    return client
                client = str(address)
                if not any(address in network for network in self.trusted_proxies):
                    return client
        return client

    # -- Host -----------------------------------------------------------------------

    def _check_host(
        self, request: Request, raw: list[tuple[bytes, bytes]], names: set[bytes]
    ) -> BadRequest | None:
        host: bytes | None = None
        if b"host" in names:
            # A repeated name makes the set shorter than the list: only then count.
            if len(names) != len(raw) and sum(1 for name, _ in raw if name == b"host") > 1:
                return BadRequest("the request has more than one Host header")
            host = request.headers.get(b"host")
            assert host is not None
            if host not in self._valid_hosts:
                if not _valid_authority(host):
                    return BadRequest(f"invalid Host header: {host.decode('latin-1')!r}")
                if len(self._valid_hosts) < _KNOWN_MAX:
                    self._valid_hosts.add(host)
        target = request.raw_path
        if target[:1] == b"/" or not target:
            return None
        absolute = _ABSOLUTE.fullmatch(target)
        if absolute is None:
            return None  # "*" or a bad path: the path normalisation answers 400
        scheme, authority, path = absolute[1].lower(), absolute[2], absolute[3]
        if b"@" in authority:
            return BadRequest("the request target may not carry userinfo ('user@host')")
        if not authority or not _valid_authority(authority):
            return BadRequest(f"invalid authority in the request target: {authority.decode('latin-1')!r}")
        if host is None:
            request.headers.raw.append((b"host", authority))
        elif _canonical(host, scheme) != _canonical(authority, scheme):
            return BadRequest("the Host header does not agree with the authority of the request target")
        request.host = _hostname(authority).decode("latin-1").lower()
        request.raw_path = path.split(b"?", 1)[0] or b"/"
        request.path = ""
        return None


def _valid_authority(value: bytes) -> bool:
    match = _AUTHORITY.fullmatch(value)
    if match is None:
        return False
    ip6 = match["ip6"]
    if ip6 is not None:
        try:
            ipaddress.IPv6Address(ip6.decode("ascii"))
        except ValueError:
            return False
    return True


def _canonical(authority: bytes, scheme: bytes) -> bytes:
    """``authority`` in lower case without the scheme's default port (or an empty one)."""
    authority = authority.lower()
    default = _DEFAULT_PORT.get(scheme, b"")
    if default and authority.endswith(default):
        return authority[: -len(default)]
    if authority.endswith(b":"):
        return authority[:-1]
    return authority


def _hostname(authority: bytes) -> bytes:
    if authority.startswith(b"["):
        return authority.split(b"]", 1)[0] + b"]"
    return authority.rsplit(b":", 1)[0] if b":" in authority else authority


def _address(entry: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An ``X-Forwarded-For`` entry as an address: ``1.2.3.4``, ``2001:db8::1``,
    and the ``1.2.3.4:port`` / ``[2001:db8::1]:port`` forms some proxies write."""
    text = entry.decode("latin-1")
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
