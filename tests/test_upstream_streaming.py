"""64 MiB through UpstreamPool to a real uvicorn, both ways, with flat memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Iterator

import pytest

from gatekeep import Instance
from gatekeep._http import empty_body
from gatekeep._upstream import Timeouts, UpstreamPool

from ._upstream_servers import uvicorn_process

# Every test runs once per HTTP/1.1 codec (see tests/conftest.py).
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("each_codec")]

SIZE = 64 << 20
LIMIT = 16 << 20  # bounded buffering: far below the 64 MiB that passes through


@pytest.fixture(scope="module")
def uvicorn_port() -> Iterator[int]:
    with uvicorn_process() as port:
        yield port


async def upload(total: int) -> AsyncIterator[bytes]:
    chunk = b"u" * 65536
    while total > 0:
        yield chunk
        total -= len(chunk)


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_upload_64_mib_streams(uvicorn_port: int, framing: str) -> None:
    pool = UpstreamPool()
    headers = [(b"content-length", str(SIZE).encode())] if framing == "content-length" else []
    tracemalloc.start()
    try:
        response = await pool.send(
            Instance("127.0.0.1", uvicorn_port),
            "POST",
            b"/upload",
            headers,
            upload(SIZE),
            timeouts=Timeouts(),
        )
        body = await response.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body == str(SIZE).encode()
    assert peak < LIMIT, f"peak {peak / 2**20:.1f} MiB"
    await pool.aclose()


async def test_download_64_mib_streams(uvicorn_port: int) -> None:
    pool = UpstreamPool()
    tracemalloc.start()
    try:
        response = await pool.send(
            Instance("127.0.0.1", uvicorn_port),
            "GET",
            b"/bytes?n=%d" % SIZE,
            [],
            empty_body(),
            timeouts=Timeouts(),
        )
        received = 0
        largest = 0
        async for chunk in response.body:  # type: ignore[union-attr]
            received += len(chunk)
            largest = max(largest, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == SIZE
    assert largest <= 1 << 20
    assert peak < LIMIT, f"peak {peak / 2**20:.1f} MiB"
    assert pool.stats()[f"http://127.0.0.1:{uvicorn_port}"] == (0, 1)  # back in the pool
    await pool.aclose()
