"""One proxied WebSocket after both handshakes: messages both ways until a close.

Theory of operation
-------------------
The client's side is the ASGI WebSocket message API (what uvicorn, hypercorn,
granian and gatekeep's own front server give an app); the upstream's is an
``UpstreamSocket``.  ``relay`` accepts the client's handshake with the
upstream's subprotocol and fields, then runs two loops in one task group.
The accept carries ``OPTIONS`` (``gatekeep.websocket``: whether to negotiate
compression, the message limit), which gatekeep's own front server applies
to the client's hop and other servers ignore.

- client → upstream: each ``websocket.receive`` becomes one frame; a
  ``websocket.disconnect`` becomes a close frame with the client's code and
  reason (1005: an empty close frame; 1006, a dropped connection: 1001), and
  the session waits ``close_timeout`` for the upstream's answer;
- upstream → client: each message becomes a ``websocket.send``; a close
  frame is answered (its code echoed) and becomes ``websocket.close`` with
  the same code and reason; pings are answered with pongs (pings are per
  hop: the client's are the server's to answer).

Whichever side closes first decides the code both see.  What the gateway
decides itself:

========================================  ==========  ==============
event                                      to client   to upstream
========================================  ==========  ==============
a message over ``max_message_bytes``       1009        1009
no data message for ``idle_timeout``       1001        1001
gateway shutdown (``WebSocketStats``)      1001        1001
upstream dropped TCP without a close       1014        --
upstream broke the protocol                1014        1002 (its fault)
========================================  ==========  ==============

(1014 is "Bad Gateway" in the IANA close-code registry.)

Idle time is one cancel scope whose deadline moves with every data message,
so a quiet connection costs no timer per message.  Counters go to the
route's ``RouteCounters`` and the ``Exchange`` (bytes each way, status 101),
so the log phase writes one access-log line per connection when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from .._filter import Exchange
from .._http import Response
from . import _frames
from ._frames import BAD_GATEWAY, GOING_AWAY, NO_STATUS, NORMAL, TOO_BIG, FrameError
from ._handshake import RESPONSE_DROPS
from ._settings import WebSocketSettings
from ._stats import RouteCounters, WebSocketStats
from ._upstream import UpstreamSocket

__all__ = ["CLOSE_STATE", "OPTIONS", "relay"]

log = logging.getLogger("gatekeep.websocket")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Response fields the ASGI server writes itself.
_ACCEPT_DROPS: Final = RESPONSE_DROPS | {b"date", b"server"}
# The key of ``websocket.accept`` that tells gatekeep's front server how to run the client's hop.
OPTIONS: Final = "gatekeep.websocket"
# Where the session leaves how it ended (``Request.state``), for the log phase.
CLOSE_STATE: Final = "websocket"
_CLIENT = "client"
_UPSTREAM = "upstream"
_GATEWAY = "gateway"


class _Session:
    __slots__ = (
        "client_done",
        "closed_with",
        "counters",
        "ending",
        "exchange",
        "idle",
        "receive",
        "send",
        "settings",
        "task_group",
        "upstream",
        "upstream_done",
        "wait_close",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        upstream: UpstreamSocket,
        settings: WebSocketSettings,
        counters: RouteCounters,
        exchange: Exchange,
    ) -> None:
        self.receive = receive
        self.send = send
        self.upstream = upstream
        self.settings = settings
        self.counters = counters
        self.exchange = exchange
        self.client_done = False  # the client closed, or was sent websocket.close
        self.upstream_done = False  # a close frame went to the upstream, or it is gone
        self.wait_close = False  # the upstream owes us its close frame
        self.ending: tuple[int, str] | None = None  # the gateway's decision (shutdown)
        self.closed_with: tuple[int, str] | None = None
        self.idle = anyio.CancelScope()
        self.task_group: TaskGroup | None = None

    # -- the two loops --------------------------------------------------------

    async def from_client(self) -> None:
        upstream = self.upstream
        counters = self.counters
        exchange = self.exchange
        limit = self.settings.max_message_bytes
        idle = self.settings.idle_timeout
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    payload = text.encode("utf-8")
                    opcode = _frames.TEXT
                else:
                    payload = message.get("bytes") or b""
                    opcode = _frames.BINARY
                size = len(payload)
                if size > limit:
                    await self.end(TOO_BIG, f"message larger than {limit} bytes", _GATEWAY)
                    return
                self.idle.deadline = anyio.current_time() + idle
                try:
                    await upstream.send(opcode, payload)
                except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self.upstream_done = True
                    await self.end(BAD_GATEWAY, "the upstream connection broke", _UPSTREAM)
                    return
                counters.messages_in += 1
                counters.bytes_in += size
                exchange.bytes_in += size
            elif kind == "websocket.disconnect":
                code = int(message.get("code") or NO_STATUS)
                reason = str(message.get("reason") or "")
                self.client_done = True
                self.record(code, _CLIENT)
                if code == _frames.ABNORMAL or not (code == NO_STATUS or _frames.sendable_code(code)):
                    code, reason = GOING_AWAY, "the client went away"
                await self.close_upstream(code, reason)
                self.wait_for_upstream_close()
                return

    async def from_upstream(self) -> None:
        upstream = self.upstream
        counters = self.counters
        exchange = self.exchange
        idle = self.settings.idle_timeout
        while True:
            try:
                event = await upstream.receive()
            except FrameError as exc:
                if exc.code == TOO_BIG:
                    await self.end(TOO_BIG, exc.reason, _GATEWAY)
                else:
                    log.info("upstream %s broke the WebSocket protocol: %s", upstream.label, exc.reason)
                    await self.close_upstream(exc.code, exc.reason)
                    await self.end(BAD_GATEWAY, "the upstream broke the WebSocket protocol", _UPSTREAM)
                return
            if event is None:
                self.upstream_done = True
                if not self.wait_close:
                    await self.end(
                        BAD_GATEWAY, "the upstream closed the connection without a close frame", _UPSTREAM
                    )
                self.stop()
                return
            if type(event) is _frames.Message:
                self.idle.deadline = anyio.current_time() + idle
                data = event.data
                if self.client_done:
                    continue
                try:
                    if type(data) is str:
                        await self.send({"type": "websocket.send", "text": data})
                    else:
                        await self.send({"type": "websocket.send", "bytes": data})
                except Exception:  # the client is gone: its disconnect is on the way
                    continue
                counters.messages_out += 1
                counters.bytes_out += event.size
                exchange.bytes_out += event.size
            elif type(event) is _frames.Ping:
                if not self.upstream_done:
                    try:
                        await upstream.send(_frames.PONG, event.data)
                    except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
            elif type(event) is _frames.Close:
                if self.wait_close:
                    self.stop()  # the answer to our close frame
                    return
                self.record(event.code, _UPSTREAM)
                await self.close_upstream(event.code, event.reason)
                await self.close_client(NORMAL if event.code == NO_STATUS else event.code, event.reason)
                self.stop()
                return

    # -- closing --------------------------------------------------------------

    def record(self, code: int, by: str) -> None:
        """The first close decides what the metrics and the access log say."""
        if self.closed_with is None:
            self.closed_with = (code, by)
            self.counters.closed(code, by)
            self.exchange.request.state[CLOSE_STATE] = {"code": code, "by": by}

    async def end(self, code: int, reason: str, by: str) -> None:
        """The gateway ends the session: ``code`` to both sides that are still there."""
        self.record(code, by)
        upstream_code = _frames.PROTOCOL_ERROR if code == BAD_GATEWAY else code
        await self.close_upstream(upstream_code, reason)
        await self.close_client(code, reason)
        self.stop()

    async def close_upstream(self, code: int, reason: str) -> None:
        if self.upstream_done:
            return
        self.upstream_done = True
        try:
            await self.upstream.send(_frames.CLOSE, _frames.close_payload(code, reason))
        except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def close_client(self, code: int, reason: str) -> None:
        if self.client_done:
            return
        self.client_done = True
        try:
            # The reason cut to what fits a close frame (123 bytes of UTF-8), as servers require.
            fitted = _frames.close_payload(code, reason)[2:].decode("utf-8")
            await self.send({"type": "websocket.close", "code": code, "reason": fitted})
        except Exception:  # noqa: S110 - gone already: nothing left to tell it
            pass

    def wait_for_upstream_close(self) -> None:
        """The client closed: give the upstream ``close_timeout`` to answer, then end."""
        self.wait_close = True
        tg = self.task_group
        if tg is not None:
            tg.cancel_scope.deadline = anyio.current_time() + self.settings.close_timeout

    def stop(self) -> None:
        tg = self.task_group
        if tg is not None:
            tg.cancel_scope.cancel()

    def shut(self, code: int, reason: str) -> None:
        """Close from outside (gateway shutdown)."""
        self.ending = (code, reason)
        self.idle.cancel()


async def relay(
    receive: Receive,
    send: Send,
    upstream: UpstreamSocket,
    response: Response,
    exchange: Exchange,
    *,
    settings: WebSocketSettings,
    stats: WebSocketStats,
) -> None:
    """Accept the client's handshake and relay until either side closes (see the module doc)."""
    request = exchange.request
    route = request.route
    service = request.service
    counters = stats.counters(service.name if service else "", route.name if route else "")
    session = _Session(receive, send, upstream, settings, counters, exchange)
    headers = [(k, v) for k, v in response.headers.raw if k not in _ACCEPT_DROPS]
    accept: Message = {
        "type": "websocket.accept",
        "subprotocol": upstream.subprotocol,
        "headers": headers,
        OPTIONS: {"compression": settings.compression, "max_message_bytes": settings.max_message_bytes},
    }
    try:
        await send(accept)
    except Exception as exc:  # the client left during the upstream's handshake
        log.info("client went away before its WebSocket was accepted: %r", exc)
        exchange.request.state[CLOSE_STATE] = {"code": _frames.ABNORMAL, "by": _CLIENT}
        return
    exchange.status = 101
    counters.open += 1
    counters.opened += 1
    key = id(session)
    stats.add(key, session.shut)
    try:
        session.idle.deadline = anyio.current_time() + settings.idle_timeout
        with session.idle:
            async with anyio.create_task_group() as tg:
                session.task_group = tg
                tg.start_soon(session.from_client)
                tg.start_soon(session.from_upstream)
        if session.idle.cancelled_caught:
            code, reason = session.ending or (GOING_AWAY, "idle timeout")
            with anyio.CancelScope(shield=True), anyio.move_on_after(settings.close_timeout):
                await session.end(code, reason, _GATEWAY)
        if not session.client_done:
            # Both loops ended without a word to the client (its close timed out): close it.
            with anyio.CancelScope(shield=True), anyio.move_on_after(settings.close_timeout):
                await session.close_client(GOING_AWAY, "")
    finally:
        stats.remove(key)
        counters.open -= 1
        if session.closed_with is None:
            session.record(_frames.ABNORMAL, _GATEWAY)  # cancelled from outside (the server stopped)
        with anyio.CancelScope(shield=True):
            await upstream.finish(
                settings.close_timeout if session.upstream_done and not upstream.closed else 0
            )
