"""The timing loop the micro-benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


async def us_per_call(fn: Callable[[], Awaitable[object]], seconds: float, batch: int = 500) -> float:
    """µs per call of ``fn``, calling it in batches for about ``seconds``."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            await fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / n * 1e6


def add_net(results: dict[str, dict[str, float]], base_label: str, prefix: str) -> None:
    """Give every row whose label starts with ``prefix`` its cost net of the ``base_label`` row."""
    base = results[base_label]
    for label, row in results.items():
        if label.startswith(prefix):
            row["net_best_us"] = round(row["best_us"] - base["best_us"], 3)
            row["net_median_us"] = round(row["median_us"] - base["median_us"], 3)


def print_table(
    results: dict[str, dict[str, float]], per: str, rounds: int, seconds: float, loop: str, load: float
) -> None:
    """The best / median / net-best table the micro-benchmarks print."""
    width = max(len(label) for label in results)
    print(f"µs per {per} ({rounds} runs of {seconds:g} s; {loop}; load avg {load:.1f})\n")
    print(f"{'operation':<{width}}  {'best':>8}  {'median':>8}  {'net best':>9}")
    for label, row in results.items():
        net = f"{row['net_best_us']:>9.2f}" if "net_best_us" in row else f"{'':>9}"
        print(f"{label:<{width}}  {row['best_us']:>8.2f}  {row['median_us']:>8.2f}  {net}")
