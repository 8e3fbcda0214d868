"""A buffered request body comes out whole, however many reads it arrived in, and a chunked one
too big to buffer streams on with every byte (``BodyPolicy._read_ahead``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeep import Headers, Request, RouteConfig, ServiceConfig
from gatekeep._body import BodyPolicy
from gatekeep._http import is_replayable


def policy(buffer_size: int = 1 << 20) -> BodyPolicy:
    return BodyPolicy(idle=5, total=None, buffer_size=buffer_size, memory=8 << 20, uploads={}, wait=1)


async def body(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def request(chunks: list[bytes], *, chunked: bool) -> Request:
    framing = (
        (b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"%d" % len(b"".join(chunks)))
    )
    return Request("POST", "/", b"", Headers([framing]), body(chunks))


async def read_all(request: Request) -> bytes:
    return b"".join([chunk async for chunk in request.body])


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=50), min_size=1, max_size=40), st.booleans())
def test_a_body_in_any_number_of_reads_is_buffered_whole(chunks: list[bytes], chunked: bool) -> None:
    async def run() -> None:
        r = request(chunks, chunked=chunked)
        hold = await policy().prepare(r, RouteConfig(paths=("/",)), ServiceConfig(name="s", url="http://x"))
        if b"".join(chunks) or chunked:
            assert hold is not None and is_replayable(r.body)
            assert await read_all(r) == b"".join(chunks)
            hold.release()

    anyio.run(run)


@pytest.mark.parametrize("count", [3, 40])
def test_a_chunked_body_that_outgrows_the_buffer_streams_on_whole(count: int) -> None:
    chunks = [bytes([65 + n % 26]) * 10 for n in range(count)]

    async def run() -> None:
        r = request(chunks, chunked=True)
        await policy(buffer_size=15).prepare(
            r, RouteConfig(paths=("/",)), ServiceConfig(name="s", url="http://x")
        )
        assert not is_replayable(r.body)
        assert await read_all(r) == b"".join(chunks)

    anyio.run(run)
