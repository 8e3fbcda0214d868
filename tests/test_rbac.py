"""The ``rbac`` filter in a running gateway, over loopback sockets.

Identity comes from ``HeaderAuth``, a small test authenticator at the ``jwt``
filter's priority (1450) that trusts ``x-test-*`` headers: the filter under
test only reads ``request.identity`` / ``request.consumer``, whoever set them.
``tests/test_service_helpers.py`` runs the same scenario with real tokens.
"""

from __future__ import annotations

import tomllib
from typing import Any, ClassVar

import pytest

from gatekeep import BaseFilter, Gateway, Identity, Request, Response
from gatekeep.testing import ClientResponse, gateway_for

pytestmark = pytest.mark.anyio


class HeaderAuth(BaseFilter):
    name: ClassVar[str] = "test-header-auth"
    priority: ClassVar[int] = 1450

    def bind(self, gateway: Gateway) -> None:
        self.consumers = gateway.consumers

    async def on_request(self, request: Request) -> Response | None:
        h = request.headers
        consumer = h.text("x-test-consumer")
        if consumer is not None:
            request.consumer = self.consumers[consumer]
        sub = h.text("x-test-sub")
        if sub is not None:
            request.identity = Identity(
                subject=sub,
                consumer=consumer,
                roles=frozenset((h.text("x-test-roles") or "").split()),
                scopes=frozenset((h.text("x-test-scopes") or "").split()),
                anonymous=h.text("x-test-anonymous") == "1",
            )
        elif consumer is not None:
            request.identity = Identity(subject=consumer, consumer=consumer)
        return None


# The reference scenario, as a user writes it in gateway.toml.
ORDERS_TOML = """
[[services]]
name = "orders"
url = "{upstream}"

  [[services.routes]]
  name = "orders"
  paths = ["/orders"]

    [[services.routes.plugins]]
    name = "rbac"
    config.hierarchy = { admin = ["user"] }
    config.rules = [
      { methods = ["GET"], any_of = ["admin"] },
      { methods = ["POST"], any_of = ["user"] },
    ]

  [[services.routes]]
  name = "reports"
  paths = ["/reports"]

    [[services.routes.plugins]]
    name = "rbac"
    config.rules = [{ methods = ["GET"], scopes_all = ["reports:read"] }]

  [[services.routes]]
  name = "open"
  paths = ["/open"]

[[consumers]]
username = "ci-bot"
groups = ["admin"]
"""


def orders_config() -> dict[str, Any]:
    return tomllib.loads(ORDERS_TOML)


def who(sub: str, roles: str = "", scopes: str = "", **extra: str) -> dict[str, str]:
    headers = {"x-test-sub": sub, "x-test-roles": roles, "x-test-scopes": scopes}
    headers.update({f"x-test-{k}": v for k, v in extra.items()})
    return headers


def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    return doc


@pytest.mark.parametrize(
    ("method", "roles", "status"),
    [
        ("GET", "admin", 200),
        ("GET", "user", 403),
        ("POST", "user", 200),
        ("POST", "admin", 200),  # admin includes user
        ("POST", "viewer", 403),
        ("DELETE", "admin", 403),  # no rule: denied by default
    ],
)
async def test_orders_table(method: str, roles: str, status: int) -> None:
    async with gateway_for(orders_config(), filters=[HeaderAuth()]) as gw:
        response = await gw.client.request(method, "/orders", headers=who("alice", roles))
        assert response.status == status, response.text
        if status == 200:
            assert gw.upstream.requests[-1].method == method
        else:
            assert not gw.upstream.requests  # never reached the service


async def test_403_names_the_missing_role() -> None:
    async with gateway_for(orders_config(), filters=[HeaderAuth()]) as gw:
        doc = problem(await gw.client.get("/orders", headers=who("alice", "user")), 403)
        assert doc["type"].endswith("/insufficient-role")
        assert doc["detail"] == "GET /orders needs the role 'admin'"
        assert doc["required_roles"] == {"any_of": ["admin"], "all_of": []}
        doc = problem(await gw.client.delete("/orders", headers=who("alice", "admin")), 403)
        assert doc["detail"] == "no access rule allows DELETE /orders"


async def test_unauthenticated_is_401_with_a_bearer_challenge() -> None:
    async with gateway_for(orders_config(), filters=[HeaderAuth()]) as gw:
        response = await gw.client.get("/orders")
        doc = problem(response, 401)
        assert doc["type"].endswith("/authentication-required")
        assert response.header("www-authenticate") == "Bearer"
        problem(await gw.client.get("/orders", headers=who("anon", "user", anonymous="1")), 401)
        # Routes without rbac are untouched.
        assert (await gw.client.get("/open")).status == 200


async def test_insufficient_scope() -> None:
    async with gateway_for(orders_config(), filters=[HeaderAuth()]) as gw:
        response = await gw.client.get("/reports", headers=who("alice", "admin", "openid"))
        doc = problem(response, 403)
        assert doc["type"].endswith("/insufficient-scope")
        assert doc["required_scopes"] == {"any_of": [], "all_of": ["reports:read"]}
        challenge = response.header("www-authenticate") or ""
        assert challenge.startswith('Bearer error="insufficient_scope"')
        assert challenge.endswith('scope="reports:read"')
        ok = await gw.client.get("/reports", headers=who("alice", "", "openid reports:read"))
        assert ok.status == 200


async def test_consumer_groups_count_as_roles() -> None:
    async with gateway_for(orders_config(), filters=[HeaderAuth()]) as gw:
        response = await gw.client.get("/orders", headers={"x-test-consumer": "ci-bot"})
        assert response.status == 200, response.text


async def test_rbac_runs_after_authentication_and_before_rate_limiting() -> None:
    gateway = Gateway(
        {
            "services": [
                {
                    "name": "s",
                    "url": "http://127.0.0.1:9",
                    "routes": [
                        {
                            "name": "r",
                            "paths": ["/"],
                            "plugins": [{"name": "rbac", "config": {"rules": [{"any_of": ["x"]}]}}],
                        }
                    ],
                }
            ]
        },
        filters=[HeaderAuth()],
    )
    chain = gateway.routes[0].chain
    assert [(f.name, f.priority) for f in chain.filters] == [("test-header-auth", 1450), ("rbac", 950)]
