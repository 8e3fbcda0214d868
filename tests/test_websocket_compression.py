"""permessage-deflate (RFC 7692) on each hop the gateway terminates.

The negotiation and the codec are sans-IO and tested directly; then the real
thing: ``gatekeep serve`` and ``gatekeep.asgi()`` under uvicorn in a child
process, the ``websockets`` library as client and as upstream (accepting or
refusing compression), and raw sockets for what a well-behaved library never
sends (RSV1 where the RFC forbids it, a decompression bomb).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep import Gateway, asgi
from gatekeep._websocket import _frames
from gatekeep._websocket._deflate import OFFER, Deflater, Inflater, accept_offer, accept_response
from gatekeep._websocket._frames import FrameError, FrameReader

from ._servers import free_port, running
from ._websocket_upstream import WebSocketUpstream, websocket_upstream
from ._wire import front_server, upgrade_request
from .strategies import extension_fields

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(importlib.util.find_spec("websockets") is None, reason="needs websockets"),
]

DEFLATE = b"sec-websocket-extensions: permessage-deflate; client_max_window_bits"


def raw_deflate(data: bytes, bits: int = 15) -> bytes:
    """``data`` as another sender compresses a message (sync flush, tail stripped)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -bits)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One raw frame with the bits we choose (a client's: masked)."""
    data = _frames.encode(opcode, payload, mask=mask)
    return bytes([(0x80 if fin else 0) | rsv | opcode]) + data[1:]


def code_of(data: bytes, *, inflater: Inflater | None = None, max_message: int = 1 << 20) -> int:
    reader = FrameReader(masked=True, max_message=max_message, inflater=inflater)
    reader.feed(data)
    with pytest.raises(FrameError) as info:
        while reader.next_event() is not None:
            pass
    return info.value.code


# -- negotiation, the server's side ---------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "response"),
    [
        (b"permessage-deflate", b"permessage-deflate"),
        (b"permessage-deflate; client_max_window_bits", b"permessage-deflate; client_max_window_bits=12"),
        (b"permessage-deflate; client_max_window_bits=10", b"permessage-deflate; client_max_window_bits=10"),
        (b"permessage-deflate; server_max_window_bits=15", b"permessage-deflate; server_max_window_bits=12"),
        (b'permessage-deflate; server_max_window_bits="9"', b"permessage-deflate; server_max_window_bits=9"),
        (
            b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        # Declined offers (unknown, repeated, invalid parameters) make way for the next.
        (b"x-webkit-deflate-frame, permessage-deflate; mystery=1, permessage-deflate", b"permessage-deflate"),
        (
            b"permessage-deflate; server_no_context_takeover; server_no_context_takeover, permessage-deflate",
            b"permessage-deflate",
        ),
        (b"permessage-deflate; server_max_window_bits=16, permessage-deflate", b"permessage-deflate"),
        (b"permessage-deflate; server_max_window_bits, permessage-deflate", b"permessage-deflate"),
        (b"permessage-deflate; server_max_window_bits=010, permessage-deflate", b"permessage-deflate"),
        (b"permessage-deflate; client_no_context_takeover=1, permessage-deflate", b"permessage-deflate"),
    ],
)
def test_the_first_offer_the_gateway_can_honour_is_accepted(offer: bytes, response: bytes) -> None:
    agreed = accept_offer([offer])
    assert agreed is not None and agreed.response == response


@pytest.mark.parametrize(
    "offer",
    [
        b"",
        b"x-other",
        b"permessage-deflate; bogus",
        b"permessage-deflate; =1",
        b'permessage-deflate; a="b',
        b"permessage-deflate;; x",
        b"permessage-deflate client_max_window_bits",
    ],
)
def test_an_offer_the_gateway_cannot_honour_is_declined_not_an_error(offer: bytes) -> None:
    assert accept_offer([offer]) is None


def test_a_256_byte_window_is_accepted_and_the_gateways_messages_go_uncompressed() -> None:
    agreed = accept_offer([b"permessage-deflate; server_max_window_bits=8"])
    assert agreed is not None and agreed.response == b"permessage-deflate; server_max_window_bits=8"
    assert agreed.deflater.encode(_frames.TEXT, b"a" * 100, mask=False)[0] == 0x81  # no RSV1


# -- negotiation, the client's side (the upstream's answer) ------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        b"permessage-deflate",
        b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=9",
        b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        b"permessage-deflate; server_max_window_bits=15",  # the second offer
    ],
)
def test_an_upstream_answer_the_offer_allows_is_taken(response: bytes) -> None:
    assert not isinstance(accept_response([response]), str)


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (b"x-other", "not offered"),
        (b"permessage-deflate, permessage-deflate", "not offered"),
        (b"permessage-deflate; client_max_window_bits", "needs a value"),
        (b"permessage-deflate; server_max_window_bits=7", "window bits"),
        (b"permessage-deflate; surprise", "unknown parameter"),
        (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", "twice"),
        (b"permessage-deflate; ;", "unreadable"),
    ],
)
def test_an_upstream_answer_the_offer_does_not_allow_is_a_problem(response: bytes, problem: str) -> None:
    answer = accept_response([response])
    assert isinstance(answer, str) and problem in answer, answer


