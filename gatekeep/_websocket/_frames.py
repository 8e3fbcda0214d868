"""RFC 6455 framing, sans-IO: bytes in, messages out; messages in, bytes out.

Theory of operation
-------------------
``FrameReader`` is fed what a socket delivered and returns whole events:
a ``Message`` (text or binary, its fragments joined), a ``Ping``, a ``Pong``
or a ``Close``.  It checks what RFC 6455 §5 asks of the sender on the other
side, and raises ``FrameError`` with the close code to answer:

- masking: every frame from a client is masked, none from a server (1002);
- reserved bits: RSV2-3 are always clear, and RSV1 is set only when
  permessage-deflate was negotiated (``inflater``), only on the first frame
  of a data message, never on a control frame (1002);
- control frames: at most 125 bytes, never fragmented (1002);
- fragmentation: continuation frames only inside a fragmented message, no
  new data frame before it ends (1002);
- size: a message longer than ``max_message`` bytes is refused as soon as a
  frame header announces it, before its payload is buffered (1009); a
  compressed one counts its inflated bytes, frame by frame, and zlib never
  makes more than one byte past the limit (``_deflate.Inflater``);
- text: valid UTF-8 (1007); close frames: a registered or private code and a
  UTF-8 reason (1002 / 1007).

The reader keeps at most one frame plus the fragments of one message, so its
memory is bounded by ``max_message`` plus a frame header (twice that, for a
compressed message: its frame and what it inflated to).

``encode`` frames one whole message (or control frame); a client masks with
a fresh key from ``os.urandom`` (§5.3: the key must be unpredictable, which
is what protects intermediaries from cache poisoning).

Unmasking XORs the payload with the repeated key as one big integer: C speed
without numpy.
"""

from __future__ import annotations

import os
import struct
from typing import Final, Protocol

__all__ = [
    "BINARY",
    "CLOSE",
    "PING",
    "PONG",
    "TEXT",
    "Close",
    "FrameError",
    "FrameReader",
    "Message",
    "Ping",
    "Pong",
    "close_payload",
    "encode",
    "sendable_code",
]

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

_DATA: Final = frozenset({CONTINUATION, TEXT, BINARY})
_CONTROL: Final = frozenset({CLOSE, PING, PONG})

# Close codes (RFC 6455 §7.4.1, IANA registry).
NORMAL: Final = 1000
GOING_AWAY: Final = 1001
PROTOCOL_ERROR: Final = 1002
NO_STATUS: Final = 1005  # never on the wire: a close frame without a code
ABNORMAL: Final = 1006  # never on the wire: the connection dropped without a close frame
INVALID_DATA: Final = 1007
POLICY: Final = 1008
TOO_BIG: Final = 1009
INTERNAL: Final = 1011
BAD_GATEWAY: Final = 1014

# Codes an endpoint may send (§7.4.1 and the IANA registry); 3000-4999 are for
# libraries and applications.
_SENDABLE: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def sendable_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame."""
    return code in _SENDABLE or 3000 <= code <= 4999


class FrameError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Message:
    """A whole data message: ``str`` for a text message, ``bytes`` for binary."""

    __slots__ = ("data", "size")

    def __init__(self, data: str | bytes, size: int) -> None:
        self.data = data
        self.size = size  # the payload's length (once decompressed)


class Ping:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Pong:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Close:
    """A close frame: ``code`` is 1005 when the frame carried none."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


Event = Message | Ping | Pong | Close


class Inflater(Protocol):
    """What the reader needs of permessage-deflate (``_deflate.Inflater``)."""

    def inflate(self, data: bytes, *, final: bool, room: int) -> bytes:
        """What one frame's payload inflates to; ``FrameError`` past ``room`` bytes (1009)."""
        ...


def unmask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


