"""gatekeep.integrations: the caller's identity, guards and route labels in FastAPI, Flask and Django.

The recipes (tests/recipes/) run each framework under a real server with JWT
on; these tests cover the rest of each helper in process: optional identity,
``request.state.identity``, a gateway with ``key-auth`` and the OpenAPI
``apiKey`` scheme, an app without ``install``, role hierarchies, sync and async
Django views, spoofed identity headers, and the route label's budget.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

import gatekeep
from gatekeep import Identity
from gatekeep.adapters._asgi_app import ROUTE_TEMPLATE
from gatekeep.testing import ClientResponse, TestClient, serve_asgi

pytestmark = pytest.mark.anyio

fastapi = pytest.importorskip("fastapi")
flask = pytest.importorskip("flask")

from gatekeep.integrations import fastapi as gk  # noqa: E402
from gatekeep.integrations import flask as gk_flask  # noqa: E402

API_KEY = "k-" + "7" * 30


def _problem(response: ClientResponse, status: int, slug: str) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status and doc["type"].endswith("/" + slug)
    assert doc["request_id"] == response.header("x-request-id")
    return doc


# -- Identity.as_dict -------------------------------------------------------------


def test_identity_as_dict_is_json_ready() -> None:
    identity = Identity(
        subject="alice",
        consumer="shop",
        roles=frozenset({"writer", "reader"}),
        scopes=frozenset({"orders:read"}),
        claims={
            "sub": "alice",
            "nested": {"tags": ("a", "b"), "set": {"y", "x"}},
            "when": datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC),
            "raw": b"\x00",
        },
    )
    as_dict = identity.as_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["roles"] == ["reader", "writer"] and as_dict["scopes"] == ["orders:read"]
    assert as_dict["claims"]["nested"] == {"tags": ["a", "b"], "set": ["x", "y"]}
    assert as_dict["claims"]["when"] == "2026-01-02 00:00:00+00:00"
    assert as_dict["consumer"] == "shop" and as_dict["anonymous"] is False


# -- FastAPI behind a gateway with key-auth ----------------------------------------


def _fastapi_app(*, install: bool = True) -> Any:
    api = fastapi.FastAPI(title="t")
    if install:
        gk.install(api)
        gk.document(api, api_keys=["apikey"], public=["/public/hello"])

    @api.get("/api/whoami")
    async def whoami(request: fastapi.Request, identity: gk.RequiredIdentity) -> dict[str, object]:
        assert request.state.identity is identity  # Starlette's request.state
        return identity.as_dict()

    @api.get("/api/items/{item_id}")
    async def item(item_id: int, identity: gk.RequiredIdentity) -> dict[str, object]:
        return {"item": item_id}

    @api.get("/public/hello")
    async def hello(identity: gk.OptionalIdentity) -> dict[str, object]:
        return {"user": identity.subject if identity else None}

    @api.get("/public/guarded")
    async def guarded(identity: gk.RequiredIdentity) -> dict[str, object]:
        return {"user": identity.subject}

    @api.get(
        "/api/admin", dependencies=[fastapi.Depends(gk.require_roles("admin", hierarchy={"root": ["admin"]}))]
    )
    async def admin() -> dict[str, str]:
        return {"admin": "ok"}

    @api.get("/api/boom")
    async def boom() -> None:
        raise gatekeep.Forbidden("not today")

    return api


def _config(**gateway: Any) -> dict[str, Any]:
    return {
        "gateway": {"fallthrough": True, **gateway},
        "plugins": [{"name": "prometheus", "config": {"per_consumer": True}}],
        "consumers": [
            {"username": "shop", "groups": ["admin"], "keyauth_credentials": [{"key": API_KEY}]},
            {"username": "guest", "keyauth_credentials": [{"key": API_KEY + "-guest"}]},
        ],
        "services": [
            {
                "name": "api",
                "url": "app://",
                "routes": [{"name": "api", "paths": ["/api"]}],
                "plugins": [{"name": "key-auth", "config": {"key_names": ["apikey"]}}],
            }
        ],
    }


@asynccontextmanager
async def _served(app: Any, config: dict[str, Any] | None = None) -> AsyncIterator[TestClient]:
    gateway = gatekeep.Gateway(config or _config())
    async with gateway, serve_asgi(gatekeep.asgi(gateway, app=app)) as port:
        yield TestClient("127.0.0.1", port)


async def test_fastapi_dependencies_behind_the_gateway() -> None:
    async with _served(_fastapi_app()) as client:
        me = await client.get("/api/whoami", headers={"apikey": API_KEY})
        assert me.status == 200, me.text
        assert me.json()["subject"] == "shop" and me.json()["consumer"] == "shop"
        # An open path (fallthrough, no key-auth): the optional identity is None ...
        assert (await client.get("/public/hello")).json() == {"user": None}
        # ... and a required one is the gateway's 401, from the app.
        denied = await client.get("/public/guarded", headers={"x-request-id": "rid-1"})
        assert _problem(denied, 401, "authentication-required")["request_id"] == "rid-1"
        assert denied.header("www-authenticate") == "Bearer"
        # Roles: consumer groups count as roles; "guest" has none.
        assert (await client.get("/api/admin", headers={"apikey": API_KEY})).status == 200
        _problem(
            await client.get("/api/admin", headers={"apikey": API_KEY + "-guest"}), 403, "insufficient-role"
        )
        # A GatekeepError raised by the app's own code: problem+json too.
        boom = await client.get("/api/boom", headers={"apikey": API_KEY})
        assert _problem(boom, 403, "forbidden")["detail"] == "not today"


async def test_spoofed_identity_headers_never_make_an_identity() -> None:
    # The identity comes from the gateway's authentication only, never from what the client sends.
    spoof = {
        "x-consumer-username": "shop",
        "x-authenticated-userid": "shop",
        "x-authenticated-roles": "admin",
        "gatekeep.identity": "shop",
    }
    async with _served(_fastapi_app()) as client:
        _problem(await client.get("/public/guarded", headers=spoof), 401, "authentication-required")
        assert (await client.get("/public/hello", headers=spoof)).json() == {"user": None}


async def test_without_install_fastapi_still_answers_the_status() -> None:
    async with _served(_fastapi_app(install=False)) as client:
        denied = await client.get("/public/guarded")
        assert denied.status == 401 and denied.json() == {
            "detail": "this resource needs an authenticated caller"
        }
        assert denied.header("www-authenticate") == "Bearer"


async def test_try_it_out_with_an_api_key() -> None:
    async with _served(_fastapi_app()) as client:
        schema = (await client.get("/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["apiKey"] == {
            "type": "apiKey",
            "in": "header",
            "name": "apikey",
            "description": "An API key the gateway checks (the key-auth plugin).",
        }
        assert schema["security"] == [{"bearerAuth": []}, {"apiKey": []}]
        hello = schema["paths"]["/public/hello"]["get"]
        assert hello["security"] == [] and "401" not in hello["responses"] and "429" in hello["responses"]
        scheme = schema["components"]["securitySchemes"]["apiKey"]
        tried = await client.get("/api/items/3", headers={scheme["name"]: API_KEY})
        assert tried.status == 200 and tried.json() == {"item": 3}
        _problem(await client.get("/api/items/3"), 401, "missing-credentials")


def test_add_gateway_security_copies_and_document_is_idempotent() -> None:
    api = fastapi.FastAPI()

    @api.get("/x")
    async def x() -> None:
        return None

    original = api.openapi()
    before = json.dumps(original, sort_keys=True)
    changed = gk.add_gateway_security(
        original, bearer=False, api_keys=["apikey", "x-api-key"], statuses=[429]
    )
    assert json.dumps(original, sort_keys=True) == before
    assert set(changed["components"]["securitySchemes"]) == {"apiKey", "apiKey2"}
    assert set(changed["paths"]["/x"]["get"]["responses"]) == {"200", "429"}
    api.openapi_schema = None
    gk.document(api)
    assert api.openapi() is api.openapi()
    assert api.openapi()["security"] == [{"bearerAuth": []}]
    with pytest.raises(ValueError, match="not 418"):
        gk.document(api, statuses=[418])


# -- the route label in middleware mode ---------------------------------------------


def _requests(text: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        if family.name == "gatekeep_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    ]


async def _routes(client: TestClient, expected: set[str] | list[str]) -> Any:
    """The route labels of /metrics once they are ``expected`` (the log phase may lag the answer)."""
    with anyio.fail_after(10):
        while True:
            labels = _requests((await client.get("/metrics")).text)
            routes = (
                {label["route"] for label in labels}
                if isinstance(expected, set)
                else sorted(label["route"] for label in labels)
            )
            if routes == expected:
                return routes
            await anyio.sleep(0.05)


def test_the_plugin_reads_the_adapters_key() -> None:
    from gatekeep.plugins import prometheus

    assert prometheus.ROUTE_TEMPLATE == ROUTE_TEMPLATE


async def test_unmatched_paths_never_become_labels() -> None:
    # An attacker walking random paths: the app's 404s share route="", the raw path is no label.
    async with _served(_fastapi_app()) as client:
        for _ in range(20):
            assert (await client.get(f"/nowhere/{uuid.uuid4().hex}")).status == 404
        assert (await client.get("/public/hello")).status == 200
        await _routes(client, {"", "/public/hello"})


async def test_the_template_budget_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # An operator's view: an app with more route templates than the budget shares "other".
    from gatekeep.plugins import prometheus

    monkeypatch.setattr(prometheus, "_TEMPLATE_LIMIT", 2)
    api = fastapi.FastAPI()
    for i in range(3):
        api.add_api_route(f"/t{i}/{{x}}", lambda x: {"x": x})
    async with _served(api) as client:
        for i in range(3):
            assert (await client.get(f"/t{i}/v")).status == 200
        await _routes(client, ["/t0/{x}", "/t1/{x}", "other"])


# -- Flask ----------------------------------------------------------------------------


def _flask_app() -> Any:
    web = flask.Flask(__name__)
    gk_flask.init_app(web)

    @web.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, object]:
        identity = flask.g.identity
        assert identity is gk_flask.current_identity()
        return {"item": item_id, "user": identity.subject if identity else None}

    @web.get("/me")
    @gk_flask.require_identity
    def me() -> dict[str, object]:
        return flask.g.identity.as_dict()

    @web.post("/write")
    @gk_flask.require_roles("writer", hierarchy={"admin": ["writer"]})
    def write() -> tuple[dict[str, object], int]:
        return {"by": flask.g.identity.subject}, 201

    return web


def test_flask_helpers() -> None:
    web = _flask_app()
    client = web.test_client()
    alice = Identity(subject="alice", roles=frozenset({"admin"}))
    bob = Identity(subject="bob", roles=frozenset({"reader"}))
    environ = {"gatekeep.identity": alice, "gatekeep.request_id": "rid-9"}

    seen: dict[str, Any] = {}

    @web.after_request
    def keep(response: Any) -> Any:
        seen["template"] = flask.request.environ.get(ROUTE_TEMPLATE)
        return response

    assert client.get("/items/4", environ_base=environ).json == {"item": 4, "user": "alice"}
    assert seen["template"] == "/items/<int:item_id>"
    assert client.get("/items/4").json == {"item": 4, "user": None}
    assert client.get("/me", environ_base=environ).json["subject"] == "alice"
    denied = client.get("/me", environ_base={"gatekeep.request_id": "rid-9"})
    assert denied.status_code == 401 and denied.content_type == "application/problem+json"
    assert denied.json["request_id"] == "rid-9" and denied.headers["www-authenticate"] == "Bearer"
    assert client.post("/write", environ_base=environ).status_code == 201  # admin includes writer
    refused = client.post("/write", environ_base={"gatekeep.identity": bob})
    assert refused.status_code == 403 and refused.json["detail"] == "POST /write needs the role 'writer'"


# -- Django ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_settings() -> None:
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__, MIDDLEWARE=[], USE_TZ=True
        )
        import django

        django.setup()


urlpatterns: list[Any] = []  # ROOT_URLCONF for the Django tests (filled in by them)


async def test_django_middleware_and_decorators(django_settings: None) -> None:
    from asgiref.sync import sync_to_async
    from django.http import JsonResponse
    from django.test import AsyncRequestFactory, RequestFactory
    from django.urls import path, resolve

    from gatekeep.integrations.django import GatekeepMiddleware, identity_of, require_identity, require_roles

    @require_identity
    def me(request: Any, n: int) -> Any:
        return JsonResponse({**request.identity.as_dict(), "n": n})

    @require_roles("writer")
    async def write(request: Any) -> Any:
        return JsonResponse({"by": request.identity.subject}, status=201)

    urlpatterns[:] = [path("me/<int:n>", me), path("write", write)]
    alice = Identity(subject="alice", roles=frozenset({"writer"}))

    # WSGI: the identity and the route live in META (the environ).
    def view(request: Any) -> Any:
        request.resolver_match = resolve(request.path)
        return request.resolver_match.func(request, **request.resolver_match.kwargs)

    wsgi = GatekeepMiddleware(view)
    request = RequestFactory().get("/me/3", **{"gatekeep.identity": alice})
    response = await sync_to_async(wsgi)(request)
    assert response.status_code == 200 and json.loads(response.content)["subject"] == "alice"
    assert json.loads(response.content)["n"] == 3
    assert request.identity is alice and request.META[ROUTE_TEMPLATE] == "me/<int:n>"
    denied = await sync_to_async(wsgi)(RequestFactory().get("/me/3", **{"gatekeep.request_id": "rid-5"}))
    assert denied.status_code == 401 and denied["content-type"] == "application/problem+json"
    assert json.loads(denied.content)["request_id"] == "rid-5"

    # ASGI: in the scope.
    async def async_view(request: Any) -> Any:
        request.resolver_match = resolve(request.path)
        return await request.resolver_match.func(request)

    asgi = GatekeepMiddleware(async_view)
    request = AsyncRequestFactory().post("/write")
    request.scope["gatekeep.identity"] = alice
    response = await asgi(request)
    assert response.status_code == 201 and json.loads(response.content) == {"by": "alice"}
    assert identity_of(request) is alice and request.scope[ROUTE_TEMPLATE] == "write"
    reader = AsyncRequestFactory().post("/write")
    reader.scope["gatekeep.identity"] = Identity(subject="bob", roles=frozenset({"reader"}))
    refused = await asgi(reader)
    assert refused.status_code == 403
    assert json.loads(refused.content)["type"].endswith("/insufficient-role")
