"""Service-side helpers: identity accessors, header trust over mTLS, JWT verification
in the service, ``require_roles`` in each framework, and the example Order service
behind a real gateway with real tokens."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import wsgiref.util
from pathlib import Path
from typing import Any

import anyio
import jwt as pyjwt
import pytest

from gatekeep import ConsumerConfig, Headers, Identity
from gatekeep.auth import JWTVerifier, KeyConfig, VerifierConfig, set_identity_headers
from gatekeep.service import (
    AuthMiddleware,
    HeaderTrust,
    Roles,
    WSGIAuthMiddleware,
    identity_from_environ,
    identity_from_headers,
    identity_from_scope,
    require_roles,
)
from gatekeep.testing import TestClient, gateway_for, serve_asgi

from .test_mtls_server import Certs, https, serve_tls_asgi

pytestmark = pytest.mark.anyio


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs.make(tmp_path)


SECRET = "a-long-enough-hmac-secret-for-hs256-tests!"
ORDER_RULES = {
    "hierarchy": {"admin": ["user"]},
    "rules": [{"methods": ["GET"], "any_of": ["admin"]}, {"methods": ["POST"], "any_of": ["user"]}],
}


def token(sub: str, *, roles: list[str] | None = None, scope: str | None = None, **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": sub, "iss": "https://sso.test", "exp": int(time.time()) + 300, **claims}
    if roles is not None:
        payload["realm_access"] = {"roles": roles}
    if scope is not None:
        payload["scope"] = scope
    return pyjwt.encode(payload, SECRET, algorithm="HS256")


def verifier() -> JWTVerifier:
    return JWTVerifier(VerifierConfig(keys=(KeyConfig(algorithm="HS256", secret=SECRET),)))


class Recorder:
    """An ASGI app that answers with the identity it was given."""

    def __init__(self) -> None:
        self.seen: list[Identity | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        identity = identity_from_scope(scope)
        self.seen.append(identity)
        body = json.dumps({"sub": identity.subject if identity else None}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def gateway_headers(identity: Identity, consumer: ConsumerConfig | None = None) -> dict[str, str]:
    """The identity headers exactly as the gateway's auth filters write them."""
    headers = Headers()
    set_identity_headers(headers, identity, consumer)
    return {k.decode(): v.decode() for k, v in headers.raw}


# -- accessors and header parsing ---------------------------------------------------


def test_identity_accessors_are_typed() -> None:
    alice = Identity(subject="alice")
    assert identity_from_scope({"gatekeep.identity": alice}) is alice
    assert identity_from_environ({"gatekeep.identity": alice}) is alice
    assert identity_from_scope({}) is None
    assert identity_from_environ({"gatekeep.identity": "alice"}) is None  # not an Identity


def test_headers_round_trip_from_the_gateway() -> None:
    identity = Identity(
        subject="user-1 é",
        consumer="shop",
        credential="key-1",
        roles=frozenset({"admin", "user"}),
        scopes=frozenset({"orders:read", "openid"}),
        groups=frozenset({"staff"}),
    )
    consumer = ConsumerConfig(username="shop", id="c-1", groups=("partners",))
    back = identity_from_headers(gateway_headers(identity, consumer))
    assert back is not None
    assert back.subject == "user-1 é"
    assert back.consumer == "shop"
    assert back.credential == "key-1"
    assert back.roles == {"admin", "user"}
    assert back.scopes == {"orders:read", "openid"}
    assert back.groups == {"staff", "partners"}
    assert not back.anonymous
    assert identity_from_headers({"x-request-id": "1"}) is None


def test_header_trust_needs_a_basis() -> None:
    with pytest.raises(ValueError, match="gateway_names"):
        HeaderTrust()
    with pytest.raises(ValueError):
        HeaderTrust(trusted_peers=["not-an-address"])


# -- AuthMiddleware: header trust over mTLS -------------------------------------------


