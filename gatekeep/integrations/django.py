"""Django behind gatekeep in middleware mode, under WSGI or ASGI.

    # settings.py
    MIDDLEWARE = ["gatekeep.integrations.django.GatekeepMiddleware", ...]

    # views.py
    from gatekeep.integrations.django import require_identity, require_roles

    @require_identity
    def me(request):
        return JsonResponse(request.identity.as_dict())

    @require_roles("writer")
    def create(request): ...

``gatekeep.wsgi(gateway, app=get_wsgi_application())`` puts the identity in
the WSGI environ (Django's ``request.META``), ``gatekeep.asgi(gateway,
app=get_asgi_application())`` in the ASGI scope (``request.scope``); the
middleware makes it ``request.identity`` either way and notes the URL
resolver's ``route`` (``items/<int:pk>/``, never the path) for the metrics'
route label.  The decorators work on sync and async views, with or without
the middleware.  Denials are the gateway's problem+json.  Importing this
module imports Django; nothing else in gatekeep does.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar, Unpack, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse  # type: ignore[import-untyped]

from .._errors import GatekeepError
from .._identity import Identity
from ..service import Guard
from ._common import ROUTE_TEMPLATE, RoleOptions, admitted, guard, identity_in, problem, request_id_of

__all__ = ["GatekeepMiddleware", "identity_of", "require_identity", "require_roles"]

F = TypeVar("F", bound=Callable[..., Any])


def _carrier(request: Any) -> MutableMapping[str, Any]:
    """Where gatekeep put its keys: the ASGI scope, else the WSGI environ (``META``)."""
    scope = getattr(request, "scope", None)
    return scope if isinstance(scope, MutableMapping) else cast(MutableMapping[str, Any], request.META)


def identity_of(request: Any) -> Identity | None:
    """The caller's identity for a Django request (``None`` when anonymous)."""
    return identity_in(_carrier(request))


def _note_route(request: Any) -> None:
    route = getattr(getattr(request, "resolver_match", None), "route", None)
    if isinstance(route, str) and route:
        _carrier(request)[ROUTE_TEMPLATE] = route


class GatekeepMiddleware:
    """Sets ``request.identity`` and notes the resolver's route (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        request.identity = identity_of(request)
        response = self.get_response(request)
        _note_route(request)
        return response

    async def _acall(self, request: Any) -> Any:
        request.identity = identity_of(request)
        response = await self.get_response(request)
        _note_route(request)
        return response


def _deny(error: GatekeepError, request: Any) -> Any:
    status, headers, body = problem(error, request_id_of(_carrier(request)))
    return HttpResponse(body, status=status, headers=dict(headers))


def _guarded(view: F, check: Guard | None) -> F:
    def admit(request: Any) -> Any:
        """``None`` when the caller may go on, else the denial."""
        try:
            identity = admitted(_carrier(request), check, request.method or "GET", request.path)
        except GatekeepError as exc:
            return _deny(exc, request)
        request.identity = identity
        return None

    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            denial = admit(request)
            if denial is not None:
                return denial
            return await cast(Callable[..., Awaitable[Any]], view)(request, *args, **kwargs)

        return cast(F, async_wrapper)

    @functools.wraps(view)
    def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
        denial = admit(request)
        if denial is not None:
            return denial
        return view(request, *args, **kwargs)

    return cast(F, wrapper)


def require_identity(view: F) -> F:
    """Let only authenticated callers in (else the gateway's 401); sets ``request.identity``."""
    return _guarded(view, None)


def require_roles(*roles: str, **options: Unpack[RoleOptions]) -> Callable[[F], F]:
    """Let in callers holding one of ``roles`` (and the rest); else the gateway's 401/403.

    ``options``: ``any_of``, ``all_of``, ``scopes_any``, ``scopes_all``,
    ``hierarchy`` (``gatekeep.service.require_roles``'s).  The check is the
    ``rbac`` filter's, built once at decoration time.
    """
    check = guard(*roles, **options)
    return lambda view: _guarded(view, check)
