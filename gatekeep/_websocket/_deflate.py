"""permessage-deflate (RFC 7692), sans-IO: the negotiation and the zlib state of one hop.

Theory of operation
-------------------
gatekeep relays messages, not frames (it decodes, counts and checks them),
so compression is per hop, as in every message-relaying proxy: each
connection gatekeep terminates negotiates its own ``permessage-deflate``.

Negotiation (``Sec-WebSocket-Extensions``, RFC 6455 §9.1 grammar):

- as the server (``accept_offer``), the client's offers are read in order and
  the first one gatekeep can honour is accepted; an offer with an unknown,
  duplicate or invalid parameter is declined (never an error), as is a
  header that does not parse;
- as the client (``OFFER`` and ``accept_response``), gatekeep offers
  ``server_max_window_bits=12`` first and a plain offer second, both with
  ``client_max_window_bits``; a response those offers do not allow is the
  upstream's error (the gateway answers 502 before the upgrade).

Memory is what decides the parameters.  zlib's deflate state costs
``2**(wbits + 2) + 2**(memLevel + 9)`` bytes and more (262 KiB measured at
its defaults, ``wbits=15, memLevel=8``; 38 KiB at ``wbits=12, memLevel=5``),
an inflater 7 KiB plus its ``2**wbits`` window.  Kept for the life of a
connection, that is about 100 KiB per proxied socket (two hops, both ways).
So gatekeep keeps no zlib state between messages: context takeover is the
LZ77 window, i.e. the last ``2**wbits`` bytes of the messages so far, and
each message gets a fresh zlib object primed with them (``zdict``, which for
raw deflate is exactly that window).  An idle connection holds those bytes
only (at most 4 KiB each way on a hop that agreed ``wbits=12``), a busy one
pays a few microseconds per message to prime zlib.  gatekeep compresses with
a 4 KiB window and ``memLevel=5`` and asks peers for a 4 KiB window where the
RFC lets it; a peer that did not offer ``client_max_window_bits`` may use
32 KiB, which is then what its history holds.

Decompression is bounded: ``Inflater.inflate`` asks zlib for at most one
byte more than the room left under the message limit, so a small frame that
inflates past it ends in ``FrameError(1009)`` without the rest being made.
zlib cannot compress with a 256-byte window (``wbits=8``): when a peer
insists on one, gatekeep accepts and simply sends its messages uncompressed
(RSV1 is per message; the RFC lets a sender skip compression).
"""

from __future__ import annotations

import zlib
from typing import Final

from . import _frames
from ._frames import FrameError

__all__ = ["NAME", "OFFER", "Deflater", "Inflater", "Negotiated", "accept_offer", "accept_response"]

NAME: Final = "permessage-deflate"
# Our window and memory level (see the module doc).
WINDOW_BITS: Final = 12
MEM_LEVEL: Final = 5
# The empty stored block a sync flush ends with; stripped by the sender, added back by the receiver.
_TAIL: Final = b"\x00\x00\xff\xff"

OFFER: Final = (
    f"{NAME}; server_max_window_bits={WINDOW_BITS}; client_max_window_bits, {NAME}; client_max_window_bits"
).encode("ascii")

