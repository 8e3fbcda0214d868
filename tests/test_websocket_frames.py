"""RFC 6455 framing (gatekeep/_websocket/_frames.py) and handshake fields: the spec's examples, invariants."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep._websocket import _frames
from gatekeep._websocket._frames import Close, FrameError, FrameReader, Message, Ping, Pong
from gatekeep._websocket._handshake import accept_value, subprotocols, valid_key


def events(data: bytes, *, masked: bool, max_message: int = 1 << 20) -> list[object]:
    reader = FrameReader(masked=masked, max_message=max_message)
    reader.feed(data)
    found = []
    while (event := reader.next_event()) is not None:
        found.append(event)
    return found


def refused(data: bytes, *, masked: bool, max_message: int = 1 << 20) -> int:
    with pytest.raises(FrameError) as info:
        events(data, masked=masked, max_message=max_message)
    return info.value.code


# -- RFC 6455 §5.7 examples ------------------------------------------------------------


def test_the_rfcs_examples() -> None:
    (hello,) = events(bytes.fromhex("810548656c6c6f"), masked=False)
    assert isinstance(hello, Message) and hello.data == "Hello"
    (masked,) = events(bytes.fromhex("818537fa213d7f9f4d5158"), masked=True)
    assert isinstance(masked, Message) and masked.data == "Hello"
    (fragmented,) = events(bytes.fromhex("010348656c80026c6f"), masked=False)
    assert isinstance(fragmented, Message) and fragmented.data == "Hello"
    (ping,) = events(bytes.fromhex("890548656c6c6f"), masked=False)
    assert isinstance(ping, Ping) and ping.data == b"Hello"
    (pong,) = events(bytes.fromhex("8a8537fa213d7f9f4d5158"), masked=True)
    assert isinstance(pong, Pong) and pong.data == b"Hello"
    assert _frames.encode(_frames.BINARY, b"\0" * 256, mask=False)[:4] == bytes.fromhex("827e0100")
    assert _frames.encode(_frames.BINARY, b"\0" * 65536, mask=False)[:10] == bytes.fromhex(
        "827f0000000000010000"
    )


def test_the_rfcs_handshake_example() -> None:
    assert accept_value(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert valid_key(b"dGhlIHNhbXBsZSBub25jZQ==")
    assert not valid_key(b"dGhlIHNhbXBsZSBub25j") and not valid_key(b"not base64!")
    assert subprotocols(
        [(b"sec-websocket-protocol", b"chat, superchat"), (b"sec-websocket-protocol", b"x")]
    ) == [
        "chat",
        "superchat",
        "x",
    ]


# -- invariants ---------------------------------------------------------------------------


@given(
    payload=st.one_of(st.text(max_size=300), st.binary(max_size=70_000)),
    masked=st.booleans(),
    cut=st.integers(min_value=1, max_value=50),
)
def test_what_is_encoded_is_read_back_however_it_is_split(
    payload: str | bytes, masked: bool, cut: int
) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    opcode = _frames.TEXT if isinstance(payload, str) else _frames.BINARY
    frame = _frames.encode(opcode, data, mask=masked) + _frames.encode(_frames.PING, b"p", mask=masked)
    reader = FrameReader(masked=masked, max_message=1 << 20)
    found: list[object] = []
    for start in range(0, len(frame), cut):
        reader.feed(frame[start : start + cut])
        while (event := reader.next_event()) is not None:
            found.append(event)
    assert len(found) == 2
    message, ping = found
    assert isinstance(message, Message) and message.data == payload and message.size == len(data)
    assert isinstance(ping, Ping) and ping.data == b"p"


@given(code=st.sampled_from([1000, 1001, 1008, 1011, 1014, 3000, 4999]), reason=st.text(max_size=200))
def test_close_frames_carry_code_and_a_reason_cut_to_fit(code: int, reason: str) -> None:
    payload = _frames.close_payload(code, reason)
    assert len(payload) <= 125
    (close,) = events(_frames.encode(_frames.CLOSE, payload, mask=True), masked=True)
    assert isinstance(close, Close) and close.code == code and reason.startswith(close.reason)


def test_a_close_without_a_code_is_1005_and_1005_is_never_sent() -> None:
    (close,) = events(bytes.fromhex("8800"), masked=False)
    assert isinstance(close, Close) and close.code == 1005
    assert _frames.close_payload(1005, "x") == b"" and _frames.close_payload(1006, "x") == b""


def test_pings_may_come_between_fragments() -> None:
    data = bytes.fromhex("0103486563") + bytes.fromhex("8900") + bytes.fromhex("80026c6f")
    found = events(data, masked=False)
    assert [type(e) for e in found] == [Ping, Message]


# -- an attacker's frames -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "masked", "code"),
    [
        (bytes.fromhex("c10548656c6c6f"), False, 1002),  # RSV1 (permessage-deflate) never negotiated
        (bytes.fromhex("810548656c6c6f"), True, 1002),  # unmasked from a client
        (bytes.fromhex("818537fa213d7f9f4d5158"), False, 1002),  # masked from a server
        (bytes.fromhex("837e"), False, 1002),  # unknown opcode
        (bytes.fromhex("097e007e") + b"x" * 126, False, 1002),  # fragmented ping, too long
        (bytes.fromhex("897e007e") + b"x" * 126, False, 1002),  # ping over 125 bytes
        (bytes.fromhex("8003616263"), False, 1002),  # continuation without a start
        (bytes.fromhex("01026162") + bytes.fromhex("01026162"), False, 1002),  # new message inside one
        (bytes.fromhex("8102c328"), False, 1007),  # invalid UTF-8 text
        (bytes.fromhex("880103"), False, 1002),  # close with one byte
        (bytes.fromhex("880203ed"), False, 1002),  # close code 1005 on the wire
        (bytes.fromhex("880403e8c328"), False, 1007),  # close reason not UTF-8
        (bytes.fromhex("827fffffffffffffffff"), False, 1002),  # 64-bit length with the top bit
    ],
)
def test_protocol_violations_name_their_close_code(data: bytes, masked: bool, code: int) -> None:
    assert refused(data, masked=masked) == code


def test_a_message_too_big_is_refused_from_its_header_alone() -> None:
    # 2**40 bytes announced: refused before a byte of payload is buffered.
    head = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + b"mask"
    assert refused(head, masked=True, max_message=1024) == 1009
    # Fragments count together.
    first = _frames.encode(_frames.BINARY, b"x" * 600, mask=False)
    first = bytes([first[0] & 0x7F]) + first[1:]  # FIN off
    more = bytes([0x80, 126]) + struct.pack("!H", 600) + b"x" * 600
    assert refused(first + more, masked=False, max_message=1024) == 1009
    assert len(events(first + more, masked=False, max_message=1200)) == 1
