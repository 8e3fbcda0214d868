"""How the cost of ``CompiledRouter.match`` grows with the number of routes.

Run with ``python -m benchmarks.router``.  For 10, 100, 1 000 and 10 000
routes (a third exact, a third prefix, a third templates, plus the same five
regexes at every size) it times ``match`` for a hit on each kind of route
added last and for a miss that has to look at everything, prints a table in
µs per call and writes ``benchmarks/results/router.json``.  Path
normalisation is timed alongside, since it runs before every match.
"""

from __future__ import annotations

import json
import platform
import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from gatekeep._normalise import normalise_path
from gatekeep._router import CompiledRouter, RouteRule

SIZES = (10, 100, 1_000, 10_000)
REGEXES = 5
RESULTS = Path(__file__).parent / "results" / "router.json"


def build(size: int) -> CompiledRouter:
    rules = [RouteRule(f"rx{k}", [rf"~/rx{k}/(?P<id>\d+)/detail"]) for k in range(REGEXES)]
    for i in range(size - REGEXES):
        kind = i % 3
        if kind == 0:
            rules.append(RouteRule(f"exact{i}", [f"=/svc{i}/status"], methods=["GET"]))
        elif kind == 1:
            rules.append(RouteRule(f"prefix{i}", [f"/svc{i}/api"]))
        else:
            rules.append(RouteRule(f"template{i}", [f"/svc{i}/items/{{id}}/parts/{{part}}"]))
    return CompiledRouter(rules)


def last_of(size: int, kind: int) -> int:
    return max(i for i in range(size - REGEXES) if i % 3 == kind)


def per_call(fn: Callable[[], object]) -> float:
    """Best of five runs, in microseconds per call."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def measure(size: int) -> dict[str, float]:
    router = build(size)
    match = router.match
    cases = {
        "hit exact": f"/svc{last_of(size, 0)}/status",
        "hit prefix": f"/svc{last_of(size, 1)}/api/orders/7",
        "hit template": f"/svc{last_of(size, 2)}/items/42/parts/x",
        "hit regex": f"/rx{REGEXES - 1}/12/detail",
        "miss": "/nothing/here/at/all",
    }
    out: dict[str, float] = {}
    for label, path in cases.items():
        found = match("GET", "example.com", path)
        assert (found is None) == (label == "miss"), (label, path, found)
        out[label] = per_call(partial(match, "GET", "example.com", path))
    return out


def measure_normalise() -> dict[str, float]:
    cases = {
        "canonical (fast path)": b"/svc9999/items/42/parts/x",
        "escapes and dot-segments": b"/svc9999/%69tems/./42/../42//parts/caf%c3%a9",
    }
    return {label: per_call(partial(normalise_path, raw)) for label, raw in cases.items()}


def main() -> None:
    rows = {size: measure(size) for size in SIZES}
    labels = list(next(iter(rows.values())))
    print("CompiledRouter.match, µs per call")
    print(f"{'routes':>8} | " + " | ".join(f"{label:>12}" for label in labels))
    print(f"{'-' * 8}-|-" + "-|-".join("-" * 12 for _ in labels))
    for size, row in rows.items():
        print(f"{size:>8} | " + " | ".join(f"{row[label]:>12.2f}" for label in labels))
    normalise = measure_normalise()
    print("\nnormalise_path, µs per call")
    for label, value in normalise.items():
        print(f"  {label:<26} {value:6.2f}")
    report: dict[str, Any] = {
        "unit": "microseconds per call",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "regexes": REGEXES,
        "match": {str(size): row for size, row in rows.items()},
        "normalise_path": normalise,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
