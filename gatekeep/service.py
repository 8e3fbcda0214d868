"""Service-side helpers: who is calling, and may they?

What the seed's Node.js Order service does with ``checkRBAC``, for Python
services behind gatekeep (or in front of which gatekeep runs as middleware):

* ``identity_from_scope`` / ``identity_from_environ``: the ``Identity`` the
  gateway (middleware mode) or ``AuthMiddleware`` put in the ASGI scope / WSGI
  environ.
* ``AuthMiddleware`` (ASGI) and ``WSGIAuthMiddleware``: establish the caller's
  identity, either by verifying the bearer JWT themselves (``verifier=``, a
  ``gatekeep.auth.JWTVerifier`` built from the same ``VerifierConfig`` as the
  gateway's ``jwt`` filter) or by trusting the gateway's identity headers
  (``trust=HeaderTrust(...)``) **only** from a peer proven to be the gateway:
  a verified client certificate with one of ``gateway_names``, or a
  configured peer address (a TLS-terminating sidecar on loopback).  Identity
  headers from anyone else are refused with 401.  Optionally they enforce the
  same rules as the ``rbac`` filter (``rules=``).
* ``require_roles(...)`` / ``Roles(...).require(...)``: a decorator for plain
  ASGI apps, Starlette endpoints, WSGI apps and Flask views, and
  ``.dependency`` for FastAPI's ``Depends``.

Denials are RFC 9457 problem+json, exactly as the gateway's (401 with
``WWW-Authenticate``, 403 naming the missing role or scope).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

import anyio
import anyio.from_thread

from ._errors import AuthError, GatekeepError
from ._http import problem_response
from ._netaddr import in_networks
from ._portal import LifespanPortal
from ._protocols import Identity
from .auth import certificate_names, peer_certificate_from_environ, peer_certificate_from_tls
from .authz import DEFAULT_ROLES_CLAIMS, DEFAULT_SCOPES_CLAIMS, Policy, RbacConfig, RuleConfig

__all__ = [
    "AuthMiddleware",
    "HeaderTrust",
    "Roles",
    "UntrustedIdentityHeaders",
    "WSGIAuthMiddleware",
    "identity_from_environ",
    "identity_from_headers",
    "identity_from_scope",
    "require_roles",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
F = TypeVar("F", bound=Callable[..., Any])

IDENTITY_KEY = "gatekeep.identity"
# The gateway's request id, in the scope or environ of a wrapped app (middleware mode).
REQUEST_ID_KEY = "gatekeep.request_id"


# -- reading the identity -------------------------------------------------------


def identity_from_scope(scope: Mapping[str, Any]) -> Identity | None:
    """The caller's ``Identity`` in an ASGI scope (``None`` when unauthenticated)."""
    identity = scope.get(IDENTITY_KEY)
    return identity if isinstance(identity, Identity) else None


def identity_from_environ(environ: Mapping[str, Any]) -> Identity | None:
    """The caller's ``Identity`` in a WSGI environ (``None`` when unauthenticated)."""
    identity = environ.get(IDENTITY_KEY)
    return identity if isinstance(identity, Identity) else None


def _split(value: str | None, commas: bool) -> frozenset[str]:
    if not value:
        return frozenset()
    if commas:
        value = value.replace(",", " ")
    return frozenset(unquote(v) for v in value.split())


def identity_from_headers(headers: Mapping[str, str]) -> Identity | None:
    """The identity the gateway's headers describe (lower-case names), or ``None``.

    Only call this for requests that provably come from the gateway
    (``HeaderTrust``): anyone else can send these headers.
    """
    username = headers.get("x-consumer-username")
    consumer_id = headers.get("x-consumer-id")
    custom_id = headers.get("x-consumer-custom-id")
    userid = headers.get("x-authenticated-userid")
    consumer = username or consumer_id or custom_id
    subject = userid or consumer
    if not subject:
        return None
    credential = headers.get("x-credential-identifier")
    return Identity(
        subject=unquote(subject),
        consumer=unquote(consumer) if consumer else None,
        credential=unquote(credential) if credential else None,
        roles=_split(headers.get("x-authenticated-roles"), commas=True),
        scopes=_split(headers.get("x-authenticated-scope"), commas=True),
        groups=_split(headers.get("x-consumer-groups"), commas=True),
        anonymous=headers.get("x-anonymous-consumer", "").lower() == "true",
    )


