"""What every framework integration shares: the identity checks and the problem document."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from .._errors import GatekeepError
from .._http import DEFAULT_REQUEST_ID_HEADER, problem_response
from .._identity import Identity
from ..adapters._asgi_app import ROUTE_TEMPLATE
from ..authz import AuthenticationRequired
from ..service import REQUEST_ID_KEY, Guard
from ..service import require_roles as guard

__all__ = [
    "ROUTE_TEMPLATE",
    "Problem",
    "RoleOptions",
    "admitted",
    "guard",
    "problem",
    "request_id_of",
    "required",
]

IDENTITY_KEY = "gatekeep.identity"

_DROP = frozenset({DEFAULT_REQUEST_ID_HEADER, b"content-length"})
# A problem document: status, headers (str pairs), body.
Problem = tuple[int, list[tuple[str, str]], bytes]


class RoleOptions(TypedDict, total=False):
    """The keywords of every framework's ``require_roles`` (``gatekeep.service.require_roles``'s)."""

    any_of: Sequence[str]
    all_of: Sequence[str]
    scopes_any: Sequence[str]
    scopes_all: Sequence[str]
    hierarchy: Mapping[str, Sequence[str]] | None


def required(identity: Identity | None) -> Identity:
    """``identity``, or the gateway's own 401 when there is none.

    Raises:
        AuthenticationRequired: no identity, or Kong's anonymous consumer.
    """
    if identity is None or identity.anonymous:
        raise AuthenticationRequired("this resource needs an authenticated caller")
    return identity


def identity_in(mapping: Mapping[str, Any]) -> Identity | None:
    """The ``Identity`` under ``gatekeep.identity`` in a scope or environ."""
    identity = mapping.get(IDENTITY_KEY)
    return identity if isinstance(identity, Identity) else None


def request_id_of(mapping: Mapping[str, Any]) -> str:
    """The gateway's request id in a scope or environ ("" outside gatekeep)."""
    rid = mapping.get(REQUEST_ID_KEY)
    return rid if isinstance(rid, str) else ""


def admitted(mapping: Mapping[str, Any], check: Guard | None, method: str, path: str) -> Identity:
    """The identity in a scope or environ, when it may go on (``check``, if any, passes).

    Raises:
        GatekeepError: the gateway's 401 (no identity) or ``check``'s 401/403.
    """
    identity = required(identity_in(mapping))
    if check is not None:
        check.check(identity, method, path)
    return identity


def problem(error: GatekeepError, request_id: str) -> Problem:
    """The gateway's problem+json answer for ``error``, with its request id in the body.

    The request id header is left to the gateway, which sets it on every
    answer under its configured name; the framework frames the body.
    """
    response = problem_response(error, request_id)
    body = response.body
    assert isinstance(body, bytes)
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw if k not in _DROP]
    return response.status, headers, body