async def test_headers_are_trusted_only_from_the_gateway_certificate(certs: Certs) -> None:
    app = Recorder()
    protected = AuthMiddleware(app, trust=HeaderTrust(gateway_names=["gateway.internal"]), rules=ORDER_RULES)
    admin = gateway_headers(Identity(subject="bob", roles=frozenset({"admin"})))
    user = gateway_headers(Identity(subject="alice", roles=frozenset({"user"})))
    async with serve_tls_asgi(protected, certs.server_context()) as port:
        ok = await https(port, certs, certs.gateway, "GET", "/orders", admin)
        assert ok.status_code == 200 and ok.json() == {"sub": "bob"}
        assert app.seen[-1] == Identity(subject="bob", roles=frozenset({"admin"}))
        # The same headers from another client of the same CA are a spoof: 401.
        spoof = await https(port, certs, certs.mallory, "GET", "/orders", admin)
        assert spoof.status_code == 401
        assert spoof.headers["content-type"] == "application/problem+json"
        assert spoof.json()["type"].endswith("/untrusted-identity-headers")
        # The gateway without identity: the rules need a role.
        anonymous = await https(port, certs, certs.gateway, "GET", "/orders")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        # The rules, as in the gateway: admin includes user.
        assert (await https(port, certs, certs.gateway, "GET", "/orders", user)).status_code == 403
        assert (await https(port, certs, certs.gateway, "POST", "/orders", user)).status_code == 200
        assert (await https(port, certs, certs.gateway, "POST", "/orders", admin)).status_code == 200
        assert len(app.seen) == 3


async def test_trusted_peers_without_tls() -> None:
    headers = gateway_headers(Identity(subject="bob", roles=frozenset({"admin"})))
    app = Recorder()
    loopback = AuthMiddleware(app, trust=HeaderTrust(trusted_peers=["127.0.0.0/8"]), required=True)
    async with serve_asgi(loopback) as port:
        client = TestClient("127.0.0.1", port)
        assert (await client.get("/", headers=headers)).json() == {"sub": "bob"}
        assert (await client.get("/")).status == 401  # required, and no identity
    elsewhere = AuthMiddleware(app, trust=HeaderTrust(trusted_peers=["10.0.0.0/8"]))
    async with serve_asgi(elsewhere) as port:
        client = TestClient("127.0.0.1", port)
        response = await client.get("/", headers={"X-Consumer-Username": "bob"})
        assert response.status == 401
        assert response.json()["detail"] == (
            "identity headers are only accepted from the gateway (mutual TLS or a trusted peer address)"
        )
        assert (await client.get("/")).json() == {"sub": None}  # not required: passes without identity


# -- AuthMiddleware: verifying the JWT in the service ------------------------------------


async def test_the_service_verifies_tokens_itself() -> None:
    app = Recorder()
    service = AuthMiddleware(app, verifier=verifier(), rules=ORDER_RULES)
    async with serve_asgi(service) as port:
        client = TestClient("127.0.0.1", port)
        bob = {"authorization": f"Bearer {token('bob', roles=['admin'])}"}
        alice = {"authorization": f"Bearer {token('alice', roles=['user'])}"}
        assert (await client.get("/orders", headers=bob)).status == 200
        assert app.seen[-1] is not None and "admin" in app.seen[-1].roles
        assert (await client.get("/orders", headers=alice)).status == 403
        assert (await client.post("/orders", headers=bob)).status == 200
        bad = await client.get("/orders", headers={"authorization": "Bearer " + token("x")[:-3] + "abc"})
        assert bad.status == 401
        assert (bad.header("www-authenticate") or "").startswith('Bearer error="invalid_token"')
        # Identity headers are not a way in when the service verifies tokens itself.
        spoof = await client.get(
            "/orders", headers={"x-authenticated-roles": "admin", "x-consumer-username": "a"}
        )
        assert spoof.status == 401


def _wsgi_call(
    app: Any, method: str, path: str, headers: dict[str, str], remote: str = "127.0.0.1"
) -> tuple[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "REMOTE_ADDR": remote,
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
    }
    wsgiref.util.setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *_: status.append(s)))
    return status[0], json.loads(body)


def _wsgi_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    identity = identity_from_environ(environ)
    start_response("200 OK", [("content-type", "application/json")])
    return [json.dumps({"sub": identity.subject if identity else None}).encode()]


