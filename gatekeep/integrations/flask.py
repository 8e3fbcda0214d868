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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, Unpack, cast

import flask

from .._errors import GatekeepError
from .._identity import Identity
from ..service import Guard
from ._common import ROUTE_TEMPLATE, RoleOptions, admitted, guard, identity_in, problem, request_id_of

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


def _guarded(view: F, check: Guard | None) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = flask.request
        environ = request.environ
        try:
            flask.g.identity = admitted(environ, check, request.method, request.path)
        except GatekeepError as exc:
            return _deny(exc, environ)
        return view(*args, **kwargs)

    return cast(F, wrapper)


def require_identity(view: F) -> F:
    """Let only authenticated callers in (else the gateway's 401); sets ``flask.g.identity``."""
    return _guarded(view, None)


def require_roles(*roles: str, **options: Unpack[RoleOptions]) -> Callable[[F], F]:
    """Let in callers holding one of ``roles`` (and the rest); else the gateway's 401/403.

    ``options``: ``any_of``, ``all_of``, ``scopes_any``, ``scopes_all``,
    ``hierarchy`` (``gatekeep.service.require_roles``'s).  The check is the
    ``rbac`` filter's, built once at decoration time.
    """
    check = guard(*roles, **options)
    return lambda view: _guarded(view, check)