_IDENTITY_PREFIXES = ("x-consumer-", "x-authenticated-")
_IDENTITY_EXACT = frozenset({"x-credential-identifier", "x-anonymous-consumer"})


def _is_identity_header(name: str) -> bool:
    return name in _IDENTITY_EXACT or name.startswith(_IDENTITY_PREFIXES)


class UntrustedIdentityHeaders(AuthError):
    """Identity headers from a peer that is not the gateway (401)."""

    slug = "untrusted-identity-headers"


# -- who is the gateway ---------------------------------------------------------


class HeaderTrust:
    """When to believe the gateway's identity headers.

    A request's headers are trusted when its connection carries a client
    certificate, verified by the TLS server, with one of ``gateway_names``
    (SAN URI, SAN DNS or subject CN), or when its peer address is in
    ``trusted_peers`` (addresses or CIDR networks: a TLS-terminating sidecar
    or proxy on loopback that itself requires the gateway's certificate).

    Args:
        gateway_names: names of the gateway's client certificate.
        trusted_peers: peer addresses whose connections are the gateway's.

    Raises:
        ValueError: neither is given, or an address does not parse.
    """

    def __init__(self, *, gateway_names: Sequence[str] = (), trusted_peers: Sequence[str] = ()) -> None:
        if not gateway_names and not trusted_peers:
            raise ValueError("HeaderTrust needs gateway_names (mTLS) or trusted_peers")
        self.gateway_names = frozenset(gateway_names)
        self.networks = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_peers)

    def _peer_ok(self, address: str | None) -> bool:
        return in_networks(address, self.networks)

    def _cert_ok(self, cert: Any) -> bool:
        if cert is None or not self.gateway_names:
            return False
        return not self.gateway_names.isdisjoint(certificate_names(cert).all())

    def trusts_scope(self, scope: Mapping[str, Any]) -> bool:
        """Whether an ASGI connection is the gateway's."""
        tls = (scope.get("extensions") or {}).get("tls")
        if self._cert_ok(peer_certificate_from_tls(tls)):
            return True
        client = scope.get("client")
        return self._peer_ok(client[0] if client else None)

    def trusts_environ(self, environ: Mapping[str, Any]) -> bool:
        """Whether a WSGI connection is the gateway's."""
        if self._cert_ok(peer_certificate_from_environ(environ)):
            return True
        return self._peer_ok(environ.get("REMOTE_ADDR"))


# -- the shared decision ----------------------------------------------------------


def _policy(rules: RbacConfig | Mapping[str, Any] | Sequence[Any] | None, **settings: Any) -> Policy | None:
    if rules is None:
        return None
    if isinstance(rules, RbacConfig):
        return Policy(rules)
    if isinstance(rules, Mapping):
        return Policy.of({**settings, **rules})
    return Policy.of({**settings, "rules": list(rules)})


