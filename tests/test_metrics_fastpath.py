"""The prometheus plugin adds to a child's values in place (``gatekeep.observability.counter_values``):
the samples are exactly what the library's own ``observe``/``inc`` would have made, the
child's own methods keep working on the same numbers, and values the library keeps
elsewhere (multiprocess mode) are left to the library."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.values import MultiProcessValue

from gatekeep.observability import counter_values, histogram_values
from gatekeep.plugins.prometheus import LATENCY_BUCKETS

AMOUNTS = [0.0, 0.0005, 0.001, 0.0010000001, 0.0025, 0.07, 1.0, 59.999, 60.0, 60.5, 1e9, float("inf")]


def samples(metric: Any, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name.replace(name, ""), tuple(sorted(s.labels.items()))): s.value
        for family in metric.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, (0.5,), (0.001, 0.002, float("inf"))])
def test_observations_land_in_the_buckets_the_library_would_choose(buckets: tuple[float, ...]) -> None:
    registry = CollectorRegistry()
    ours = Histogram("ours", "h", ["route"], buckets=buckets, registry=registry)
    theirs = Histogram("theirs", "h", ["route"], buckets=buckets, registry=registry)
    child = ours.labels("r")
    values = histogram_values(child)
    assert values is not None  # kept in place with this prometheus-client
    bounds = child._upper_bounds
    for amount in AMOUNTS:
        values[0] += amount  # what the log phase does
        values[1 + bisect_left(bounds, amount)] += 1
        theirs.labels("r").observe(amount)
    assert samples(ours, "ours") == samples(theirs, "theirs")


def test_counts_made_before_are_kept_and_the_childs_own_methods_still_count() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["route"], registry=registry)
    histogram = Histogram("h", "h", ["route"], buckets=(1.0,), registry=registry)
    counter.labels("r").inc(5)
    histogram.labels("r").observe(0.5)
    count = counter_values(counter.labels("r"))
    hist = histogram_values(histogram.labels("r"))
    assert count == [5.0]
    assert hist == [0.5, 1.0, 0.0]
    count[0] += 1
    counter.labels("r").inc(1024)  # the library's method, on the same number
    histogram.labels("r").observe(3.0)
    assert registry.get_sample_value("c_total", {"route": "r"}) == 1030
    assert registry.get_sample_value("h_bucket", {"route": "r", "le": "1.0"}) == 1
    assert registry.get_sample_value("h_bucket", {"route": "r", "le": "+Inf"}) == 2
    assert registry.get_sample_value("h_sum", {"route": "r"}) == 3.5
    # Asked again (another label combination sharing the child, a reload): the same list.
    assert counter_values(counter.labels("r")) is count
    assert histogram_values(histogram.labels("r")) is hist


def test_values_the_library_keeps_in_files_are_left_to_it(tmp_path: Any, monkeypatch: Any) -> None:
    # Multiprocess mode: each value is an mmap-backed one the workers' files add up.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    import prometheus_client.values as values_module

    monkeypatch.setattr(values_module, "ValueClass", MultiProcessValue())
    registry = CollectorRegistry()
    counter = Counter("mc", "c", ["route"], registry=registry)
    histogram = Histogram("mh", "h", ["route"], registry=registry)
    child = counter.labels("r")
    assert counter_values(child) is None
    assert histogram_values(histogram.labels("r")) is None
    child.inc(2)
    assert child._value.get() == 2


class _Other:
    """A child of another layout: only the public methods."""

    def observe(self, amount: float) -> None: ...

    def inc(self, amount: float = 1) -> None: ...


def test_another_layout_is_left_to_the_library() -> None:
    assert counter_values(_Other()) is None
    assert histogram_values(_Other()) is None
