"""Load balancers: choose one instance of a service for a request.

All are sans-IO: they see the instance list and their own counters, never a
socket.  ``RoundRobin`` is smooth weighted round robin (the nginx algorithm:
each pick adds every weight to a running score and takes the highest, then
subtracts the total), so weights 5:1:1 interleave instead of bursting.
``LeastOutstanding`` picks the instance with the fewest requests in flight
relative to its weight; the gateway calls ``release`` when a response ends
(balancers that count nothing have no ``release``, and cost nothing there).

``PowerOfTwoEWMA`` draws two instances at random and takes the one with the
lower cost: its peak-EWMA latency (an exponentially weighted moving average
over time that jumps up at once on a slower answer and decays with ``tau``)
times its requests in flight plus one, divided by its weight.  The gateway
reports every call's latency and outcome through ``observe``; a failure
counts as ``failure_penalty`` seconds so that a failing instance is avoided
until its average decays.  Two random choices avoid the herd behaviour of
always picking the single best instance, which every gateway process would
otherwise pick at the same time.

``ConsistentHash`` places ``points`` virtual nodes per instance (scaled by
weight) on a 64-bit ring and sends a key to the first point at or after its
hash.  Adding one instance to N moves only the keys that now land on the
new instance's points: about 1/(N+1) of them, and none between old instances.
The key is extracted per request by a function chosen at config time
(consumer, client IP, a header, a cookie, the path); a request without a key
falls back to ``fallback`` (or to round robin).
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import Any, Literal

from ._protocols import Instance

__all__ = [
    "ConsistentHash",
    "InstanceKey",
    "HashOn",
    "LeastOutstanding",
    "PowerOfTwoEWMA",
    "RoundRobin",
    "hash_key",
    "instance_key",
    "make_balancer",
]

# ``Instance`` holds a ``meta`` dict, so it is not hashable: per-instance
# state is keyed by this tuple instead.
InstanceKey = tuple[str, str, int, str]


def instance_key(instance: Instance) -> InstanceKey:
    """A hashable identity of ``instance``: scheme, host, port and id."""
    return (instance.scheme, instance.host, instance.port, instance.id)


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


class LeastOutstanding:
    """Fewest in-flight requests per unit of weight; ties go round robin."""

    __slots__ = ("_inflight", "_turn")

    def __init__(self) -> None:
        self._inflight: dict[InstanceKey, int] = {}
        self._turn = 0

    def pick(self, instances: Sequence[Instance], request: Any = None) -> Instance:
        inflight = self._inflight
        n = len(instances)
        self._turn += 1
        best: Instance | None = None
        best_load = 0.0
        for k in range(n):
            inst = instances[(self._turn + k) % n]
            load = (inflight.get(instance_key(inst), 0) + 1) / max(inst.weight, 1)
            if best is None or load < best_load:
                best, best_load = inst, load
        assert best is not None
        key = instance_key(best)
        inflight[key] = inflight.get(key, 0) + 1
        return best

    def release(self, instance: Instance) -> None:
        key = instance_key(instance)
        left = self._inflight.get(key, 0) - 1
        if left > 0:
            self._inflight[key] = left
        else:
            self._inflight.pop(key, None)

    def outstanding(self, instance: Instance) -> int:
        return self._inflight.get(instance_key(instance), 0)


class PowerOfTwoEWMA:
    """Power of two choices on peak-EWMA latency x in-flight requests / weight.

    Args:
        tau: seconds for the latency average to decay by 1/e.
        initial: the latency assumed for an instance not yet observed.
        failure_penalty: the latency a failed call counts as.
        clock: a monotonic clock.
        rng: the random source (seed one for tests).
    """

    __slots__ = ("_clock", "_initial", "_penalty", "_rng", "_stats", "_tau")

    def __init__(
        self,
        *,
        tau: float = 10.0,
        initial: float = 0.001,
        failure_penalty: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._tau = tau
        self._initial = initial
        self._penalty = failure_penalty
        self._clock = clock
        self._rng = rng or random.Random()
        # Per instance: [ewma seconds, last update time, in flight].
        self._stats: dict[InstanceKey, list[float]] = {}

    def _stat(self, instance: Instance) -> list[float]:
        key = (instance.scheme, instance.host, instance.port, instance.id)
        stat = self._stats.get(key)
        if stat is None:
            stat = self._stats[key] = [self._initial, self._clock(), 0.0]
        return stat

    def cost(self, instance: Instance) -> float:
        ewma, _, inflight = self._stat(instance)
        # Weight 100 is the neutral weight (the config default).
        return ewma * (inflight + 1) * 100 / max(instance.weight, 1)

    def pick(self, instances: Sequence[Instance], request: Any = None) -> Instance:
        n = len(instances)
        if n == 1:
            best = instances[0]
            stat = self._stat(best)
        else:
            rng = self._rng.random
            i = int(rng() * n)
            j = int(rng() * (n - 1))
            if j >= i:
                j += 1
            a, b = instances[i], instances[j]
            sa, sb = self._stat(a), self._stat(b)
            # cost() inlined: ewma x (in flight + 1) / weight, compared cross-multiplied.
            if sa[0] * (sa[2] + 1) * max(b.weight, 1) <= sb[0] * (sb[2] + 1) * max(a.weight, 1):
                best, stat = a, sa
            else:
                best, stat = b, sb
        stat[2] += 1
        return best

    def observe(self, instance: Instance, seconds: float, ok: bool) -> None:
        """Fold one call's latency (to the response head) into the average."""
        stat = self._stat(instance)
        sample = seconds if ok else max(seconds, self._penalty)
        now = self._clock()
        if sample > stat[0]:
            stat[0] = sample  # peak: slow answers count at once
        else:
            w = math.exp(-max(0.0, now - stat[1]) / self._tau)
            stat[0] = stat[0] * w + sample * (1 - w)
        stat[1] = now

    def release(self, instance: Instance) -> None:
        stat = self._stats.get(instance_key(instance))
        if stat is not None and stat[2] > 0:
            stat[2] -= 1

    def forget(self, keep: Sequence[Instance]) -> None:
        """Drop the figures of instances no longer in ``keep`` (after discovery changed)."""
        alive = {instance_key(i) for i in keep}
        for key in [k for k in self._stats if k not in alive]:
            del self._stats[key]


