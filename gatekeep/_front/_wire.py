"""HTTP/1.1 response framing for the front server: bytes in, bytes out, no I/O.

``response_head`` turns an ASGI ``http.response.start`` into the bytes of a
status line and fields, and decides how the body is framed:

- no body at all for ``HEAD``, 1xx, 204 and 304 (the app's body is dropped);
- ``Content-Length`` when the app gave one (the body must match it);
- else ``Transfer-Encoding: chunked`` on HTTP/1.1, or until-close on HTTP/1.0.

It adds ``Date`` when the app sent none (gatekeep hides the upstream's), and
``Connection: close`` when the connection will not be reused.  Field names and
values are checked: a CR, LF or NUL from the app would let it split the
response (header injection), so such a field makes the response fail.

``problem`` renders the answers the server gives on its own (400, 408, 414,
431, 501, 500) as RFC 9457 documents through gatekeep's error family, always
with ``Connection: close``.
"""

from __future__ import annotations

import http
import re
import time
from email.utils import formatdate
from typing import Any, Final

from .._errors import GatekeepError
from .._http import is_header_name, problem_response

__all__ = [
    "CHUNKED",
    "CLOSE",
    "LENGTH",
    "NONE",
    "ResponseHead",
    "chunk",
    "date_header",
    "problem",
    "response_head",
]


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES: Final = {status: _status_line(status) for status in range(100, 600)}

# How a response body is framed (named states, as h11 names its own).
NONE: Final = "none"  # no body may follow (HEAD, 1xx, 204, 304)
LENGTH: Final = "length"  # Content-Length
CHUNKED: Final = "chunked"  # Transfer-Encoding: chunked
CLOSE: Final = "close"  # until the connection closes (HTTP/1.0)

# CR, LF and NUL are what could split a response; other controls pass, as in h11.
_BAD_VALUE: Final = re.compile(rb"[\r\n\x00]").search

# The fields this head decides on; every other one is copied as it is.
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"connection", b"date", b"server"})
# Field names seen before, checked and lowered: most responses repeat the same few.
_NAMES: dict[bytes, bytes] = {}
# The same, for the names this head copies as they are (not in _FRAMING): "name: ".
_PREFIXES: dict[bytes, bytes] = {}
_NAMES_LIMIT: Final = 4096


def _checked_name(name: Any) -> bytes:
    """``name`` lowered, once it is known to be a token (RFC 9110 §5.1); remembered."""
    raw = bytes(name)
    low = raw.lower()
    if not is_header_name(low):
        raise ValueError(f"invalid response header name {raw!r}")
    if len(_NAMES) >= _NAMES_LIMIT:
        _NAMES.clear()  # names from an app that invents them: start over, stay bounded
        _PREFIXES.clear()
    if type(name) is bytes:
        _NAMES[name] = low
        if low not in _FRAMING:
            _PREFIXES[name] = low + b": "
    return low


_date_second = 0
_date_field = b""


def date_header() -> bytes:
    """``date: <IMF-fixdate>\\r\\n``, formatted once per second."""
    global _date_second, _date_field
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_field = b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    return _date_field


class ResponseHead:
    """What ``response_head`` decided: the head's bytes, the framing, the length, keep-alive."""

    __slots__ = ("data", "framing", "keep_alive", "length")

    def __init__(self, data: bytes, framing: str, length: int, keep_alive: bool) -> None:
        self.data = data
        self.framing = framing
        self.length = length
        self.keep_alive = keep_alive


def response_head(
    status: Any, headers: Any, *, head: bool, http_11: bool, keep_alive: bool, server: bytes = b""
) -> ResponseHead:
    """The head of a response to a request (``head``: it was a HEAD request).

    ``server`` is a whole ``server: ...`` field line, added when the app sent no ``Server``.

    Raises:
        ValueError: a status outside 100–599, or a field that is not valid HTTP.
    """
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError(f"invalid response status {status!r}")
    parts = [_STATUS_LINES[int(status)]]
    length = -1
    chunked = False
    has_date = False
    prefixes = _PREFIXES
    names = _NAMES
    values: list[bytes] = []
    for name, value in headers:
        prefix = prefixes.get(name)
        if prefix is not None and type(value) is bytes:
            # The common case: a field this head copies as it is, its name seen before.
            parts += (prefix, value, b"\r\n")
            values.append(value)
            continue
        low = names.get(name)
        if low is None:
            low = _checked_name(name)
        if type(value) is not bytes:
            value = bytes(value)
        if low in _FRAMING:
            if _BAD_VALUE(value):
                raise ValueError(f"invalid response header {low!r}: {value!r}")
            if low == b"content-length":
                if not value.isdigit() or (length >= 0 and int(value) != length):
                    raise ValueError(f"invalid content-length {value!r}")
                length = int(value)
                continue  # written below, once the framing is known
            if low == b"transfer-encoding":
                # The body is framed here: drop the app's field, remember it asked for chunks.
                chunked = True
                continue
            if low == b"connection":
                if b"close" in value.lower():
                    keep_alive = False
                continue
            if low == b"date":
                has_date = True
            else:
                server = b""  # the app named its own server
        parts += (low, b": ", value, b"\r\n")
        values.append(value)
    if _BAD_VALUE(b"".join(values)):  # one scan for every value: a CR, LF or NUL is in one of them
        bad = next(v for v in values if _BAD_VALUE(v))
        raise ValueError(f"invalid response header value {bad!r}")
    if status < 200 or status == 204:
        framing = NONE  # RFC 9110 §8.6: no Content-Length on these
    elif status == 304 or (head and not chunked):
        framing = NONE  # the length a GET would have had may be told
        if length >= 0:
            parts.append(b"content-length: %d\r\n" % length)
    elif length >= 0 and not chunked:
        framing = LENGTH
        parts.append(b"content-length: %d\r\n" % length)
    elif http_11:
        framing = CHUNKED
        parts.append(b"transfer-encoding: chunked\r\n")
    else:
        framing = CLOSE
        keep_alive = False
    if head:
        framing = NONE
    if not has_date:
        parts.append(date_header())
    if server:
        parts.append(server)
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return ResponseHead(b"".join(parts), framing, length, keep_alive)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def problem(error: GatekeepError, server: bytes = b"") -> bytes:
    """A whole problem+json response for ``error``, closing the connection (``server``: a field line)."""
    answer = problem_response(error)
    body = answer.body
    assert isinstance(body, bytes)
    parts = [_STATUS_LINES[answer.status]]
    for name, value in answer.headers.raw:
        parts += (name, b": ", value, b"\r\n")
    parts += (date_header(), server, b"connection: close\r\n\r\n", body)
    return b"".join(parts)