def test_the_gateways_offer_asks_for_small_windows_and_falls_back() -> None:
    assert OFFER == (
        b"permessage-deflate; server_max_window_bits=12; client_max_window_bits, "
        b"permessage-deflate; client_max_window_bits"
    )


# -- the codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("takeover", [True, False])
def test_messages_round_trip_with_and_without_context_takeover(takeover: bool) -> None:
    deflater = Deflater(12, reset=not takeover)
    reader = FrameReader(masked=True, max_message=1 << 20, inflater=Inflater(12, reset=not takeover))
    message = b'{"user": "alice", "text": "hello, hello, hello"}' * 4
    sizes = []
    for _ in range(3):
        data = deflater.encode(_frames.TEXT, message, mask=True)
        assert data[0] == 0xC1  # FIN, RSV1, text
        sizes.append(len(data))
        reader.feed(data)
        event = reader.next_event()
        assert (
            isinstance(event, _frames.Message)
            and event.data == message.decode()
            and event.size == len(message)
        )
    # With context takeover the repeats are back-references to the first message.
    assert (sizes[1] < sizes[0]) is takeover and sizes[1] == sizes[2]


def test_a_fragmented_message_from_another_sender_inflates() -> None:
    message = b"fragmented and compressed " * 50
    compressed = raw_deflate(message)
    half = len(compressed) // 2
    data = frame(_frames.BINARY, compressed[:half], fin=False, rsv=0x40) + frame(
        _frames.CONTINUATION, compressed[half:]
    )
    reader = FrameReader(masked=True, max_message=1 << 20, inflater=Inflater(15, reset=False))
    reader.feed(data + frame(_frames.BINARY, b"plain"))  # an uncompressed message in between is fine
    first, second = reader.next_event(), reader.next_event()
    assert isinstance(first, _frames.Message) and first.data == message
    assert isinstance(second, _frames.Message) and second.data == b"plain"


@pytest.mark.parametrize(
    ("data", "negotiated"),
    [
        (frame(_frames.TEXT, raw_deflate(b"hi"), rsv=0x40), False),  # not negotiated
        (frame(_frames.TEXT, b"a", fin=False) + frame(_frames.CONTINUATION, b"b", rsv=0x40), True),
        (frame(_frames.PING, b"", rsv=0x40), True),  # control frames are never compressed
        (frame(_frames.CLOSE, b"", rsv=0x40), True),
        (frame(_frames.TEXT, b"a", rsv=0x20), True),  # RSV2: no extension defines it
        (frame(_frames.TEXT, b"a", rsv=0x60), True),
    ],
)
def test_rsv_bits_where_the_rfc_forbids_them_are_a_1002(data: bytes, negotiated: bool) -> None:
    assert code_of(data, inflater=Inflater(15, reset=False) if negotiated else None) == 1002


