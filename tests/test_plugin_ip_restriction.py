"""``ip-restriction``: allow/deny lists of addresses and CIDRs on the real client address."""

from __future__ import annotations

from typing import Any

import pytest

from gatekeep import ConfigError, load_config
from gatekeep.plugins.ip_restriction import IpRestrictionConfig, IpRestrictionFilter
from gatekeep.testing import gateway_for
from tests._docs import run_python_blocks

pytestmark = pytest.mark.anyio


def _config(plugin: dict[str, Any], *, trusted: list[str] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "services": [{"name": "api", "url": "{upstream}", "routes": [{"name": "api", "paths": ["/"]}]}],
        "plugins": [{"name": "ip-restriction", "config": plugin}],
    }
    if trusted is not None:
        config["gateway"] = {"trusted_proxies": trusted}
    return config


async def _from(gw: Any, client: str | None) -> Any:
    headers = {"x-forwarded-for": client} if client else {}
    return await gw.client.get("/x", headers=headers)


# -- the decision -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "deny", "address", "allowed"),
    [
        (["10.0.0.0/8"], [], "10.1.2.3", True),
        (["10.0.0.0/8"], [], "11.0.0.1", False),
        (["10.0.0.0/8"], ["10.9.0.0/16"], "10.9.1.1", False),  # deny wins
        ([], ["192.0.2.7"], "192.0.2.7", False),
        ([], ["192.0.2.7"], "192.0.2.8", True),
        (["2001:db8::/32"], [], "2001:db8::5", True),
        (["2001:db8::/32"], [], "2001:db9::5", False),
        (["10.0.0.0/8"], [], "::ffff:10.1.2.3", True),  # an IPv4-mapped IPv6 peer
        (["::ffff:10.0.0.0/104"], [], "10.1.2.3", True),  # a mapped network is its IPv4 network
        ([], ["2001:db8::1"], "fe80::1%eth0", True),
        (["10.0.0.0/8"], [], "", False),  # no address: not in any allow list
        ([], ["10.0.0.0/8"], "", True),
        (["10.0.0.0/8"], [], "not-an-ip", False),
    ],
)
def test_decisions(allow: list[str], deny: list[str], address: str, allowed: bool) -> None:
    plugin = IpRestrictionFilter(IpRestrictionConfig(allow=tuple(allow), deny=tuple(deny)))
    assert plugin.allowed(address) is allowed


# -- requests ---------------------------------------------------------------------------------


async def test_the_peer_address_decides_without_trusted_proxies() -> None:
    async with gateway_for(_config({"allow": ["127.0.0.1"]})) as gw:
        assert (await _from(gw, None)).status == 200
    async with gateway_for(_config({"deny": ["127.0.0.0/8"]})) as gw:
        refused = await _from(gw, None)
        assert refused.status == 403
        assert refused.header("content-type") == "application/problem+json"
        assert refused.json()["detail"] == "Your IP address is not allowed"
        assert not gw.upstream.requests


async def test_a_forged_x_forwarded_for_from_an_untrusted_peer_does_not_count() -> None:
    """The attacker's test: claiming an allowed address in X-Forwarded-For."""
    async with gateway_for(_config({"allow": ["10.0.0.0/8"]})) as gw:
        assert (await _from(gw, "10.1.2.3")).status == 403
    async with gateway_for(_config({"deny": ["127.0.0.1"]})) as gw:
        assert (await _from(gw, "10.1.2.3")).status == 403  # cannot hide behind another address


async def test_behind_a_trusted_proxy_the_forwarded_client_decides() -> None:
    async with gateway_for(_config({"allow": ["10.0.0.0/8", "2001:db8::/32"]}, trusted=["127.0.0.1"])) as gw:
        assert (await _from(gw, "10.1.2.3")).status == 200
        assert (await _from(gw, "2001:db8::42")).status == 200
        assert (await _from(gw, "192.0.2.1")).status == 403
        # The right-most untrusted entry is the client: an entry the client wrote on the left is not.
        assert (await _from(gw, "10.1.2.3, 192.0.2.1")).status == 403


async def test_status_and_message() -> None:
    async with gateway_for(_config({"deny": ["127.0.0.1"], "status": 451, "message": "Not from here"})) as gw:
        refused = await _from(gw, None)
        assert refused.status == 451
        doc = refused.json()
        assert doc["status"] == 451 and doc["detail"] == "Not from here"


@pytest.mark.parametrize(
    ("plugin", "path", "message"),
    [
        ({}, "plugins[0].config", "set 'allow' or 'deny'"),
        ({"allow": ["10.0.0.300"]}, "plugins[0].config.allow", "expected an IP address or CIDR"),
        ({"deny": ["example.com"]}, "plugins[0].config.deny", "expected an IP address or CIDR"),
        ({"deny": ["10.0.0.1"], "status": 200}, "plugins[0].config.status", "400-599"),
    ],
)
def test_config_errors(plugin: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config({**_config(plugin), "services": []})
    assert message in {e.path: e.message for e in exc.value.errors}[path]


def test_the_docs_example_runs() -> None:
    assert run_python_blocks("plugins/ip-restriction.md") == ["test_ip_restriction"]
