"""One client connection of the front server: an asyncio ``Protocol`` on httptools.

Theory of operation
-------------------

Bytes go to httptools' llhttp parser, whose callbacks build the request
head.  When the head is complete the request becomes a ``_Cycle`` (one
request and its response) and the ASGI app runs on it in a task of its own.
One request is answered at a time: a pipelined request that arrives while
another is being answered waits in ``pipeline`` with reading paused, and
starts when the previous response is complete.

The head is where a client can make a server hold memory and time without
sending anything useful, so it is bounded three ways (``ServerSettings``):

- bytes: in the head, the parser is fed at most what is left of
  ``max_header_bytes``; a head still incomplete at that point is answered 431.
  httptools joins a field's pieces before its callback fires, so this is what
  keeps that memory bounded too;
- fields (``max_headers``, 431) and target length (``max_target_bytes``, 414),
  counted in the callbacks;
- time: ``header_timeout`` runs from the first byte of a head (from the
  accept for a connection's first request) to its end; then 408.  A connection
  that never sent a byte is closed silently, as is one idle for
  ``keepalive_timeout`` between requests.

Every refusal is a problem+json answer with ``Connection: close``, followed by
a lingering close (our side shut for writing, the client's late bytes read and
dropped for a moment) so that the answer is not lost to a TCP reset.

The request body is buffered up to ``_READ_HIGH_WATER`` bytes, then reading
pauses until the app's ``receive`` takes it (backpressure all the way to the
client).  Responses wait for the transport to drain past
``write_buffer_bytes``.  A response that ends before its request body was
read has the rest of the body read and dropped (for up to ``_LINGER`` seconds
and ``_DISCARD_LIMIT`` bytes) so the connection can be reused; past that, or
after an ``Expect: 100-continue`` that was never answered with 100, the
connection is closed.

Nothing here reads ``X-Forwarded-*`` or ``Forwarded``: the scope's ``client``
is the TCP peer, and the gateway's ``trusted_proxies`` decide what to believe.

Upgrades: ``Upgrade: websocket`` makes the request an ASGI ``websocket``
scope served by ``ServerWebSocket`` (``_websocket.py``): the bytes after its
head go to it, not to the parser, and the connection never carries HTTP
again.  ``CONNECT`` is answered 501; any other upgrade (``h2c`` ...) is
ignored and the request served as HTTP/1.1, as nginx and Envoy do.  llhttp
treats an upgrade request as the end of HTTP on the connection, so after an
ignored one a new parser takes over, primed with a made-up head when the
request has a body still to read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, Final, NoReturn, Protocol
from urllib.parse import unquote

import httptools

from .._errors import BadRequest, GatekeepError, HeaderFieldsTooLarge, RequestTimeout, Unsupported, URITooLong
from . import _wire
from ._settings import ServerSettings
from ._tls import tls_extension
from ._websocket import ServerWebSocket, check_handshake, websocket_scope

__all__ = ["HTTPConnection", "LongLived", "ServerState"]

log = logging.getLogger("gatekeep.serve")
access_log = logging.getLogger("gatekeep.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

# Request body buffered for the app before reading from the client pauses.
_READ_HIGH_WATER: Final = 64 * 1024
# After our answer: how long, and how much, of a request body we read and drop.
_LINGER: Final = 2.0
_DISCARD_LIMIT: Final = 1024 * 1024

# Where the parser is between two requests (named states, as in h11).
_BETWEEN: Final = "between"  # no byte of the next request yet
_HEAD: Final = "head"
_BODY: Final = "body"

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.4"}
_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
# The fields the head checks look at; everything else only goes to the app.
_WATCHED: Final = frozenset({b"host", b"upgrade", b"expect", b"content-length", b"transfer-encoding"})
_DISCONNECT: Final = {"type": "http.disconnect"}


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the reason is in ``HTTPConnection.refusal``."""