def test_a_decompression_bomb_is_a_1009_without_inflating_it() -> None:
    bomb = raw_deflate(b"\0" * 50_000_000)  # 50 MB of zeros: about 50 KB on the wire
    assert len(bomb) < 60_000
    inflater = Inflater(15, reset=False)
    assert code_of(frame(_frames.BINARY, bomb, rsv=0x40), inflater=inflater, max_message=65536) == 1009
    # Fragmented: each fragment's output counts against what is left.
    small = raw_deflate(b"\0" * 100_000)
    third = len(small) // 3
    parts = [small[:third], small[third : 2 * third], small[2 * third :]]
    data = (
        frame(_frames.BINARY, parts[0], fin=False, rsv=0x40)
        + frame(_frames.CONTINUATION, parts[1], fin=False)
        + frame(_frames.CONTINUATION, parts[2])
    )
    assert code_of(data, inflater=Inflater(15, reset=False), max_message=65536) == 1009
    # At the limit exactly: delivered.
    reader = FrameReader(masked=True, max_message=65536, inflater=Inflater(15, reset=False))
    reader.feed(frame(_frames.BINARY, raw_deflate(b"\0" * 65536), rsv=0x40))
    event = reader.next_event()
    assert isinstance(event, _frames.Message) and event.size == 65536


def test_corrupt_compressed_data_is_a_1007() -> None:
    assert (
        code_of(frame(_frames.TEXT, b"\xff\xff\xff\xff", rsv=0x40), inflater=Inflater(15, reset=False))
        == 1007
    )


# -- the real thing: gatekeep serve and uvicorn, websockets both sides ---------------------------

CONFIG = """\
[gateway.websocket]
max_message_bytes = 65536
compression = {compression}

[[services]]
name = "deflating"
url = "http://127.0.0.1:{deflating}"

  [[services.routes]]
  paths = ["/z"]

[[services]]
name = "plain"
url = "http://127.0.0.1:{plain}"

  [[services.routes]]
  paths = ["/p"]

[[services]]
name = "fresh"
url = "http://127.0.0.1:{fresh}"

  [[services.routes]]
  paths = ["/f"]
"""

APP_MODULE = """\
import os

import gatekeep

app = gatekeep.asgi(gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"]))
"""


class Upstreams:
    def __init__(
        self, deflating: WebSocketUpstream, plain: WebSocketUpstream, fresh: WebSocketUpstream
    ) -> None:
        self.deflating = deflating  # accepts permessage-deflate (the library's defaults)
        self.plain = plain  # refuses it
        self.fresh = fresh  # accepts it without context takeover either way


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

    fresh = ServerPerMessageDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True)
    with (
        websocket_upstream(compression="deflate") as deflating,
        websocket_upstream() as plain,
        websocket_upstream(extensions=[fresh]) as fresh_upstream,
    ):
        yield Upstreams(deflating, plain, fresh_upstream)


def start(directory: Path, mode: str, upstreams: Upstreams, *, compression: bool = True) -> Any:
    config = directory / "gateway.toml"
    config.write_text(
        CONFIG.format(
            compression=str(compression).lower(),
            deflating=upstreams.deflating.port,
            plain=upstreams.plain.port,
            fresh=upstreams.fresh.port,
        )
    )
    port = free_port()
    if mode == "serve":
        argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port)]
        return running("gatekeep-serve", "", app_dir=directory, argv=argv, port=port)
    (directory / "ws_gateway.py").write_text(APP_MODULE)
    return running(
        "uvicorn", "ws_gateway:app", app_dir=directory, env={"GATEKEEP_CONFIG": str(config)}, port=port
    )


