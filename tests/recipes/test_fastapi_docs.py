"""The FastAPI recipe's /docs and /openapi.json: open, protected, and "Try it out" through the gateway.

The recipe (docs/recipes/fastapi.md) under uvicorn, with authentication on:
its open docs route, the page's "protected" rbac table in place of it, and
the OpenAPI document ``gatekeep.integrations.fastapi.document`` made: the
security scheme, the gateway's 401/403/429 answers, and a request sent the
way Swagger UI's "Try it out" sends it (the scheme's header, the path
template filled in) reaching the handler through the gateway.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from . import _recipe  # noqa: E402
from ._recipe import bearer, problem, someone  # noqa: E402

pytestmark = pytest.mark.anyio

PAGE = "fastapi.md"
[COMMAND] = [c for c in _recipe.commands(PAGE) if c.startswith("uvicorn ")]


def _protected_config() -> str:
    """The recipe's gateway.toml, docs protected as the page says: no docs service, its rbac table."""
    text = _recipe.files(PAGE)["gateway.toml"]
    text = text[: text.index("# /docs and /openapi.json")]
    page = (_recipe.RECIPES / PAGE).read_text()
    snippets = [
        b for b in re.findall(r"```toml\n(.*?)```", page, re.DOTALL) if b not in _recipe.files(PAGE).values()
    ]
    [table] = [b for b in snippets if 'name = "rbac"' in b]
    return re.sub(r'\[\[plugins\]\]\nname = "rbac"\n.*?\]\n', table, text, count=1, flags=re.DOTALL)


@pytest.fixture(scope="module")
def open_docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_recipe.Served]:
    with _recipe.start(PAGE, COMMAND, tmp_path_factory.mktemp("docs-open")) as served:
        yield served


@pytest.fixture(scope="module")
def protected_docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_recipe.Served]:
    directory: Path = tmp_path_factory.mktemp("docs-protected")
    with _recipe.start(PAGE, COMMAND, directory, overrides={"gateway.toml": _protected_config()}) as served:
        yield served


async def test_open_docs_need_no_token_but_the_api_does(open_docs: _recipe.Served) -> None:
    client = open_docs.client
    page = await client.get("/docs")
    assert page.status == 200 and "swagger-ui" in page.text
    assert (await client.get("/openapi.json")).status == 200
    problem(await client.get("/api/me"), 401)
    # Only those two exact paths are open: a path below them is the API's, behind jwt.
    problem(await client.get("/docs/oauth2-redirect"), 401)
    problem(await client.get("/openapi.json/x"), 401)


async def test_protected_docs_need_a_token_and_a_role(protected_docs: _recipe.Served) -> None:
    client = protected_docs.client
    problem(await client.get("/docs"), 401)
    problem(await client.get("/openapi.json"), 401)
    problem(await client.get("/openapi.json", headers=bearer(someone("nobody"))), 403, "insufficient-role")
    schema = await client.get("/openapi.json", headers=bearer(someone("reader"), "reader"))
    assert schema.status == 200 and schema.json()["info"]["title"] == "Orders"


async def test_the_openapi_document_describes_the_gateway(open_docs: _recipe.Served) -> None:
    schema: dict[str, Any] = (await open_docs.client.get("/openapi.json")).json()
    components = schema["components"]
    assert components["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT the gateway verifies (the jwt plugin).",
    }
    assert schema["security"] == [{"bearerAuth": []}]
    assert set(components["schemas"]["Problem"]["required"]) == {"type", "title", "status"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status, name in (
                ("401", "GatewayUnauthorized"),
                ("403", "GatewayForbidden"),
                ("429", "GatewayRateLimited"),
            ):
                assert operation["responses"][status] == {"$ref": f"#/components/responses/{name}"}, (
                    path,
                    method,
                )
    limited = components["responses"]["GatewayRateLimited"]
    assert limited["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "Retry-After" in limited["headers"]
    assert "WWW-Authenticate" in components["responses"]["GatewayUnauthorized"]["headers"]


async def test_try_it_out_with_a_token_works_through_the_gateway(open_docs: _recipe.Served) -> None:
    client = open_docs.client
    schema: dict[str, Any] = (await client.get("/openapi.json")).json()
    # What Swagger UI does on "Try it out" after "Authorize": the scheme says where the token goes.
    scheme = schema["components"]["securitySchemes"][next(iter(schema["security"][0]))]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    template = "/api/orders/{order_id}"
    operation = schema["paths"][template]["get"]
    [parameter] = operation["parameters"]
    target = template.replace("{" + parameter["name"] + "}", "42")
    reader = someone("reader")
    token = _recipe.token(reader, "reader")
    tried = await client.get(
        target, headers={"authorization": f"Bearer {token}", "accept": "application/json"}
    )
    assert tried.status == 200, open_docs.proc.log()
    assert tried.json() == {"order": 42, "seen_by": reader}
    # Without "Authorize": the documented 401, a problem document as the schema says.
    refused = await client.get(target)
    doc = problem(refused, 401)
    assert set(schema["components"]["schemas"]["Problem"]["required"]) <= set(doc)