_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_PARAMS: Final = frozenset(
    {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
)

Params = dict[str, str | None]


def _slide(history: bytes, data: bytes, size: int) -> bytes:
    """The last ``size`` bytes of ``history + data`` (the LZ77 window after ``data``)."""
    if len(data) >= size:
        return data[-size:]
    return (history + data)[-size:]


class Deflater:
    """Compresses the messages one side sends (``None`` from ``compress``: send it uncompressed).

    Context takeover keeps the window's bytes, not zlib's state (see the module doc).
    """

    __slots__ = ("_bits", "_history", "_reset", "_window")

    def __init__(self, bits: int, *, reset: bool) -> None:
        self._bits = bits
        self._window = 1 << bits
        self._reset = reset  # no context takeover: every message starts from nothing
        self._history = b""

    def compress(self, payload: bytes) -> bytes | None:
        if not payload or self._bits < 9:  # nothing to gain; zlib has no 256-byte window
            return None
        if self._history:
            z = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self._bits, MEM_LEVEL, zdict=self._history
            )
        else:
            z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self._bits, MEM_LEVEL)
        data = z.compress(payload) + z.flush(zlib.Z_SYNC_FLUSH)
        if not self._reset:
            self._history = _slide(self._history, payload, self._window)
        return data[:-4] if data.endswith(_TAIL) else data

    def encode(self, opcode: int, payload: bytes, *, mask: bool) -> bytes:
        """One frame of a whole data message, compressed (RSV1) when it is worth it."""
        compressed = self.compress(payload)
        if compressed is None:
            return _frames.encode(opcode, payload, mask=mask)
        return _frames.encode(opcode, compressed, mask=mask, rsv1=True)


class Inflater:
    """Decompresses the messages the peer sends, within the message limit.

    zlib's state lives for one message; context takeover keeps the window's bytes.
    """

    __slots__ = ("_bits", "_history", "_reset", "_window", "_zlib")

    def __init__(self, bits: int, *, reset: bool) -> None:
        self._bits = max(bits, 9)  # a larger window than the peer's always decodes its stream
        self._window = 1 << self._bits
        self._reset = reset
        self._history = b""
        self._zlib: zlib._Decompress | None = None

    def inflate(self, data: bytes, *, final: bool, room: int) -> bytes:
        """The bytes ``data`` (one frame's payload) inflates to.

        Raises:
            FrameError: more than ``room`` bytes (1009), or no valid deflate data (1007).
        """
        z = self._zlib
        if z is None:
            if self._history:
                z = zlib.decompressobj(-self._bits, zdict=self._history)
            else:
                z = zlib.decompressobj(-self._bits)
            self._zlib = z
        if final:
            data += _TAIL
        try:
            out = z.decompress(data, room + 1)
        except zlib.error as exc:
            raise FrameError(_frames.INVALID_DATA, f"invalid compressed data: {exc}") from None
        if len(out) > room:
            raise FrameError(_frames.TOO_BIG, "message too big once decompressed")
        if not self._reset and out:
            self._history = _slide(self._history, out, self._window)
        if final:
            self._zlib = None
        return out


class Negotiated:
    """What one hop agreed: the response field (server side) and both directions' zlib settings."""

    __slots__ = ("deflater", "inflater", "response")

    def __init__(self, response: bytes, deflater: Deflater, inflater: Inflater) -> None:
        self.response = response
        self.deflater = deflater
        self.inflater = inflater


# -- parsing (RFC 6455 §9.1) ---------------------------------------------------------------


def _token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] in _TCHAR:
        i += 1
    if i == start:
        raise ValueError("token expected")
    return text[start:i], i


