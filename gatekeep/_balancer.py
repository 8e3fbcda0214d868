"""Load balancers: choose one instance of a service for a request.

Both are sans-IO: they see the instance list and their own counters, never a
socket.  ``RoundRobin`` is smooth weighted round robin (the nginx algorithm:
each pick adds every weight to a running score and takes the highest, then
subtracts the total), so weights 5:1:1 interleave instead of bursting.
``LeastOutstanding`` picks the instance with the fewest requests in flight
relative to its weight; the gateway calls ``release`` when a response ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._protocols import Instance

__all__ = ["LeastOutstanding", "RoundRobin"]


class RoundRobin:
    """Smooth weighted round robin; weight-0 instances are never picked
    unless every instance has weight 0."""

    __slots__ = ("_current", "_key", "_order")

    def __init__(self) -> None:
        self._key: tuple[Instance, ...] = ()
        self._current: list[int] = []
        self._order = 0

    def pick(self, instances: Sequence[Instance], request: Any = None) -> Instance:
        if len(instances) == 1:
            return instances[0]
        key = tuple(instances)
        if key != self._key:
            self._key = key
            self._current = [0] * len(key)
        weights = [i.weight for i in key]
        total = sum(weights)
        if total <= 0:
            self._order = (self._order + 1) % len(key)
            return key[self._order]
        current = self._current
        best = 0
        for n, w in enumerate(weights):
            current[n] += w
            if current[n] > current[best]:
                best = n
        current[best] -= total
        return key[best]

    def release(self, instance: Instance) -> None:
        return None


class LeastOutstanding:
    """Fewest in-flight requests per unit of weight; ties go round robin."""

    __slots__ = ("_inflight", "_turn")

    def __init__(self) -> None:
        self._inflight: dict[Instance, int] = {}
        self._turn = 0

    def pick(self, instances: Sequence[Instance], request: Any = None) -> Instance:
        inflight = self._inflight
        n = len(instances)
        self._turn += 1
        best: Instance | None = None
        best_load = 0.0
        for k in range(n):
            inst = instances[(self._turn + k) % n]
            load = (inflight.get(inst, 0) + 1) / max(inst.weight, 1)
            if best is None or load < best_load:
                best, best_load = inst, load
        assert best is not None
        inflight[best] = inflight.get(best, 0) + 1
        return best

    def release(self, instance: Instance) -> None:
        left = self._inflight.get(instance, 0) - 1
        if left > 0:
            self._inflight[instance] = left
        else:
            self._inflight.pop(instance, None)

    def outstanding(self, instance: Instance) -> int:
        return self._inflight.get(instance, 0)
