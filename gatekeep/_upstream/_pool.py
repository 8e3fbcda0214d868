"""A keep-alive pool of upstream connections, per origin.

Theory of operation
-------------------
An *origin* is ``(scheme, host, port, TLS settings)``.  Each has a semaphore
of ``max_connections`` slots and a LIFO stack of idle connections.  A call
takes a slot (waiting at most ``timeouts.pool``), then the most recently used
idle connection that is neither older than ``idle_timeout`` nor *stale* (the
upstream closed it: a non-blocking peek at the socket), else a new one.  A
connection is opened only when no idle one is left, so open connections never
outnumber slots.  The slot and the connection go back together when the
response body ends (reused only if the codec says the cycle ended cleanly
with keep-alive) or when the response is closed early (then the connection is
closed: a half-read connection is never reused).

Stale connections.  An upstream may close an idle keep-alive connection at
the very moment we reuse it (the peek saw nothing yet).  The request then
fails with EOF or a reset before any response byte.  Such a failure on a
*reused* connection is retried once, on a fresh connection, when the caller
says the request is idempotent (``retry_safe``) or when no byte of it was
written; the body must be replayable (kept while small, see ``BodySource``).
Every other failure is raised with ``request_sent`` set on the error, so that
the gateway never replays a non-idempotent request that may have arrived;
a failure to open a connection also carries ``connect_failed`` (the guard
fails such a request over to another instance, see ``resilience._guard``) and
``body_untouched``.

Unread bytes.  A connection with anything left to read after its response
ended (bytes the codec holds, or bytes or EOF that arrived since) goes back
closed, not idle, and the peek at checkout catches what arrives while it
idles: such bytes would otherwise be read as the answer to the next request.
(Bytes an upstream sends *after* the next request was written cannot be told
from its answer; no HTTP/1.1 client can, which is why a desynchronised
connection is closed at the end of that answer.)
"""

from __future__ import annotations

import ssl
import time
from collections import deque
from collections.abc import Callable, Collection
from operator import itemgetter
from typing import Final

import anyio

from .._errors import BadRequest, GatekeepError, UpstreamConnectError, UpstreamError, UpstreamTimeout
from .._http import EMPTY_BODY, Body, Headers, Response, is_replayable
from .._protocols import Instance
from ._codec import Codec
from ._codec_choice import codec_for
from ._config import PoolLimits, Timeouts, TLSSettings
from ._connection import BodySource, UpstreamConnection, open_connection, translate
from ._tls import make_ssl_context

__all__ = ["UpstreamPool", "body_untouched", "check_transfer_coding", "connect_failed", "request_sent"]


_DEFAULT_TIMEOUTS: Final = Timeouts()
_DEFAULT_TLS: Final = TLSSettings()
_DEFAULT_LIMITS: Final = PoolLimits()
# Methods whose empty body is still announced with ``content-length: 0``.
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
# Response bytes already buffered when the head arrives are taken at once, up to this.
_EAGER_BODY: Final = 64 * 1024
# A response whose declared body is at most this many bytes behind its head is
# read whole before it is handed on (one send to the client, no stream).
_WAIT_BODY: Final = 16 * 1024


def request_sent(exc: BaseException) -> bool:
    """Did any byte of the request reach a socket before ``exc``?

    ``UpstreamPool.send`` sets ``exc.request_sent`` on every error it raises;
    anything else counts as sent (the safe answer: do not replay).
    """
    return bool(getattr(exc, "request_sent", True))


def connect_failed(exc: BaseException) -> bool:
    """Did ``exc`` come from opening a connection (refused, unreachable, connect
    timeout, TLS handshake)?  Then the instance never saw the request."""
    return bool(getattr(exc, "connect_failed", False))


def body_untouched(exc: BaseException) -> bool:
    """Was no byte of the request body read before ``exc``?  (Then the same
    body can still be sent elsewhere, even a streamed one.)"""
    return bool(getattr(exc, "body_untouched", False))


class _Origin:
    __slots__ = ("closed", "host", "idle", "label", "port", "server_name", "slots", "ssl_context")

    def __init__(
        self,
        host: str,
        port: int,
        label: str,
        limit: int,
        ssl_context: ssl.SSLContext | None,
        server_name: str | None,
    ) -> None:
        self.host = host
        self.port = port
        self.label = label
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.idle: deque[UpstreamConnection] = deque()
        self.slots = anyio.Semaphore(limit, fast_acquire=True)
        # Forgotten by the pool (``UpstreamPool.forget``): its busy connections close when released.
        self.closed = False


# The codec a pool uses when none is given: "auto", "h11" or "httptools".
DEFAULT_CODEC = "auto"