def _quoted(text: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    i += 1  # the opening quote
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            i += 1
            if i == len(text):
                break
            c = text[i]
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted string")


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def parse(values: list[bytes]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The extensions a ``Sec-WebSocket-Extensions`` field (all its lines) lists, in order.

    Raises:
        ValueError: the field does not follow the grammar.
    """
    text = ", ".join(v.decode("latin-1") for v in values)
    found: list[tuple[str, list[tuple[str, str | None]]]] = []
    i = _skip(text, 0)
    while i < len(text):
        if text[i] == ",":  # empty list elements are allowed (RFC 9110 §5.6.1)
            i = _skip(text, i + 1)
            continue
        name, i = _token(text, i)
        params: list[tuple[str, str | None]] = []
        i = _skip(text, i)
        while i < len(text) and text[i] == ";":
            key, i = _token(text, _skip(text, i + 1))
            i = _skip(text, i)
            value: str | None = None
            if i < len(text) and text[i] == "=":
                i = _skip(text, i + 1)
                if i < len(text) and text[i] == '"':
                    value, i = _quoted(text, i)
                    if _token(value, 0)[1] != len(value):  # still a token once unquoted (§9.1)
                        raise ValueError("quoted value is not a token")
                else:
                    value, i = _token(text, i)
                i = _skip(text, i)
            params.append((key.lower(), value))
        found.append((name.lower(), params))
        if i < len(text):
            if text[i] != ",":
                raise ValueError(f"unexpected {text[i]!r}")
            i = _skip(text, i + 1)
    return found


def _bits(value: str | None) -> int:
    """A window-bits value: 8 to 15, digits without a leading zero."""
    if value is None or not value.isdigit() or value.startswith("0") or not 8 <= int(value) <= 15:
        raise ValueError(f"window bits must be 8 to 15, got {value!r}")
    return int(value)


def _params(pairs: list[tuple[str, str | None]]) -> Params:
    """The parameters of one permessage-deflate element, checked (RFC 7692 §7.1).

    Raises:
        ValueError: an unknown or repeated parameter, or an invalid value.
    """
    params: Params = {}
    for key, value in pairs:
        if key not in _PARAMS:
            raise ValueError(f"unknown parameter {key!r}")
        if key in params:
            raise ValueError(f"parameter {key!r} given twice")
        if key.endswith("context_takeover"):
            if value is not None:
                raise ValueError(f"{key} takes no value")
        elif value is not None or key == "server_max_window_bits":
            _bits(value)
        params[key] = value
    return params


# -- the server's side ----------------------------------------------------------------------


def accept_offer(values: list[bytes]) -> Negotiated | None:
    """The first of the client's offers gatekeep can honour (``None``: no extension)."""
    if not values:
        return None
    try:
        offers = parse(values)
    except ValueError:
        return None  # an unreadable offer is declined, not an error
    for name, pairs in offers:
        if name != NAME:
            continue
        try:
            params = _params(pairs)
        except ValueError:
            continue
        response = [NAME]
        server_reset = "server_no_context_takeover" in params
        if server_reset:
            response.append("server_no_context_takeover")
        server_bits = WINDOW_BITS
        if "server_max_window_bits" in params:
            server_bits = min(_bits(params["server_max_window_bits"]), WINDOW_BITS)
            response.append(f"server_max_window_bits={server_bits}")
        client_reset = "client_no_context_takeover" in params
        if client_reset:  # the client's own hint: taken, our inflater is freed between messages
            response.append("client_no_context_takeover")
        client_bits = 15
        if "client_max_window_bits" in params:
            offered = params["client_max_window_bits"]
            client_bits = min(_bits(offered) if offered is not None else 15, WINDOW_BITS)
            response.append(f"client_max_window_bits={client_bits}")
        return Negotiated(
            "; ".join(response).encode("ascii"),
            Deflater(server_bits, reset=server_reset),
            Inflater(client_bits, reset=client_reset),
        )
    return None


# -- the client's side ----------------------------------------------------------------------


def accept_response(values: list[bytes]) -> Negotiated | str:
    """What the upstream's answer to ``OFFER`` agreed, or what is wrong with it."""
    try:
        chosen = parse(values)
    except ValueError as exc:
        return f"unreadable Sec-WebSocket-Extensions: {exc}"
    if len(chosen) != 1 or chosen[0][0] != NAME:
        return "an extension was negotiated that was not offered"
    try:
        params = _params(chosen[0][1])
        if "client_max_window_bits" in params and params["client_max_window_bits"] is None:
            raise ValueError("client_max_window_bits needs a value in a response")
    except ValueError as exc:
        return f"invalid {NAME} response: {exc}"
    # The first offer asked for server_max_window_bits=12; a response without it took the second.
    server_bits = params.get("server_max_window_bits")
    client_bits = params.get("client_max_window_bits")
    # We may always compress with a smaller window than the one allowed.
    ours = min(_bits(client_bits), WINDOW_BITS) if client_bits else WINDOW_BITS
    return Negotiated(
        b"",
        Deflater(ours, reset="client_no_context_takeover" in params),
        Inflater(_bits(server_bits) if server_bits else 15, reset="server_no_context_takeover" in params),
    )
