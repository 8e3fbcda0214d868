"""The request and response objects every part of gatekeep speaks.

Headers are kept the way ASGI and h11 keep them: a list of ``(name, value)``
byte pairs with lower-case names, in arrival order, duplicates allowed.  That
costs no conversion at either edge of the hot path.  Bodies are async
iterators of ``bytes`` so that they stream both ways with backpressure; a body
is read once.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from operator import itemgetter
from typing import Any, Final

import attrs

from ._consumer import ConsumerConfig
from ._descriptions import RouteInfo, ServiceInfo
from ._errors import GatekeepError, PayloadTooLarge
from ._identity import Identity

__all__ = [
    "EMPTY_BODY",
    "Body",
    "Headers",
    "Request",
    "Response",
    "empty_body",
    "problem_response",
]

Body = AsyncIterable[bytes]

_NAME: Final = itemgetter(0)
# An HTTP field name (RFC 9110 §5.1: a token), bytes or text.
is_header_name: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch


def header_names(pairs: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The names among ``(name, value)`` pairs, as a set (built at C speed: the hot path's first test)."""
    return set(map(_NAME, pairs))


class Headers:
    """An ordered multi-map of lower-case byte names to byte values."""

    __slots__ = ("raw",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]] | None = None) -> None:
        self.raw: list[tuple[bytes, bytes]] = list(raw) if raw is not None else []

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        """Build from text pairs (names are lower-cased)."""
        return cls((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs)

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        for k, v in self.raw:
            if k == name:
                return v
        return default

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.raw if k == name]

    def __contains__(self, name: object) -> bool:
        return any(k == name for k, _ in self.raw)

    def add(self, name: bytes, value: bytes) -> None:
        self.raw.append((name, value))

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every value of ``name`` by one."""
        self.raw = [(k, v) for k, v in self.raw if k != name]
        self.raw.append((name, value))

    def remove(self, *names: bytes) -> None:
        self.raw = [(k, v) for k, v in self.raw if k not in names]

    def text(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` as text (latin-1, as HTTP/1.1 allows)."""
        v = self.get(name.lower().encode("latin-1"))
        return default if v is None else v.decode("latin-1")

    def __iter__(self) -> Any:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


async def empty_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


@attrs.define(slots=True, eq=False)
class Request:
    """One client request as it moves through the gateway.

    ``path`` is the normalised path the router matched; ``raw_path`` is what
    the client sent.  Filters may change ``headers``, ``path`` and
    ``query_string``; ``state`` is a free dict for filters to talk to each
    other.  ``consumer`` and ``identity`` are set by authentication filters.
    """

    method: str
    path: str
    query_string: bytes = b""
    headers: Headers = attrs.field(factory=Headers)
    body: Body = attrs.field(factory=empty_body)
    scheme: str = "http"
    host: str = ""
    raw_path: bytes = b""
    client: tuple[str, int] | None = None
    server: tuple[str, int | None] | None = None
    http_version: str = "1.1"
    request_id: str = ""
    # Set by the gateway once routed: public descriptions, built once per route at compile time.
    route: RouteInfo | None = None
    params: dict[str, str] = attrs.field(factory=dict)
    service: ServiceInfo | None = None
    # Set by authentication plugins.
    consumer: ConsumerConfig | None = None
    identity: Identity | None = None
    state: dict[str, Any] = attrs.field(factory=dict)
    # True once any byte of the body was handed to an upstream.
    body_sent: bool = False
    # A WebSocket handshake (an ASGI ``websocket`` scope): filters run on it like on
    # any GET; only the wrapped app (middleware mode) can take the connection.
    websocket: bool = False
    # The client's address when the peer is a trusted proxy: the right-most
    # untrusted X-Forwarded-For entry (set by the gateway's edge step).
    forwarded_ip: str = ""
    # The gateway's own compiled route (``gatekeep._compile.Route``, which lives above this
    # module: hence ``Any``); plugins read ``route``.  Not an argument of the constructor.
    _compiled_route: Any = attrs.field(default=None, init=False, repr=False, eq=False)

    async def read(self, limit: int = 10 * 1024 * 1024) -> bytes:
        """Read the whole body (at most ``limit`` bytes) and keep it for reuse.

        Raises:
            PayloadTooLarge: the body is longer than ``limit``.
        """
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.body:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        self.body = _replayable(data)
        return data

    def replace_body(self, data: bytes) -> None:
        """Replace the body with ``data`` (replayable) and fix ``content-length``.

        For filters that rewrite a body they read with ``read()``.
        """
        self.body = _replayable(data)
        self.headers.remove(b"transfer-encoding")
        self.headers.set(b"content-length", str(len(data)).encode("ascii"))

    @property
    def client_ip(self) -> str:
        """The client's address: the peer's, or behind a trusted proxy the one it forwarded."""
        return self.forwarded_ip or (self.client[0] if self.client else "")

    @property
    def peer_ip(self) -> str:
        """The address of the connection's other end (a proxy's, behind one)."""
        return self.client[0] if self.client else ""

    @property
    def consumer_name(self) -> str | None:
        """The consumer as logs and metrics name it: the string itself, else its
        ``username``, ``key``, ``id`` or ``custom_id``; ``None`` when there is none."""
        consumer = self.consumer
        if consumer is None or isinstance(consumer, str):
            return consumer
        for attr in ("username", "key", "id", "custom_id"):
            value = getattr(consumer, attr, None)
            if isinstance(value, str) and value:
                return value
        return None


