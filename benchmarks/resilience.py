"""What the resilience stage costs per request: balancers, breakers, health, ``UpstreamGuard.call``.

Run with ``python -m benchmarks resilience`` (``--rounds N``, ``--seconds S``).
In one process, on the sans-IO cores of ``gatekeep._balancer`` and
``gatekeep.resilience``, it times in µs per operation:

- ``RoundRobin.pick`` over 3 instances (smooth weighted round robin);
- ``PowerOfTwoEWMA`` pick + observe + release over 3 instances (what one
  proxied request does to the balancer);
- ``ConsistentHash.pick`` over 3 instances, keyed on the client IP;
- ``CircuitBreaker`` allow + on_success (closed);
- ``HealthTracker`` available + report of an OK answer (passive checks on);
- ``UpstreamGuard.call`` with an instant ``send`` (it builds a ``Response``
  and the caller closes it, as the gateway does): 1 target with round robin
  and the service defaults (``retries = 2``: budget and body bookkeeping),
  the same with ``retries = 0``, and 3 targets behind ``p2c-ewma`` with
  breakers (per service and per instance) and passive health checks.
  ``send alone`` is the same loop without the guard; ``net`` subtracts it.

Every figure is the best and the median of ``--rounds`` timed runs, the
cases interleaved round by round (the machine is shared: the best is the
least disturbed). Prints a table and
writes ``benchmarks/results/resilience.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks._timing import add_net, print_table, us_per_call
from gatekeep._balancer import ConsistentHash, PowerOfTwoEWMA, RoundRobin, hash_key
from gatekeep._http import Headers, Request, Response
from gatekeep._protocols import Instance
from gatekeep.resilience import (
    BreakerConfig,
    CircuitBreaker,
    HealthchecksConfig,
    HealthTracker,
    PassiveHealthcheck,
    RetryConfig,
    UpstreamGuard,
)
from gatekeep.resilience._health import OK

RESULTS = Path(__file__).parent / "results" / "resilience.json"
INSTANCES = tuple(Instance("127.0.0.1", 9001 + n) for n in range(3))
BREAKER = BreakerConfig()
PASSIVE = HealthchecksConfig(passive=PassiveHealthcheck())


def request() -> Request:
    return Request(
        "GET",
        "/item/1",
        headers=Headers([(b"host", b"127.0.0.1"), (b"accept", b"*/*")]),
        client=("10.0.0.7", 50123),
    )


def sync_rate(fn: Callable[[], object], seconds: float) -> float:
    """µs per call of ``fn`` over about ``seconds``."""
    batch = 1000
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / n * 1e6


def sync_cases() -> dict[str, Callable[[], object]]:
    rr = RoundRobin()
    p2c = PowerOfTwoEWMA()
    ring = ConsistentHash(hash_key("ip"))
    breaker = CircuitBreaker(BREAKER)
    health = HealthTracker(PASSIVE)
    req = request()
    instances = INSTANCES

    def rr_pick() -> object:
        return rr.pick(instances, req)

    def p2c_cycle() -> None:
        chosen = p2c.pick(instances, req)
        p2c.observe(chosen, 0.002, True)
        p2c.release(chosen)

    def ring_pick() -> object:
        return ring.pick(instances, req)

    def breaker_cycle() -> None:
        if breaker.allow():
            breaker.on_success()

    def health_cycle() -> None:
        health.available(instances)
        health.report(instances[0], OK, 200)

    ring.pick(instances, req)  # build the ring once, as the first request does
    return {
        "RoundRobin.pick, 3 instances": rr_pick,
        "PowerOfTwoEWMA pick + observe + release, 3 instances": p2c_cycle,
        "ConsistentHash.pick (client IP), 3 instances": ring_pick,
        "CircuitBreaker allow + on_success": breaker_cycle,
        "HealthTracker available + report (passive), 3 instances": health_cycle,
    }


def guards() -> dict[str, tuple[UpstreamGuard | None, tuple[Instance, ...]]]:
    return {
        "send alone (no guard)": (None, INSTANCES[:1]),
        "UpstreamGuard.call, 1 target, round robin, retries 2 (defaults)": (
            UpstreamGuard("one", RoundRobin(), retries=2, retry=RetryConfig()),
            INSTANCES[:1],
        ),
        "UpstreamGuard.call, 1 target, round robin, retries 0": (
            UpstreamGuard("one", RoundRobin(), retries=0),
            INSTANCES[:1],
        ),
        "UpstreamGuard.call, 3 targets, p2c-ewma + breakers + passive health, retries 2": (
            UpstreamGuard(
                "three",
                PowerOfTwoEWMA(),
                retries=2,
                retry=RetryConfig(),
                breaker=BREAKER,
                healthchecks=PASSIVE,
            ),
            INSTANCES,
        ),
    }


async def send(instance: Instance) -> Response:
    """An upstream that answers at once: a fresh 200 with a 1 KiB body."""
    return Response(200, Headers([(b"content-length", b"1024")]), b"x" * 1024, source="service")


async def guard_case(
    guard: UpstreamGuard | None, instances: tuple[Instance, ...]
) -> Callable[[], Awaitable[None]]:
    async def bare() -> None:
        response = await send(instances[0])
        await response.aclose()

    async def guarded() -> None:
        assert guard is not None
        response = await guard.call(instances, request(), send)
        await response.aclose()

    async def bare_with_request() -> None:
        request()  # the guarded loop builds a Request per call too
        await bare()

    return guarded if guard is not None else bare_with_request


async def run_async(seconds: float, rounds: int) -> dict[str, list[float]]:
    cases = {label: await guard_case(guard, instances) for label, (guard, instances) in guards().items()}
    for fn in cases.values():
        for _ in range(200):
            await fn()  # warm: breakers, EWMA entries, budget window
    # Rounds interleave the cases, so a burst of other load hits all of them alike.
    out: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(rounds):
        for label, fn in cases.items():
            out[label].append(await us_per_call(fn, seconds))
    return out


def event_loop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def summary(samples: list[float]) -> dict[str, float]:
    return {"best_us": round(min(samples), 3), "median_us": round(statistics.median(samples), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks resilience", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=0.3, help="seconds per timed run (default 0.3)")
    parser.add_argument("--rounds", type=int, default=9, help="timed runs per case, interleaved (default 9)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, float]] = {}
    cases = sync_cases()
    for fn in cases.values():
        for _ in range(1000):
            fn()
    samples: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(args.rounds):
        for label, fn in cases.items():
            samples[label].append(sync_rate(fn, args.seconds))
    for label, values in samples.items():
        results[label] = summary(values)
    loop = event_loop()
    for label, timings in asyncio.run(run_async(args.seconds, args.rounds)).items():
        results[label] = summary(timings)
    add_net(results, "send alone (no guard)", "UpstreamGuard.call")
    load_after = os.getloadavg()[0]
    print_table(results, "operation", args.rounds, args.seconds, loop, load_after)
    report: dict[str, Any] = {
        "unit": "microseconds per operation",
        "seconds": args.seconds,
        "rounds": args.rounds,
        "event_loop": loop,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