class FrameReader:
    """Parses the frames one peer sends (see the module doc).

    Args:
        masked: frames must be masked (we are the server) or must not be (the client).
        max_message: the largest message, in payload bytes, before 1009.
        inflater: permessage-deflate was negotiated: RSV1 marks a compressed message.
    """

    __slots__ = (
        "_buffer",
        "_compressed",
        "_fragments",
        "_inflated",
        "_inflater",
        "_masked",
        "_max",
        "_opcode",
        "_size",
        "_wire_max",
    )

    def __init__(self, *, masked: bool, max_message: int, inflater: Inflater | None = None) -> None:
        self._masked = masked
        self._max = max_message
        # A compressed message may be a little longer than what it inflates to (deflate's
        # stored blocks: 5 bytes per 64 KiB); its inflated size is what the limit is about.
        self._wire_max = max_message + max_message // 1024 + 64
        self._inflater = inflater
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._opcode = 0  # the opcode of the fragmented message in progress (0: none)
        self._size = 0  # wire bytes of the message in progress
        self._compressed = False  # the message in progress is compressed (RSV1 on its first frame)
        self._inflated = 0  # bytes it inflated to so far

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Event | None:
        """The next whole event, ``None`` until more bytes arrive.

        Raises:
            FrameError: the peer broke the protocol; nothing more can be read.
        """
        while True:
            buffer = self._buffer
            if len(buffer) < 2:
                return None
            first, second = buffer[0], buffer[1]
            fin = first & 0x80
            opcode = first & 0x0F
            if first & 0x70:
                if first & 0x70 != 0x40 or self._inflater is None:
                    raise FrameError(PROTOCOL_ERROR, "reserved bits set without a negotiated extension")
                if opcode in _CONTROL:
                    raise FrameError(PROTOCOL_ERROR, "a control frame cannot be compressed")
                if opcode == CONTINUATION:
                    raise FrameError(PROTOCOL_ERROR, "RSV1 on a continuation frame")
                if opcode in _DATA and not self._opcode:
                    self._compressed = True
            if bool(second & 0x80) is not self._masked:
                raise FrameError(
                    PROTOCOL_ERROR,
                    "unmasked frame from a client" if self._masked else "masked frame from a server",
                )
            length = second & 0x7F
            if opcode in _CONTROL:
                if not fin or length > 125:
                    raise FrameError(
                        PROTOCOL_ERROR, "control frames are at most 125 bytes and not fragmented"
                    )
            elif opcode not in _DATA:
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            elif opcode == CONTINUATION and not self._opcode:
                raise FrameError(PROTOCOL_ERROR, "continuation frame outside a fragmented message")
            elif opcode != CONTINUATION and self._opcode:
                raise FrameError(PROTOCOL_ERROR, "new data frame inside a fragmented message")
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return None
                length = struct.unpack_from("!H", buffer, 2)[0]
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    return None
                length = struct.unpack_from("!Q", buffer, 2)[0]
                if length >> 63:
                    raise FrameError(PROTOCOL_ERROR, "frame length with the most significant bit set")
                offset = 10
            if opcode not in _CONTROL and self._size + length > (
                self._wire_max if self._compressed else self._max
            ):
                raise FrameError(TOO_BIG, f"message larger than {self._max} bytes")
            key = b""
            if self._masked:
                if len(buffer) < offset + 4:
                    return None
                key = bytes(buffer[offset : offset + 4])
                offset += 4
            end = offset + length
            if len(buffer) < end:
                return None
            payload = buffer[offset:end]
            del buffer[:end]
            data = unmask(payload, key) if key else bytes(payload)
            if opcode in _CONTROL:
                if opcode == PING:
                    return Ping(data)
                if opcode == PONG:
                    return Pong(data)
                return _parse_close(data)
            if self._compressed:
                assert self._inflater is not None
                data = self._inflater.inflate(data, final=bool(fin), room=self._max - self._inflated)
                self._inflated += len(data)
                if fin:
                    self._compressed = False
                    self._inflated = 0
            if not fin:
                if opcode != CONTINUATION:
                    self._opcode = opcode
                self._fragments.append(data)
                self._size += length
                continue
            if opcode == CONTINUATION:
                opcode = self._opcode
                self._fragments.append(data)
                data = b"".join(self._fragments)
                self._fragments = []
                self._opcode = 0
                self._size = 0
            if opcode == TEXT:
                try:
                    return Message(data.decode("utf-8"), len(data))
                except UnicodeDecodeError:
                    raise FrameError(INVALID_DATA, "text message is not valid UTF-8") from None
            return Message(data, len(data))


def _parse_close(data: bytes) -> Close:
    if not data:
        return Close(NO_STATUS, "")
    if len(data) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = struct.unpack_from("!H", data)[0]
    if not sendable_code(code):
        raise FrameError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = data[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not valid UTF-8") from None
    return Close(code, reason)


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame (empty for 1005; the reason cut to fit 125 bytes)."""
    if code == NO_STATUS or not sendable_code(code):
        return b""
    data = reason.encode("utf-8")[:123]
    while data:
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:  # cut inside a character
            data = data[:-1]
    return struct.pack("!H", code) + data


def encode(opcode: int, payload: bytes, *, mask: bool, rsv1: bool = False) -> bytes:
    """One final frame carrying ``payload``; masked (client to server) when ``mask``.

    ``rsv1`` marks a compressed data message (permessage-deflate).
    """
    n = len(payload)
    first = (0xC0 if rsv1 else 0x80) | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(payload, key)
