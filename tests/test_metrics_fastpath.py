"""The prometheus plugin's increments go straight to prometheus-client's value objects:
the samples are exactly what the library's own ``observe``/``inc`` would have made."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from gatekeep.plugins.prometheus import LATENCY_BUCKETS, _inc, _Observe

AMOUNTS = [0.0, 0.0005, 0.001, 0.0010000001, 0.0025, 0.07, 1.0, 59.999, 60.0, 60.5, 1e9]


def samples(metric: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metric.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, (0.5,), (0.001, 0.002, float("inf"))])
def test_observations_land_in_the_buckets_the_library_would_choose(buckets: tuple[float, ...]) -> None:
    registry = CollectorRegistry()
    ours = Histogram("ours", "h", ["route"], buckets=buckets, registry=registry)
    theirs = Histogram("theirs", "h", ["route"], buckets=buckets, registry=registry)
    observe = _Observe(ours.labels("r"))
    assert observe.sum is not None  # the fast path is taken with this prometheus-client
    for amount in AMOUNTS:
        observe(amount)
        theirs.labels("r").observe(amount)
    assert {(n.replace("ours", ""), k): v for (n, k), v in samples(ours).items()} == {
        (n.replace("theirs", ""), k): v for (n, k), v in samples(theirs).items()
    }


def test_counter_increments_are_the_librarys() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["route"], registry=registry)
    inc = _inc(counter.labels("r"))
    inc(1)
    inc(1024)
    assert registry.get_sample_value("c_total", {"route": "r"}) == 1025


class _Other:
    """A histogram child of another layout: only the public method."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, amount: float) -> None:
        self.seen.append(amount)

    def inc(self, amount: float = 1) -> None:
        self.seen.append(amount)


def test_another_layout_falls_back_to_the_public_methods() -> None:
    child = _Other()
    observe = _Observe(child)
    observe(0.25)
    _inc(child)(3)
    assert observe.sum is None
    assert child.seen == [0.25, 3]
