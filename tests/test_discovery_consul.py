"""Consul discovery through a real gateway: blocking queries, outages, index resets, 503s.

Every test talks HTTP to a Consul on loopback: the double of ``tests/_consul_server.py``,
or a real agent when ``CONSUL_HTTP_ADDR`` is set (tests that need the double's
test-only powers skip then).  Instances change through Consul's own API (register,
deregister, TTL check updates), so the same steps work on both.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import trustme

from gatekeep.discovery import ConsulClient, ConsulConfig, ConsulDiscovery, ConsulTLSConfig
from gatekeep.testing import EchoUpstream, Harness, gateway_for, serve_asgi
from tests._consul_server import ConsulDouble, ConsulEndpoint, consul_endpoint, serve_consul

pytestmark = pytest.mark.anyio

# Changes must reach the gateway within this (the issue's bar for blocking queries).
WITHIN = 1.0


def needs_double(consul: ConsulEndpoint) -> ConsulDouble:
    if consul.double is None:
        pytest.skip("uses the Consul double's test-only powers (CONSUL_HTTP_ADDR is set)")
    return consul.double


def service_body(service: str, name: str, port: int, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ID": f"{service}-{name}",
        "Name": service,
        "Address": "127.0.0.1",
        "Port": port,
        "Check": {"TTL": "300s", "Status": "passing"},
    }
    body.update(extra)
    return body


async def put(consul: ConsulEndpoint, path: str, body: Any = None) -> None:
    path, _, query = path.partition("?")
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
    client = ConsulClient(consul.address, token=consul.token)
    try:
        data = None if body is None else json.dumps(body).encode()
        await client.request("PUT", path, pairs, body=data)  # type: ignore[arg-type]
    finally:
        await client.aclose()


def gateway_config(consul: ConsulEndpoint, service: str, **options: Any) -> dict[str, Any]:
    settings = {"service": service, "address": consul.address, "wait": "30s", **options}
    if consul.token:
        settings["token"] = consul.token
    return {
        "services": [
            {"name": "orders", "discovery": {"consul": settings}, "routes": [{"name": "all", "paths": ["/"]}]}
        ]
    }


@asynccontextmanager
async def upstreams(*names: str) -> AsyncIterator[dict[str, int]]:
    """Echo upstreams that say who they are in ``x-instance``."""
    async with AsyncExitStack() as stack:
        ports = {}
        for name in names:
            app = EchoUpstream(extra_headers=[("x-instance", name)])
            ports[name] = await stack.enter_async_context(serve_asgi(app))
        yield ports


async def who(gw: Harness) -> str:
    r = await gw.client.get("/")
    return r.header("x-instance") or str(r.status)


async def time_until(gw: Harness, done: Callable[[list[str]], bool], within: float = 5.0) -> float:
    """Seconds until ``done(answers so far)`` holds, probing the gateway without pause."""
    start = time.monotonic()
    answers: list[str] = []
    with anyio.fail_after(within):
        while True:
            answers.append(await who(gw))
            if done(answers):
                return time.monotonic() - start


def seen(name: str) -> Callable[[list[str]], bool]:
    return lambda answers: answers[-1] == name


def gone(name: str, n: int = 8) -> Callable[[list[str]], bool]:
    return lambda answers: len(answers) >= n and name not in answers[-n:]


class Load:
    """Steady requests through the gateway while instances change; counts what came back."""

    def __init__(self, gw: Harness) -> None:
        self.gw = gw
        self.answers: list[str] = []

    async def run(self) -> None:
        while True:
            self.answers.append(await who(self.gw))
            await anyio.sleep(0.005)

    @property
    def failures(self) -> list[str]:
        return [a for a in self.answers if a.isdigit()]


async def test_instances_added_failing_and_removed_reach_the_gateway_within_a_second() -> None:
    async with consul_endpoint() as consul, upstreams("a", "b", "c") as ports:
        svc = f"orders-{uuid.uuid4().hex[:8]}"
        await put(consul, "/v1/agent/service/register", service_body(svc, "a", ports["a"]))
        try:
            async with gateway_for(gateway_config(consul, svc)) as gw, anyio.create_task_group() as tg:
                assert await who(gw) == "a"
                load = Load(gw)
                tg.start_soon(load.run)

                await put(consul, "/v1/agent/service/register", service_body(svc, "b", ports["b"]))
                assert await time_until(gw, seen("b")) < WITHIN
                await put(consul, "/v1/agent/service/register", service_body(svc, "c", ports["c"]))
                assert await time_until(gw, seen("c")) < WITHIN

                # a fails its check: out of the passing set.
                await put(consul, f"/v1/agent/check/fail/service:{svc}-a?note=down")
                assert await time_until(gw, gone("a")) < WITHIN
                # b leaves.
                await put(consul, f"/v1/agent/service/deregister/{svc}-b")
                assert await time_until(gw, gone("b")) < WITHIN
                # a recovers.
                await put(consul, f"/v1/agent/check/pass/service:{svc}-a")
                assert await time_until(gw, seen("a")) < WITHIN
                # warning is not passing (passing = true is the default).
                await put(consul, f"/v1/agent/check/warn/service:{svc}-c")
                assert await time_until(gw, gone("c")) < WITHIN
                tg.cancel_scope.cancel()

            assert load.failures == [], "a request failed while instances changed"
            assert {"a", "b", "c"} <= set(load.answers)
            watcher = gw.gateway.discovery.watchers["orders"]  # type: ignore[attr-defined]
            assert watcher.stats.errors == 0
            assert watcher.stats.updates >= 6
            if consul.double is not None:
                blocking = [q for _, p, q in consul.double.requests if p.endswith(svc) and "index" in q]
                assert blocking and all(q["wait"] == ["30s"] for q in blocking)
                assert all(int(q["index"][0]) > 0 for q in blocking)
        finally:
            for name in "abc":
                await put(consul, f"/v1/agent/service/deregister/{svc}-{name}")


async def test_an_empty_passing_set_is_a_503_problem_not_a_hang() -> None:
    async with consul_endpoint() as consul, upstreams("a") as ports:
        svc = f"orders-{uuid.uuid4().hex[:8]}"
        body = service_body(svc, "a", ports["a"], Check={"TTL": "300s", "Status": "critical"})
        await put(consul, "/v1/agent/service/register", body)
        try:
            async with gateway_for(gateway_config(consul, svc)) as gw:
                with anyio.fail_after(2):
                    r = await gw.client.get("/orders/1")
                assert r.status == 503
                assert r.header("content-type") == "application/problem+json"
                assert r.json()["status"] == 503
                assert "no available instance" in r.json()["detail"]
                await put(consul, f"/v1/agent/check/pass/service:{svc}-a")
                assert await time_until(gw, seen("a")) < WITHIN
        finally:
            await put(consul, f"/v1/agent/service/deregister/{svc}-a")


class Agent:
    """A Consul double that can go away and come back on the same port, in its own task."""

    def __init__(self, double: ConsulDouble) -> None:
        self.double = double
        self.port = 0
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[str]) -> None:
        try:
            async with serve_consul(self.double, port=self.port) as address:
                self.port = int(address.rsplit(":", 1)[1])
                task_status.started(address)
                await self._stop.wait()
        finally:
            self._stopped.set()

    async def up(self, tg: anyio.abc.TaskGroup) -> str:
        self._stop, self._stopped = anyio.Event(), anyio.Event()
        address: str = await tg.start(self._serve)
        return address

    async def down(self) -> None:
        self._stop.set()
        await self._stopped.wait()


async def test_consul_down_keeps_the_last_known_instances(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gatekeep.discovery")
    double = ConsulDouble()
    agent = Agent(double)
    async with upstreams("a", "b") as ports, anyio.create_task_group() as tg:
        double.register(service_body("orders", "a", ports["a"]))
        consul = ConsulEndpoint(await agent.up(tg), None, double)
        async with gateway_for(gateway_config(consul, "orders")) as gw:
            watcher = gw.gateway.discovery.watchers["orders"]  # type: ignore[attr-defined]
            assert await who(gw) == "a"
            await agent.down()  # Consul goes away
            with anyio.fail_after(5):
                while watcher.stats.errors < 3:
                    assert await who(gw) == "a"  # last known good, no error to clients
                    await anyio.sleep(0.02)
            assert not watcher.stats.healthy
            assert watcher.stats.instances == 1
            failed = [r for r in caplog.records if "failed" in r.getMessage()]
            assert len(failed) == 1, "an outage is logged once, not per retry"
            assert "keeping the 1 last known instances" in failed[0].getMessage()

            # Consul comes back (same port, same state) and a change arrives again.
            await agent.up(tg)
            double.register(service_body("orders", "b", ports["b"]))
            assert await time_until(gw, seen("b"), within=20) < 20
            assert watcher.stats.healthy
            assert any("works again" in r.getMessage() for r in caplog.records)
        await agent.down()


async def test_consul_errors_keep_the_last_known_instances() -> None:
    async with consul_endpoint() as consul, upstreams("a") as ports:
        double = needs_double(consul)
        double.register(service_body("orders", "a", ports["a"]))
        async with gateway_for(gateway_config(consul, "orders")) as gw:
            watcher = gw.gateway.discovery.watchers["orders"]  # type: ignore[attr-defined]
            double.fail_with = (500, "No cluster leader")
            double.restore(double.index)  # wake the blocked query so it asks again
            with anyio.fail_after(5):
                while watcher.stats.errors < 2:
                    assert await who(gw) == "a"
                    await anyio.sleep(0.02)
            assert "No cluster leader" in watcher.stats.last_error
            double.fail_with = None


async def test_an_index_going_backwards_restarts_the_blocking_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gatekeep.discovery")
    async with consul_endpoint() as consul, upstreams("a", "b") as ports:
        double = needs_double(consul)
        for _ in range(20):  # move the index well up
            double.register(service_body("orders", "a", ports["a"]))
        async with gateway_for(gateway_config(consul, "orders")) as gw:
            watcher = gw.gateway.discovery.watchers["orders"]  # type: ignore[attr-defined]
            held = watcher.index
            assert held > 20
            await wait_for(lambda: double.requests[-1][2].get("index") == [str(held)])  # blocked now
            double.restore(3)  # a snapshot restore: every index drops
            with anyio.fail_after(2):
                while watcher.index >= held or watcher.index == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert watcher.index == 3
            # Blocking on the old, higher index would hold for the whole 30 s wait.
            double.register(service_body("orders", "b", ports["b"]))
            assert await time_until(gw, seen("b")) < WITHIN
            assert any("went backwards" in r.getMessage() for r in caplog.records)


def _three_services(consul: ConsulEndpoint, **options: Any) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": f"svc-{n}",
                "discovery": {"consul": {"service": f"svc-{n}", "address": consul.address, **options}},
                "routes": [{"name": n, "paths": [f"/{n}"]}],
            }
            for n in "abc"
        ]
    }


async def test_a_hung_consul_does_not_hold_the_start_its_services_answer_503_until_it_answers() -> None:
    # Issue 11 row 14: the watchers started one after another, each waiting 15 s for its first
    # query, so a gateway with three Consul services took 45 s to start while Consul hung.
    async with consul_endpoint() as consul, upstreams("a", "b", "c") as ports, AsyncExitStack() as stack:
        double = needs_double(consul)
        for n in "abc":
            double.register(service_body(f"svc-{n}", n, ports[n]))
        double.hold = anyio.Event()  # the agent accepts and reads, and answers nothing
        started = time.monotonic()
        gw = await stack.enter_async_context(gateway_for(_three_services(consul)))
        took = time.monotonic() - started
        print(f"gateway started in {took:.2f} s with Consul hung")
        assert took < 2
        for n in "abc":
            r = await gw.client.get(f"/{n}")
            assert r.status == 503, r.text
            assert r.header("content-type") == "application/problem+json"
            assert r.header("retry-after") == "1"
            doc = r.json()
            assert doc["type"].endswith("discovery-pending") and f"svc-{n}" in doc["detail"]
        # Consul answers: each service is served by its instance.
        double.hold.set()
        with anyio.fail_after(WITHIN):
            for n in "abc":
                while (await gw.client.get(f"/{n}")).header("x-instance") != n:  # noqa: ASYNC110
                    await anyio.sleep(0.01)


async def test_the_first_query_timeout_and_the_start_wait_are_settings() -> None:
    async with consul_endpoint() as consul, upstreams("a", "b", "c") as ports, AsyncExitStack() as stack:
        double = needs_double(consul)
        for n in "abc":
            double.register(service_body(f"svc-{n}", n, ports[n]))
        double.hold = anyio.Event()
        started = time.monotonic()
        config = _three_services(consul, initial_timeout=0.2, query_timeout=0.3)
        gw = await stack.enter_async_context(gateway_for(config))
        assert time.monotonic() - started < 0.6  # one initial_timeout for all three
        watchers = gw.gateway.discovery.watchers  # type: ignore[attr-defined]
        # The hung first query times out after query_timeout and is tried again (with backoff).
        await wait_for(lambda: all(w.stats.errors >= 1 for w in watchers.values()), within=2)
        assert all(w.pending("") for w in watchers.values())
        assert (await gw.client.get("/a")).status == 503
        double.hold.set()
        await wait_for(lambda: not any(w.pending("") for w in watchers.values()), within=5)
        assert (await gw.client.get("/b")).header("x-instance") == "b"
    with pytest.raises(ValueError, match="must be 0 or more"):
        ConsulConfig(initial_timeout=-1)
    with pytest.raises(ValueError, match="greater than 0"):
        ConsulConfig(query_timeout=0)


@asynccontextmanager
async def watching(config: ConsulConfig, service: str = "orders") -> AsyncIterator[ConsulDiscovery]:
    discovery = ConsulDiscovery(config, service=service)
    async with anyio.create_task_group() as tg:
        await discovery.start(tg)
        try:
            yield discovery
        finally:
            await discovery.stop()


async def wait_for(check: Callable[[], bool], within: float = WITHIN) -> None:
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110 - polling state the test does not own
            await anyio.sleep(0.01)


async def test_tags_weights_and_the_node_address_fallback() -> None:
    async with consul_endpoint() as consul:
        svc = f"orders-{uuid.uuid4().hex[:8]}"
        bodies = [
            service_body(svc, "v1", 9001, Tags=["v1", "blue"], Weights={"Passing": 7, "Warning": 1}),
            service_body(svc, "v2", 9002, Tags=["v2"]),
            {**service_body(svc, "noaddr", 9003, Tags=["v1"]), "Address": ""},
        ]
        for body in bodies:
            await put(consul, "/v1/agent/service/register", body)
        try:
            config = ConsulConfig(service=svc, address=consul.address, token=consul.token, tag="v1")
            async with watching(config) as discovery:
                found = {i.id: i for i in discovery.instances("orders")}
                assert set(found) == {f"{svc}-v1", f"{svc}-noaddr"}
                assert found[f"{svc}-v1"].weight == 7
                assert found[f"{svc}-noaddr"].weight == 1  # Consul's default weight
                assert found[f"{svc}-noaddr"].port == 9003
                if consul.double is not None:  # a real agent's node address is its own
                    assert found[f"{svc}-noaddr"].host == "127.0.0.1"
            both = ConsulConfig(service=svc, address=consul.address, token=consul.token, tags=("v1", "blue"))
            async with watching(both) as discovery:
                assert [i.id for i in discovery.instances("orders")] == [f"{svc}-v1"]
        finally:
            for body in bodies:
                await put(consul, f"/v1/agent/service/deregister/{body['ID']}")


async def test_warning_instances_when_passing_is_false_use_the_warning_weight() -> None:
    async with consul_endpoint() as consul:
        svc = f"orders-{uuid.uuid4().hex[:8]}"
        body = service_body(svc, "a", 9001, Weights={"Passing": 10, "Warning": 2})
        body["Check"] = {"TTL": "300s", "Status": "warning"}
        await put(consul, "/v1/agent/service/register", body)
        try:
            config = ConsulConfig(service=svc, address=consul.address, token=consul.token, passing=False)
            async with watching(config) as discovery:
                assert [i.weight for i in discovery.instances("x")] == [2]
                await put(consul, f"/v1/agent/check/fail/service:{svc}-a")
                await wait_for(lambda: not discovery.instances("x"))  # critical is never used
        finally:
            await put(consul, f"/v1/agent/service/deregister/{svc}-a")


async def test_datacenter_and_a_failing_node() -> None:
    async with consul_endpoint(datacenters=("dc2",)) as consul:
        double = needs_double(consul)
        double.add_node("far", "10.9.9.9", "dc2")
        double.register(service_body("orders", "remote", 9005, Address=""), node="far", dc="dc2")
        double.register(service_body("orders", "local", 9006))
        async with watching(ConsulConfig(address=consul.address, dc="dc2")) as discovery:
            assert [(i.id, i.host) for i in discovery.instances("orders")] == [("orders-remote", "10.9.9.9")]
            # The node's serfHealth fails: every instance on it leaves the passing set.
            double.set_node_health("far", "critical", "dc2")
            await wait_for(lambda: not discovery.instances("orders"))
        async with watching(ConsulConfig(address=consul.address, dc="nowhere")) as discovery:
            assert discovery.stats.errors == 1
            assert "No path to datacenter" in discovery.stats.last_error


async def test_acl_token() -> None:
    async with consul_endpoint(token="s3cret") as consul:
        double = needs_double(consul)
        double.register(service_body("orders", "a", 9001))
        async with watching(ConsulConfig(address=consul.address, token="s3cret")) as discovery:
            assert len(discovery.instances("orders")) == 1
        async with watching(ConsulConfig(address=consul.address, token="wrong")) as discovery:
            assert discovery.instances("orders") == ()
            assert discovery.stats.errors == 1
            assert "403" in discovery.stats.last_error
        # Without a token, a default-deny ACL filters the answer to nothing.
        async with watching(ConsulConfig(address=consul.address)) as discovery:
            assert discovery.instances("orders") == ()
            assert discovery.stats.errors == 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("consul-pki")
    ca_file = base / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("gateway@example.test")
    client_file = base / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_file))
    yield {"ca": str(ca_file), "client": str(client_file)}


def agent_tls(ca: trustme.CA, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "consul.example.test").configure_cert(ctx)
    if require_client_cert:
        ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_tls_and_mtls_to_the_agent(ca: trustme.CA, pki: dict[str, str]) -> None:
    double = ConsulDouble()
    double.register(service_body("orders", "a", 9001))
    async with serve_consul(double, ssl_context=agent_tls(ca, require_client_cert=True)) as address:
        assert address.startswith("https://")
        mtls = ConsulTLSConfig(ca_file=pki["ca"], cert_file=pki["client"])
        async with watching(ConsulConfig(address=address, tls=mtls)) as discovery:
            assert [i.id for i in discovery.instances("orders")] == ["orders-a"]
        # Without the client certificate the agent refuses the handshake.
        async with watching(
            ConsulConfig(address=address, tls=ConsulTLSConfig(ca_file=pki["ca"]))
        ) as discovery:
            assert discovery.instances("orders") == ()
            assert discovery.stats.errors == 1
        # An unknown CA is refused too.
        async with watching(ConsulConfig(address=address)) as discovery:
            assert discovery.stats.errors == 1
            assert "certificate" in discovery.stats.last_error.lower()
    async with serve_consul(double, ssl_context=agent_tls(ca, require_client_cert=False)) as address:
        named = ConsulTLSConfig(ca_file=pki["ca"], tls_server_name="consul.example.test")
        async with watching(ConsulConfig(address=address, tls=named)) as discovery:
            assert len(discovery.instances("orders")) == 1


def test_discovery_config_errors_have_paths(tmp_path: Path) -> None:
    from gatekeep import ConfigError, load_config

    bad: dict[str, Any] = {
        "services": [
            {
                "name": "a",
                "discovery": {"consul": {"wait": "11m", "address": "ftp://x"}},
                "routes": [{"paths": ["/a"]}],
            },
            {"name": "b", "discovery": {}, "routes": [{"paths": ["/b"]}]},
            {
                "name": "c",
                "url": "http://x:1",
                "discovery": {"dns": {"name": "x"}},
                "routes": [{"paths": ["/c"]}],
            },
            {
                "name": "d",
                "discovery": {"dns": {"name": "x", "nameserver": "localhost", "min_ttl": 0}},
                "routes": [{"paths": ["/d"]}],
            },
            {"name": "e", "routes": [{"paths": ["/e"]}]},
        ]
    }
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    got = {(e.path, e.message.split(",")[0]) for e in info.value.errors}
    paths = {p for p, _ in got}
    assert "services[0].discovery.consul.wait" in paths
    assert "services[0].discovery.consul.address" in paths
    assert ("services[1].discovery", "set exactly one of 'consul' or 'dns'") in got
    assert "services[2].discovery" in paths
    assert "services[3].discovery.dns.nameserver" in paths
    assert "services[3].discovery.dns.min_ttl" in paths
    assert ("services[4]", "needs a 'url'") in got

    good = load_config(
        {
            "services": [
                {
                    "name": "orders",
                    "discovery": {"consul": {"service": "orders", "tag": "v1", "dc": "dc1", "wait": "10s"}},
                    "routes": [{"paths": ["/"]}],
                }
            ]
        }
    )
    consul = good.services[0].discovery
    assert consul is not None and consul.consul is not None
    assert consul.consul.wait_seconds == 10.0
    assert consul.consul.all_tags == ("v1",)
