"""Balancers (sans-IO): weighted round robin, least outstanding, P2C on EWMA, consistent hashing."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeep import (
    ConsistentHash,
    Headers,
    Instance,
    LeastOutstanding,
    PowerOfTwoEWMA,
    Request,
    RoundRobin,
    load_config,
)
from gatekeep._balancer import hash_key, make_balancer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _instances(n: int, weight: int = 100) -> list[Instance]:
    return [Instance(f"10.0.0.{i + 1}", 8000 + i, weight=weight) for i in range(n)]


def _request(**kw: object) -> Request:
    return Request("GET", "/", **kw)  # type: ignore[arg-type]


@given(weights=st.lists(st.integers(1, 10), min_size=1, max_size=6))
def test_round_robin_gives_each_its_weighted_share_every_cycle(weights: list[int]) -> None:
    instances = [Instance("h", 1000 + n, weight=w) for n, w in enumerate(weights)]
    rr = RoundRobin()
    picks = Counter(rr.pick(instances).port for _ in range(sum(weights) * 3))
    assert [picks[i.port] for i in instances] == [w * 3 for w in weights]


@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=80))
def test_least_outstanding_always_picks_a_least_loaded_instance(ops: list[tuple[bool, int]]) -> None:
    instances = _instances(5)
    lo = LeastOutstanding()
    held: list[Instance] = []
    for pick, k in ops:
        if pick or not held:
            least = min(lo.outstanding(i) for i in instances)
            chosen = lo.pick(instances)
            assert lo.outstanding(chosen) - 1 == least
            held.append(chosen)
        else:
            lo.release(held.pop(k % len(held)))
    assert sum(lo.outstanding(i) for i in instances) == len(held)


def test_p2c_moves_traffic_away_from_a_slow_instance() -> None:
    clock = Clock()
    p2c = PowerOfTwoEWMA(clock=clock, rng=random.Random(7))
    fast, slow, other = _instances(3)
    picks: Counter[int] = Counter()
    for _ in range(3000):
        inst = p2c.pick([fast, slow, other])
        picks[inst.port] += 1
        clock.now += 0.001
        p2c.observe(inst, 0.200 if inst is slow else 0.002, True)
        p2c.release(inst)
    # The slow one loses every comparison once its first answer was seen.
    assert picks[slow.port] < 0.05 * 3000
    assert picks[fast.port] > 1000 and picks[other.port] > 1000


def test_p2c_counts_failures_as_slow_and_forgives_with_time() -> None:
    clock = Clock()
    p2c = PowerOfTwoEWMA(clock=clock, tau=1.0, failure_penalty=1.0)
    a, b = _instances(2)
    p2c.observe(a, 0.001, False)
    assert p2c.cost(a) >= 1.0
    for _ in range(20):
        clock.now += 1.0
        p2c.observe(a, 0.001, True)
    assert p2c.cost(a) < 0.01


def test_p2c_prefers_fewer_requests_in_flight_at_equal_latency() -> None:
    p2c = PowerOfTwoEWMA(rng=random.Random(1))
    a, b = _instances(2)
    first = p2c.pick([a, b])
    second = p2c.pick([a, b])
    assert {first.port, second.port} == {a.port, b.port}
    p2c.release(first)
    p2c.release(second)
    p2c.forget([a])
    assert len(p2c._stats) == 1 and p2c.cost(a) > 0


@given(
    n=st.integers(1, 12),
    draws=st.lists(st.integers(0, 1000), min_size=1, max_size=50),
    seed=st.integers(0, 2**32),
)
def test_p2c_always_picks_one_of_the_given_instances(n: int, draws: list[int], seed: int) -> None:
    clock = Clock()
    p2c = PowerOfTwoEWMA(clock=clock, rng=random.Random(seed))
    instances = _instances(n)
    for d in draws:
        inst = p2c.pick(instances)
        assert inst in instances
        clock.now += d / 1000
        p2c.observe(inst, d / 1000, d % 7 != 0)
        p2c.release(inst)
    assert all(s[2] == 0 for s in p2c._stats.values())


def test_adding_one_of_n_targets_moves_about_one_nth_of_the_keys() -> None:
    keys = [f"user-{k}".encode() for k in range(20_000)]
    ch = ConsistentHash()
    for n in (3, 5, 10):
        before = _instances(n)
        after = [*before, Instance("10.0.1.1", 9000)]
        moved = 0
        for key in keys:
            old, new = ch.lookup(before, key), ch.lookup(after, key)
            if old != new:
                moved += 1
                assert new == after[-1]  # keys only ever move to the new target
        share = moved / len(keys)
        assert abs(share - 1 / (n + 1)) < 0.35 / (n + 1), (n, share)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 8), removed=st.integers(0, 7), seed=st.integers(0, 1000))
def test_removing_a_target_moves_only_its_own_keys(n: int, removed: int, seed: int) -> None:
    ch = ConsistentHash(points=40)
    instances = _instances(n)
    gone = instances[removed % n]
    rest = [i for i in instances if i != gone]
    for k in range(300):
        key = f"{seed}-{k}".encode()
        old = ch.lookup(instances, key)
        if old != gone:
            assert ch.lookup(rest, key) == old


def test_weights_scale_the_share_of_keys() -> None:
    ch = ConsistentHash()
    heavy, light = Instance("a", 1, weight=300), Instance("b", 2, weight=100)
    counts = Counter(ch.lookup([heavy, light], f"k{k}".encode()).port for k in range(20_000))
    assert 0.65 < counts[heavy.port] / 20_000 < 0.85


def test_hash_on_header_cookie_consumer_ip_and_fallback() -> None:
    instances = _instances(4)
    by_header = ConsistentHash(hash_key("header", header="X-Tenant"))
    r1 = _request(headers=Headers([(b"x-tenant", b"acme")]))
    assert len({by_header.pick(instances, r1).port for _ in range(10)}) == 1
    by_cookie = ConsistentHash(hash_key("cookie", cookie="sid"))
    r2 = _request(headers=Headers([(b"cookie", b"a=1; sid=xyz")]))
    assert hash_key("cookie", cookie="sid")(r2) == b"xyz"
    assert len({by_cookie.pick(instances, r2).port for _ in range(10)}) == 1
    assert hash_key("consumer")(_request(consumer="alice")) == b"alice"
    assert hash_key("ip")(_request(client=("192.0.2.1", 5))) == b"192.0.2.1"
    # No key and no fallback: round robin over all of them.
    assert len({by_header.pick(instances, _request()).port for _ in range(8)}) == 4
    with_fallback = ConsistentHash(hash_key("header", header="x-tenant"), fallback=hash_key("ip"))
    r3 = _request(client=("192.0.2.1", 5))
    assert len({with_fallback.pick(instances, r3).port for _ in range(10)}) == 1


def test_the_config_chooses_the_balancer() -> None:
    def service(**kw: object) -> object:
        config = load_config(
            {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}], **kw}]}
        )
        return config.services[0]

    assert isinstance(make_balancer(service()), RoundRobin)
    assert isinstance(make_balancer(service(balancer="least-connections")), LeastOutstanding)
    assert isinstance(make_balancer(service(balancer="latency")), PowerOfTwoEWMA)
    assert isinstance(make_balancer(service(balancer="p2c-ewma")), PowerOfTwoEWMA)
    ch = make_balancer(service(balancer="consistent-hashing", hash_on="header", hash_on_header="x-user"))
    assert isinstance(ch, ConsistentHash)
