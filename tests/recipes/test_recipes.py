"""The FastAPI, Flask and Django recipes (docs/recipes/), run as written WITH authentication on.

Each recipe's files are written out and its server command started (uvicorn
for FastAPI and Django under ASGI, gunicorn for Flask and Django under
WSGI); requests carry real HS256 tokens.  The same checks for all four:
the caller's identity as JSON, the rbac table, the app's own guard,
per-subject rate limits and the metrics' subject and route template.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatekeep.testing import ClientResponse

from . import _recipe
from ._recipe import bearer, problem, someone

pytestmark = pytest.mark.anyio


def _needs(*packages: str) -> list[Any]:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return [pytest.mark.skip(reason=f"{', '.join(missing)} cannot be imported")] if missing else []


# page, server program, the framework's route template of GET /api/orders/<id>
RECIPES = [
    pytest.param(("fastapi.md", "uvicorn", "/api/orders/{order_id}"), marks=_needs("fastapi"), id="fastapi"),
    pytest.param(("flask.md", "gunicorn", "/api/orders/<int:order_id>"), marks=_needs("flask"), id="flask"),
    pytest.param(
        ("django.md", "uvicorn", "api/orders/<int:order_id>"), marks=_needs("django"), id="django-asgi"
    ),
    pytest.param(
        ("django.md", "gunicorn", "api/orders/<int:order_id>"), marks=_needs("django"), id="django-wsgi"
    ),
]


class Recipe:
    def __init__(self, served: _recipe.Served, template: str) -> None:
        self.served = served
        self.client = served.client
        self.template = template

    def log(self) -> str:
        return self.served.proc.log()


@pytest.fixture(scope="module", params=RECIPES)
def recipe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recipe]:
    page, program, template = request.param
    [command] = [c for c in _recipe.commands(page) if shlex.split(c)[0] == program]
    directory = tmp_path_factory.mktemp(page.split(".")[0] + "-" + program)
    with _recipe.start(page, command, directory) as served:
        yield Recipe(served, template)


async def test_a_handler_returns_the_callers_identity(recipe: Recipe) -> None:
    alice = someone("alice")
    response = await recipe.client.get("/api/me", headers=bearer(alice, "reader"))
    assert response.status == 200, recipe.log()
    me = response.json()
    assert me["subject"] == alice and me["roles"] == ["reader"] and me["anonymous"] is False
    assert me["claims"]["sub"] == alice and me["claims"]["roles"] == ["reader"]


async def test_without_a_token_the_gateway_answers_401(recipe: Recipe) -> None:
    response = await recipe.client.get("/api/me")
    problem(response, 401)
    assert response.header("www-authenticate") == "Bearer"
    forged = await recipe.client.get(
        "/api/me", headers={"authorization": "Bearer " + _recipe.token("mallory", "writer")[:-4] + "AAAA"}
    )
    problem(forged, 401)


async def test_get_and_post_follow_the_rbac_table(recipe: Recipe) -> None:
    reader, writer, nobody = someone("reader"), someone("writer"), someone("nobody")
    got = await recipe.client.get("/api/orders/7", headers=bearer(reader, "reader"))
    assert got.status == 200, recipe.log()
    assert got.json() == {"order": 7, "seen_by": reader}
    problem(
        await recipe.client.post("/api/orders", headers=bearer(reader, "reader")), 403, "insufficient-role"
    )
    created = await recipe.client.post("/api/orders", headers=bearer(writer, "writer"))
    assert created.status == 201, recipe.log()
    assert created.json() == {"created_by": writer}
    assert (await recipe.client.get("/api/orders/8", headers=bearer(writer, "writer"))).status == 200
    problem(await recipe.client.get("/api/orders/9", headers=bearer(nobody)), 403, "insufficient-role")


async def test_the_apps_own_guard_answers_like_the_gateway(recipe: Recipe) -> None:
    # The gateway lets any reader GET /api/audit; the app wants "auditor".
    reader = someone("reader")
    denied = await recipe.client.get(
        "/api/audit", headers={**bearer(reader, "reader"), "x-request-id": "rid-7"}
    )
    doc = problem(denied, 403, "insufficient-role")
    assert doc["request_id"] == "rid-7"
    assert doc["detail"] == "GET /api/audit needs the role 'auditor'"
    assert doc["required_roles"] == {"any_of": ["auditor"], "all_of": []}
    allowed = await recipe.client.get("/api/audit", headers=bearer(someone("auditor"), "reader", "auditor"))
    assert allowed.status == 200 and allowed.json() == {"audit": "ok"}


async def _burst(recipe: Recipe, subject: str, n: int) -> list[ClientResponse]:
    headers = bearer(subject, "reader")
    answers: list[ClientResponse] = []

    async def one() -> None:
        answers.append(await recipe.client.get("/api/me", headers=headers))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return answers


async def test_the_sixth_request_in_a_second_from_one_subject_gets_429(recipe: Recipe) -> None:
    # 5 a second per subject, as a token bucket: six requests sent at once admit five.
    # (A machine slow enough to spread them over 1/5 s refills a token: then a fresh subject tries again.)
    for _attempt in range(3):
        carol = someone("carol")
        answers = await _burst(recipe, carol, 6)
        statuses = sorted(a.status for a in answers)
        if statuses != [200] * 6:
            break
    assert statuses == [200] * 5 + [429], recipe.log()
    refused = next(a for a in answers if a.status == 429)
    problem(refused, 429)
    assert int(refused.header("retry-after") or "0") >= 1
    # Another subject, from the same address, at the same moment: its own bucket.
    dave = await recipe.client.get("/api/me", headers=bearer(someone("dave"), "reader"))
    assert dave.status == 200, dave.text


def _requests(text: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        if family.name == "gatekeep_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    ]


async def test_metrics_show_the_subject_and_the_route_template(recipe: Recipe) -> None:
    erin = someone("erin")
    for order in (1, 2):
        assert (await recipe.client.get(f"/api/orders/{order}", headers=bearer(erin, "reader"))).status == 200
    await recipe.client.post("/api/orders", headers=bearer(erin, "reader"))  # the gateway's 403
    # Two paths, one series: the framework's template, never the raw path.
    series = {"service": "", "route": recipe.template, "method": "GET", "code": "200", "source": "service"}
    # The log phase runs after the last byte went out: a scrape may come first.
    with anyio.fail_after(10):
        while True:
            scrape = await recipe.client.get("/metrics")
            assert scrape.status == 200, scrape.text
            samples = [
                (labels, value) for labels, value in _requests(scrape.text) if labels.get("consumer") == erin
            ]
            denied = [labels for labels, _ in samples if labels["code"] == "403"]
            if ({**series, "consumer": erin}, 2.0) in samples and denied:
                break
            await anyio.sleep(0.05)
    # Denied before the app ran: no template to name.
    assert [labels["route"] for labels in denied] == [""]
    assert not any("/api/orders/1" in labels["route"] for labels, _ in _requests(scrape.text))


def test_mint_py_makes_a_token_the_recipe_accepts(recipe: Recipe) -> None:
    env = {**os.environ, "JWT_SECRET": _recipe.SECRET}
    minted = subprocess.run(
        [sys.executable, "mint.py", "frank", "writer"],
        cwd=recipe.served.directory,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    async def call() -> ClientResponse:
        return await recipe.client.get("/api/me", headers={"authorization": f"Bearer {minted}"})

    response = anyio.run(call)
    assert response.status == 200 and response.json()["roles"] == ["writer"]


@pytest.mark.parametrize("page", ["fastapi.md", "flask.md", "django.md"])
def test_gatekeep_check_accepts_the_recipes_config_without_warnings(page: str, tmp_path: Any) -> None:
    _recipe.write(page, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gatekeep", "check", str(tmp_path / "gateway.toml")],
        env={**os.environ, "JWT_SECRET": _recipe.SECRET},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
