"""DNS SRV discovery: RFC 2782 selection, a real DNS server on loopback, TTL refresh, failures."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.discovery import DnsConfig, DnsDiscovery, SrvRecord, by_priority, order, select
from gatekeep.testing import EchoUpstream, gateway_for, serve_asgi
from tests._dns_server import DnsServer, serve_dns
from tests.strategies import srv_records

NAME = "_orders._tcp.service.consul"

# -- RFC 2782 selection (sans-IO) -----------------------------------------------


def test_lowest_priority_first_then_weights_over_many_picks() -> None:
    rng = random.Random(2782)
    records = [
        SrvRecord(10, 60, 80, "a"),
        SrvRecord(10, 30, 80, "b"),
        SrvRecord(10, 10, 80, "c"),
        SrvRecord(10, 0, 80, "zero"),
        SrvRecord(20, 1000, 80, "backup"),
    ]
    picks = 50_000
    got = Counter(r.target for r in (select(records, rng) for _ in range(picks)) if r is not None)
    assert got["backup"] == 0
    # The draw is uniform over [0, 100]: 101 outcomes, the weight-0 record wins only on 0.
    for target, share in (("a", 60 / 101), ("b", 30 / 101), ("c", 10 / 101), ("zero", 1 / 101)):
        assert got[target] / picks == pytest.approx(share, abs=0.01), target


def test_the_whole_order_follows_the_weights() -> None:
    rng = random.Random(7)
    records = [SrvRecord(1, 3, 80, "heavy"), SrvRecord(1, 1, 80, "light"), SrvRecord(5, 1, 80, "later")]
    first = Counter(order(records, rng)[0].target for _ in range(20_000))
    assert first["later"] == 0
    # Draws 0..4 (RFC 2782's draw includes 0) over a shuffled list: heavy first wins 4 of 5,
    # light first leaves heavy 3 of 5; on average 0.7.
    assert first["heavy"] / 20_000 == pytest.approx(0.7, abs=0.015)
    assert all(order(records, rng)[-1].target == "later" for _ in range(100))


def test_all_zero_weights_are_picked_evenly() -> None:
    rng = random.Random(1)
    records = [SrvRecord(1, 0, 80, t) for t in "abcd"]
    got = Counter(order(records, rng)[0].target for _ in range(20_000))
    for t in "abcd":
        assert got[t] / 20_000 == pytest.approx(0.25, abs=0.015)


def test_a_dot_target_means_not_available() -> None:
    rng = random.Random(1)
    assert select([SrvRecord(0, 0, 0, ".")], rng) is None
    assert order([SrvRecord(0, 0, 0, ".")], rng) == []


@given(srv_records, st.randoms(use_true_random=False))
def test_order_is_a_permutation_by_priority(records: list[SrvRecord], rng: random.Random) -> None:
    result = order(records, rng)
    usable = [r for r in records if r.target != "."]
    assert Counter(result) == Counter(usable)
    assert [r.priority for r in result] == sorted(r.priority for r in result)
    first = select(records, rng)
    if usable:
        assert first is not None and first.priority == min(r.priority for r in usable)
    else:
        assert first is None
    for group in by_priority(records):
        assert len({r.priority for r in group}) == 1
        zeros = [r.weight == 0 for r in group]
        assert zeros == sorted(zeros, reverse=True)  # weight-0 records first


@given(srv_records, st.integers(0, 2**32))
def test_a_positive_weight_record_beats_zero_weights_almost_always(
    records: list[SrvRecord], seed: int
) -> None:
    # A statistical claim needs real random draws: hypothesis' own ``randoms()``
    # may legitimately answer 0 every time, which is exactly the case below.
    rng = random.Random(seed)
    # Within the first group, a weight-0 record can only be drawn first when the draw is 0.
    groups = by_priority(records)
    if not groups or all(r.weight == 0 for r in groups[0]):
        return
    total = sum(r.weight for r in groups[0])
    zero_first = sum(1 for _ in range(200) if (s := select(records, rng)) is not None and s.weight == 0)
    assert zero_first <= 200 * 10 / (total + 1) + 20


# -- the watcher against a real DNS server ---------------------------------------


@asynccontextmanager
async def dns_watching(server: DnsServer, **options: Any) -> AsyncIterator[DnsDiscovery]:
    async with serve_dns(server) as port:
        config = DnsConfig(name=options.pop("name", NAME), nameserver="127.0.0.1", port=port, **options)
        discovery = DnsDiscovery(config, service="orders", rng=random.Random(5))
        async with anyio.create_task_group() as tg:
            await discovery.start(tg)
            try:
                yield discovery
            finally:
                await discovery.stop()


async def wait_for(check: Callable[[], bool], within: float = 3.0) -> float:
    start = time.monotonic()
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110 - polling state the test does not own
            await anyio.sleep(0.01)
    return time.monotonic() - start


def zone() -> DnsServer:
    server = DnsServer()
    server.set_srv(
        NAME,
        [(10, 3, 9001, "a.node.dc1.consul."), (10, 1, 9002, "b.node.dc1.consul."), (20, 5, 9003, "c.node.")],
        ttl=30,
    )
    server.set_a("a.node.dc1.consul.", ["127.0.0.1"])
    server.set_a("b.node.dc1.consul.", ["127.0.0.2", "127.0.0.3"])
    server.set_a("c.node.", ["127.0.0.4"])
    return server


@pytest.mark.anyio
@pytest.mark.parametrize("additional", [True, False])
async def test_targets_from_the_additional_section_or_resolved(additional: bool) -> None:
    server = zone()
    server.additional = additional
    async with dns_watching(server) as discovery:
        found = {(i.host, i.port): i.weight for i in discovery.instances("orders")}
        # Priority 10 only; b's weight is shared by its two addresses.
        assert found == {("127.0.0.1", 9001): 300, ("127.0.0.2", 9002): 50, ("127.0.0.3", 9002): 50}
        assert {r.target for r in discovery.records} == {"a.node.dc1.consul", "b.node.dc1.consul", "c.node"}
        asked = server.count("a.node.dc1.consul.", "A")
        assert asked == (0 if additional else 1)
        assert discovery.stats.healthy and discovery.stats.instances == 3


@pytest.mark.anyio
async def test_the_next_priority_is_used_when_the_lowest_has_no_address() -> None:
    server = zone()
    server.addresses.clear()  # a and b no longer resolve (NXDOMAIN)
    server.set_a("c.node.", ["127.0.0.4"])
    async with dns_watching(server) as discovery:
        assert [(i.host, i.port) for i in discovery.instances("orders")] == [("127.0.0.4", 9003)]


@pytest.mark.anyio
async def test_ttl_refresh_with_floor_and_ceiling() -> None:
    server = zone()
    server.set_srv(NAME, [(1, 1, 9001, "a.node.dc1.consul.")], ttl=1)
    async with dns_watching(server, min_ttl=0.2, max_ttl=60) as discovery:
        assert [i.port for i in discovery.instances("orders")] == [9001]
        server.set_srv(NAME, [(1, 1, 9005, "a.node.dc1.consul.")], ttl=1)
        took = await wait_for(lambda: [i.port for i in discovery.instances("orders")] == [9005])
        assert took < 1.5  # refreshed when the 1 s TTL ran out
    # TTL 0 is floored at min_ttl: a handful of lookups per second, not a spin.
    server.set_srv(NAME, [(1, 1, 9001, "a.node.dc1.consul.")], ttl=0)
    async with dns_watching(server, min_ttl=0.25, max_ttl=60) as discovery:
        before = server.count(NAME)
        await anyio.sleep(1.0)
        assert 2 <= server.count(NAME) - before <= 5
    # A long TTL is capped at max_ttl.
    server.set_srv(NAME, [(1, 1, 9001, "a.node.dc1.consul.")], ttl=3600)
    async with dns_watching(server, min_ttl=0.1, max_ttl=0.3) as discovery:
        assert discovery.next_refresh - time.monotonic() <= 0.3
        before = server.count(NAME)
        await anyio.sleep(1.0)
        assert server.count(NAME) - before >= 2


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["servfail", "drop"])
async def test_resolver_failure_keeps_the_last_good_set(mode: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gatekeep.discovery")
    server = zone()
    server.set_srv(NAME, [(1, 1, 9001, "a.node.dc1.consul.")], ttl=1)
    async with dns_watching(server, min_ttl=0.1, max_ttl=0.2, timeout=0.3) as discovery:
        good = list(discovery.instances("orders"))
        assert good
        server.mode = mode
        await wait_for(lambda: discovery.stats.errors >= 2)
        assert list(discovery.instances("orders")) == good
        assert not discovery.stats.healthy
        assert len([r for r in caplog.records if "keeping the 1 last known" in r.getMessage()]) == 1
        server.mode = "ok"
        server.set_srv(NAME, [(1, 1, 9007, "a.node.dc1.consul.")], ttl=1)
        await wait_for(lambda: [i.port for i in discovery.instances("orders")] == [9007])
        assert discovery.stats.healthy
        assert any("works again" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_nxdomain_and_a_dot_target_mean_no_instance() -> None:
    server = zone()
    async with dns_watching(server, name="_nothing._tcp.service.consul") as discovery:
        assert discovery.instances("orders") == ()
        assert discovery.stats.healthy and discovery.stats.errors == 0
    server.set_srv(NAME, [(0, 0, 0, ".")])
    async with dns_watching(server) as discovery:
        assert discovery.instances("orders") == ()
        assert discovery.stats.errors == 0


@pytest.mark.anyio
async def test_a_big_answer_is_retried_over_tcp() -> None:
    server = DnsServer()
    many = [(1, 1, 9000 + n, f"host-{n:02d}.with.a.rather.long.name.node.dc1.consul.") for n in range(40)]
    server.set_srv(NAME, many)
    for _, _, _, target in many:
        server.set_a(target, ["127.0.0.1"])
    async with dns_watching(server) as discovery:
        assert len(discovery.instances("orders")) == 40


@pytest.mark.anyio
async def test_the_gateway_spreads_requests_by_srv_weight_and_fails_over_by_priority() -> None:
    server = DnsServer()
    async with AsyncExitStack() as stack:
        ports = {}
        for name in ("a", "b", "c"):
            app = EchoUpstream(extra_headers=[("x-instance", name)])
            ports[name] = await stack.enter_async_context(serve_asgi(app))
            server.set_a(f"{name}.node.", ["127.0.0.1"], ttl=1)
        server.set_srv(
            NAME,
            [(10, 3, ports["a"], "a.node."), (10, 1, ports["b"], "b.node."), (20, 1, ports["c"], "c.node.")],
            ttl=1,
        )
        dns_port = await stack.enter_async_context(serve_dns(server))
        config = {
            "services": [
                {
                    "name": "orders",
                    "discovery": {
                        "dns": {"name": NAME, "nameserver": "127.0.0.1", "port": dns_port, "min_ttl": 0.2}
                    },
                    "routes": [{"paths": ["/"]}],
                }
            ]
        }
        gw = await stack.enter_async_context(gateway_for(config))
        got = Counter()
        for _ in range(200):
            r = await gw.client.get("/")
            assert r.status == 200
            got[r.header("x-instance")] += 1
        assert got == {"a": 150, "b": 50}  # weighted round robin: exactly 3:1, priority 20 unused
        # The priority-10 targets go away: the gateway fails over to priority 20 after a TTL.
        server.set_srv(NAME, [(10, 3, ports["a"], "."), (20, 1, ports["c"], "c.node.")], ttl=1)
        server.set_srv(NAME, [(20, 1, ports["c"], "c.node.")], ttl=1)
        with anyio.fail_after(3):
            while (await gw.client.get("/")).header("x-instance") != "c":  # noqa: ASYNC110
                await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_a_silent_nameserver_does_not_hold_the_start() -> None:
    # As with a hung Consul (issue 11 row 14): start after initial_timeout, 503 + Retry-After
    # until the first lookup succeeds, then serve.
    server = DnsServer()
    async with AsyncExitStack() as stack:
        app = EchoUpstream(extra_headers=[("x-instance", "a")])
        port = await stack.enter_async_context(serve_asgi(app))
        server.set_a("a.node.", ["127.0.0.1"], ttl=1)
        server.set_srv(NAME, [(10, 1, port, "a.node.")], ttl=1)
        server.mode = "drop"
        dns_port = await stack.enter_async_context(serve_dns(server))
        dns = {"name": NAME, "nameserver": "127.0.0.1", "port": dns_port, "timeout": 0.5, "min_ttl": 0.1}
        config = {"services": [{"name": "orders", "discovery": {"dns": dns}, "routes": [{"paths": ["/"]}]}]}
        started = time.monotonic()
        gw = await stack.enter_async_context(gateway_for(config))
        assert time.monotonic() - started < 1.5
        r = await gw.client.get("/")
        assert r.status == 503 and r.header("retry-after") == "1", r.text
        assert r.json()["type"].endswith("discovery-pending")
        server.mode = "ok"
        with anyio.fail_after(5):
            while (await gw.client.get("/")).header("x-instance") != "a":  # noqa: ASYNC110
                await anyio.sleep(0.05)