def test_wsgi_middleware_with_verifier_and_trusted_peers() -> None:
    app = WSGIAuthMiddleware(
        _wsgi_echo, verifier=verifier(), trust=HeaderTrust(trusted_peers=["127.0.0.1"]), rules=ORDER_RULES
    )
    try:
        bob = {"authorization": f"Bearer {token('bob', roles=['admin'])}"}
        assert _wsgi_call(app, "GET", "/orders", bob) == ("200 OK", {"sub": "bob"})
        alice = gateway_headers(Identity(subject="alice", roles=frozenset({"user"})))
        assert _wsgi_call(app, "POST", "/orders", alice) == ("200 OK", {"sub": "alice"})
        status, doc = _wsgi_call(app, "GET", "/orders", alice)
        assert status == "403 Forbidden" and doc["detail"] == "GET /orders needs the role 'admin'"
        status, doc = _wsgi_call(app, "GET", "/orders", alice, remote="192.0.2.1")
        assert status == "401 Unauthorized" and doc["type"].endswith("/untrusted-identity-headers")
    finally:
        app.close()


# -- require_roles in each framework ----------------------------------------------------

roles = Roles(hierarchy={"admin": ["user"]})


async def test_require_roles_on_a_plain_asgi_app() -> None:
    @require_roles("admin", "ops")
    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await Recorder()(scope, receive, send)

    async def call(identity: Identity | None) -> tuple[int, bytes]:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/x", "gatekeep.identity": identity}
        await handler(scope, None, send)
        return sent[0]["status"], sent[1]["body"]

    assert (await call(Identity(subject="o", roles=frozenset({"ops"}))))[0] == 200
    status, body = await call(Identity(subject="u", roles=frozenset({"user"})))
    assert status == 403 and json.loads(body)["detail"] == "GET /x needs one of the roles 'admin', 'ops'"
    assert (await call(None))[0] == 401


