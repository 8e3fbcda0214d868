"""A faster codec: responses parsed by httptools (llhttp), requests framed here.

Theory of operation
-------------------
It implements the same sans-IO ``Codec`` protocol as ``H11Codec``.  The
response side feeds bytes to llhttp, whose callbacks queue events
(``ResponseHead``, body chunks, ``END_OF_RESPONSE``) that ``next_event``
hands out.  llhttp does not know the request method, so two cases are
handled here: the answer to a ``HEAD`` ends with its head, and a body with
neither ``content-length`` nor chunked coding ends at EOF (llhttp's own
end-of-input call is not exposed by httptools).  1xx responses are skipped
(at most ``MAX_INFORMATIONAL``); ``101`` is refused, and so is a status
outside 100-599.  llhttp reads a body whose transfer codings do not end in
``chunked`` until EOF, and takes ``gzip, chunked`` as chunked: both would
hand framing or still-coded bytes on as the body, so any
``transfer-encoding`` but a lone ``chunked`` is refused (RFC 9112 §6.1/§6.3;
gatekeep decodes no other coding).  Anything after the end of the response,
before the next request, makes the connection not reusable.

The request side writes the request line and headers itself, after checking
every name is an HTTP token and no value carries CR, LF or NUL (so a filter
can never smuggle a second request), and frames the body as the headers
declare: ``content-length`` (exactly that many bytes) or chunked.

httptools is optional (it comes with ``uvicorn[standard]``);
``codec_for("auto")`` picks it when it can be imported.
"""

from __future__ import annotations

import re
from collections import deque
from operator import itemgetter
from typing import Any, ClassVar, Final

import httptools

from .._http import is_header_name
from ._codec import END_OF_RESPONSE, MAX_INFORMATIONAL, NEED_DATA, CodecEvent, ResponseHead

__all__ = ["HttptoolsCodec", "LocalFramingError", "RemoteFramingError"]


class RemoteFramingError(Exception):
    """The upstream's response broke HTTP/1.1."""


class LocalFramingError(Exception):
    """The request cannot be framed as its headers declare."""


_TOKEN: Final = is_header_name
_BAD_VALUE: Final = re.compile(rb"[\r\n\x00]").search
# Header names already checked (most requests repeat the same few dozen).
_GOOD_NAMES: set[bytes] = {b"host"}
# Names that change how the request is framed (checked only when present).
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_TARGET: Final = re.compile(rb"[\x21-\x7e]+").fullmatch
_METHOD: Final = _TOKEN
# Methods that are tokens (the usual ones: a set lookup instead of the regex).
_KNOWN_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})
_NAME: Final = itemgetter(0)


