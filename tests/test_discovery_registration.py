"""Registering services with Consul: body validation, check ids, TTL heartbeats, deregistration."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import anyio
import anyio.from_thread
import pytest

from gatekeep import ConfigError
from gatekeep.discovery import (
    ConsulClient,
    ConsulHTTPError,
    check_ids,
    deregister,
    register,
    registered,
    registered_sync,
    validate_registration,
)
from tests._consul_server import ConsulDouble, ConsulEndpoint, consul_endpoint, serve_consul

# The reference example: order-service-1 with an HTTPS check every 10 s (docs/discovery.md).
ORDER_SERVICE = {
    "ID": "order-service-1",
    "Name": "order-service",
    "Tags": ["v1", "https"],
    "Address": "10.0.0.5",
    "Port": 8443,
    "Meta": {"version": "1.4.2"},
    "Weights": {"Passing": 10, "Warning": 1},
    "EnableTagOverride": False,
    "Check": {
        "Name": "order-service HTTPS health",
        "HTTP": "https://10.0.0.5:8443/health",
        "Interval": "10s",
        "Timeout": "2s",
        "TLSSkipVerify": False,
        "DeregisterCriticalServiceAfter": "1m",
    },
}


async def agent_get(consul: ConsulEndpoint, path: str) -> Any:
    path, _, query = path.partition("?")
    pairs = [(k, v) for k, _, v in (p.partition("=") for p in query.split("&"))] if query else []
    client = ConsulClient(consul.address, token=consul.token)
    try:
        return (await client.request("GET", path, pairs)).json()
    finally:
        await client.aclose()


def test_the_reference_body_is_valid_and_its_check_id_is_the_agents() -> None:
    assert validate_registration(ORDER_SERVICE) == ORDER_SERVICE
    assert check_ids(ORDER_SERVICE) == ["service:order-service-1"]
    several = {"Name": "x", "Checks": [{"TTL": "5s"}, {"TCP": "h:1", "Interval": "5s", "CheckID": "own"}]}
    assert check_ids(several) == ["service:x:1", "own"]


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({}, "Name", "is required"),
        ({"Name": ""}, "Name", "must not be empty"),
        ({"Name": "x", "Port": "80"}, "Port", "expected an integer"),
        ({"Name": "x", "Port": 70000}, "Port", "must be 0-65535"),
        ({"Name": "x", "Tags": "v1"}, "Tags", "expected an array of strings"),
        ({"Name": "x", "Meta": {"a": 1}}, "Meta", "expected an object of strings"),
        ({"Name": "x", "Weights": {"Passing": 0}}, "Weights.Passing", "must be at least 1"),
        ({"Name": "x", "name": "y"}, "name", "did you mean 'Name'?"),
        (
            {"Name": "x", "Check": {"HTTP": "https://h/health"}},
            "Check.Interval",
            "is required for a HTTP check",
        ),
        ({"Name": "x", "Check": {"TTL": "10s", "Interval": "5s"}}, "Check.Interval", "a TTL check has no"),
        ({"Name": "x", "Check": {"TTL": "ten"}}, "Check.TTL", "expected a duration"),
        ({"Name": "x", "Check": {"Interval": "10s"}}, "Check", "exactly one of HTTP, TCP, TTL"),
        ({"Name": "x", "Check": {"HTTP": "h/health", "Interval": "1s"}}, "Check.HTTP", "http:// or https://"),
        ({"Name": "x", "Check": {"TCP": "host", "Interval": "1s"}}, "Check.TCP", "expected 'host:port'"),
        ({"Name": "x", "Checks": [{"TTL": "1s", "Status": "ok"}]}, "Checks[0].Status", "must be 'passing'"),
        (
            {"Name": "x", "Checks": [{"TTL": "1s", "TLSSkipVerify": "yes"}]},
            "Checks[0].TLSSkipVerify",
            "boolean",
        ),
        ({"Name": "x", "ID": "a/b"}, "ID", "without '/'"),
    ],
)
def test_invalid_bodies_name_the_field(body: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_registration(body)
    assert any(e.path == path and message in e.message for e in info.value.errors), info.value.errors


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as info:
        validate_registration({"Port": -1, "Check": {"TTL": "x"}, "Bogus": 1})
    assert {e.path for e in info.value.errors} == {"Name", "Port", "Check.TTL", "Bogus"}


@pytest.mark.anyio
async def test_register_and_deregister_the_reference_example() -> None:
    async with consul_endpoint() as consul:
        body = {**ORDER_SERVICE, "ID": f"order-service-{uuid.uuid4().hex[:6]}"}
        reg = await register(consul.address, body, token=consul.token)
        assert reg.service_id == body["ID"] and reg.ttl_checks == ()
        try:
            services = await agent_get(consul, "/v1/agent/services")
            got = services[body["ID"]]
            assert (got["Service"], got["Port"], got["Address"]) == ("order-service", 8443, "10.0.0.5")
            assert got["Weights"] == {"Passing": 10, "Warning": 1}
            checks = await agent_get(consul, "/v1/agent/checks")
            check = checks[f"service:{body['ID']}"]
            assert check["Interval"] == "10s" and check["Type"] == "http"
        finally:
            await deregister(consul.address, body["ID"], token=consul.token)
        assert body["ID"] not in await agent_get(consul, "/v1/agent/services")
        # Deregistering an unknown id is a no-op, as in Consul.
        await deregister(consul.address, body["ID"], token=consul.token)


@pytest.mark.anyio
async def test_a_ttl_check_stays_passing_while_registered_and_leaves_after() -> None:
    async with consul_endpoint() as consul:
        sid = f"worker-{uuid.uuid4().hex[:6]}"
        body = {"ID": sid, "Name": sid, "Port": 9000, "Address": "127.0.0.1", "Check": {"TTL": "1s"}}
        async with registered(consul.address, body, token=consul.token) as reg:
            assert reg.ttl_checks == ((f"service:{sid}", 1.0),)
            for _ in range(3):  # longer than the TTL: only the heartbeat keeps it passing
                await anyio.sleep(0.6)
                passing = await agent_get(consul, f"/v1/health/service/{sid}?passing=true")
                assert [e["Service"]["ID"] for e in passing] == [sid]
        assert sid not in await agent_get(consul, "/v1/agent/services")


@pytest.mark.anyio
async def test_without_heartbeat_a_ttl_check_expires() -> None:
    async with consul_endpoint() as consul:
        sid = f"worker-{uuid.uuid4().hex[:6]}"
        body = {"ID": sid, "Name": sid, "Port": 9000, "Check": {"TTL": "1s", "Status": "passing"}}
        await register(consul.address, body, token=consul.token)
        try:
            await anyio.sleep(1.3)
            assert await agent_get(consul, f"/v1/health/service/{sid}?passing=true") == []
        finally:
            await deregister(consul.address, sid, token=consul.token)


@pytest.mark.anyio
async def test_the_heartbeat_registers_again_when_the_agent_forgot_the_service() -> None:
    async with consul_endpoint() as consul:
        double = consul.double
        if double is None:
            pytest.skip("needs the double to lose state")
        body = {"ID": "w1", "Name": "w", "Port": 9000, "Check": {"TTL": "1s"}}
        async with registered(consul.address, body, heartbeat=0.05):
            double._deregister(double.datacenter, double.agent_node, "w1")  # an agent restart without state
            with anyio.fail_after(2):
                while "w1" not in await agent_get(consul, "/v1/agent/services"):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            with anyio.fail_after(2):
                while not await agent_get(consul, "/v1/health/service/w?passing=true"):  # noqa: ASYNC110
                    await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_errors_from_the_agent() -> None:
    double = ConsulDouble(token="t0ken")
    async with serve_consul(double) as address:
        with pytest.raises(ConsulHTTPError) as info:
            await register(address, {"Name": "x"})
        assert info.value.code == 403
        await register(address, {"Name": "x"}, token="t0ken")
        assert ("dc1", "node-1", "x") in double.services


def test_registered_sync_for_scripts() -> None:
    with anyio.from_thread.start_blocking_portal() as portal:
        double = portal.call(_make_double)
        cm = serve_consul(double)
        with portal.wrap_async_context_manager(cm) as address:
            body = {"ID": "script-1", "Name": "script", "Port": 1234, "Check": {"TTL": "2s"}}
            with registered_sync(address, body) as reg:
                assert threading.current_thread() is threading.main_thread()
                assert reg.service_id == "script-1"
                assert ("dc1", "node-1", "script-1") in double.services
                status = double.checks[("dc1", "node-1", "service:script-1")]["Status"]
                assert status == "passing"
            assert ("dc1", "node-1", "script-1") not in double.services
            assert json.dumps(reg.check_ids) == '["service:script-1"]'


async def _make_double() -> ConsulDouble:
    return ConsulDouble()
