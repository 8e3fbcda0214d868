"""``TimedBody``: only the wait for the client counts, per read and in total, with one timer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gatekeep._body import TimedBody
from gatekeep._errors import RequestTimeout

pytestmark = pytest.mark.anyio


async def trickle(gaps: list[float]) -> AsyncIterator[bytes]:
    for gap in gaps:
        await asyncio.sleep(gap)
        yield b"x"


async def read(body: TimedBody, consumer_pause: float = 0.0) -> int:
    got = 0
    async for chunk in body:
        got += len(chunk)
        if consumer_pause:
            await asyncio.sleep(consumer_pause)
    return got


async def test_a_body_that_keeps_coming_is_never_cut_however_long_it_takes() -> None:
    # 8 reads of 0.05 s each: 0.4 s in all, four times the idle limit.
    assert await read(TimedBody(trickle([0.05] * 8), idle=0.1, total=None)) == 8


async def test_a_read_waiting_longer_than_idle_is_a_408() -> None:
    with pytest.raises(RequestTimeout, match="no request body data for 0.1 s") as info:
        await read(TimedBody(trickle([0.01, 0.01, 0.5]), idle=0.1, total=None))
    assert info.value.status == 408
    assert ("connection", "close") in info.value.headers


async def test_the_total_limit_counts_the_whole_transfer() -> None:
    with pytest.raises(RequestTimeout, match="did not arrive within 0.2 s"):
        await read(TimedBody(trickle([0.05] * 10), idle=1.0, total=0.2))


async def test_a_slow_consumer_is_not_the_clients_fault() -> None:
    """The upstream taking its time between reads does not count against the client."""
    assert await read(TimedBody(trickle([0.0] * 3), idle=0.05, total=None), consumer_pause=0.15) == 3


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    task = asyncio.ensure_future(read(TimedBody(trickle([5.0]), idle=10.0, total=None)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_timeout_leaves_the_task_uncancelled() -> None:
    with pytest.raises(RequestTimeout):
        await read(TimedBody(trickle([0.3]), idle=0.05, total=None))
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0
    await asyncio.sleep(0)  # no stray cancellation is pending