class UpstreamPool:
    """Streams requests to upstream instances over pooled HTTP/1.1 connections.

    Args:
        limits: per-origin connection limits.
        clock: a monotonic clock, for idle timeouts.
        codec_factory: makes the HTTP/1.1 codec of each new connection
            (default: ``codec_for(DEFAULT_CODEC)``, httptools when installed).
    """

    def __init__(
        self,
        limits: PoolLimits = _DEFAULT_LIMITS,
        *,
        clock: Callable[[], float] = time.monotonic,
        codec_factory: Callable[[], Codec] | None = None,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._codec_factory = codec_factory or codec_for(DEFAULT_CODEC)
        self._origins: dict[tuple[str, str, int, TLSSettings | None], _Origin] = {}
        self._ssl_contexts: dict[TLSSettings, ssl.SSLContext] = {}
        self._closed = False

    def stats(self) -> dict[str, tuple[int, int]]:
        """Per origin label: (connections in use, idle connections)."""
        limit = self._limits.max_connections
        return {o.label: (limit - o.slots.value, len(o.idle)) for o in self._origins.values()}

    async def send(
        self,
        instance: Instance,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body,
        *,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        tls: TLSSettings | None = None,
        retry_safe: bool = False,
    ) -> Response:
        """Send one request and return once the response head arrived.

        ``headers`` are sent as given, except that ``host`` is added when
        missing and the body framing is decided here: ``content-length`` when
        the caller gave one, else ``transfer-encoding: chunked`` when the body
        has any data (a caller's ``transfer-encoding`` is dropped).  The first
        body chunk is read before a connection is taken, to tell an empty body.

        The response body streams from the upstream; reading it to the end
        returns the connection to the pool, ``await response.aclose()``
        closes it.  One of the two must happen.

        Raises:
            UpstreamConnectError: refused, reset, unresolvable, TLS failure.
            UpstreamTimeout: the connect, write, read or pool timeout passed.
            UpstreamProtocolError: a malformed or truncated response head,
                or the connection broke before it arrived.
            BadRequest: the request cannot be framed (body longer or shorter
                than its ``content-length``, an invalid header).
            Every error carries ``request_sent`` (see ``request_sent()``).
            Errors of ``body`` itself propagate unchanged.
        """
        if self._closed:
            raise UpstreamConnectError("the upstream pool is closed")
        origin = self._origins.get((instance.scheme, instance.host, instance.port, tls))
        if origin is None:
            origin = self._make_origin(instance, tls)

        names = set(map(_NAME, headers))
        if names.isdisjoint(_BODY_FRAMING):  # (``_frame_headers``' plain case, inline)
            out, length, has_host = list(headers), None, b"host" in names
        else:
            try:
                out, length, has_host = _frame_headers(headers)
            except BadRequest as exc:
                exc.request_sent = False  # type: ignore[attr-defined]
                raise
        if not has_host:
            out.append((b"host", host_header(instance)))
        source: BodySource | None = None
        if body is EMPTY_BODY:
            if method in _BODY_METHODS:
                out.append((b"content-length", b"0"))
        elif length is None:
            source = BodySource(body, is_replayable(body))
            if await source.next() is None:
                if method in _BODY_METHODS:
                    out.append((b"content-length", b"0"))
                source = None
            else:
                source.rewind()
                out.append((b"transfer-encoding", b"chunked"))
        elif length:
            source = BodySource(body, is_replayable(body))

        method_b = method.encode("ascii")
        sent = False
        fresh = False
        while True:
            conn = None if fresh else self._idle_now(origin)
            if conn is None:
                try:
                    conn = await self._checkout(origin, timeouts, fresh)
                except GatekeepError as exc:
                    exc.request_sent = sent  # type: ignore[attr-defined]
                    exc.body_untouched = source is None or source.untouched  # type: ignore[attr-defined]
                    raise
            try:
                head = await conn.exchange(
                    method_b, target, out, source, read_timeout=timeouts.read, write_timeout=timeouts.write
                )
                chunks, ended = conn.take_buffered(_EAGER_BODY)
                if not ended and _short_body(head.headers, chunks):
                    # A small body that came just behind its head: wait for the
                    # rest, so that it too goes to the client in one send.
                    while (chunk := await conn.receive_body_chunk(timeouts.read)) is not None:
                        chunks.append(chunk)
                    ended = True
            except BaseException as exc:
                sent = sent or conn.request_sent
                await self._release(origin, conn, reuse=False)
                if not isinstance(exc, GatekeepError):
                    raise
                if (
                    not fresh
                    and isinstance(exc, UpstreamError)
                    and conn.cycles > 0
                    and conn.closed_by_peer
                    and not conn.response_started
                    and (retry_safe or not conn.request_sent)
                    and (source is None or source.rewind())
                ):
                    fresh = True  # a stale keep-alive connection: once more, on a new one
                    continue
                exc.request_sent = sent  # type: ignore[attr-defined]
                raise
            pending = (chunks[0] if len(chunks) == 1 else b"".join(chunks)) if chunks else None
            if ended:
                # The whole body came with the head: the connection goes back
                # to the pool, the body is handed over as bytes (one send to the client).
                if not self._release_now(origin, conn):
                    await self._release(origin, conn, reuse=True)
                return Response(head.status, Headers(head.headers), pending or b"", "service")
            stream = _ResponseStream(self, origin, conn, timeouts.read, pending)
            return Response(head.status, Headers(head.headers), stream, "service", [stream.aclose])

    async def aclose(self) -> None:
        """Close idle connections; busy ones close when their response ends."""
        self._closed = True
        for origin in self._origins.values():
            while origin.idle:
                await origin.idle.pop().aclose()

    async def forget(self, addresses: Collection[tuple[str, int]]) -> None:
        """Close the connections to these ``(host, port)``s: idle ones now, busy ones when
        their response ends (the instances of a service a reload removed)."""
        for key, origin in list(self._origins.items()):
            if (origin.host, origin.port) in addresses:
                del self._origins[key]
                origin.closed = True
                while origin.idle:
                    await origin.idle.pop().aclose()

    # -- internals -----------------------------------------------------------

    def _make_origin(self, instance: Instance, tls: TLSSettings | None) -> _Origin:
        label = f"{instance.scheme}://{instance.address}"
        ssl_context: ssl.SSLContext | None = None
        server_name: str | None = None
        if instance.scheme == "https":
            settings = tls or _DEFAULT_TLS
            ssl_context = self._ssl_contexts.get(settings)
            if ssl_context is None:
                try:
                    ssl_context = make_ssl_context(settings)
                except Exception as exc:
                    raise translate(exc, "connect", f"{label} (loading TLS settings)", None) from exc
                self._ssl_contexts[settings] = ssl_context
            server_name = settings.server_name
        elif instance.scheme != "http":
            raise UpstreamConnectError(f"unsupported upstream scheme {instance.scheme!r} for {label}")
        origin = _Origin(
            instance.host, instance.port, label, self._limits.max_connections, ssl_context, server_name
        )
        self._origins[(instance.scheme, instance.host, instance.port, tls)] = origin
        return origin

    def _idle_now(self, origin: _Origin) -> UpstreamConnection | None:
        """The newest idle connection with its slot, when both are there and it is good for
        another cycle (the common case, without a coroutine); else None and ``_checkout`` decides."""
        idle = origin.idle
        if not idle:
            return None
        conn = idle[-1]
        if conn.idle_since < self._clock() - self._limits.idle_timeout or conn.is_stale():
            return None  # (``_checkout`` closes it)
        try:
            origin.slots.acquire_nowait()
        except anyio.WouldBlock:
            return None
        idle.pop()
        return conn

    async def _checkout(self, origin: _Origin, timeouts: Timeouts, fresh: bool) -> UpstreamConnection:
        slots = origin.slots
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(timeouts.pool):
                    await slots.acquire()
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"pool timeout: all {self._limits.max_connections} connections to {origin.label} "
                    f"stayed busy for {timeouts.pool:g} s"
                ) from exc
        try:
            idle = origin.idle
            if idle and not fresh:
                deadline = self._clock() - self._limits.idle_timeout
                while idle:
                    conn = idle.pop()
                    if conn.idle_since >= deadline and not conn.is_stale():
                        return conn
                    await conn.aclose()
            try:
                return await open_connection(
                    origin.host,
                    origin.port,
                    label=origin.label,
                    codec=self._codec_factory(),
                    connect_timeout=timeouts.connect,
                    ssl_context=origin.ssl_context,
                    server_name=origin.server_name,
                )
            except GatekeepError as exc:
                exc.connect_failed = True  # type: ignore[attr-defined]
                raise
        except BaseException:
            slots.release()
            raise

    def _release_now(self, origin: _Origin, conn: UpstreamConnection) -> bool:
        """``_release(reuse=True)`` when no connection has to be closed (the common case, without
        a coroutine); False when ``_release`` has to do it."""
        idle = origin.idle
        if (
            self._closed
            or origin.closed
            or not conn.is_reusable
            or len(idle) >= self._limits.max_idle
            or conn.is_stale()
        ):
            return False
        now = self._clock()
        if idle and idle[0].idle_since < now - self._limits.idle_timeout:
            return False  # an idle one to close on the way
        conn.start_next_cycle()
        conn.idle_since = now
        idle.append(conn)
        origin.slots.release()
        return True

    async def _release(self, origin: _Origin, conn: UpstreamConnection, *, reuse: bool) -> None:
        """Give back the slot, and the connection if it can carry another cycle."""
        idle = origin.idle
        if (
            reuse
            and not self._closed
            and not origin.closed
            and conn.is_reusable
            and len(idle) < self._limits.max_idle
            and not conn.is_stale()  # bytes after the response, or EOF: never reused
        ):
            conn.start_next_cycle()
            now = self._clock()
            conn.idle_since = now
            idle.append(conn)
            origin.slots.release()
            deadline = now - self._limits.idle_timeout
            while idle[0].idle_since < deadline:  # oldest first; conn itself is fresh
                await idle.popleft().aclose()
            return
        origin.slots.release()
        await conn.aclose()


