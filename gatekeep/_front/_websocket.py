"""The front server's WebSocket connections: RFC 6455 under the ASGI ``websocket`` scope.

Theory of operation
-------------------
``HTTPConnection`` hands a request with ``Upgrade: websocket`` here once its
head is parsed.  ``check_handshake`` refuses what is no valid opening
handshake (RFC 6455 §4.2.1) before any app runs: not a GET, not HTTP/1.1, no
``Connection: upgrade``, a body, a bad key (400), or another version (426
with ``Sec-WebSocket-Version: 13``).

``ServerWebSocket`` then serves the app the ASGI WebSocket messages, as
uvicorn does, with the ``websocket.http.response`` extension so that a
denial is a real HTTP answer (gatekeep's problem+json):

- before ``websocket.accept`` the connection reads nothing (frames cannot
  come before our 101);
- ``websocket.accept`` writes the 101 (``Sec-WebSocket-Accept``, the chosen
  subprotocol, the app's fields) and negotiates permessage-deflate with the
  client (``_websocket/_deflate.py``) unless the accept's ``gatekeep.websocket``
  options turn it off (without them it is on, as in uvicorn); those options
  also carry the gateway's message limit, which then counts inflated bytes;
- ``websocket.close`` before accept answers 403, as every server does;
- frames from the client go through ``FrameReader`` (masked, at most
  ``MAX_MESSAGE`` bytes, else 1009) into a queue the app's ``receive``
  reads; reading pauses while the queue holds more than ``_HIGH_WATER``
  bytes (backpressure to the client);
- pings are answered here with pongs; a close frame is answered with the
  same code, the transport closed, and the app gets ``websocket.disconnect``;
- ``shutdown`` (the server drains) sends close 1001 and tells the app the
  client is going away (1001), so a proxied session closes its upstream too.

One access-log line per connection, written when it ends: the 101 (or the
denial's status), the close code and the message payload bytes each way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Protocol

from .._errors import BadRequest, GatekeepError
from .._http import is_header_name
from .._websocket import _deflate, _frames
from .._websocket._handshake import accept_value, has_token, subprotocols, valid_key
from . import _wire

__all__ = ["MAX_MESSAGE", "ServerWebSocket", "UpgradeRequired", "check_handshake"]

log = logging.getLogger("gatekeep.serve")
access_log = logging.getLogger("gatekeep.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

# The largest message the server buffers for the app (uvicorn's ws_max_size);
# the gateway's own, smaller limit ([gateway.websocket] max_message_bytes) applies after.
MAX_MESSAGE: Final = 16 * 1024 * 1024
# Client messages queued for the app before reading pauses.
_HIGH_WATER: Final = 1024 * 1024
# Seconds the client gets to answer our close frame before the connection is cut.
_CLOSE_TIMEOUT: Final = 5.0

# States (named, as in h11).
_HANDSHAKE: Final = "handshake"
_OPEN: Final = "open"
_CLOSING: Final = "closing"  # our close frame is out, the client's not in yet
_CLOSED: Final = "closed"
_RESPONDING: Final = "responding"  # denied with an HTTP answer (websocket.http.response)

_EXTENSIONS: Final[dict[str, dict[str, Any]]] = {"websocket.http.response": {}}
_FORBIDDEN: Final = (
    b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 9\r\nconnection: close\r\n\r\nForbidden"
)
# Fields of the app's accept that are the server's to write.
_ACCEPT_DROPS: Final = frozenset(
    {
        b"connection",
        b"upgrade",
        b"content-length",
        b"transfer-encoding",
        b"sec-websocket-accept",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
    }
)
_RESPONSE_DROPS: Final = frozenset({b"connection", b"keep-alive", b"upgrade", b"transfer-encoding"})
# The accept's options from gatekeep's own app (``_websocket._session.OPTIONS``).
_OPTIONS: Final = "gatekeep.websocket"


class _Shared(Protocol):
    @property
    def access_log(self) -> bool: ...

    @property
    def long_lived(self) -> set[Any]: ...


class _Connection(Protocol):
    """What ``ServerWebSocket`` uses of its ``HTTPConnection``."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    write_paused: bool

    @property
    def shared(self) -> _Shared: ...

    async def drain(self) -> None: ...

    def pause_for_websocket(self) -> None: ...

    def resume_for_websocket(self) -> None: ...

    def close_transport(self) -> None: ...

    def close_lingering(self) -> None: ...