class _Core:
    """What both middlewares do, given the facts of one request."""

    def __init__(
        self,
        verifier: Any,
        trust: HeaderTrust | None,
        rules: Any,
        required: bool,
    ) -> None:
        if verifier is None and trust is None:
            raise ValueError(
                "give a verifier (verify the JWT here) or trust (the gateway's headers over mTLS)"
            )
        self.verifier = verifier
        self.trust = trust
        self.policy = _policy(rules)
        self.required = required

    async def identify(self, headers: Mapping[str, str], trusted: bool) -> Identity | None:
        if self.trust is not None:
            if trusted:
                identity = identity_from_headers(headers)
                if identity is not None:
                    return identity
            elif any(_is_identity_header(name) for name in headers):
                raise UntrustedIdentityHeaders(
                    "identity headers are only accepted from the gateway "
                    "(mutual TLS or a trusted peer address)"
                )
        if self.verifier is not None:
            authorization = headers.get("authorization", "")
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                verified: Identity = await self.verifier.verify(token.strip())
                return verified
        return None

    def authorize(self, identity: Identity | None, method: str, path: str) -> None:
        if self.policy is not None:
            self.policy.authorize(identity, method, path)
        elif self.required and identity is None:
            raise AuthError(
                "this service needs an authenticated caller", headers=[("www-authenticate", "Bearer")]
            )


def _problem_bytes(error: GatekeepError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    response = problem_response(error)
    body = response.body
    assert isinstance(body, bytes)
    return response.status, response.headers.raw, body


async def _send_problem(send: Send, error: GatekeepError) -> None:
    status, headers, body = _problem_bytes(error)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", ()):
        name = bytes(k).decode("latin-1").lower()
        value = bytes(v).decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def _environ_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    out = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k.startswith("HTTP_")}
    return out


# -- the middlewares --------------------------------------------------------------


class AuthMiddleware:
    """ASGI middleware: identify the caller, put it in ``scope["gatekeep.identity"]``, enforce ``rules``.

    Args:
        app: the ASGI app to protect.
        verifier: verifies ``Authorization: Bearer`` tokens here (an object with
            ``async verify(token) -> Identity``; ``gatekeep.auth.JWTVerifier``).
            Its ``start(task_group)``/``stop()`` run with the lifespan.
        trust: trust the gateway's identity headers from these peers only.
        rules: ``rbac`` rules for the whole app (a list of rules, or the
            ``rbac`` config as a dict / ``RbacConfig``); ``None``: no rules.
        required: without rules, refuse unauthenticated requests (401).

    An identity already in the scope (gatekeep's middleware mode) is kept.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: Any = None,
        trust: HeaderTrust | None = None,
        rules: Any = None,
        required: bool = False,
    ) -> None:
        self.app = app
        self.core = _Core(verifier, trust, rules, required)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        core = self.core
        try:
            identity = identity_from_scope(scope)
            if identity is None:
                trusted = core.trust is not None and core.trust.trusts_scope(scope)
                identity = await core.identify(_scope_headers(scope), trusted)
            core.authorize(identity, scope.get("method", "GET"), scope.get("path", "/"))
        except GatekeepError as exc:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _send_problem(send, exc)
            return
        scope[IDENTITY_KEY] = identity
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        verifier = self.core.verifier
        start = getattr(verifier, "start", None)
        if start is None:
            await self.app(scope, receive, send)
            return
        async with anyio.create_task_group() as tg:
            await start(tg)
            try:
                await self.app(scope, receive, send)
            finally:
                stop = getattr(verifier, "stop", None)
                if stop is not None:
                    with anyio.CancelScope(shield=True):
                        await stop()
                tg.cancel_scope.cancel()


class WSGIAuthMiddleware:
    """WSGI middleware: the same as ``AuthMiddleware``, for Flask, Django and friends.

    A ``verifier`` runs on an event loop in a thread of its own (an anyio
    blocking portal started on first use, with the verifier's background
    tasks); ``close()`` stops it.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        verifier: Any = None,
        trust: HeaderTrust | None = None,
        rules: Any = None,
        required: bool = False,
    ) -> None:
        self.app = app
        self.core = _Core(verifier, trust, rules, required)
        # The verifier's event loop and background tasks, started on first use.
        self._portal = LifespanPortal(self._run_verifier)

    def _get_portal(self) -> anyio.from_thread.BlockingPortal:
        return self._portal.portal

    @contextlib.asynccontextmanager
    async def _run_verifier(self) -> AsyncIterator[None]:
        verifier = self.core.verifier
        async with anyio.create_task_group() as tg:
            start = getattr(verifier, "start", None)
            if start is not None:
                await start(tg)
            yield
            end = getattr(verifier, "stop", None)
            if end is not None:
                await end()
            tg.cancel_scope.cancel()

    def close(self) -> None:
        """Stop the verifier's event loop thread (if it was started)."""
        self._portal.close()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        core = self.core
        try:
            identity = identity_from_environ(environ)
            if identity is None:
                trusted = core.trust is not None and core.trust.trusts_environ(environ)
                headers = _environ_headers(environ)
                if core.verifier is not None and "authorization" in headers:
                    identity = self._get_portal().call(core.identify, headers, trusted)
                else:
                    identity = _run_sync(core.identify(headers, trusted))
            core.authorize(
                identity, environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/") or "/"
            )
        except GatekeepError as exc:
            return _wsgi_problem(start_response, exc)
        environ[IDENTITY_KEY] = identity
        return self.app(environ, start_response)