class _ResponseStream:
    """The upstream response body, as an async iterator that owns the connection."""

    __slots__ = ("_conn", "_origin", "_pending", "_pool", "_timeout")

    def __init__(
        self,
        pool: UpstreamPool,
        origin: _Origin,
        conn: UpstreamConnection,
        timeout: float | None,
        pending: bytes | None,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._conn: UpstreamConnection | None = conn
        self._timeout = timeout
        self._pending = pending

    def __aiter__(self) -> _ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        pending = self._pending
        if pending is not None:
            self._pending = None
            return pending
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            chunk = await conn.receive_body_chunk(self._timeout)
        except BaseException:
            self._conn = None
            await self._pool._release(self._origin, conn, reuse=False)
            raise
        if chunk is None:
            self._conn = None
            await self._pool._release(self._origin, conn, reuse=True)
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Stop reading: close the connection unless the body already ended.  Idempotent."""
        self._pending = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool._release(self._origin, conn, reuse=False)


def _short_body(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> bool:
    """Whether the response declares a body of at most ``_WAIT_BODY`` bytes more than ``chunks``."""
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) - sum(map(len, chunks)) <= _WAIT_BODY
    return False


_BODY_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
_NAME: Final = itemgetter(0)


def _frame_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], int | None, bool]:
    """Copy ``headers`` without ``transfer-encoding``; find ``content-length`` and ``host``.

    Raises:
        BadRequest: a bad ``content-length``, or a ``transfer-encoding`` other than one ``chunked``.
    """
    names = set(map(_NAME, headers))  # (``header_names``, inline)
    if names.isdisjoint(_BODY_FRAMING):
        return list(headers), None, b"host" in names
    out: list[tuple[bytes, bytes]] = []
    length: int | None = None
    has_host = False
    chunked = False  # one transfer-encoding seen already
    for pair in headers:
        name = pair[0]
        if name == b"content-length":
            value = pair[1].strip()
            if not value.isdigit() or (length is not None and int(value) != length):
                raise BadRequest(f"invalid content-length {pair[1]!r}")
            length = int(value)
        elif name == b"host":
            has_host = True
        elif name == b"transfer-encoding":
            if chunked or pair[1].strip().lower() != b"chunked":
                _refuse_coding(pair[1])
            chunked = True
            continue
        out.append(pair)
    return out, length, has_host


def check_transfer_coding(headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse a client's ``transfer-encoding`` other than one ``chunked``.

    RFC 9112 §6.3: with ``chunked`` not last the body's length is unknown (400).
    A coding before ``chunked`` (``gzip, chunked``, which llhttp and so uvicorn
    let through, de-chunking only) would reach the upstream undecoded and
    unannounced, the gateway re-framing the body as plain ``chunked``.

    Raises:
        BadRequest: any other ``transfer-encoding``.
    """
    chunked = False
    for name, value in headers:
        if name == b"transfer-encoding":  # (names come lower-cased from every adapter)
            if chunked or value.strip().lower() != b"chunked":
                _refuse_coding(value)
            chunked = True


def _refuse_coding(value: bytes) -> None:
    raise BadRequest(
        f"transfer-encoding {value.decode('latin-1')!r} cannot be forwarded: "
        "only a single chunked coding is accepted (RFC 9112 §6.3)"
    )


def host_header(instance: Instance) -> bytes:
    """The ``Host`` value for ``instance`` (port left out when it is the scheme's default)."""
    default = 443 if instance.scheme == "https" else 80
    host = instance.host
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    if instance.port == default:
        return host.encode("ascii")
    return f"{host}:{instance.port}".encode("ascii")
