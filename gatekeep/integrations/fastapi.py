"""FastAPI (and Starlette) behind gatekeep in middleware mode.

``gatekeep.asgi(gateway, app=api)`` hands the app the caller's ``Identity``
(``request.state.identity``, ``scope["gatekeep.identity"]``).  This module
turns it into dependencies whose denials are the gateway's own problem+json:

    from gatekeep.integrations import fastapi as gk

    api = FastAPI()
    gk.install(api)     # denials as problem+json (without: FastAPI's {"detail": ...})
    gk.document(api)    # the gateway's security schemes and 401/403/429 in /openapi.json

    @api.get("/me")
    async def me(identity: gk.RequiredIdentity) -> dict[str, object]:
        return identity.as_dict()

    @api.post("/orders", dependencies=[Depends(gk.require_roles("writer"))])
    ...

Importing this module imports FastAPI; nothing else in gatekeep does.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Unpack

from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from .._errors import GatekeepError
from .._identity import Identity
from .._problem_exception import ProblemException
from ._common import RoleOptions, admitted, guard, identity_in, problem, request_id_of, required

__all__ = [
    "OptionalIdentity",
    "ProblemException",
    "RequiredIdentity",
    "add_gateway_security",
    "document",
    "install",
    "optional_identity",
    "require_identity",
    "require_roles",
]


# -- dependencies -----------------------------------------------------------------


async def require_identity(connection: HTTPConnection) -> Identity:
    """The caller's identity, or the gateway's 401 (``authentication-required``)."""
    scope = connection.scope
    try:
        return required(identity_in(scope))
    except GatekeepError as exc:
        raise ProblemException(exc, request_id_of(scope)) from exc


async def optional_identity(connection: HTTPConnection) -> Identity | None:
    """The caller's identity, or ``None`` for an anonymous request."""
    return identity_in(connection.scope)


def require_roles(
    *roles: str, **options: Unpack[RoleOptions]
) -> Callable[[HTTPConnection], Awaitable[Identity]]:
    """A dependency: the identity when it holds one of ``roles`` (and the rest), else 401/403.

    ``options``: ``any_of``, ``all_of``, ``scopes_any``, ``scopes_all``,
    ``hierarchy`` (``gatekeep.service.require_roles``'s).  The check is the
    ``rbac`` filter's (``hierarchy = {"admin": ["user"]}`` lets admins in
    where users may go), built once here, not per request.
    """
    check = guard(*roles, **options)

    async def dependency(connection: HTTPConnection) -> Identity:
        scope = connection.scope
        try:
            return admitted(scope, check, scope.get("method", "GET"), scope.get("path", "/"))
        except GatekeepError as exc:
            raise ProblemException(exc, request_id_of(scope)) from exc

    return dependency


RequiredIdentity = Annotated[Identity, Depends(require_identity)]
OptionalIdentity = Annotated[Identity | None, Depends(optional_identity)]


# -- answers ----------------------------------------------------------------------


def _answer(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ProblemException):
        error, rid = exc.error, exc.request_id or request_id_of(request.scope)
    else:
        assert isinstance(exc, GatekeepError)
        error, rid = exc, request_id_of(request.scope)
    status, headers, body = problem(error, rid)
    return Response(body, status, dict(headers))


def install(app: Starlette) -> None:
    """Answer the dependencies' denials, and any ``GatekeepError`` the app raises, as problem+json."""
    app.add_exception_handler(ProblemException, _answer)
    app.add_exception_handler(GatekeepError, _answer)


# -- OpenAPI ----------------------------------------------------------------------

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem document, as the gateway answers every error.",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}
_RATE_HEADERS = {
    name: {"description": text, "schema": {"type": "integer"}}
    for name, text in (
        ("Retry-After", "Seconds until a request may succeed again."),
        ("RateLimit-Limit", "The most constrained window's limit."),
        ("RateLimit-Remaining", "Requests left in that window."),
        ("RateLimit-Reset", "Seconds until that window is full again."),
    )
}
# status -> (component name, description, headers)
_RESPONSES: dict[int, tuple[str, str, dict[str, Any]]] = {
    401: (
        "GatewayUnauthorized",
        "No credentials, or credentials the gateway refused.",
        {
            "WWW-Authenticate": {
                "description": "The scheme to authenticate with.",
                "schema": {"type": "string"},
            }
        },
    ),
    403: ("GatewayForbidden", "The caller lacks a role or scope the access rules ask for.", {}),
    429: ("GatewayRateLimited", "Too many requests from this caller.", _RATE_HEADERS),
}


def add_gateway_security(
    schema: Mapping[str, Any],
    *,
    bearer: bool = True,
    api_keys: Sequence[str] = (),
    public: Sequence[str] = (),
    statuses: Sequence[int] = (401, 403, 429),
) -> dict[str, Any]:
    """A copy of an OpenAPI 3 document with the gateway's security and error answers.

    Args:
        schema: the document (``app.openapi()``); not changed.
        bearer: add ``bearerAuth`` (HTTP bearer, JWT), what the ``jwt`` plugin reads.
        api_keys: header names the ``key-auth`` plugin reads (``key_names``):
            each becomes an ``apiKey`` scheme, an alternative to the bearer token.
        public: paths (as the document spells them) the gateway lets through
            without credentials: ``security: []`` and no 401/403 there.
        statuses: the gateway's answers added to every operation (problem+json).
    """
    doc = copy.deepcopy(dict(schema))
    components = doc.setdefault("components", {})
    schemes = components.setdefault("securitySchemes", {})
    requirements: list[dict[str, list[str]]] = []
    if bearer:
        schemes["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT the gateway verifies (the jwt plugin).",
        }
        requirements.append({"bearerAuth": []})
    for i, name in enumerate(api_keys):
        key = "apiKey" if i == 0 else f"apiKey{i + 1}"
        schemes[key] = {
            "type": "apiKey",
            "in": "header",
            "name": name,
            "description": "An API key the gateway checks (the key-auth plugin).",
        }
        requirements.append({key: []})
    if requirements:
        doc["security"] = requirements
    components.setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
    responses = components.setdefault("responses", {})
    for status in statuses:
        name, description, headers = _RESPONSES[status]
        responses[name] = {
            "description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            **({"headers": headers} if headers else {}),
        }
    open_paths = frozenset(public)
    for path, item in doc.get("paths", {}).items():
        is_public = path in open_paths
        for method, operation in item.items():
            if method not in _METHODS or not isinstance(operation, dict):
                continue
            if is_public:
                operation["security"] = []
            answers = operation.setdefault("responses", {})
            for status in statuses:
                if is_public and status in (401, 403):
                    continue
                answers.setdefault(str(status), {"$ref": f"#/components/responses/{_RESPONSES[status][0]}"})
    return doc


_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def document(
    app: FastAPI,
    *,
    bearer: bool = True,
    api_keys: Sequence[str] = (),
    public: Sequence[str] = (),
    statuses: Sequence[int] = (401, 403, 429),
) -> None:
    """Make ``app.openapi()`` (``/openapi.json``, ``/docs``) describe the gateway in front.

    Swagger UI's "Authorize" button then takes a bearer token (or an API
    key) and "Try it out" sends it through the gateway.  See
    ``add_gateway_security`` for the arguments.
    """
    for status in statuses:
        if status not in _RESPONSES:
            raise ValueError(f"statuses: the gateway documents {sorted(_RESPONSES)}, not {status}")
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_gateway_security(
                original(), bearer=bearer, api_keys=api_keys, public=public, statuses=statuses
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