async def test_require_roles_on_starlette_and_fastapi() -> None:
    from fastapi import Depends, FastAPI
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    @roles.require("user")
    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse({"sub": identity_from_scope(request.scope).subject})  # type: ignore[union-attr]

    api = FastAPI()
    admin_scoped = roles.require("admin", scopes_all=["orders:read"]).dependency

    @api.get("/fast")
    async def fast(identity: Identity = Depends(admin_scoped)) -> dict[str, str]:  # noqa: B008
        return {"sub": identity.subject}

    class Inject:
        """Stands in for AuthMiddleware: the identity from a test header."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                h = dict(scope["headers"])
                if b"x-sub" in h:
                    scope["gatekeep.identity"] = Identity(
                        subject=h[b"x-sub"].decode(),
                        roles=frozenset(h.get(b"x-roles", b"").decode().split()),
                        scopes=frozenset(h.get(b"x-scopes", b"").decode().split()),
                    )
            await self.app(scope, receive, send)

    star = Starlette(routes=[Route("/star", endpoint)])
    async with serve_asgi(Inject(star)) as port:
        client = TestClient("127.0.0.1", port)
        assert (await client.get("/star", headers={"x-sub": "a", "x-roles": "admin"})).json() == {"sub": "a"}
        denied = await client.get("/star", headers={"x-sub": "a", "x-roles": "guest"})
        assert denied.status == 403 and denied.header("content-type") == "application/problem+json"
        assert (await client.get("/star")).status == 401
    async with serve_asgi(Inject(api)) as port:
        client = TestClient("127.0.0.1", port)
        ok = await client.get("/fast", headers={"x-sub": "b", "x-roles": "admin", "x-scopes": "orders:read"})
        assert ok.json() == {"sub": "b"}
        scope = await client.get("/fast", headers={"x-sub": "b", "x-roles": "admin"})
        assert scope.status == 403
        assert (scope.header("www-authenticate") or "").startswith('Bearer error="insufficient_scope"')
        assert (await client.get("/fast")).status == 401
    # With the integration's answers installed, the guard's denials are problem+json too.
    from gatekeep.integrations import fastapi as gk

    installed = FastAPI()
    gk.install(installed)

    @installed.get("/fast")
    async def installed_fast(identity: Identity = Depends(admin_scoped)) -> dict[str, str]:  # noqa: B008
        return {"sub": identity.subject}

    async with serve_asgi(Inject(installed)) as port:
        client = TestClient("127.0.0.1", port)
        scope = await client.get("/fast", headers={"x-sub": "b", "x-roles": "admin"})
        assert scope.status == 403 and scope.header("content-type") == "application/problem+json"
        assert (scope.header("www-authenticate") or "").startswith('Bearer error="insufficient_scope"')
        problem = scope.json()
        assert problem["status"] == 403 and "orders:read" in problem["detail"]
        anonymous = await client.get("/fast")
        assert anonymous.status == 401 and anonymous.header("content-type") == "application/problem+json"


def test_require_roles_on_flask_and_wsgi() -> None:
    from flask import Flask

    flask_app = Flask(__name__)

    @flask_app.get("/orders")
    @roles.require("admin")
    def orders() -> dict[str, str]:
        return {"ok": "yes"}

    @roles.require("user")
    def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return _wsgi_echo(environ, start_response)

    protected = WSGIAuthMiddleware(flask_app, trust=HeaderTrust(trusted_peers=["127.0.0.1"]))
    bob = gateway_headers(Identity(subject="bob", roles=frozenset({"admin"})))
    alice = gateway_headers(Identity(subject="alice", roles=frozenset({"user"})))
    assert _wsgi_call(protected, "GET", "/orders", bob) == ("200 OK", {"ok": "yes"})
    status, doc = _wsgi_call(protected, "GET", "/orders", alice)
    assert status.startswith("403") and doc["required_roles"] == {"any_of": ["admin"], "all_of": []}
    wrapped = WSGIAuthMiddleware(plain, trust=HeaderTrust(trusted_peers=["127.0.0.1"]))
    assert _wsgi_call(wrapped, "GET", "/", bob) == ("200 OK", {"sub": "bob"})  # admin includes user
    assert _wsgi_call(wrapped, "GET", "/", {})[0].startswith("401")


# -- the example Order service behind the gateway ------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "order_service.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("order_service_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def gateway_config(certs: Certs, port: int) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "orders",
                "url": f"https://127.0.0.1:{port}",
                "tls": {
                    "ca_file": certs.path("ca.pem"),
                    "cert_file": certs.path("gateway.pem"),
                    "key_file": certs.path("gateway.pem"),
                },
                "routes": [{"name": "orders", "paths": ["/orders"], "strip_path": False}],
                "plugins": [
                    {
                        "name": "jwt",
                        "config": {
                            "keys": [{"algorithm": "HS256", "secret": SECRET}],
                            "roles_claim": ["realm_access.roles"],
                        },
                    },
                    {"name": "rbac", "config": ORDER_RULES},
                ],
            }
        ]
    }


async def test_example_order_service_behind_the_gateway_with_real_tokens(certs: Certs) -> None:
    example = load_example()
    service = example.create_app(trust=HeaderTrust(gateway_names=["gateway.internal"]))
    async with serve_tls_asgi(service, certs.server_context()) as port:
        async with gateway_for(gateway_config(certs, port)) as gw:
            alice = {"authorization": f"Bearer {token('alice', roles=['user'])}"}
            bob = {"authorization": f"Bearer {token('bob', roles=['admin'])}"}
            listed = await gw.client.get("/orders", headers=bob)
            assert listed.status == 200, listed.text
            assert listed.json()["seen_by"] == "bob"
            created = await gw.client.post(
                "/orders", headers={**alice, "content-type": "application/json"}, body=b'{"item": "pen"}'
            )
            assert created.status == 201, created.text
            assert created.json()["by"] == "alice"
            # The gateway's rbac answers before the service is called ...
            assert (await gw.client.get("/orders", headers=alice)).status == 403
            assert (await gw.client.get("/orders")).status == 401
            # ... and the service enforces the same rules on its own: a spoof straight to it fails.
            spoof = {"x-consumer-username": "alice", "x-authenticated-roles": "admin"}
            assert (await https(port, certs, certs.mallory, "GET", "/orders", spoof)).status_code == 401
            # The gateway's certificate with a user identity: the service's own check says 403.
            user = gateway_headers(Identity(subject="alice", roles=frozenset({"user"})))
            direct = await https(port, certs, certs.gateway, "GET", "/orders", user)
            assert direct.status_code == 403


def test_example_module_app_reads_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TRUSTED_PEERS", "127.0.0.1")
    example = load_example()
    trust = example.app.core.trust
    assert trust.gateway_names == {"gateway.internal"}
    assert trust._peer_ok("127.0.0.1") and not trust._peer_ok("127.0.0.2")


_ = anyio  # the anyio pytest plugin runs the async tests