class _replayable:
    """A body already read into memory: can be iterated again (for retries)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _one_chunk(self.data)


# The body of a request that has none (no content-length, no transfer-encoding).
EMPTY_BODY: Body = _replayable(b"")


def replayable(data: bytes) -> Body:
    """A body from bytes that can be read more than once."""
    return _replayable(data)


def is_replayable(body: Body) -> bool:
    return isinstance(body, _replayable)


# A clean-up registered with ``Response.defer``.
Cleanup = Callable[[], Awaitable[None]]


@attrs.define(slots=True, eq=False)
class Response:
    """An answer: from an upstream, from a filter, or from the gateway itself.

    ``body`` is either ``bytes`` or an async iterable of ``bytes``; response
    filters may replace it with a wrapping iterator.  ``source`` says who
    produced it: ``"service"`` (an upstream or the wrapped app) or
    ``"gateway"``.

    Resources the body holds (a pooled connection, a balancer slot, the
    wrapped app's task …) are released by one mechanism: whoever takes one
    registers its release with ``defer``; ``aclose`` runs them all, exactly
    once, last registered first, after the last byte or on error or
    cancellation.  The list is made on the first ``defer``: an answer that
    holds nothing costs nothing.
    """

    status: int = 200
    headers: Headers = attrs.field(factory=Headers)
    body: bytes | Body = b""
    source: str = "gateway"
    _deferred: list[Cleanup] | None = attrs.field(default=None, alias="deferred", repr=False)

    def defer(self, cleanup: Cleanup) -> None:
        """Run ``cleanup`` when the response is closed (LIFO, exactly once)."""
        deferred = self._deferred
        if deferred is None:
            self._deferred = [cleanup]
        else:
            deferred.append(cleanup)

    def adopt(self, old: Response) -> None:
        """Take over what ``old`` holds: a filter replaced ``old`` with this response.

        ``old``'s clean-ups run after this response's own, since this body may
        still read from ``old``'s (closing a fully read upstream body just
        returns its connection).
        """
        taken, old._deferred = old._deferred, None
        if taken:
            self._deferred = taken + self._deferred if self._deferred else taken

    @property
    def holds_resources(self) -> bool:
        """Whether closing this response releases anything (an unread upstream body …)."""
        return bool(self._deferred)

    @property
    def on_close(self) -> Callable[[], Awaitable[None]] | None:
        """Deprecated: ``aclose`` when something is deferred (use ``defer``/``holds_resources``)."""
        return self.aclose if self._deferred else None

    @on_close.setter
    def on_close(self, cleanup: Cleanup | None) -> None:
        # The old spelling, kept for one release: chaining is now ``defer``.
        if cleanup is not None:
            self.defer(cleanup)

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
        data = text.encode()
        return cls(
            status,
            Headers([(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]),
            data,
        )

    @classmethod
    def json(cls, obj: Any, status: int = 200, content_type: str = "application/json") -> Response:
        data = json.dumps(obj, separators=(",", ":")).encode()
        return cls(
            status,
            Headers([(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]),
            data,
        )

    def iter_body(self) -> AsyncIterable[bytes]:
        body = self.body
        if isinstance(body, bytes | bytearray | memoryview):
            return _one_chunk(bytes(body))
        return body

    async def read(self) -> bytes:
        """Read the whole body (for tests and small answers)."""
        if isinstance(self.body, bytes):
            return self.body
        chunks = [c async for c in self.body]
        data = b"".join(chunks)
        self.body = data
        return data

    async def aclose(self) -> None:
        """Release what the body holds (see ``defer``); a second call does nothing.

        Every clean-up runs even when an earlier one fails; the first failure
        is raised after the last.
        """
        deferred = self._deferred
        if not deferred:
            return
        self._deferred = None
        error: BaseException | None = None
        for cleanup in reversed(deferred):
            try:
                await cleanup()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error


_PROBLEM_BASE = "https://gatekeep.dev/problems/"
# The default of ``[gateway] request_id_header``, for answers made before a gateway is known.
DEFAULT_REQUEST_ID_HEADER: Final = b"x-request-id"


def problem_response(
    error: GatekeepError,
    request_id: str = "",
    instance: str = "",
    *,
    request_id_header: bytes = DEFAULT_REQUEST_ID_HEADER,
) -> Response:
    """Render a ``GatekeepError`` as an RFC 9457 problem document.

    ``request_id_header`` is the gateway's ``[gateway] request_id_header``
    (lower case); the id goes out under that name.
    """
    doc: dict[str, Any] = {
        "type": _PROBLEM_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    if instance:
        doc["instance"] = instance
    if request_id:
        doc["request_id"] = request_id
    for k, v in error.extensions.items():
        doc.setdefault(k, v)
    response = Response.json(doc, error.status, "application/problem+json")
    for name, value in error.headers:
        response.headers.add(name.lower().encode("latin-1"), value.encode("latin-1"))
    if request_id:
        response.headers.add(request_id_header, request_id.encode("latin-1"))
    return response
