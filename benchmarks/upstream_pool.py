"""Requests/s of ``UpstreamPool.send`` + body read against a uvicorn hello world.

Run from the repository root::

    python -m benchmarks.upstream_pool [--seconds 5] [--http httptools|h11]

uvicorn runs in a child process (httptools, asyncio loop); the client runs on
anyio/asyncio in this process, at concurrency 1 and 50 over one keep-alive
pool.  Both share the machine, as in REFERENCE.md's figures.
"""

from __future__ import annotations

import argparse
import time

import anyio

from gatekeep._http import empty_body
from gatekeep._protocols import Instance
from gatekeep._upstream import PoolLimits, Timeouts, UpstreamPool
from tests._upstream_servers import uvicorn_process


async def run(port: int, concurrency: int, seconds: float) -> tuple[float, float]:
    pool = UpstreamPool(PoolLimits(max_connections=100, max_idle=100))
    instance = Instance("127.0.0.1", port)
    timeouts = Timeouts()
    headers = [(b"host", b"bench"), (b"accept", b"*/*")]
    count = 0
    latencies: list[float] = []
    deadline = 0.0

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            response = await pool.send(instance, "GET", b"/", headers, empty_body(), timeouts=timeouts)
            async for _ in response.body:  # type: ignore[union-attr]
                pass
            latencies.append(time.perf_counter() - t0)
            count += 1

    # warm up: open the connections
    deadline = time.perf_counter() + 0.5
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    count = 0
    latencies.clear()
    start = time.perf_counter()
    deadline = start + seconds
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - start
    await pool.aclose()
    latencies.sort()
    return count / elapsed, latencies[len(latencies) // 2] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--http", default="httptools", choices=["httptools", "h11"])
    args = parser.parse_args()
    with uvicorn_process(http=args.http) as port:
        print(f"UpstreamPool (h11 codec) -> uvicorn ({args.http}) hello world, {args.seconds:g} s per run")
        for concurrency in (1, 50):
            rps, p50 = anyio.run(run, port, concurrency, args.seconds)
            print(f"  concurrency {concurrency:>3}: {rps:>8.0f} requests/s   p50 {p50:>7.0f} us")


if __name__ == "__main__":
    main()
