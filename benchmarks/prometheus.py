"""What the ``prometheus`` filter costs per request: its ``on_log``, in µs.

Run with ``python -m benchmarks prometheus`` (``--rounds N``, ``--seconds S``).
Two gateways are built from config (one service, one route), each with a
global ``prometheus`` plugin bound to it as in production:

- ``all flags``: ``per_consumer``, ``status_code_metrics``, ``latency_metrics``,
  ``bandwidth_metrics``, ``upstream_health_metrics`` all on (a request counter,
  three histograms, two bandwidth counters per request);
- ``request counter only``: ``status_code_metrics`` on, the others off.

Each is timed on the log phase of a proxied 200 (an ``Exchange`` with
upstream timings and body sizes), for one consumer and for a request
without one; the series are cached after the first request, so this is the
steady state. ``exchange alone`` is the cost of building the ``Request`` and
``Exchange`` in the loop, and ``net`` subtracts it.

Every figure is the best and the median of ``--rounds`` timed runs, the cases
interleaved round by round. Prints a table and writes
``benchmarks/results/prometheus.json``.
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
from gatekeep import Gateway
from gatekeep._filter import Exchange
from gatekeep._http import Headers, Request
from gatekeep.plugins.prometheus import PrometheusFilter

RESULTS = Path(__file__).parent / "results" / "prometheus.json"
ALL_FLAGS = {
    "per_consumer": True,
    "status_code_metrics": True,
    "latency_metrics": True,
    "bandwidth_metrics": True,
    "upstream_health_metrics": True,
}
COUNTER_ONLY = {
    "per_consumer": False,
    "status_code_metrics": True,
    "latency_metrics": False,
    "bandwidth_metrics": False,
    "upstream_health_metrics": False,
}


def gateway(flags: dict[str, bool]) -> tuple[Gateway, PrometheusFilter]:
    config = {
        "services": [
            {"name": "orders", "url": "http://127.0.0.1:9", "routes": [{"name": "orders", "paths": ["/"]}]}
        ],
        "plugins": [{"name": "prometheus", "config": flags}],
        "consumers": [{"username": "mobile-app"}],
    }
    gw = Gateway(config)
    found = [f for f in gw.filters if isinstance(f, PrometheusFilter)]
    if len(found) != 1 or found[0].metrics is None:
        raise RuntimeError("the prometheus filter was not bound to the gateway")
    return gw, found[0]


def exchange_factory(gw: Gateway, consumer: Any) -> Callable[[], Exchange]:
    route = gw.routes[0]
    headers = Headers([(b"host", b"api.example.com"), (b"accept", b"*/*")])

    def make() -> Exchange:
        request = Request("GET", "/orders/7", headers=headers, client=("10.0.0.7", 50123))
        request.route = route
        request.service = route.service
        request.consumer = consumer
        start = time.perf_counter()
        return Exchange(
            request,
            status=200,
            source="service",
            start=start,
            upstream_start=start + 0.0002,
            upstream_head=start + 0.0015,
            upstream_end=start + 0.0017,
            end=start + 0.0018,
            bytes_in=0,
            bytes_out=1024,
        )

    return make


async def run(seconds: float, rounds: int) -> dict[str, list[float]]:
    cases: dict[str, Callable[[], Awaitable[object]]] = {}
    full_gw, full = gateway(ALL_FLAGS)
    lean_gw, lean = gateway(COUNTER_ONLY)
    consumer = full_gw.consumers["mobile-app"]
    make_plain = exchange_factory(lean_gw, None)

    async def exchange_alone() -> None:
        make_plain()

    cases["exchange alone (Request + Exchange)"] = exchange_alone
    for label, (gw, f, who) in {
        "on_log, all flags, with a consumer": (full_gw, full, consumer),
        "on_log, all flags, no consumer": (full_gw, full, None),
        "on_log, request counter only": (lean_gw, lean, None),
    }.items():
        make = exchange_factory(gw, who)

        async def one(f: PrometheusFilter = f, make: Callable[[], Exchange] = make) -> None:
            await f.on_log(make())

        cases[label] = one
    for fn in cases.values():
        for _ in range(500):
            await fn()  # series looked up and cached, as after a gateway's first requests
    # Rounds interleave the cases, so a burst of other load hits all of them alike.
    out: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(rounds):
        for label, fn in cases.items():
            out[label].append(await us_per_call(fn, seconds))
    # The figures must have gone somewhere: the counters moved.
    sample = full.registry.get_sample_value(  # type: ignore[union-attr]
        "gatekeep_http_requests_total",
        {
            "service": "orders",
            "route": "orders",
            "method": "GET",
            "code": "200",
            "source": "service",
            "consumer": "mobile-app",
        },
    )
    if not sample:
        raise RuntimeError("gatekeep_http_requests_total{consumer='mobile-app'} did not move")
    return out


def event_loop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks prometheus", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=0.3, help="seconds per timed run (default 0.3)")
    parser.add_argument("--rounds", type=int, default=9, help="timed runs per case, interleaved (default 9)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    loop = event_loop()
    samples = asyncio.run(run(args.seconds, args.rounds))
    results = {
        label: {"best_us": round(min(s), 3), "median_us": round(statistics.median(s), 3)}
        for label, s in samples.items()
    }
    add_net(results, "exchange alone (Request + Exchange)", "on_log")
    load = os.getloadavg()[0]
    print_table(results, "request", args.rounds, args.seconds, loop, load)
    report: dict[str, Any] = {
        "unit": "microseconds per request",
        "seconds": args.seconds,
        "rounds": args.rounds,
        "event_loop": loop,
        "flags": {"all": ALL_FLAGS, "counter_only": COUNTER_ONLY},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m": round(load, 2),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