class HttptoolsCodec:
    """Codec on httptools' response parser (see module doc)."""

    __slots__ = (
        "_chunked",
        "_close_delimited",
        "_complete",
        "_eof",
        "_events",
        "_head",
        "_headers",
        "_informational",
        "_is_head",
        "_keep_alive",
        "_left",
        "_parser",
        "_request_close",
        "_request_done",
        "_skipping",
        "_unexpected",
    )

    remote_errors: ClassVar[tuple[type[Exception], ...]] = (httptools.HttpParserError, RemoteFramingError)
    local_errors: ClassVar[tuple[type[Exception], ...]] = (LocalFramingError,)

    def __init__(self) -> None:
        self._events: deque[CodecEvent] = deque()
        self._parser: Any = httptools.HttpResponseParser(self)
        self._is_head = False
        self.start_next_cycle()

    def start_next_cycle(self) -> None:
        if self._is_head:
            # llhttp, not knowing the method, still waits for that HEAD answer's body.
            self._parser = httptools.HttpResponseParser(self)
        self._events.clear()
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: ResponseHead | None = None
        self._complete = False
        self._eof = False
        self._skipping = False
        self._unexpected = False
        self._close_delimited = False
        self._is_head = False
        self._keep_alive = False
        self._request_done = False
        self._request_close = False
        self._chunked = False
        self._left: int | None = 0
        self._informational = 0

    # -- request side ------------------------------------------------------

    def send_request_head(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        if method not in _KNOWN_METHODS and not _METHOD(method):
            raise LocalFramingError(f"invalid method {method!r}")
        if not _TARGET(target):
            raise LocalFramingError("invalid request target")
        self._is_head = method == b"HEAD"
        names = set(map(_NAME, headers))  # (``header_names``, inline)
        if names <= _GOOD_NAMES:
            # The common case, checked at C speed: every name is a known
            # lower-case token, and the block has exactly one CRLF between
            # two headers (so no value carries CR or LF) and no NUL.  (No
            # header at all takes the slow path.)
            block = b"\r\n".join(map(b": ".join, headers))
            n = len(headers) - 1
            if block.count(b"\n") == n and block.count(b"\r") == n and b"\x00" not in block:
                if names.isdisjoint(_FRAMING):
                    self._chunked = False
                    self._left = 0
                else:
                    self._framing(headers)
                return b"%b %b HTTP/1.1\r\n%b\r\n\r\n" % (method, target, block)
        return self._checked_head(method, target, headers)

    def _framing(self, headers: list[tuple[bytes, bytes]]) -> None:
        length: int | None = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise LocalFramingError("invalid content-length")
                length = int(value)
            elif name == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise LocalFramingError("only chunked transfer-encoding can be forwarded")
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                self._request_close = True
        if chunked and length is not None:
            raise LocalFramingError("both content-length and transfer-encoding")
        self._chunked = chunked
        self._left = None if chunked else (length or 0)

    def _checked_head(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The same head, header by header: names the fast path does not know, or a bad value."""
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        append = parts.append
        lowered: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name not in _GOOD_NAMES:
                if not _TOKEN(name):
                    raise LocalFramingError(f"invalid header name {name!r}")
                if name.islower() and len(_GOOD_NAMES) < 1024:
                    _GOOD_NAMES.add(name)
            if _BAD_VALUE(value):
                raise LocalFramingError(f"invalid value for header {name.decode('latin-1')!r}")
            lowered.append((name.lower(), value))
            append(name)
            append(b": ")
            append(value)
            append(b"\r\n")
        self._framing(lowered)
        append(b"\r\n")
        return b"".join(parts)

    def send_body(self, data: bytes) -> bytes:
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        left = self._left or 0
        if len(data) > left:
            raise LocalFramingError("Too much data for declared Content-Length")
        self._left = left - len(data)
        return data

    def end_request(self) -> bytes:
        self._request_done = True
        if self._chunked:
            return b"0\r\n\r\n"
        if self._left:
            raise LocalFramingError("Too little data for declared Content-Length")
        return b""

    # -- response side -----------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            if self._head is not None and not self._complete and self._close_delimited:
                self._complete = True
                self._events.append(END_OF_RESPONSE)
            return
        if self._complete:
            self._unexpected = True  # bytes nobody asked for: never reuse
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise RemoteFramingError("unexpected protocol upgrade") from exc
        except httptools.HttpParserCallbackError as exc:
            # Our own callbacks refused the response: say why, not "User callback error".
            if isinstance(exc.__context__, RemoteFramingError):
                raise exc.__context__ from None
            raise

    def next_event(self) -> CodecEvent:
        events = self._events
        if events:
            return events.popleft()
        if self._eof and not self._complete:
            where = "head" if self._head is None else "body"
            raise RemoteFramingError(f"connection closed in the response {where}")
        return NEED_DATA

    @property
    def is_reusable(self) -> bool:
        return (
            self._complete
            and self._request_done
            and not self._eof
            and not self._unexpected
            and not self._request_close
            and not self._close_delimited
            and self._keep_alive
        )

    # -- llhttp callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._unexpected = True
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            # llhttp takes any three digits; no server and no client downstream does.
            raise RemoteFramingError(f"invalid status code {status:03d}")
        if status < 200:
            if status == 101:
                raise RemoteFramingError("unexpected 101 Switching Protocols")
            self._informational += 1
            if self._informational > MAX_INFORMATIONAL:
                raise RemoteFramingError("too many informational (1xx) responses")
            self._skipping = True  # 100 Continue, 103 Early Hints: not forwarded
            return
        headers = self._headers
        names = set(map(_NAME, headers))  # (``header_names``, inline)
        if b"transfer-encoding" in names:
            _check_coding(headers)
        # Read it now: llhttp forgets it once the message is complete.
        self._keep_alive = bool(parser.should_keep_alive())
        head = ResponseHead(status, headers, b"", parser.get_http_version().encode("ascii"))
        self._head = head
        self._events.append(head)
        if self._is_head:
            # The answer to HEAD has no body, whatever its content-length says.
            self._finish()
            return
        if status in (204, 304):
            return  # llhttp ends these itself
        if b"content-length" in names or b"transfer-encoding" in names:
            return  # (a lone ``chunked``, checked above)
        self._close_delimited = True

    def on_body(self, body: bytes) -> None:
        if not self._complete and not self._skipping:
            self._events.append(body)

    def on_message_complete(self) -> None:
        if self._skipping:
            self._skipping = False
            return
        if not self._complete:
            self._complete = True
            self._events.append(END_OF_RESPONSE)

    def _finish(self) -> None:
        self._complete = True
        self._events.append(END_OF_RESPONSE)


def _check_coding(headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse a response whose transfer codings are anything but one ``chunked``."""
    codings = [
        coding.strip().lower()
        for name, value in headers
        if name == b"transfer-encoding"
        for coding in value.split(b",")
        if coding.strip()
    ]
    if codings != [b"chunked"]:
        shown = b", ".join(codings).decode("latin-1")
        raise RemoteFramingError(f"unsupported transfer-encoding {shown!r} (only a lone chunked is read)")
