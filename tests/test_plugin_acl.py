"""``acl``: allow or deny consumers by group, ``acls`` on consumers as decK writes them."""

from __future__ import annotations

from typing import Any

import pytest

from gatekeep import ConfigError, load_config
from gatekeep.testing import gateway_for
from tests._docs import run_python_blocks

pytestmark = pytest.mark.anyio


def _config(acl: dict[str, Any], *, key_auth: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "services": [{"name": "api", "url": "{upstream}", "routes": [{"name": "api", "paths": ["/"]}]}],
        "plugins": [
            {"name": "key-auth", "config": key_auth or {}},
            {"name": "acl", "config": acl},
        ],
        "consumers": [
            {
                "username": "ada",
                "keyauth_credentials": [{"key": "ada-key"}],
                "acls": [{"group": "admins"}, {"group": "staff", "tags": ["hr"]}],
            },
            {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}], "acls": [{"group": "users"}]},
            {"username": "cy", "keyauth_credentials": [{"key": "cy-key"}], "groups": ["admins"]},
            {"username": "nobody-groups", "keyauth_credentials": [{"key": "ng-key"}]},
            {"username": "guest", "acls": [{"group": "guests"}]},
        ],
    }


async def _status(gw: Any, key: str | None) -> int:
    headers = {"apikey": key} if key else {}
    return (await gw.client.get("/x", headers=headers)).status


async def test_allow_lets_only_members_through() -> None:
    async with gateway_for(_config({"allow": ["admins"]})) as gw:
        assert await _status(gw, "ada-key") == 200
        assert await _status(gw, "cy-key") == 200  # the consumer's own groups count too
        refused = await gw.client.get("/x", headers={"apikey": "bob-key"})
        assert refused.status == 403
        assert refused.header("content-type") == "application/problem+json"
        assert refused.json()["detail"] == "You cannot consume this service"
        assert await _status(gw, "ng-key") == 403


async def test_deny_refuses_members_and_lets_others_through() -> None:
    async with gateway_for(_config({"deny": ["users"]})) as gw:
        assert await _status(gw, "bob-key") == 403
        assert await _status(gw, "ada-key") == 200
        assert await _status(gw, "ng-key") == 200


async def test_groups_go_upstream_in_x_consumer_groups() -> None:
    async with gateway_for(_config({"allow": ["admins"]})) as gw:
        assert await _status(gw, "ada-key") == 200
        assert gw.upstream.requests[-1].headers["x-consumer-groups"] == "admins, staff"


async def test_hide_groups_header() -> None:
    async with gateway_for(_config({"allow": ["admins"], "hide_groups_header": True})) as gw:
        assert await _status(gw, "cy-key") == 200
        assert "x-consumer-groups" not in gw.upstream.requests[-1].headers


async def test_a_client_cannot_claim_groups() -> None:
    """The attacker's test: its own X-Consumer-Groups, in two spellings."""
    async with gateway_for(_config({"allow": ["admins"]})) as gw:
        headers = {"apikey": "bob-key", "x-consumer-groups": "admins", "X_Consumer_Groups": "admins"}
        assert (await gw.client.get("/x", headers=headers)).status == 403
        assert (await gw.client.get("/x", headers={"x-consumer-groups": "admins"})).status == 401
        headers = {"apikey": "ng-key", "x-consumer-groups": "admins"}
        assert (await gw.client.get("/x", headers=headers)).status == 403
        assert not gw.upstream.requests


async def test_without_a_consumer_the_answer_is_401() -> None:
    config = _config({"allow": ["admins"]})
    config["plugins"] = [config["plugins"][1]]  # no auth plugin at all
    async with gateway_for(config) as gw:
        response = await gw.client.get("/x")
        assert response.status == 401 and response.header("content-type") == "application/problem+json"


async def test_the_anonymous_consumer_has_its_groups() -> None:
    async with gateway_for(_config({"allow": ["guests", "admins"]}, key_auth={"anonymous": "guest"})) as gw:
        assert await _status(gw, None) == 200
        assert gw.upstream.requests[-1].headers["x-consumer-groups"] == "guests"
        assert await _status(gw, "bob-key") == 403


async def test_always_use_authenticated_groups() -> None:
    """Groups the authentication gave (here a token's claim) decide when the flag is on."""
    import time

    import jwt

    secret = "a-shared-secret-of-32-bytes-or-more!"
    config = _config({"allow": ["admins"], "always_use_authenticated_groups": True})
    config["plugins"][0] = {"name": "jwt", "config": {"groups_claim": ["groups"]}}
    config["consumers"][1]["jwt_secrets"] = [{"key": "bob-iss", "secret": secret}]

    def token(groups: list[str]) -> str:
        claims = {"iss": "bob-iss", "exp": int(time.time()) + 60, "groups": groups}
        return jwt.encode(claims, secret, algorithm="HS256")

    async with gateway_for(config) as gw:
        ok = await gw.client.get("/x", headers={"authorization": f"Bearer {token(['admins'])}"})
        assert ok.status == 200  # bob's own group is "users": the token's groups decide
        no = await gw.client.get("/x", headers={"authorization": f"Bearer {token(['users'])}"})
        assert no.status == 403
    config["plugins"][1]["config"]["always_use_authenticated_groups"] = False
    async with gateway_for(config) as gw:
        no = await gw.client.get("/x", headers={"authorization": f"Bearer {token(['admins'])}"})
        assert no.status == 403  # the consumer's groups decide


@pytest.mark.parametrize(
    ("acl", "path", "message"),
    [
        ({}, "plugins[1].config", "exactly one of 'allow' and 'deny'"),
        ({"allow": ["a"], "deny": ["b"]}, "plugins[1].config", "exactly one of 'allow' and 'deny'"),
        ({"allow": ["a,b"]}, "plugins[1].config.allow", "not a group name"),
        ({"deny": [" a"]}, "plugins[1].config.deny", "not a group name"),
    ],
)
def test_config_errors(acl: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config({**_config(acl), "services": []})
    assert message in {e.path: e.message for e in exc.value.errors}[path]


def test_an_acls_entry_is_checked_with_its_path() -> None:
    data = {**_config({"allow": ["a"]}), "services": []}
    data["consumers"][0]["acls"] = [{"group": "ok"}, {"grup": "typo"}]
    with pytest.raises(ConfigError) as exc:
        load_config(data)
    assert any(e.path.startswith("consumers[0].acls[1]") for e in exc.value.errors)


def test_the_docs_example_runs() -> None:
    assert run_python_blocks("plugins/acl.md") == ["test_acl"]
