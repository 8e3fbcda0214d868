"""Flask behind gatekeep in middleware mode (``gatekeep.wsgi(gateway, app=web)``).

    from gatekeep.integrations import flask as gk

    web = flask.Flask(__name__)
    gk.init_app(web)   # flask.g.identity, and the url rule for the metrics' route label

    @web.get("/me")
    @gk.require_identity
    def me():
        return flask.g.identity.as_dict()

    @web.post("/orders")
    @gk.require_roles("writer")
    def create(): ...

The identity is also in ``flask.request.environ["gatekeep.identity"]``.
Denials are the gateway's problem+json.  Importing this module imports
Flask; nothing else in gatekeep does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import flask

from .._errors import GatekeepError
from .._identity import Identity
from ._common import ROUTE_TEMPLATE, guard, identity_in, problem, request_id_of, required

__all__ = ["current_identity", "init_app", "require_identity", "require_roles"]

F = TypeVar("F", bound=Callable[..., Any])


def init_app(app: flask.Flask) -> None:
    """Set ``flask.g.identity`` before each request and note its url rule for metrics.

    The rule (``/items/<int:item_id>``, never the path) labels the request
    in the ``prometheus`` metrics when no gateway route matched it.
    """
    app.before_request(_before_request)


def _before_request() -> None:
    request = flask.request
    environ = request.environ
    flask.g.identity = identity_in(environ)
    rule = request.url_rule
    if rule is not None:
        environ[ROUTE_TEMPLATE] = rule.rule


def current_identity() -> Identity | None:
    """The caller's identity in the current request (``None`` when anonymous)."""
    return identity_in(flask.request.environ)


def _deny(error: GatekeepError, environ: Mapping[str, Any]) -> flask.Response:
    status, headers, body = problem(error, request_id_of(environ))
    return flask.Response(body, status, headers)


def require_identity(view: F) -> F:
    """Let only authenticated callers in (else the gateway's 401); sets ``flask.g.identity``."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        environ = flask.request.environ
        try:
            flask.g.identity = required(identity_in(environ))
        except GatekeepError as exc:
            return _deny(exc, environ)
        return view(*args, **kwargs)

    return cast(F, wrapper)


def require_roles(
    *roles: str,
    any_of: Sequence[str] = (),
    all_of: Sequence[str] = (),
    scopes_any: Sequence[str] = (),
    scopes_all: Sequence[str] = (),
    hierarchy: Mapping[str, Sequence[str]] | None = None,
) -> Callable[[F], F]:
    """Let in callers holding one of ``roles`` (and the rest); else the gateway's 401/403.

    The check is the ``rbac`` filter's, built once at decoration time.
    """
    check = guard(
        roles, any_of=any_of, all_of=all_of, scopes_any=scopes_any, scopes_all=scopes_all, hierarchy=hierarchy
    )

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = flask.request
            environ = request.environ
            try:
                identity = required(identity_in(environ))
                check.check(identity, request.method, request.path)
            except GatekeepError as exc:
                return _deny(exc, environ)
            flask.g.identity = identity
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate
