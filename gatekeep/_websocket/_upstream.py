"""The upstream end of a proxied WebSocket: connect, handshake, frames.

Theory of operation
-------------------
``connect_upstream`` is the gateway's ``send(instance)`` for a WebSocket
handshake: it runs inside the service's ``UpstreamGuard`` exactly like a
proxied HTTP request, so discovery, the balancer, breakers, passive health
and connect failover decide which instance is tried.  It opens a fresh
connection (WebSockets are long-lived: they never take a slot of the
keep-alive pool, nor come back to it), TLS for ``https`` instances with the
service's TLS settings, and sends the client's handshake with the gateway's
own ``Sec-WebSocket-Key`` (h11 frames the exchange).

- Connect failures carry ``connect_failed`` (the guard fails over to another
  instance) and end as 502/504 problems before the client is upgraded.
- An answer other than 101 is relayed to the client as an HTTP answer (its
  body read whole, up to 64 KiB), as nginx does: the upstream's own 401 or
  404 is the client's to see.
- A 101 is checked: ``Upgrade``, ``Connection``, the accept value, an
  extension only as the gateway offered it (permessage-deflate, when
  ``[gateway.websocket] compression`` is on; see ``_deflate.py``) and a
  subprotocol among those offered; else 502.  The socket is then kept in
  ``request.state[UPSTREAM]`` and closed by the response
  (``Response.defer``), which the adapter holds until the session ends; a
  counting balancer's slot is held as long.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

import anyio
import h11

from .._errors import BadRequest, GatekeepError, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from .._http import Headers, Request, Response
from .._protocols import Instance
from .._upstream import Timeouts, TLSSettings
from .._upstream._connection import translate
from .._upstream._tls import make_ssl_context
from .._upstream._transport import Transport, open_transport
from . import _deflate, _frames
from ._handshake import RESPONSE_DROPS, accept_value, has_token, new_key, subprotocols

__all__ = ["UPSTREAM", "UpstreamSocket", "connect_upstream"]

# Where the open upstream socket of an accepted handshake is left (``Request.state``).
UPSTREAM: Final = "gatekeep.websocket.upstream"

# Fields of the client's handshake that belong to its hop (the gateway writes its own).
_REQUEST_DROPS: Final = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-accept"}
)
_DENIAL_BODY_LIMIT: Final = 64 * 1024
_DEFAULT_TLS: Final = TLSSettings()
_ssl_contexts: dict[TLSSettings, ssl.SSLContext] = {}


class UpstreamSocket:
    """An upgraded upstream connection: whole messages in and out (the gateway is its client)."""

    __slots__ = ("closed", "deflater", "label", "reader", "subprotocol", "transport", "write_timeout")

    def __init__(
        self,
        transport: Transport,
        label: str,
        *,
        max_message: int,
        write_timeout: float | None,
        rest: bytes,
        deflate: _deflate.Negotiated | None = None,
    ) -> None:
        self.transport = transport
        self.label = label
        self.write_timeout = write_timeout
        self.deflater = deflate.deflater if deflate is not None else None
        self.reader = _frames.FrameReader(
            masked=False, max_message=max_message, inflater=deflate.inflater if deflate is not None else None
        )
        self.reader.feed(rest)
        self.subprotocol: str | None = None
        self.closed = False

    async def receive(self) -> _frames.Event | None:
        """The next event from the upstream; ``None`` when it closed the connection.

        Raises:
            FrameError: the upstream broke RFC 6455 (or sent a message too big).
        """
        reader = self.reader
        while True:
            event = reader.next_event()
            if event is not None:
                return event
            try:
                data = await self.transport.receive(None)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return None
            if not data:
                return None
            reader.feed(data)

    async def send(self, opcode: int, payload: bytes) -> None:
        """Send one frame (masked: the gateway is the client; data compressed when negotiated).

        Raises:
            OSError, TimeoutError: the connection broke, or the upstream stopped reading.
        """
        deflater = self.deflater
        if deflater is not None and opcode < _frames.CLOSE:
            frame = deflater.encode(opcode, payload, mask=True)
        else:
            frame = _frames.encode(opcode, payload, mask=True)
        await self.transport.send(frame, self.write_timeout)

    async def finish(self, within: float) -> None:
        """After the close frames: wait for the upstream to close TCP (it is the server), then close."""
        with anyio.move_on_after(within):
            try:
                while await self.transport.receive(None):
                    pass
            except Exception:  # noqa: S110 - a broken connection is closed below all the same
                pass
        await self.aclose()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            transport = self.transport
            transport.abort()
            aclose = getattr(transport, "aclose", None)
            if aclose is not None:
                await aclose()


def _context(tls: TLSSettings | None) -> ssl.SSLContext:
    settings = tls or _DEFAULT_TLS
    context = _ssl_contexts.get(settings)
    if context is None:
        context = _ssl_contexts[settings] = make_ssl_context(settings)
    return context


def _mark(exc: GatekeepError, *, connect_failed: bool, sent: bool) -> GatekeepError:
    exc.connect_failed = connect_failed  # type: ignore[attr-defined]
    exc.request_sent = sent  # type: ignore[attr-defined]
    exc.body_untouched = True  # type: ignore[attr-defined]
    return exc


async def connect_upstream(
    request: Request,
    instance: Instance,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    timeouts: Timeouts,
    tls: TLSSettings | None,
    max_message: int,
    compression: bool = True,
) -> Response:
    """Open the upstream WebSocket for ``request`` on ``instance`` (see the module doc).

    ``headers`` are the forwarded request headers (``upstream_request_headers``);
    ``compression`` offers permessage-deflate.

    Raises:
        UpstreamConnectError, UpstreamTimeout: no connection (``connect_failed`` set).
        UpstreamProtocolError: no valid handshake answer.
        BadRequest: the client's fields cannot be sent (h11 refuses them).
    """
    label = f"{instance.scheme}://{instance.address}"
    ssl_context: ssl.SSLContext | None = None
    server_name: str | None = None
    if instance.scheme == "https":
        try:
            ssl_context = _context(tls)
        except Exception as exc:
            raise _mark(
                translate(exc, "connect", f"{label} (loading TLS settings)", None),
                connect_failed=True,
                sent=False,
            ) from exc
        server_name = (tls or _DEFAULT_TLS).server_name
    elif instance.scheme != "http":
        raise _mark(
            UpstreamConnectError(f"unsupported upstream scheme {instance.scheme!r} for {label}"),
            connect_failed=True,
            sent=False,
        )
    try:
        with anyio.fail_after(timeouts.connect):
            transport: Transport = await open_transport(
                instance.host, instance.port, ssl_context=ssl_context, server_name=server_name
            )
    except TimeoutError as exc:
        error: GatekeepError = UpstreamTimeout(
            f"connect timeout: no connection to {label} within {timeouts.connect:g} s"
        )
        raise _mark(error, connect_failed=True, sent=False) from exc
    except Exception as exc:
        raise _mark(translate(exc, "connect", label, None), connect_failed=True, sent=False) from exc
    try:
        return await _handshake(
            request, transport, label, target, headers, timeouts, max_message, compression
        )
    except BaseException:
        transport.abort()
        aclose = getattr(transport, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()
        raise


async def _handshake(
    request: Request,
    transport: Transport,
    label: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    timeouts: Timeouts,
    max_message: int,
    compression: bool,
) -> Response:
    key = new_key()
    out = [(k, v) for k, v in headers if k not in _REQUEST_DROPS]
    out += [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", key),
        (b"sec-websocket-version", b"13"),
    ]
    if compression:
        out.append((b"sec-websocket-extensions", _deflate.OFFER))
    conn = h11.Connection(h11.CLIENT)
    try:
        data = conn.send(h11.Request(method="GET", target=target, headers=out))
    except h11.LocalProtocolError as exc:
        raise _mark(
            BadRequest(f"the handshake cannot be forwarded to {label}: {exc}"),
            connect_failed=False,
            sent=False,
        ) from exc
    try:
        await transport.send(data, timeouts.write)
        head = await _response_head(conn, transport, label, timeouts.read)
        if head.status_code != 101:
            return await _relayed_denial(conn, transport, head, label, timeouts.read)
    except GatekeepError as exc:
        raise _mark(exc, connect_failed=False, sent=True) from exc.__cause__
    except TimeoutError as exc:
        raise _mark(
            UpstreamTimeout(
                f"read timeout: {label} did not answer the WebSocket handshake within {timeouts.read} s"
            ),
            connect_failed=False,
            sent=True,
        ) from exc
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise _mark(
            UpstreamProtocolError(f"connection to {label} failed during the WebSocket handshake: {exc}"),
            connect_failed=False,
            sent=True,
        ) from exc
    fields = [(bytes(k).lower(), bytes(v)) for k, v in head.headers]
    problem = _check_101(fields, key, subprotocols(out))
    deflate: _deflate.Negotiated | None = None
    extensions = [v for k, v in fields if k == b"sec-websocket-extensions"]
    if not problem and extensions:
        if not compression:
            problem = "an extension was negotiated, none was offered"
        else:
            agreed = _deflate.accept_response(extensions)
            if isinstance(agreed, str):
                problem = agreed
            else:
                deflate = agreed
    if problem:
        raise _mark(
            UpstreamProtocolError(f"invalid WebSocket handshake answer from {label}: {problem}"),
            connect_failed=False,
            sent=True,
        )
    rest, _ = conn.trailing_data
    socket = UpstreamSocket(
        transport,
        label,
        max_message=max_message,
        write_timeout=timeouts.write,
        rest=bytes(rest),
        deflate=deflate,
    )
    for k, v in fields:
        if k == b"sec-websocket-protocol":
            socket.subprotocol = v.strip().decode("latin-1")
    request.state[UPSTREAM] = socket
    relayed = Headers([(k, v) for k, v in fields if k not in RESPONSE_DROPS])
    return Response(101, relayed, b"", "service", deferred=[socket.aclose])


async def _response_head(conn: h11.Connection, transport: Transport, label: str, within: float | None) -> Any:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocolError(
                f"invalid answer to the WebSocket handshake from {label}: {exc}"
            ) from exc
        if event is h11.NEED_DATA:
            conn.receive_data(await transport.receive(within))  # b"": EOF, which h11 reports next
        elif isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return event
            # A 100 Continue or 103 Early Hints: the answer is still to come.
        elif isinstance(event, h11.Response):
            return event
        else:  # ConnectionClosed, PAUSED
            raise UpstreamProtocolError(
                f"{label} closed the connection without answering the WebSocket handshake"
            )


async def _relayed_denial(
    conn: h11.Connection, transport: Transport, head: Any, label: str, within: float | None
) -> Response:
    """The upstream refused the upgrade: its answer, body and all (up to 64 KiB), for the client."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            break  # what arrived is what the client gets
        if event is h11.NEED_DATA:
            data = await transport.receive(within)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > _DENIAL_BODY_LIMIT:
                raise UpstreamProtocolError(f"{label} refused the WebSocket upgrade with a body over 64 KiB")
            chunks.append(bytes(event.data))
            continue
        break  # EndOfMessage, ConnectionClosed
    transport.abort()
    aclose = getattr(transport, "aclose", None)
    if aclose is not None:
        await aclose()
    fields = [(bytes(k).lower(), bytes(v)) for k, v in head.headers]
    return Response(
        head.status_code,
        Headers([(k, v) for k, v in fields if k not in RESPONSE_DROPS]),
        b"".join(chunks),
        "service",
    )


def _check_101(fields: list[tuple[bytes, bytes]], key: bytes, offered: list[str]) -> str:
    if not has_token(fields, b"upgrade", b"websocket"):
        return "no 'Upgrade: websocket'"
    if not has_token(fields, b"connection", b"upgrade"):
        return "no 'Connection: upgrade'"
    accepts = [v.strip() for k, v in fields if k == b"sec-websocket-accept"]
    if accepts != [accept_value(key)]:
        return "wrong Sec-WebSocket-Accept"
    chosen = [v.strip().decode("latin-1") for k, v in fields if k == b"sec-websocket-protocol"]
    if len(chosen) > 1 or (chosen and chosen[0] not in offered):
        return "a subprotocol the client did not offer"
    return ""