HashOn = Literal["none", "consumer", "ip", "header", "cookie", "path"]


def _hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def _cookie(request: Any, name: bytes) -> bytes | None:
    values: list[bytes] = request.headers.get_all(b"cookie")
    for value in values:
        for part in value.split(b";"):
            k, sep, v = part.strip().partition(b"=")
            if sep and k == name:
                return v
    return None


def _consumer(request: Any) -> bytes | None:
    consumer = request.consumer
    if consumer is None:
        return None
    if not isinstance(consumer, str):
        consumer = getattr(consumer, "key", None) or getattr(consumer, "username", None)
    return consumer.encode() if isinstance(consumer, str) and consumer else None


def hash_key(
    hash_on: HashOn, header: str | None = None, cookie: str | None = None
) -> Callable[[Any], bytes | None]:
    """The function that extracts a request's hash key (``None`` when it has none)."""
    if hash_on == "consumer":
        return _consumer
    if hash_on == "ip":
        # The client's address (behind a trusted proxy, the one it forwarded), not the proxy's.
        return lambda request: request.client_ip.encode() or None
    if hash_on == "header":
        name = (header or "").lower().encode("latin-1")
        return lambda request: request.headers.get(name) or None
    if hash_on == "cookie":
        cname = (cookie or "").encode("latin-1")
        return lambda request: _cookie(request, cname) or None
    if hash_on == "path":
        return lambda request: request.path.encode("utf-8", "surrogateescape")
    return lambda request: None


class ConsistentHash:
    """A hash ring with virtual nodes; see the module docstring.

    Args:
        key: extracts the hash key of a request (default: the client IP).
        fallback: extracts a second key when the first is missing; with
            neither, requests go round robin.
        points: virtual nodes for an instance of weight 100.
    """

    __slots__ = ("_fallback", "_key", "_points", "_rings", "_rr")

    def __init__(
        self,
        key: Callable[[Any], bytes | None] | None = None,
        *,
        fallback: Callable[[Any], bytes | None] | None = None,
        points: int = 160,
    ) -> None:
        self._key = key or hash_key("ip")
        self._fallback = fallback
        self._points = points
        self._rings: dict[tuple[InstanceKey, ...], tuple[list[int], list[Instance]]] = {}
        self._rr = RoundRobin()

    def ring(self, instances: Sequence[Instance]) -> tuple[list[int], list[Instance]]:
        """The sorted ring points of ``instances`` and who owns each (cached per set)."""
        key = tuple([(i.scheme, i.host, i.port, i.id) for i in instances])
        ring = self._rings.get(key)
        if ring is None:
            pairs: list[tuple[int, Instance]] = []
            for inst in instances:
                label = f"{inst.scheme}://{inst.address}/{inst.id}#".encode()
                n = max(1, round(self._points * inst.weight / 100)) if inst.weight > 0 else 0
                pairs.extend((_hash64(label + str(v).encode()), inst) for v in range(n))
            if not pairs:  # every weight is 0: treat them all as equal
                pairs = [
                    (_hash64(f"{i.scheme}://{i.address}/{i.id}#{v}".encode()), i)
                    for i in instances
                    for v in range(self._points)
                ]
            pairs.sort(key=lambda p: p[0])
            ring = ([p[0] for p in pairs], [p[1] for p in pairs])
            if len(self._rings) >= 16:  # instance sets change rarely; keep the last few
                self._rings.pop(next(iter(self._rings)))
            self._rings[key] = ring
        return ring

    def lookup(self, instances: Sequence[Instance], key: bytes) -> Instance:
        points, owners = self.ring(instances)
        i = bisect.bisect_left(points, _hash64(key))
        return owners[i if i < len(points) else 0]

    def pick(self, instances: Sequence[Instance], request: Any = None) -> Instance:
        if len(instances) == 1:
            return instances[0]
        key = self._key(request) if request is not None else None
        if key is None and self._fallback is not None and request is not None:
            key = self._fallback(request)
        if key is None:
            return self._rr.pick(instances, request)
        return self.lookup(instances, key)


def make_balancer(service: Any) -> Any:
    """The balancer a ``ServiceConfig`` asks for (``balancer``, ``hash_on`` ... fields)."""
    kind = service.balancer
    if kind in ("least-outstanding", "least-connections"):
        return LeastOutstanding()
    if kind in ("p2c-ewma", "latency"):
        return PowerOfTwoEWMA()
    if kind == "consistent-hashing":
        fallback = None
        if service.hash_fallback != "none":
            fallback = hash_key(service.hash_fallback, service.hash_fallback_header, service.hash_on_cookie)
        key = hash_key(service.hash_on, service.hash_on_header, service.hash_on_cookie)
        return ConsistentHash(key, fallback=fallback)
    return RoundRobin()