@pytest.fixture(scope="module", params=["serve", "uvicorn"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams
) -> Iterator[tuple[str, int]]:
    mode = request.param
    with start(tmp_path_factory.mktemp(f"ws-deflate-{mode}"), mode, upstreams) as (proc, port):
        yield mode, port
    assert "Traceback" not in proc.log(), proc.log()


async def connect(url: str, **kwargs: Any) -> Any:
    from websockets.asyncio.client import connect as ws_connect

    return await ws_connect(url, open_timeout=10, close_timeout=5, **kwargs)


def negotiated(ws: Any) -> str:
    return str(ws.response.headers.get("sec-websocket-extensions", ""))


@pytest.mark.parametrize("client_offers", [True, False])
@pytest.mark.parametrize("route", ["/z", "/p"])
async def test_a_compressed_echo_through_the_gateway(
    gateway: tuple[str, int], client_offers: bool, route: str
) -> None:
    mode, port = gateway
    options: dict[str, Any] = {} if client_offers else {"compression": None}
    messages = ['{"text": "hello"}' * 20, b"\x00\x01" * 3000, "small", "x" * 60000]
    async with await connect(f"ws://127.0.0.1:{port}{route}/hello", **options) as ws:
        seen = json.loads(await ws.recv())
        for message in messages + messages:  # repeats: back-references to earlier messages
            await ws.send(message)
            assert await ws.recv() == message
        await ws.send(["frag" * 100, "mented" * 100])  # a fragmented message, compressed
        assert await ws.recv() == "frag" * 100 + "mented" * 100
        # The client's hop: compressed when the client offered it (the front server's, or uvicorn's).
        assert negotiated(ws).startswith("permessage-deflate") is client_offers
        if mode == "serve" and client_offers:
            assert negotiated(ws) == "permessage-deflate; client_max_window_bits=12"
    # The upstream's hop: the gateway's own offer, whatever the client did; taken when the upstream can.
    assert seen["headers"]["sec-websocket-extensions"] == OFFER.decode()
    assert seen["extensions"] == (["permessage-deflate"] if route == "/z" else [])


async def test_context_takeover_off_on_both_hops(gateway: tuple[str, int]) -> None:
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    mode, port = gateway
    factory = ClientPerMessageDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True)
    async with await connect(f"ws://127.0.0.1:{port}/f/hello", compression=None, extensions=[factory]) as ws:
        seen = json.loads(await ws.recv())
        for n in range(5):
            await ws.send(f"again and again {n} " * 50)
            assert await ws.recv() == f"again and again {n} " * 50
        if mode == "serve":
            assert negotiated(ws) == (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
                " client_max_window_bits=12"
            )
    assert seen["extensions"] == ["permessage-deflate"]


async def test_a_compressed_bomb_either_way_is_a_1009(gateway: tuple[str, int], upstreams: Upstreams) -> None:
    mode, port = gateway
    path = f"/bomb-{mode}"
    async with await connect(f"ws://127.0.0.1:{port}/z{path}", max_size=None) as ws:
        await ws.send(b"\0" * 65536)  # at the limit, once inflated: relayed
        assert len(await ws.recv()) == 65536
        await ws.send(b"\0" * 5_000_000)  # a few KB compressed
        with anyio.fail_after(5):
            await ws.wait_closed()
    assert ws.close_code == 1009
    assert (await upstreams.deflating.wait_closes(path))[0][0] == 1009
    # From the upstream: 1 MB of x, compressed by the upstream, inflated by the gateway up to its limit.
    async with await connect(f"ws://127.0.0.1:{port}/z/echo", max_size=None) as ws:
        await ws.send("big:1000000")
        with anyio.fail_after(5):
            await ws.wait_closed()
    assert ws.close_code == 1009


