"""Component metrics read at scrape time, with the real components: the jwt filter and its
JWKS cache, the rate-limiting filter, circuit breakers, passive health checks and a Consul watcher."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest

from gatekeep.testing import gateway_for
from tests._consul_server import consul_endpoint
from tests._jwks_server import jwks_server
from tests.test_metrics import requests_total, scrape, value

pytestmark = pytest.mark.anyio


async def test_jwt_401_and_rate_limiting_429_through_the_real_filters() -> None:
    async with jwks_server() as idp:
        # On the service, not global: global request filters also guard /metrics.
        config: dict[str, Any] = {
            "services": [
                {
                    "name": "up",
                    "url": "{upstream}",
                    "routes": [{"name": "orders", "paths": ["/orders"]}],
                    "plugins": [
                        {
                            "name": "jwt",
                            "config": {"issuers": [{"issuer": idp.issuer}], "consumer_claim": ["azp"]},
                        },
                        {"name": "rate-limiting", "config": {"minute": 2, "policy": "local"}},
                    ],
                }
            ],
            "consumers": [{"username": "alice"}],
            "plugins": [{"name": "prometheus", "config": {"per_consumer": True}}],
        }
        async with gateway_for(config) as gw:
            auth = {"authorization": f"Bearer {idp.mint(azp='alice')}"}
            assert (await gw.client.get("/orders")).status == 401
            assert (await gw.client.get("/orders", headers=auth)).status == 200
            assert (await gw.client.get("/orders", headers=auth)).status == 200
            assert (await gw.client.get("/orders", headers=auth)).status == 429
            found = await scrape(gw.client, requests=4)

    def total(**labels: str) -> float | None:
        return requests_total(found, route="orders", **labels)

    assert total(code="401", source="gateway", consumer="") == 1
    assert total(code="200", source="service", consumer="alice") == 2
    assert total(code="429", source="gateway", consumer="alice") == 1
    decisions = "gatekeep_ratelimit_decisions"
    assert value(found, decisions, decisions + "_total", result="allowed") == 2
    assert value(found, decisions, decisions + "_total", result="rejected") == 1
    assert value(found, decisions, decisions + "_total", result="fallback") == 0
    fetches = "gatekeep_jwks_fetches"
    success = value(found, fetches, fetches + "_total", result="success")
    assert success is not None and success >= 1
    assert value(found, fetches, fetches + "_total", result="error") == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_breaker_state_transitions_and_target_health() -> None:
    down = f"127.0.0.1:{closed_port()}"
    config: dict[str, Any] = {
        "services": [
            {
                "name": "flaky",
                "targets": [{"target": down}],
                "retries": 0,
                "breaker": {"consecutive_failures": 2, "open_for": 60},
                "healthchecks": {"passive": {"unhealthy": {"tcp_failures": 1}}},
                "routes": [{"name": "flaky", "paths": ["/"]}],
            }
        ],
        "plugins": [{"name": "prometheus", "config": {"upstream_health_metrics": True}}],
    }
    async with gateway_for(config) as gw:
        before = await scrape(gw.client)
        assert value(before, "gatekeep_breaker_state", "gatekeep_breaker_state", service="flaky", instance="",
                     state="closed") == 1  # fmt: skip
        statuses = [(await gw.client.get("/x")).status for _ in range(3)]
        assert statuses[:2] == [502, 502] and statuses[2] == 503, statuses
        found = await scrape(gw.client, requests=3)
    state = "gatekeep_breaker_state"
    assert value(found, state, state, service="flaky", instance="", state="open") == 1
    assert value(found, state, state, service="flaky", instance="", state="closed") == 0
    transitions = "gatekeep_breaker_transitions"
    opened = value(found, transitions, transitions + "_total", service="flaky", state="open")
    assert opened is not None and opened >= 1
    health = "gatekeep_upstream_target_health"
    current = [s for s in found[health] if s.value == 1 and s.labels["target"] == down]
    assert [s.labels["state"] for s in current] in (["ejected"], ["unhealthy"], ["healthy"])
    assert requests_total(found, code="503", source="gateway") == 1


async def test_discovery_instances_errors_and_up_from_a_consul_watcher() -> None:
    from tests.test_discovery_consul import gateway_config, needs_double, service_body, upstreams

    async with consul_endpoint() as consul, upstreams("a", "b") as ports:
        double = needs_double(consul)
        for name, port in ports.items():
            double.register(service_body("orders", name, port))
        config = gateway_config(consul, "orders")
        config["plugins"] = [{"name": "prometheus"}]
        async with gateway_for(config) as gw:
            found = await scrape(gw.client)
            instances = "gatekeep_discovery_instances"
            assert value(found, instances, instances, service="orders") == 2
            up = "gatekeep_discovery_up"
            assert value(found, up, up, service="orders", source="consul") == 1
            watcher = gw.gateway.discovery.watchers["orders"]  # type: ignore[attr-defined]
            double.fail_with = (500, "No cluster leader")
            double.restore(double.index)  # wake the blocked query so it asks again
            with anyio.fail_after(5):
                while watcher.stats.errors < 1:  # noqa: ASYNC110 - polls state another task changes
                    await anyio.sleep(0.02)
            found = await scrape(gw.client)
            double.fail_with = None
    errors = "gatekeep_discovery_errors"
    counted = value(found, errors, errors + "_total", service="orders", source="consul")
    assert counted is not None and counted >= 1
    assert value(found, up, up, service="orders", source="consul") == 0
    assert value(found, instances, instances, service="orders") == 2  # the last known set stays