def _run_sync(coro: Awaitable[Identity | None]) -> Identity | None:
    """Run a coroutine that never awaits (the header path) without an event loop."""
    gen = coro.__await__()
    try:
        next(gen)
    except StopIteration as done:
        result: Identity | None = done.value
        return result
    gen.close()
    raise RuntimeError("identify() awaited without a verifier")  # pragma: no cover


def _status_line(status: int) -> str:
    import http

    return f"{status} {http.HTTPStatus(status).phrase}"


def _wsgi_problem(start_response: Callable[..., Any], error: GatekeepError) -> list[bytes]:
    status, headers, body = _problem_bytes(error)
    start_response(_status_line(status), [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers])
    return [body]


# -- require_roles --------------------------------------------------------------


class Roles:
    """Shared settings for ``require`` guards: the role hierarchy and claim paths.

    ``Roles(hierarchy={"admin": ["user"]}).require("user")`` lets admins in too.
    """

    def __init__(
        self,
        *,
        hierarchy: Mapping[str, Sequence[str]] | None = None,
        roles_claims: Sequence[str | Sequence[str]] = DEFAULT_ROLES_CLAIMS,
        scopes_claims: Sequence[str | Sequence[str]] = DEFAULT_SCOPES_CLAIMS,
        clients: Sequence[str] = (),
    ) -> None:
        self.settings: dict[str, Any] = {
            "hierarchy": {k: list(v) for k, v in (hierarchy or {}).items()},
            "roles_claims": [p if isinstance(p, str) else list(p) for p in roles_claims],
            "scopes_claims": [p if isinstance(p, str) else list(p) for p in scopes_claims],
            "clients": list(clients),
        }
        Policy.of({**self.settings, "rules": [{}]})  # check now, with field paths

    def require(
        self,
        *roles: str,
        any_of: Sequence[str] = (),
        all_of: Sequence[str] = (),
        scopes_any: Sequence[str] = (),
        scopes_all: Sequence[str] = (),
    ) -> Guard:
        """A guard: one of ``roles``/``any_of``, each of ``all_of``, and the scopes."""
        rule = RuleConfig(
            any_of=tuple(roles) + tuple(any_of),
            all_of=tuple(all_of),
            scopes_any=tuple(scopes_any),
            scopes_all=tuple(scopes_all),
        )
        return Guard(Policy.of({**self.settings, "rules": [_rule_data(rule)]}))


def _rule_data(rule: RuleConfig) -> dict[str, Any]:
    import attrs

    return {k: list(v) for k, v in attrs.asdict(rule).items() if v}