class LongLived(Protocol):
    """A connection that outlives its request (a WebSocket), in ``ServerState.long_lived`` while open."""

    def going_away(self) -> None:
        """The server is draining: close now (a WebSocket with 1001); the task serving it then ends."""


class ServerState:
    """What the connections of one server share: the app, the limits, who is connected."""

    __slots__ = (
        "access_log",
        "app",
        "connections",
        "draining",
        "lifespan_state",
        "long_lived",
        "native",
        "server_field",
        "settings",
        "tasks",
    )

    def __init__(self, app: ASGI, settings: ServerSettings, *, access_log: bool = False) -> None:
        self.app = app
        # gatekeep's own app offers a handler that takes a request cycle directly, without
        # ASGI's messages in between (``gatekeep.adapters._native``); lifespan and WebSockets
        # still go through ASGI.
        self.native: Callable[[_Cycle], Coroutine[Any, Any, None]] | None = getattr(
            app, "gatekeep_native", None
        )
        self.settings = settings
        self.access_log = access_log
        self.connections: set[HTTPConnection] = set()
        # The tasks answering requests: the server cancels what is left after its drain timeout.
        self.tasks: set[asyncio.Task[None]] = set()
        # Upgraded connections the drain asks to go away (their tasks are in ``tasks``).
        self.long_lived: set[LongLived] = set()
        self.draining = False
        self.lifespan_state: dict[str, Any] = {}
        server = settings.server_header
        self.server_field = b"server: " + server.encode("ascii") + b"\r\n" if server else b""


