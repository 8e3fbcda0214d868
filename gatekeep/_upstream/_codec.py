"""The HTTP/1.1 framing seam of the upstream client.

Theory of operation
-------------------
A ``Codec`` is a sans-IO object for one client connection: it turns a request
into bytes to write and bytes read into response events.  It never touches a
socket, a clock or a task, so the connection (``_connection.py``) is the only
place that does I/O and the only place that translates errors.

One request/response *cycle* looks like this::

    send_request_head(method, target, headers) -> bytes   # write them
    send_body(chunk) -> bytes                             # zero or more times
    end_request() -> bytes
    receive_data(data)                                    # b"" means EOF
    next_event() -> NEED_DATA | ResponseHead | bytes | END_OF_RESPONSE
    ...
    is_reusable          # both sides finished cleanly and keep-alive holds
    start_next_cycle()   # only when is_reusable

Sending and receiving are independent: a response may be read while the body
is still being sent (an early ``413``); then the cycle is not reusable.
Informational (1xx) responses are skipped by the codec (at most
``MAX_INFORMATIONAL`` per cycle, so an upstream cannot stall a request with
an endless stream of them); a ``101`` is refused because the upstream client
never asks for an upgrade.  A final status outside 200-599 is refused, as is
a response framed by anything but ``content-length`` or a lone ``chunked``
(RFC 9112 §6.1: ``chunked`` must be the last coding, and gatekeep decodes
no other), and a connection with bytes left after the end of a response is
never reused: those bytes would be read as the answer to the next request.

A codec reports framing errors as the exception types it lists in
``remote_errors`` (the upstream broke the protocol) and ``local_errors``
(the request could not be framed, e.g. a body longer than its
``content-length``); the connection maps them at its one error boundary.

``H11Codec`` needs nothing beyond gatekeep's own dependencies;
``HttptoolsCodec`` (``_httptools_codec.py``) implements the same protocol on
llhttp and is several times cheaper per cycle.  ``codec_for`` picks one by
name (``_codec_choice.py``); ``"auto"`` (the default, as in uvicorn's ``--http auto``)
takes httptools when it can be imported, else h11.
"""

from __future__ import annotations

from typing import ClassVar, Final, Protocol

import h11

__all__ = [
    "END_OF_RESPONSE",
    "NEED_DATA",
    "Codec",
    "CodecEvent",
    "H11Codec",
    "ResponseHead",
]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


# Informational (1xx) responses skipped before a final one, at most.
MAX_INFORMATIONAL: Final = 16

NEED_DATA: Final = _Sentinel("NEED_DATA")
END_OF_RESPONSE: Final = _Sentinel("END_OF_RESPONSE")


class ResponseHead:
    """Status line and header fields of a final (non-1xx) response."""

    __slots__ = ("headers", "http_version", "reason", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        reason: bytes = b"",
        http_version: bytes = b"1.1",
    ) -> None:
        self.status = status
        self.headers = headers
        self.reason = reason
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {self.headers!r})"


CodecEvent = _Sentinel | ResponseHead | bytes


