"""``cors``: Cross-Origin Resource Sharing for gatekeep, shaped like Kong's plugin.

Theory of operation
-------------------

A browser asks before it sends a "non-simple" cross-origin request: it sends
a *preflight*, ``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``.  This filter answers the preflight itself
in the request phase (200, no upstream call) unless ``preflight_continue``
hands it to the upstream.  Every other request goes to the upstream as usual
and gets ``Access-Control-Allow-Origin`` (and ``-Allow-Credentials``,
``-Expose-Headers``) in the response phase, including error answers of later
filters (401, 429 ...), so that the page can read them.

CORS is enforced by the browser, not by the gateway: a request from an
origin that is not allowed still reaches the upstream and is answered, just
without any ``Access-Control-*`` header, and the browser then refuses to hand
the answer to the page.  A preflight from such an origin is answered 200
without ``Access-Control-*`` headers, so the browser never sends the real
request.  (Use ``ip-restriction`` or authentication to keep clients out.)

The filter owns the CORS response headers: ``Access-Control-*`` headers sent
by the upstream are dropped, so that the upstream cannot widen what the
gateway allows.

Origins (``origins``) are matched in one of three ways:

* ``"*"`` alone: every origin.
* ``"https://app.example.com"``: exactly that origin (``scheme://host[:port]``,
  case-insensitive, a default port is ignored).
* ``"~https://[a-z0-9-]+\\.example\\.com"``: an entry starting with ``~`` is a
  Python regular expression that must match the *whole* origin.

Everything that depends only on the config (compiled regexes, joined header
values) is computed once in ``CorsFilter.__init__``; a request costs a few
header lookups, a set lookup and, for regex origins, a cached match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar
from urllib.parse import urlsplit

import attrs
from gatekeep import BasePlugin, Headers, Request, Response

__all__ = ["DEFAULT_METHODS", "CorsConfig", "CorsFilter"]

__version__ = "0.1.0"

# Kong's default and its whole set of accepted methods.
DEFAULT_METHODS = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT")

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Marks a request whose preflight this filter answered or delegated; the
# response phase leaves such answers alone.
_PREFLIGHT = "gatekeep_cors.preflight"
# How many regex verdicts to remember; forged origins cannot grow it further.
_CACHE_SIZE = 1024


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"expected a list of strings, got the string {value!r}")
    return tuple(value)


def _optional_strings(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else _strings(value)


def _normalise_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in the form browsers send, or None if it is not one."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not _SCHEME.fullmatch(parts.scheme) or not parts.hostname or "@" in parts.netloc:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or origin.endswith("?"):
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or _DEFAULT_PORTS.get(parts.scheme) == port:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _check_origins(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("must list at least one origin; use ['*'] to allow every origin")
    if "*" in value and len(value) > 1:
        raise ValueError("'*' allows every origin; list it alone")
    for i, entry in enumerate(value):
        if entry == "*":
            continue
        if entry.startswith("~"):
            if len(entry) == 1:
                raise ValueError(f"entry {i}: '~' must be followed by a regular expression")
            try:
                re.compile(entry[1:])
            except re.error as exc:
                raise ValueError(f"entry {i}: invalid regular expression {entry[1:]!r} ({exc})") from None
        elif _normalise_origin(entry) is None:
            raise ValueError(
                f"entry {i}: {entry!r} is not '*', a '~regex' or an origin like 'https://example.com:8443'"
            )


def _check_methods(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for i, method in enumerate(value):
        if method not in DEFAULT_METHODS:
            raise ValueError(f"entry {i}: {method!r} is not one of {', '.join(DEFAULT_METHODS)}")


def _check_header_names(
    _: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for i, name in enumerate(value):
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"entry {i}: {name!r} is not a header name")


def _check_max_age(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"must be 0 or more seconds, got {value}")


@attrs.frozen
class CorsConfig:
    """The ``config`` table of the ``cors`` plugin (Kong's field names and defaults).

    Attributes:
        origins: allowed origins: ``["*"]``, exact origins, or ``~regex`` entries.
        methods: sent as ``Access-Control-Allow-Methods`` on preflights.
        headers: sent as ``Access-Control-Allow-Headers``; ``None`` (the
            default) echoes the preflight's ``Access-Control-Request-Headers``.
        exposed_headers: sent as ``Access-Control-Expose-Headers``.
        credentials: send ``Access-Control-Allow-Credentials: true``; with
            ``origins = ["*"]`` the request's origin is echoed instead of ``*``.
        max_age: how long (seconds) a browser may cache a preflight answer.
        preflight_continue: pass preflights to the upstream instead of answering.
        private_network: answer Private Network Access preflights
            (``Access-Control-Allow-Private-Network: true``).
    """

    origins: tuple[str, ...] = attrs.field(default=("*",), converter=_strings, validator=_check_origins)
    methods: tuple[str, ...] = attrs.field(
        default=DEFAULT_METHODS, converter=_strings, validator=_check_methods
    )
    headers: tuple[str, ...] | None = attrs.field(
        default=None,
        converter=_optional_strings,
        validator=attrs.validators.optional(_check_header_names),
    )
    exposed_headers: tuple[str, ...] = attrs.field(
        default=(), converter=_strings, validator=_check_header_names
    )
    credentials: bool = False
    max_age: int | None = attrs.field(default=None, validator=_check_max_age)
    preflight_continue: bool = False
    private_network: bool = False

    def __attrs_post_init__(self) -> None:
        if self.credentials and ("*" in (self.headers or ()) or "*" in self.exposed_headers):
            raise ValueError(
                "with credentials = true browsers read '*' in headers / exposed_headers literally; "
                "list the header names instead"
            )


class CorsFilter(BasePlugin[CorsConfig]):
    """Answers CORS preflights and adds CORS headers to responses."""

    name: ClassVar[str] = "cors"
    priority: ClassVar[int] = 2000
    config: CorsConfig

    def __init__(self, config: CorsConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self._allow_all = c.origins == ("*",)
        exact = (_normalise_origin(o) for o in c.origins if o != "*" and not o.startswith("~"))
        self._exact = frozenset(o.encode("latin-1") for o in exact if o is not None)
        self._patterns = tuple(re.compile(o[1:]) for o in c.origins if o.startswith("~"))
        self._verdicts: dict[bytes, bool] = {}
        self._credentials = c.credentials
        # The answer depends on the request's Origin unless it is always "*".
        self._vary = not self._allow_all or c.credentials
        self._expose = b",".join(h.encode("latin-1") for h in c.exposed_headers) or None
        preflight = [(b"access-control-allow-methods", ",".join(c.methods).encode("latin-1"))]
        if c.headers is not None:
            preflight.append((b"access-control-allow-headers", ",".join(c.headers).encode("latin-1")))
        if c.max_age is not None:
            preflight.append((b"access-control-max-age", str(c.max_age).encode("ascii")))
        self._preflight_headers = preflight

    def allowed_origin(self, origin: bytes) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None if it is not allowed."""
        if self._allow_all:
            return origin if self._credentials else b"*"
        if origin in self._exact:
            return origin
        if not self._patterns:
            return None
        verdict = self._verdicts.get(origin)
        if verdict is None:
            text = origin.decode("latin-1")
            verdict = any(p.fullmatch(text) for p in self._patterns)
            if len(self._verdicts) >= _CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[origin] = verdict
        return origin if verdict else None

    async def on_request(self, request: Request) -> Response | None:
        if request.method != "OPTIONS":
            return None
        asked = request.headers
        origin = asked.get(b"origin")
        if origin is None or b"access-control-request-method" not in asked:
            return None
        request.state[_PREFLIGHT] = True
        if self.config.preflight_continue:
            return None
        headers = Headers()
        raw = headers.raw
        if self._vary:
            raw.append((b"vary", b"Origin"))
        allowed = self.allowed_origin(origin)
        if allowed is not None:
            raw.append((b"access-control-allow-origin", allowed))
            if self._credentials:
                raw.append((b"access-control-allow-credentials", b"true"))
            raw += self._preflight_headers
            if self.config.headers is None:
                requested = asked.get(b"access-control-request-headers")
                if requested:
                    raw.append((b"access-control-allow-headers", requested))
            private = asked.get(b"access-control-request-private-network")
            if private == b"true" and self.config.private_network:
                raw.append((b"access-control-allow-private-network", b"true"))
        raw.append((b"content-length", b"0"))
        return Response(200, headers, b"")

    async def on_response(self, request: Request, response: Response) -> Response | None:
        if _PREFLIGHT in request.state:
            return None
        headers = response.headers
        raw = headers.raw
        if any(k.startswith(b"access-control-") for k, _ in raw):
            headers.raw = raw = [(k, v) for k, v in raw if not k.startswith(b"access-control-")]
        if self._vary:
            _add_vary_origin(raw)
        origin = request.headers.get(b"origin")
        if origin is None:
            if self._allow_all:
                raw.append((b"access-control-allow-origin", b"*"))
            return None
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return None
        raw.append((b"access-control-allow-origin", allowed))
        if self._credentials:
            raw.append((b"access-control-allow-credentials", b"true"))
        if self._expose is not None:
            raw.append((b"access-control-expose-headers", self._expose))
        return None


def _add_vary_origin(raw: list[tuple[bytes, bytes]]) -> None:
    """Add ``Vary: Origin`` unless the response already varies on it (or on everything)."""
    for name, value in raw:
        if name == b"vary":
            for token in value.split(b","):
                token = token.strip().lower()
                if token == b"origin" or token == b"*":
                    return
    raw.append((b"vary", b"Origin"))