@pytest.mark.parametrize("mode", ["serve", "uvicorn"])
async def test_compression_false_negotiates_nothing(tmp_path: Path, upstreams: Upstreams, mode: str) -> None:
    with start(tmp_path, mode, upstreams, compression=False) as (proc, port):
        async with await connect(f"ws://127.0.0.1:{port}/z/hello") as ws:  # the client offers
            seen = json.loads(await ws.recv())
            await ws.send("no deflate " * 100)
            assert await ws.recv() == "no deflate " * 100
            if mode == "serve":  # under uvicorn the client's hop is uvicorn's to decide
                assert negotiated(ws) == ""
    assert "sec-websocket-extensions" not in seen["headers"]
    assert seen["extensions"] == []
    assert "Traceback" not in proc.log(), proc.log()


# -- raw sockets against gatekeep serve's front server (in process) ------------------------------


class RawClient:
    """A client that writes whatever frames a test chooses and decodes what the gateway sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head
        inflater = Inflater(15, reset=False) if b"sec-websocket-extensions" in head else None
        self.frames = FrameReader(masked=False, max_message=1 << 24, inflater=inflater)
        self.raw: list[bytes] = []

    async def event(self) -> Any:
        while (event := self.frames.next_event()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                return None
            self.raw.append(data)
            self.frames.feed(data)
        return event

    def send(self, data: bytes) -> None:
        self.writer.write(data)


@asynccontextmanager
async def raw_client(port: int, path: str, *extra: bytes) -> AsyncIterator[RawClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(path, *extra))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    try:
        yield RawClient(reader, writer, head.lower())
    finally:
        writer.close()


@asynccontextmanager
async def serving(upstream: WebSocketUpstream, *, compression: bool = True) -> AsyncIterator[int]:
    config = {
        "gateway": {"websocket": {"max_message_bytes": 65536, "compression": compression}},
        "services": [
            {"name": "chat", "url": f"http://127.0.0.1:{upstream.port}", "routes": [{"paths": ["/ws"]}]}
        ],
    }
    async with front_server(asgi(Gateway(config))) as port:
        yield port


async def test_the_front_server_compresses_what_it_sends_and_inflates_what_it_receives(
    upstreams: Upstreams,
) -> None:
    message = b"compressible " * 200
    async with serving(upstreams.deflating) as port, raw_client(port, "/ws/echo", DEFLATE) as c:
        assert b"sec-websocket-extensions: permessage-deflate; client_max_window_bits=12" in c.head
        c.send(frame(_frames.BINARY, raw_deflate(message, 12), rsv=0x40))
        event = await c.event()
        assert isinstance(event, _frames.Message) and event.data == message
        assert c.raw[0][0] == 0xC2  # FIN, RSV1, binary
        assert len(b"".join(c.raw)) < len(message) // 10


@pytest.mark.parametrize(
    "data",
    [
        frame(_frames.TEXT, b"a", fin=False) + frame(_frames.CONTINUATION, raw_deflate(b"b"), rsv=0x40),
        frame(_frames.PING, b"", rsv=0x40),
        frame(_frames.TEXT, raw_deflate(b"hi"), rsv=0x20),
    ],
    ids=["continuation", "control", "rsv2"],
)
async def test_rsv_bits_where_the_rfc_forbids_them_close_with_1002(upstreams: Upstreams, data: bytes) -> None:
    async with serving(upstreams.deflating) as port, raw_client(port, "/ws/echo", DEFLATE) as c:
        c.send(data)
        close = await c.event()
        assert isinstance(close, _frames.Close) and close.code == 1002, close


async def test_rsv1_without_a_negotiated_extension_closes_with_1002(upstreams: Upstreams) -> None:
    async with serving(upstreams.deflating, compression=False) as port:
        async with raw_client(port, "/ws/echo", DEFLATE) as c:
            assert b"sec-websocket-extensions" not in c.head
            c.send(frame(_frames.TEXT, raw_deflate(b"hi"), rsv=0x40))
            close = await c.event()
            assert isinstance(close, _frames.Close) and close.code == 1002


async def test_a_bomb_at_the_front_server_is_a_1009_on_both_sides(upstreams: Upstreams) -> None:
    async with serving(upstreams.deflating) as port, raw_client(port, "/ws/raw-bomb", DEFLATE) as c:
        c.send(frame(_frames.BINARY, raw_deflate(b"\0" * 20_000_000, 12), rsv=0x40))
        close = await c.event()
        assert isinstance(close, _frames.Close) and close.code == 1009
    assert (await upstreams.deflating.wait_closes("/raw-bomb"))[0][0] == 1009


# -- an upstream whose answer the offer does not allow: 502 before the upgrade ---------------------


@asynccontextmanager
async def answering_upstream(extensions: bytes) -> AsyncIterator[int]:
    """An upstream that answers every handshake with a 101 carrying ``extensions``."""
    from gatekeep._websocket._handshake import accept_value

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: "
            + accept_value(key)
            + b"\r\nsec-websocket-extensions: "
            + extensions
            + b"\r\n\r\n"
        )
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("extensions", "compression", "detail"),
    [
        (b"permessage-deflate; client_max_window_bits", True, "client_max_window_bits needs a value"),
        (b"x-unknown", True, "an extension was negotiated that was not offered"),
        (b"permessage-deflate; server_max_window_bits=20", True, "window bits"),
        (b"permessage-deflate", False, "an extension was negotiated, none was offered"),
    ],
)
async def test_an_upstream_answer_the_offer_does_not_allow_is_a_502(
    extensions: bytes, compression: bool, detail: str
) -> None:
    from websockets.exceptions import InvalidStatus

    async with answering_upstream(extensions) as upstream_port:
        config = {
            "gateway": {"websocket": {"compression": compression}},
            "services": [
                {"name": "odd", "url": f"http://127.0.0.1:{upstream_port}", "routes": [{"paths": ["/ws"]}]}
            ],
        }
        async with front_server(asgi(Gateway(config))) as port:
            with pytest.raises(InvalidStatus) as info:
                async with await connect(f"ws://127.0.0.1:{port}/ws/x"):
                    pass
    response = info.value.response
    assert response.status_code == 502
    doc = json.loads(response.body)
    assert detail in doc["detail"], doc


# -- properties -----------------------------------------------------------------------------------


@given(field=extension_fields)
def test_any_offer_is_accepted_within_the_rfc_or_declined(field: bytes) -> None:
    agreed = accept_offer([field])
    if agreed is not None:
        # What the gateway answers is a response its own client side would take.
        assert not isinstance(accept_response([agreed.response]), str)


@given(field=extension_fields)
def test_any_upstream_answer_is_taken_or_a_problem(field: bytes) -> None:
    answer = accept_response([field])
    assert isinstance(answer, str) or isinstance(answer.deflater, Deflater)


@given(
    messages=st.lists(st.binary(max_size=3000) | st.just(b"repeat " * 40), min_size=1, max_size=8),
    takeover=st.booleans(),
    bits=st.integers(9, 15),
    split=st.integers(1, 5),
)
def test_every_message_round_trips_however_it_is_framed(
    messages: list[bytes], takeover: bool, bits: int, split: int
) -> None:
    deflater = Deflater(bits, reset=not takeover)
    reader = FrameReader(masked=True, max_message=1 << 20, inflater=Inflater(bits, reset=not takeover))
    for message in messages:
        compressed = deflater.compress(message)
        if compressed is None:
            reader.feed(frame(_frames.BINARY, message))
        else:  # in ``split`` fragments, RSV1 on the first only
            size = -(-len(compressed) // split) or 1
            parts = [compressed[i : i + size] for i in range(0, len(compressed), size)] or [b""]
            for n, part in enumerate(parts):
                reader.feed(
                    frame(
                        _frames.BINARY if n == 0 else _frames.CONTINUATION,
                        part,
                        fin=n == len(parts) - 1,
                        rsv=0x40 if n == 0 else 0,
                    )
                )
        event = reader.next_event()
        assert isinstance(event, _frames.Message) and event.data == message