class UpgradeRequired(GatekeepError):
    """A WebSocket version other than 13 (RFC 6455 §4.4)."""

    status = 426
    title = "Upgrade Required"
    slug = "upgrade-required"


def check_handshake(
    method: bytes, version: str, headers: list[tuple[bytes, bytes]], has_body: bool
) -> GatekeepError | None:
    """What is wrong with an opening handshake, ``None`` when it is valid."""
    if method != b"GET" or version != "1.1":
        return BadRequest("a WebSocket handshake is a GET over HTTP/1.1")
    if not has_token(headers, b"connection", b"upgrade"):
        return BadRequest("a WebSocket handshake needs 'Connection: upgrade'")
    if has_body:
        return BadRequest("a WebSocket handshake has no body")
    versions = [v.strip() for k, v in headers if k == b"sec-websocket-version"]
    if versions != [b"13"]:
        error = UpgradeRequired("only WebSocket version 13 (RFC 6455) is supported")
        error.headers = [("Sec-WebSocket-Version", "13")]
        return error
    keys = [v for k, v in headers if k == b"sec-websocket-key"]
    if len(keys) != 1 or not valid_key(keys[0]):
        return BadRequest("a WebSocket handshake needs one valid Sec-WebSocket-Key")
    return None


def websocket_scope(http_scope: Scope) -> Scope:
    """The ASGI ``websocket`` scope of a handshake whose ``http`` scope is given."""
    scope = dict(http_scope)
    del scope["method"]
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if http_scope.get("scheme") == "https" else "ws"
    scope["subprotocols"] = subprotocols(http_scope["headers"])
    scope["extensions"] = {**http_scope.get("extensions", {}), **_EXTENSIONS}
    return scope