class HTTPConnection(asyncio.Protocol):
    """One client connection (see the module doc)."""

    def __init__(self, shared: ServerState) -> None:
        self.shared = shared
        self.settings = shared.settings
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.tls: dict[str, Any] | None = None  # the ASGI TLS extension, once per connection
        self.cycle: _Cycle | None = None  # the request the app is answering
        self.parsing: _Cycle | None = None  # the request whose body is being parsed
        self.pipeline: deque[_Cycle] = deque()
        # One deadline at a time (see ``_arm``): when, what then, and the loop's timer behind it.
        self.deadline = 0.0
        self.on_deadline: Callable[[], Any] | None = None
        self.timer_kind: str | None = None  # _HEAD: header_timeout; else keep-alive or linger
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.parse = _BETWEEN
        self.head_bytes = 0
        self.received = False  # any byte of the current head
        self.closing = False
        self.read_paused = False
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.refused = False  # set by _stop: the parser's error is ours
        self.refusal: GatekeepError | None = None  # what to answer (None: just close)
        self.pending_refusal: GatekeepError | None = None
        self.discarded = 0
        # The head being parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.hosts: list[bytes] = []
        self.upgrade: bytes | None = None
        self.expect = False
        self.has_body = False
        self.coded = False  # a Transfer-Encoding field
        # Priming a fresh parser after an ignored upgrade: its callbacks are not a request.
        self.priming = False
        # After a WebSocket handshake's head: every byte goes to it (see _websocket.py).
        self.websocket: ServerWebSocket | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is no subclass)
        self.shared.connections.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.client = (str(peer[0]), int(peer[1]))
        if isinstance(local, tuple):
            self.server = (str(local[0]), int(local[1]))
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.scheme = "https"
            self.tls = tls_extension(ssl_object)
        self.transport.set_write_buffer_limits(high=self.settings.write_buffer_bytes)
        self._arm(self.settings.header_timeout, self._head_timed_out, _HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._drop_timer()
        self.shared.connections.discard(self)
        for cycle in (self.cycle, *self.pipeline):
            if cycle is not None:
                cycle.disconnected = True
                cycle.wake()
                if cycle.on_disconnect is not None and not cycle.response_complete:
                    cycle.on_disconnect()
        self.pipeline.clear()
        self._wake_writer()
        if self.websocket is not None:
            self.websocket.connection_lost()

    def eof_received(self) -> bool | None:
        # The client closed its side: as nginx does, take it as gone (the app
        # sees http.disconnect) rather than answer into a half-closed socket.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self.websocket is not None:
            self.websocket.data_received(data)
            return
        if self.closing or self.refused:
            return  # a lingering close: the client's late bytes are dropped
        self.received = True
        if self.parse is _BETWEEN:
            self.parse = _HEAD
            self.head_bytes = 0
            if self.cycle is None and self.timer_kind is not _HEAD:
                # The first byte of a new head on an idle keep-alive connection.
                self._arm(self.settings.header_timeout, self._head_timed_out, _HEAD)
        limit = self.settings.max_header_bytes
        view = memoryview(data)
        whole = True  # the parser is fed all of ``view`` (else what follows the part fed)
        try:
            while self.parse is _HEAD:
                budget = limit - self.head_bytes
                if len(view) <= budget:
                    self.head_bytes += len(view)
                    whole = True
                    self._feed(view)
                    return
                whole = False
                part, view = view[:budget], view[budget:]
                self.head_bytes += budget
                self._feed(part)
                if self.parse is _HEAD and self.head_bytes >= limit:
                    raise _Refused(HeaderFieldsTooLarge(f"the request head is larger than {limit} bytes"))
            if view:
                whole = True
                self._feed(view)
        except _Refused as exc:
            self._refuse(exc.args[0])
        except _Upgraded as upgraded:
            # The parser stopped ``upgraded.rest`` bytes before the end of what it was fed.
            rest = bytes(upgraded.rest) if whole else bytes(upgraded.rest) + bytes(view)
            self._after_upgrade(rest)

    def _feed(self, data: memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise _Upgraded(data[int(exc.args[0]) :]) from None
        except httptools.HttpParserError as exc:
            if self.refused:
                raise _Refused(self.refusal) from None
            raise _Refused(BadRequest(f"malformed request: {exc}")) from None

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.priming:
            return
        if self.parse is _BETWEEN:
            # A pipelined request: its bytes came with the previous request's.
            self.parse = _HEAD
            self.head_bytes = 0
        self.url = b""
        self.headers = []
        self.hosts = []
        self.upgrade = None
        self.expect = False
        self.has_body = False
        self.coded = False

    def on_url(self, url: bytes) -> None:
        if self.priming:
            return
        self.url = self.url + url if self.url else url
        if len(self.url) > self.settings.max_target_bytes:
            self._stop(
                URITooLong(f"the request target is longer than {self.settings.max_target_bytes} bytes")
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.priming:
            return
        headers = self.headers
        if len(headers) >= self.settings.max_headers:
            self._stop(HeaderFieldsTooLarge(f"more than {self.settings.max_headers} header fields"))
        name = name.lower()
        # llhttp keeps trailing OWS, which is no part of the value (RFC 9110 §5.5).
        value = value.rstrip(b" \t")
        headers.append((name, value))
        if name in _WATCHED:
            if name == b"host":
                self.hosts.append(value)
            elif name == b"upgrade":
                self.upgrade = value.lower()
            elif name == b"expect":
                self.expect = value.lower() == b"100-continue"
            else:
                self.has_body = self.has_body or value not in (b"0", b"")
                self.coded = self.coded or name == b"transfer-encoding"

    def on_headers_complete(self) -> None:
        if self.priming:
            return
        if self.timer_kind is _HEAD:
            self._disarm()
        self.parse = _BODY
        parser = self.parser
        method_bytes = parser.get_method()
        websocket = self.upgrade is not None and b"websocket" in self.upgrade
        if websocket:
            refusal = check_handshake(method_bytes, parser.get_http_version(), self.headers, self.has_body)
            if refusal is not None:
                self._stop(refusal)
            if self.cycle is not None:
                self._stop(BadRequest("a WebSocket handshake may not be pipelined behind another request"))
        if method_bytes == b"CONNECT":
            self._stop(Unsupported("CONNECT is not supported by gatekeep serve"))
        version = parser.get_http_version()
        hosts = self.hosts
        if len(hosts) > 1:
            self._stop(BadRequest("more than one Host header"))
        if not hosts and version == "1.1":
            self._stop(BadRequest("an HTTP/1.1 request needs a Host header"))
        url = self.url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
            path = raw_path
        elif url == b"*" and method_bytes == b"OPTIONS":
            raw_path = path = b"*"
            query = b""
        else:
            # Absolute form (RFC 9112 §3.2.2): passed whole in raw_path, as h11
            # servers do; the gateway's edge step decides the host and checks
            # that Host agrees (one rule for every server).
            raw_path, _, query = url.partition(b"?")
            if not raw_path.lower().startswith((b"http://", b"https://")):
                self._stop(BadRequest("invalid request target"))
            parts = raw_path.split(b"/", 3)
            path = b"/" + parts[3] if len(parts) == 4 else b"/"
        method = _METHODS.get(method_bytes) or method_bytes.decode("ascii")
        head = RequestHead(
            method, version, raw_path, query, path, self.headers, hosts[0] if hosts else None, self
        )
        if websocket:
            self._start_websocket(websocket_scope(head.scope()))
            return
        keep_alive = parser.should_keep_alive() and not self.shared.draining
        if self.coded and version == "1.0":
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
            # framing: it is answered, then the connection is closed.
            keep_alive = False
        cycle = _Cycle(self, head, keep_alive=keep_alive, expect=self.expect and version == "1.1")
        cycle.head_request = method == "HEAD"
        cycle.http_11 = version == "1.1"
        cycle.has_body = self.has_body
        if parser.should_upgrade():
            # An upgrade we ignore (h2c ...): llhttp will not parse its body (see _after_upgrade).
            cycle.upgrade_body = self.has_body
        self.parsing = cycle
        if self.cycle is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None:
            return
        if cycle.response_complete:
            # Answered already: read and drop the rest, within limits, to keep the connection.
            self.discarded += len(body)
            if self.discarded > _DISCARD_LIMIT:
                self._stop(None)
            return
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > _READ_HIGH_WATER:
            self._pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        if self.priming:
            return
        cycle = self.parsing
        if cycle is None:
            return
        if cycle.upgrade_body:
            return  # llhttp skipped the body of an upgrade request: it is still to come
        self.parsing = None
        self.parse = _BETWEEN
        cycle.message_complete = True
        cycle.wake()
        if cycle.response_complete and cycle is self.cycle:
            # The rest of an unread body has been dropped: the connection lives on.
            self._next()

    def _stop(self, error: GatekeepError | None) -> NoReturn:
        self.refused = True
        self.refusal = error
        raise _Refused(error)

    # -- the app's side -----------------------------------------------------------------

    def _start(self, cycle: _Cycle) -> None:
        self.cycle = cycle
        native = self.shared.native
        if native is not None:
            # The handler is the task's coroutine itself (no wrapper: one frame less to pass
            # through at every suspension); ``native_done`` does what a wrapper's except would.
            task = cycle.task = self.loop.create_task(native(cycle))
            self.shared.tasks.add(task)
            task.add_done_callback(cycle.native_done)
            return
        task = self.loop.create_task(cycle.run(self.shared.app))
        self.shared.tasks.add(task)
        task.add_done_callback(self.shared.tasks.discard)

    def _start_websocket(self, scope: Scope) -> None:
        self.pause_for_websocket()  # nothing is read until the app accepts
        ws = self.websocket = ServerWebSocket(self, scope)
        self.shared.long_lived.add(ws)  # the drain closes it with 1001
        task = self.loop.create_task(ws.run(self.shared.app))
        self.shared.tasks.add(task)
        task.add_done_callback(self.shared.tasks.discard)

    # What ``ServerWebSocket`` may do to its connection.

    def pause_for_websocket(self) -> None:
        self._pause_reading()

    def resume_for_websocket(self) -> None:
        if self.read_paused and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    def close_transport(self) -> None:
        self.closing = True
        self._drop_timer()
        self.transport.close()

    def close_lingering(self) -> None:
        self._close_lingering()

    def cycle_done(self, cycle: _Cycle) -> None:
        """The app sent the last byte of ``cycle``'s response."""
        if self.shared.access_log:
            head = cycle.head
            query = head.query_string
            target = head.raw_path + (b"?" + query if query else b"")
            access_log.info(
                '%s - "%s %s HTTP/%s" %d',
                f"{self.client[0]}:{self.client[1]}" if self.client else "-",
                head.method,
                target.decode("latin-1"),
                head.version,
                cycle.status,
            )
        if self.closing:
            return
        if not cycle.message_complete:
            if cycle.keep_alive and not cycle.expect and not cycle.upgrade_body:
                # Drop the rest of the body, then go on (on_message_complete calls _next).
                self.discarded = 0
                cycle.body.clear()
                self._resume_reading()
                self._arm(_LINGER, self._linger_over)
            else:
                # An Expect: 100-continue never answered 100: the client may or may
                # not send the body, so the next bytes cannot be trusted to be a request.
                self._close_lingering()
            return
        self._next()

    def _next(self) -> None:
        cycle = self.cycle
        self.cycle = None
        if cycle is not None and (not cycle.keep_alive or self.shared.draining):
            self._close_lingering()
            return
        if self.pipeline:
            following = self.pipeline.popleft()
            self._start(following)
            if not self.pipeline:
                self._resume_reading()
            return
        if self.pending_refusal is not None:
            error, self.pending_refusal = self.pending_refusal, None
            self._answer_and_close(error)
            return
        self._resume_reading()
        if self.parse is _BETWEEN:
            self._arm(self.settings.keepalive_timeout, self._idle_timed_out)
        elif self.parse is _HEAD:
            self._arm(self.settings.header_timeout, self._head_timed_out, _HEAD)
        else:
            self._disarm()

    def shutdown(self) -> None:
        """The server is draining: close now if idle, else after the answer in progress."""
        if self.websocket is not None:
            self.websocket.shutdown()  # close 1001
            return
        if self.cycle is None:
            self.closing = True
            self._disarm()
            self.transport.close()
        else:
            self.cycle.keep_alive = False

    # -- refusals, timers, flow control -------------------------------------------------

    def _refuse(self, error: GatekeepError | None) -> None:
        self.refused = True  # nothing more is parsed on this connection
        self._pause_reading()
        cycle = self.cycle
        if cycle is not None and cycle is self.parsing:
            # The body of the request being answered is broken (bad chunk framing,
            # too much to drop): to the app the client is gone; the client gets our
            # answer if the app's has not started.
            cycle.disconnected = True
            cycle.wake()
            if not cycle.response_started and error is not None:
                cycle.response_started = cycle.response_complete = True
                self.cycle = None
                self._answer_and_close(error)
            else:
                self._close_lingering()
        elif error is None:
            self._close_lingering()
        elif cycle is not None:
            self.pending_refusal = error  # answered after the response in progress
        else:
            self._answer_and_close(error)

    def _answer_and_close(self, error: GatekeepError) -> None:
        if error.status >= 500:
            log.info("refused a request from %s: %s", self.client, error.detail)
        self.transport.write(_wire.problem(error, self.shared.server_field))
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Shut our side, read and drop what the client still sends for a moment, then close."""
        if self.closing:
            return
        self.closing = True
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            if self.read_paused:  # reading and dropping is what keeps the kernel from sending a reset
                self.read_paused = False
                transport.resume_reading()
            self._arm(_LINGER, transport.close, None)
        else:  # pragma: no cover - TCP transports can
            transport.close()

    def _linger_over(self) -> None:
        self.timer_kind = None
        self._close_lingering()

    def _head_timed_out(self) -> None:
        self.timer_kind = None
        if self.closing or self.cycle is not None:
            return
        if not self.received:
            # Not a byte since the accept: nothing to answer (a preconnect, a scanner).
            self.closing = True
            self.transport.close()
            return
        self._refuse(
            RequestTimeout(f"the request head did not arrive within {self.settings.header_timeout} s")
        )

    def _idle_timed_out(self) -> None:
        self.timer_kind = None
        if self.cycle is None and self.parse is _BETWEEN and not self.closing:
            self.closing = True
            self.transport.close()

    def _arm(self, delay: float, callback: Callable[[], Any], kind: str | None = None) -> None:
        """Call ``callback`` in ``delay`` s unless re-armed or disarmed first (one deadline at a time).

        The loop's timer is not replaced on every request: it stays set for
        the earliest deadline armed, and when it fires for a deadline moved
        later meanwhile it is set again for that one (nginx's lazy timers).
        A keep-alive connection thus costs a timer per timeout period, not
        two per request.
        """
        when = self.loop.time() + delay
        self.deadline = when
        self.on_deadline = callback
        self.timer_kind = kind
        timer = self.timer
        if timer is None or self.timer_at > when:
            if timer is not None:
                timer.cancel()
            self.timer_at = when
            self.timer = self.loop.call_at(when, self._timer_fired)

    def _disarm(self) -> None:
        self.deadline = 0.0
        self.on_deadline = None
        self.timer_kind = None

    def _drop_timer(self) -> None:
        """Disarm, and give the loop's timer back (a closed connection is not kept until it fires)."""
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        callback = self.on_deadline
        if callback is None:
            return
        deadline = self.deadline
        if deadline > self.timer_at:  # moved later since the timer was set
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self._timer_fired)
            return
        self.deadline = 0.0
        self.on_deadline = None
        callback()

    def _pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.pipeline and not self.refused:
            self.read_paused = False
            self.transport.resume_reading()

    def body_taken(self) -> None:
        """The app took the buffered body: read more from the client."""
        if self.read_paused and not self.pipeline and not self.closing and not self.refused:
            self.read_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        if not self.write_paused or self.transport.is_closing():
            return
        waiter = self.drained
        if waiter is None:
            waiter = self.drained = self.loop.create_future()
        await waiter

    def _wake_writer(self) -> None:
        waiter, self.drained = self.drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _after_upgrade(self, rest: bytes) -> None:
        """llhttp stopped at an upgrade: the WebSocket's bytes, or go on with a fresh parser."""
        if self.websocket is not None:
            if rest:
                self.websocket.data_received(rest)
            return
        self.parser = httptools.HttpRequestParser(self)
        cycle = self.parsing
        if cycle is not None and cycle.upgrade_body:
            # Prime the new parser with a head framing the body the same way, then feed the body.
            framing = next(
                (f"{k.decode()}: {v.decode('latin-1')}" for k, v in cycle.head.headers if k in _FRAMING),
                "content-length: 0",
            )
            self.priming = True
            try:
                self.parser.feed_data(f"POST / HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n".encode("latin-1"))
            except httptools.HttpParserError:
                self._refuse(BadRequest("invalid body framing"))
                return
            finally:
                self.priming = False
            cycle.upgrade_body = False
            self.parse = _BODY
        else:
            self.parse = _BETWEEN
        if rest:
            self.data_received(rest)


_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})


class _Upgraded(Exception):
    """httptools stopped at an upgrade; ``rest`` is what it did not parse of the chunk."""

    def __init__(self, rest: memoryview) -> None:
        super().__init__()
        self.rest = rest


class RequestHead:
    """What the parser read of a request's head, with the connection it came on."""

    __slots__ = ("conn", "headers", "host", "method", "path", "query_string", "raw_path", "version")

    def __init__(
        self,
        method: str,
        version: str,
        raw_path: bytes,
        query_string: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        host: bytes | None,
        conn: HTTPConnection,
    ) -> None:
        self.method = method
        self.version = version
        self.raw_path = raw_path  # the target before "?" (absolute form: whole)
        self.query_string = query_string
        self.path = path  # the path of the target, still percent-encoded
        self.headers = headers
        self.host = host  # the Host field's value (the parser checked there is at most one)
        self.conn = conn  # its ``client``, ``server``, ``scheme`` and ``tls``

    def scope(self) -> Scope:
        """The ASGI scope of this request."""
        conn = self.conn
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI_VERSION,
            "http_version": self.version,
            "server": conn.server,
            "client": conn.client,
            "scheme": conn.scheme,
            "method": self.method,
            "root_path": "",
            "path": unquote(self.path.decode("latin-1")),
            "raw_path": self.raw_path,
            "query_string": self.query_string,
            "headers": self.headers,
        }
        if conn.shared.lifespan_state:
            scope["state"] = conn.shared.lifespan_state.copy()
        if conn.tls is not None:
            scope["extensions"] = {"tls": conn.tls}
        return scope