class Codec(Protocol):
    """Sans-IO HTTP/1.1 framing of one client connection (see module doc)."""

    remote_errors: ClassVar[tuple[type[Exception], ...]]
    local_errors: ClassVar[tuple[type[Exception], ...]]

    def send_request_head(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        """Bytes of the request line and headers.

        ``headers`` must carry ``host`` and the body framing (``content-length``
        or ``transfer-encoding: chunked``; neither means no body).
        """

    def send_body(self, data: bytes) -> bytes:
        """Bytes that carry ``data`` (framed as the head declared)."""

    def end_request(self) -> bytes:
        """Bytes that end the request (the last chunk, or nothing)."""

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means the peer closed."""

    def next_event(self) -> CodecEvent:
        """``NEED_DATA``, a ``ResponseHead``, a body chunk, or ``END_OF_RESPONSE``."""

    @property
    def is_reusable(self) -> bool:
        """Both messages are complete and the connection may carry another cycle."""

    def start_next_cycle(self) -> None:
        """Reset for the next request (only when ``is_reusable``)."""


_h11_NEED_DATA = h11.NEED_DATA
_h11_Data = h11.Data
_h11_Response = h11.Response
_h11_EndOfMessage = h11.EndOfMessage
_h11_InformationalResponse = h11.InformationalResponse
_h11_DONE = h11.DONE
_h11_END = h11.EndOfMessage()


class H11Codec:
    """The default codec, on top of h11's client state machine."""

    __slots__ = ("_conn", "_eof", "_informational")

    remote_errors: ClassVar[tuple[type[Exception], ...]] = (h11.RemoteProtocolError,)
    local_errors: ClassVar[tuple[type[Exception], ...]] = (h11.LocalProtocolError,)

    def __init__(self) -> None:
        # 64 KiB is h11's default too; it bounds how much of a head we buffer.
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self._eof = False
        self._informational = 0

    def send_request_head(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        data = self._conn.send(h11.Request(method=method, target=target, headers=headers))
        assert data is not None  # h11 only returns None for ConnectionClosed
        return data

    def send_body(self, data: bytes) -> bytes:
        out = self._conn.send(_h11_Data(data=data))
        assert out is not None
        return out

    def end_request(self) -> bytes:
        out = self._conn.send(_h11_END)
        assert out is not None
        return out

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True  # h11 may still call the cycle DONE (a close-delimited body)
        self._conn.receive_data(data)

    def next_event(self) -> CodecEvent:
        conn = self._conn
        while True:
            event = conn.next_event()
            if event is _h11_NEED_DATA:
                return NEED_DATA
            cls = type(event)
            if cls is _h11_Data:
                data = event.data  # type: ignore[union-attr]
                # h11 hands out bytearray slices for chunked bodies: one copy here.
                return data if type(data) is bytes else bytes(data)
            if cls is _h11_Response:
                status: int = event.status_code  # type: ignore[union-attr]
                if status > 599:
                    # h11 takes any three digits; no server and no client downstream does.
                    raise h11.RemoteProtocolError(f"invalid status code {status}")
                headers = list(event.headers)  # type: ignore[union-attr]
                _check_framing(headers)
                return ResponseHead(
                    status,
                    headers,
                    event.reason,  # type: ignore[union-attr]
                    event.http_version,  # type: ignore[union-attr]
                )
            if cls is _h11_EndOfMessage:
                return END_OF_RESPONSE
            if cls is _h11_InformationalResponse:
                if event.status_code == 101:  # type: ignore[union-attr]
                    raise h11.RemoteProtocolError("unexpected 101 Switching Protocols")
                self._informational += 1
                if self._informational > MAX_INFORMATIONAL:
                    raise h11.RemoteProtocolError("too many informational (1xx) responses")
                continue  # 100 Continue, 103 Early Hints: not forwarded
            # ConnectionClosed, or PAUSED (which a client never sees mid-response).
            raise h11.RemoteProtocolError("connection closed before the response ended")

    @property
    def is_reusable(self) -> bool:
        conn = self._conn
        return (
            conn.our_state is _h11_DONE
            and conn.their_state is _h11_DONE
            and not self._eof
            # Bytes after the end of the response (h11 keeps them for the next
            # cycle) would be read as the answer to the next request.
            and not conn.trailing_data[0]
        )

    def start_next_cycle(self) -> None:
        self._conn.start_next_cycle()
        self._informational = 0


def _check_framing(headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse a response framed by both ``content-length`` and ``transfer-encoding``.

    h11 lets the transfer coding win (RFC 9112 §6.3 allows it); llhttp refuses, and
    so does nginx: the pair is the signature of response splitting, so both
    codecs answer 502.  (h11 itself refuses any coding but a lone ``chunked``.)
    """
    has_length = has_coding = False
    for name, _ in headers:
        if name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_coding = True
    if has_length and has_coding:
        raise h11.RemoteProtocolError("both content-length and transfer-encoding in the response")