class Guard:
    """A role check for one handler; use as a decorator or a FastAPI dependency."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def check(self, identity: Identity | None, method: str = "GET", path: str = "/") -> Identity | None:
        """Return ``identity`` when allowed.

        Raises:
            AuthenticationRequired, InsufficientRole, InsufficientScope.
        """
        policy = self.policy
        policy.check(method, path, policy.grants(identity))
        return identity

    # Decorators ---------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate an ASGI app, a Starlette endpoint, a WSGI app or a Flask view (by its signature)."""
        params = list(inspect.signature(fn).parameters)
        if inspect.iscoroutinefunction(fn):
            return self.asgi(fn) if len(params) == 3 else self.starlette(fn)
        if params[:2] == ["environ", "start_response"]:
            return self.wsgi(fn)
        return self.flask(fn)

    def asgi(self, fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                self.check(identity_from_scope(scope), scope.get("method", "GET"), scope.get("path", "/"))
            except GatekeepError as exc:
                await _send_problem(send, exc)
                return
            await fn(scope, receive, send)

        return wrapper  # type: ignore[return-value]

    def starlette(self, fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            scope = request.scope
            try:
                self.check(identity_from_scope(scope), scope.get("method", "GET"), scope.get("path", "/"))
            except GatekeepError as exc:
                from starlette.responses import Response as StarletteResponse

                status, headers, body = _problem_bytes(exc)
                return StarletteResponse(
                    body, status, {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
                )
            return await fn(request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def wsgi(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            try:
                self.check(
                    identity_from_environ(environ),
                    environ.get("REQUEST_METHOD", "GET"),
                    environ.get("PATH_INFO", "/") or "/",
                )
            except GatekeepError as exc:
                return _wsgi_problem(start_response, exc)
            result: Iterable[bytes] = fn(environ, start_response)
            return result

        return wrapper  # type: ignore[return-value]

    def flask(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from flask import request

            environ = request.environ
            try:
                self.check(
                    identity_from_environ(environ),
                    environ.get("REQUEST_METHOD", "GET"),
                    environ.get("PATH_INFO", "/") or "/",
                )
            except GatekeepError as exc:
                status, headers, body = _problem_bytes(exc)
                return body, status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    # FastAPI ------------------------------------------------------------------

    @property
    def dependency(self) -> Callable[..., Awaitable[Identity | None]]:
        """For ``Depends(...)``: returns the identity, or raises the denial as a
        ``gatekeep.integrations.fastapi.ProblemException``.

        That is Starlette's ``HTTPException`` (the status and ``WWW-Authenticate`` are right
        either way); an app that ran ``gatekeep.integrations.fastapi.install(app)`` answers
        it as problem+json, like every other gatekeep denial.
        """
        from starlette.requests import HTTPConnection

        from ._problem_exception import ProblemException

        async def dependency(connection: HTTPConnection) -> Identity | None:
            scope = connection.scope
            try:
                return self.check(
                    identity_from_scope(scope), scope.get("method", "GET"), scope.get("path", "/")
                )
            except GatekeepError as exc:
                rid = scope.get(REQUEST_ID_KEY)
                raise ProblemException(exc, rid if isinstance(rid, str) else "") from exc

        dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(
                    "connection", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection
                )
            ],
            return_annotation=Identity,
        )
        return dependency


_DEFAULT = Roles()


def require_roles(
    *roles: str,
    any_of: Sequence[str] = (),
    all_of: Sequence[str] = (),
    scopes_any: Sequence[str] = (),
    scopes_all: Sequence[str] = (),
    hierarchy: Mapping[str, Sequence[str]] | None = None,
) -> Guard:
    """A guard needing one of ``roles`` (or ``any_of``), each of ``all_of``, and the scopes.

    Use ``Roles(hierarchy=...)`` once and its ``require`` to share a hierarchy
    between many guards; ``hierarchy=`` here is for a one-off.
    """
    base = _DEFAULT if hierarchy is None else Roles(hierarchy=hierarchy)
    return base.require(*roles, any_of=any_of, all_of=all_of, scopes_any=scopes_any, scopes_all=scopes_all)