class _Cycle:
    """One request and its response: the ASGI ``receive`` and ``send`` of a scope."""

    __slots__ = (
        "body",
        "body_done",
        "buffered",
        "conn",
        "disconnected",
        "expect",
        "framing",
        "has_body",
        "head_request",
        "http_11",
        "keep_alive",
        "message_complete",
        "on_disconnect",
        "pending_head",
        "remaining",
        "response_complete",
        "response_started",
        "head",
        "_scope",
        "status",
        "task",
        "upgrade_body",
        "waiter",
    )

    def __init__(self, conn: HTTPConnection, head: RequestHead, *, keep_alive: bool, expect: bool) -> None:
        self.conn = conn
        self.head = head
        self._scope: Scope | None = None
        self.keep_alive = keep_alive
        self.expect = expect  # 100 Continue still owed when the app first reads
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_done = False
        self.message_complete = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.head_request = False
        self.http_11 = True
        self.upgrade_body = False
        self.waiter: asyncio.Future[None] | None = None
        self.pending_head = b""
        self.framing = _wire.NONE
        self.remaining = -1
        self.status = 0
        self.has_body = False
        # Native handlers: called once if the client goes away before the answer is complete.
        self.on_disconnect: Callable[[], None] | None = None
        self.task: asyncio.Task[None] | None = None  # a native handler's, once started

    @property
    def scope(self) -> Scope:
        """The ASGI scope of the request (made on first use: gatekeep's native handler reads ``head``)."""
        scope = self._scope
        if scope is None:
            scope = self._scope = self.head.scope()
        return scope

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def run(self, app: ASGI) -> None:
        conn = self.conn
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            # The server is stopping past its drain timeout (a client disconnect is
            # the app's own cancellation, which it does not let out).
            if not self.response_complete:
                conn.transport.close()
            raise
        except Exception:
            log.exception("ASGI app failed on %s %s", self.scope["method"], self.scope["path"])
            self._fail()
            return
        if not self.response_complete:
            if not self.response_started:
                log.error("ASGI app returned without a response on %s", self.scope["path"])
            self._fail()

    def native_done(self, task: asyncio.Task[None]) -> None:
        """A native handler's task ended (see ``HTTPConnection._start``): what ``run`` does for an app."""
        self.conn.shared.tasks.discard(task)
        self.task = None
        if task.cancelled():
            # The server is stopping past its drain timeout (a client disconnect is
            # the handler's own cancellation, which it does not let out).
            if not self.response_complete:
                self.conn.transport.close()
            return
        exc = task.exception()
        if exc is not None:
            log.error("gatekeep failed on %s %s", self.scope["method"], self.scope["path"], exc_info=exc)
            self._fail()
            return
        if not self.response_complete:
            if not self.response_started and not self.disconnected:
                log.error("gatekeep returned without a response on %s", self.scope["path"])
            self._fail()

    def _fail(self) -> None:
        conn = self.conn
        if self.response_complete or self.disconnected or conn.closing:
            return  # nothing left to tell the client (an error after the answer is the app's own)
        if not self.response_started:
            self.response_started = self.response_complete = True
            failed = GatekeepError("the server failed to answer")
            conn.transport.write(_wire.problem(failed, conn.shared.server_field))
            conn.cycle = None
            conn._close_lingering()
        else:
            # Part of the answer is out: cutting the connection is the only honest signal left.
            conn.closing = True
            conn.transport.close()

    async def receive(self) -> Message:
        data = await self.read()
        if data is None:
            return _DISCONNECT
        return {"type": "http.request", "body": data, "more_body": not self.body_done}

    def read_now(self) -> bytes | None:
        """The whole request body, when all of it has arrived and none was taken; else None.

        The common case of a small body that came with its head: no waiting, no task switch.
        """
        if not self.message_complete or self.body_done or self.disconnected or self.response_complete:
            return None
        chunks = self.body
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        self.body_done = True
        return data

    async def read(self) -> bytes | None:
        """The request body received and not taken yet; None once the client is gone.

        ``body_done`` is set when what it returns is the end of the body.
        """
        if self.expect and not self.response_started and not self.disconnected:
            # The app wants the body: now the client may send it.
            self.expect = False
            self.conn.transport.write(_CONTINUE)
        while not (self.disconnected or self.response_complete):
            if self.body or (self.message_complete and not self.body_done):
                break
            self.conn.body_taken()
            waiter = self.waiter = self.conn.loop.create_future()
            await waiter
        else:
            return None
        chunks = self.body
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.message_complete:
            self.body_done = True
        else:
            self.conn.body_taken()
        return data

    async def send(self, message: Message) -> None:
        if self.disconnected:
            # As uvicorn does: the app learns of it from receive; writing is pointless.
            return
        kind = message["type"]
        if kind == "http.response.body":
            await self.write(message.get("body", b""), message.get("more_body", False))
        elif kind == "http.response.start":
            self.start(message["status"], message.get("headers", ()))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def start(self, status: int, headers: Any) -> None:
        """The response head; it goes out with the first body bytes (one write for a small answer).

        Raises:
            RuntimeError: a second head.
            ValueError: a status or a field that is not valid HTTP.
        """
        if self.response_started:
            raise RuntimeError("http.response.start sent twice")
        head = _wire.response_head(
            status,
            headers,
            head=self.head_request,
            http_11=self.http_11,
            keep_alive=self.keep_alive and not self.conn.shared.draining,
            server=self.conn.shared.server_field,
        )
        self.response_started = True  # only now: a head refused above still gets our 500
        self.status = status
        self.keep_alive = head.keep_alive
        self.framing = head.framing
        self.remaining = head.length
        self.pending_head = head.data

    async def write(self, body: bytes, more: bool) -> None:
        """Body bytes of the response (``more``: not the last); waits while the client reads slowly."""
        if self._put(body, more):
            await self.conn.drain()

    def write_last(self, body: bytes) -> None:
        """``write(body, False)`` without a coroutine: the last bytes never wait for the client."""
        self._put(body, False)

    def _put(self, body: bytes, more: bool) -> bool:
        """Frame and write ``body``; whether the writer should wait for the transport to drain."""
        if self.disconnected:
            return False
        if not self.response_started or self.response_complete:
            raise RuntimeError("http.response.body before http.response.start or after the last body")
        framing = self.framing
        if framing is _wire.CHUNKED:
            out = _wire.chunk(body) if body else b""
            if not more:
                out += b"0\r\n\r\n"
        elif framing is _wire.LENGTH:
            size = len(body)
            if size > self.remaining:
                raise RuntimeError("the response body is longer than its Content-Length")
            self.remaining -= size
            out = body
            if not more and self.remaining:
                self.keep_alive = False  # the client will see a short answer and a close
        elif framing is _wire.NONE:
            out = b""
        else:
            out = body
        conn = self.conn
        pending = self.pending_head
        if pending:
            self.pending_head = b""
            if len(out) < 16384:
                out = pending + out  # one write for a small answer
            else:
                conn.transport.write(pending)
        if out:
            conn.transport.write(out)
        if not more:
            self.response_complete = True
            self.wake()
            conn.cycle_done(self)
            return False
        return conn.write_paused