class ServerWebSocket:
    """One upgraded client connection (see the module doc)."""

    def __init__(self, conn: _Connection, scope: Scope) -> None:
        self.conn = conn
        self.scope = scope
        self.key = next(v for k, v in scope["headers"] if k == b"sec-websocket-key")
        self.state: str = _HANDSHAKE
        self.connected = False  # the app got websocket.connect
        self.reader = _frames.FrameReader(masked=True, max_message=MAX_MESSAGE)
        self.deflater: _deflate.Deflater | None = None  # permessage-deflate, once negotiated
        self.pending = bytearray()  # bytes that came before the accept
        self.inbox: deque[Message] = deque()
        self.queued = 0
        self.waiter: asyncio.Future[None] | None = None
        self.disconnect: Message | None = None  # the app's last message, once the client is gone
        self.draining = False
        self.status = 0
        self.close_code = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.timer: asyncio.TimerHandle | None = None
        self.response_status = 0
        self.chunked = False

    # -- bytes from the connection ---------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state is _HANDSHAKE:
            self.pending += data
            self.conn.pause_for_websocket()
            return
        if self.state not in (_OPEN, _CLOSING):
            return
        reader = self.reader
        reader.feed(data)
        try:
            while (event := reader.next_event()) is not None:
                if not self._event(event):
                    return
        except _frames.FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        if self.queued > _HIGH_WATER:
            self.conn.pause_for_websocket()

    def _event(self, event: _frames.Event) -> bool:
        """Handle one event; ``False`` once the connection is closed."""
        if type(event) is _frames.Message:
            self.bytes_in += event.size
            data = event.data
            if type(data) is str:
                self._deliver({"type": "websocket.receive", "text": data}, event.size)
            else:
                self._deliver({"type": "websocket.receive", "bytes": data}, event.size)
        elif type(event) is _frames.Ping:
            self._write(_frames.encode(_frames.PONG, event.data, mask=False))
        elif type(event) is _frames.Close:
            if self.state is _OPEN:
                reply = _frames.close_payload(event.code, event.reason)
                self._write(_frames.encode(_frames.CLOSE, reply, mask=False))
            self.close_code = self.close_code or event.code
            self.state = _CLOSED
            self._gone(event.code, event.reason)
            self.conn.close_transport()
            return False
        return True

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol (or sent too much): close with ``code``."""
        if self.state is _OPEN:
            self._write(_frames.encode(_frames.CLOSE, _frames.close_payload(code, reason), mask=False))
        self.close_code = self.close_code or code
        self.state = _CLOSED
        self._gone(code, reason)
        self.conn.close_transport()

    def connection_lost(self) -> None:
        if self.state is not _RESPONDING:
            self.state = _CLOSED
        self._gone(_frames.ABNORMAL, "")
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def shutdown(self) -> None:
        """The server drains: close 1001, and the app learns the client is going away."""
        if self.state is _HANDSHAKE:
            self.draining = True  # closed right after the accept (or the denial)
        elif self.state is _OPEN:
            self._close(_frames.GOING_AWAY, "server shutting down")
            self._gone(_frames.GOING_AWAY, "server shutting down")

    def going_away(self) -> None:
        """``LongLived``: the server drains (see ``shutdown``)."""
        self.shutdown()

    def _gone(self, code: int, reason: str) -> None:
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        self._wake()

    def _deliver(self, message: Message, size: int) -> None:
        self.inbox.append(message)
        self.queued += size
        self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _write(self, data: bytes) -> None:
        transport = self.conn.transport
        if not transport.is_closing():
            transport.write(data)

    def _close(self, code: int, reason: str) -> None:
        """Send our close frame; cut the connection if the client does not answer in time."""
        if self.state is not _OPEN:
            return
        self._write(_frames.encode(_frames.CLOSE, _frames.close_payload(code, reason), mask=False))
        self.state = _CLOSING
        self.close_code = self.close_code or code
        self.timer = self.conn.loop.call_later(_CLOSE_TIMEOUT, self.conn.close_transport)

    # -- the app's side ----------------------------------------------------------

    async def run(self, app: ASGI) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self.conn.close_transport()
            raise
        except Exception:
            log.exception("ASGI app failed on WebSocket %s", self.scope["path"])
            if self.state is _HANDSHAKE:
                self._answer(_wire.problem(GatekeepError("the server failed to answer")), 500)
            elif self.state is _OPEN:
                self._close(_frames.INTERNAL, "")
        else:
            if self.state is _HANDSHAKE:
                log.error(
                    "ASGI app returned without answering the WebSocket handshake on %s", self.scope["path"]
                )
                self._answer(_wire.problem(GatekeepError("the server failed to answer")), 500)
            elif self.state is _OPEN:
                self._close(_frames.NORMAL, "")
        finally:
            self.conn.shared.long_lived.discard(self)
            self._log()

    async def receive(self) -> Message:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        while True:
            if self.inbox:
                message = self.inbox.popleft()
                size = len(message.get("bytes") or b"") or len(message.get("text") or "")
                self.queued -= size
                if self.queued <= _HIGH_WATER and self.state is _OPEN:
                    self.conn.resume_for_websocket()
                return message
            if self.disconnect is not None:
                return self.disconnect
            waiter = self.waiter = self.conn.loop.create_future()
            await waiter

    async def send(self, message: Message) -> None:
        kind = message["type"]
        state = self.state
        if state is _CLOSED and self.disconnect is not None:
            return  # the client is gone: the app learns it from receive (as uvicorn drops sends)
        if kind == "websocket.send":
            if state is not _OPEN:
                if state is _HANDSHAKE:
                    raise RuntimeError("websocket.send before websocket.accept")
                return  # closing or closed: dropped, as uvicorn does
            text = message.get("text")
            if text is not None:
                payload = text.encode("utf-8")
                opcode = _frames.TEXT
            else:
                payload = bytes(message.get("bytes") or b"")
                opcode = _frames.BINARY
            deflater = self.deflater
            if deflater is None:
                frame = _frames.encode(opcode, payload, mask=False)
            else:
                frame = deflater.encode(opcode, payload, mask=False)
            self.bytes_out += len(payload)
            self._write(frame)
            if self.conn.write_paused:
                await self.conn.drain()
        elif kind == "websocket.accept":
            if state is not _HANDSHAKE:
                raise RuntimeError(f"websocket.accept in state {state}")
            self._accept(message)
        elif kind == "websocket.close":
            if state is _HANDSHAKE:
                self._answer(_FORBIDDEN, 403)
            elif state is _OPEN:
                self._close(int(message.get("code") or _frames.NORMAL), str(message.get("reason") or ""))
        elif kind == "websocket.http.response.start":
            if state is not _HANDSHAKE:
                raise RuntimeError(f"{kind} in state {state}")
            self.state = _RESPONDING
            self.response_status = int(message["status"])
            fields = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ())]
            fields = [(k, v) for k, v in fields if k not in _RESPONSE_DROPS]
            head = _wire.response_head(
                self.response_status, fields, head=False, http_11=True, keep_alive=False
            )
            self.chunked = head.framing is _wire.CHUNKED
            self.status = self.response_status
            self.conn.transport.write(head.data)
        elif kind == "websocket.http.response.body":
            if state is not _RESPONDING:
                raise RuntimeError(f"{kind} before websocket.http.response.start")
            body = bytes(message.get("body", b""))
            more = message.get("more_body", False)
            if body:
                self.conn.transport.write(_wire.chunk(body) if self.chunked else body)
                self.bytes_out += len(body)
            if not more:
                if self.chunked:
                    self.conn.transport.write(b"0\r\n\r\n")
                self.state = _CLOSED
                self.conn.close_lingering()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _accept(self, message: Message) -> None:
        lines = [
            b"HTTP/1.1 101 Switching Protocols\r\n",
            b"upgrade: websocket\r\nconnection: Upgrade\r\n",
            b"sec-websocket-accept: " + accept_value(self.key) + b"\r\n",
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            if subprotocol not in self.scope["subprotocols"]:
                raise RuntimeError(f"subprotocol {subprotocol!r} was not offered by the client")
            lines.append(b"sec-websocket-protocol: " + subprotocol.encode("latin-1") + b"\r\n")
        for name, value in message.get("headers", ()):
            name, value = bytes(name).lower(), bytes(value)
            if name in _ACCEPT_DROPS:
                continue
            if not is_header_name(name) or any(c in value for c in b"\r\n\x00"):
                raise RuntimeError(f"invalid header field {name!r} in websocket.accept")
            lines.append(name + b": " + value + b"\r\n")
        options = message.get(_OPTIONS) or {}
        negotiated = None
        if options.get("compression", True):
            offers = [v for k, v in self.scope["headers"] if k == b"sec-websocket-extensions"]
            negotiated = _deflate.accept_offer(offers)
        if negotiated is not None:
            lines.append(b"sec-websocket-extensions: " + negotiated.response + b"\r\n")
            self.deflater = negotiated.deflater
        self.reader = _frames.FrameReader(
            masked=True,
            max_message=int(options.get("max_message_bytes") or MAX_MESSAGE),
            inflater=negotiated.inflater if negotiated is not None else None,
        )
        lines.append(_wire.date_header())
        lines.append(b"\r\n")
        self.conn.transport.write(b"".join(lines))
        self.state = _OPEN
        self.status = 101
        if self.draining:
            self._close(_frames.GOING_AWAY, "server shutting down")
            self._gone(_frames.GOING_AWAY, "server shutting down")
            return
        self.conn.resume_for_websocket()
        if self.pending:
            pending, self.pending = bytes(self.pending), bytearray()
            self.data_received(pending)

    def _answer(self, data: bytes, status: int) -> None:
        self.state = _RESPONDING
        self.status = status
        self.conn.transport.write(data)
        self.conn.close_lingering()

    def _log(self) -> None:
        if not self.conn.shared.access_log:
            return
        scope = self.scope
        query = scope["query_string"]
        target = scope["raw_path"] + (b"?" + query if query else b"")
        client = self.conn.client
        access_log.info(
            '%s - "GET %s HTTP/1.1" %d websocket close=%s in=%d out=%d',
            f"{client[0]}:{client[1]}" if client else "-",
            target.decode("latin-1"),
            self.status,
            self.close_code or "-",
            self.bytes_in,
            self.bytes_out,
        )
