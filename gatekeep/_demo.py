"""``gatekeep demo``: Order, Payment and Inventory services behind one gateway.

Everything runs on loopback in one process: the three services and a
development OIDC issuer (``gatekeep.auth.devissuer``) on gatekeep's small h11
server, the gateway on uvicorn when it is installed (the ``serve`` extra),
otherwise on the same small server.  No Redis (unless ``--redis URL``), no
Consul, no auth server of yours.

The gateway shows every built-in concern at once: ``jwt`` trusting the dev
issuer through OIDC discovery and JWKS, ``rbac`` on the Order service,
``rate-limiting`` per consumer (Kong's reference ``second = 5, hour = 1000``;
``carol``, a trial client, has a consumer-scoped ``second = 3``),
``prometheus`` with ``/metrics``, ``tracing`` and, on request, ``access-log``.

The Order service also checks for itself, as a real service behind the gateway
should (defence in depth): ``gatekeep.service.AuthMiddleware`` believes the
gateway's identity headers only from the gateway's address (``127.0.0.1``:
everything here is loopback; in production the trust is mTLS, see
docs/authorization.md) and ``Roles(...).require(...)`` guards apply the same
rules as the gateway's ``rbac``.

``--tour`` sends a scripted set of requests, prints each request and answer,
compares the movement of ``gatekeep_http_requests_total`` with what it sent,
and exits 0 only when every answer is what the tour expects.
"""

from __future__ import annotations

import base64
import errno
import http.client
import json
import logging
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import attrs
from prometheus_client.parser import text_string_to_metric_families

from ._asgi import asgi
from ._gateway import Gateway
from ._miniserver import serve_asgi
from .auth.devissuer import DEMO_CLIENTS, DevClient, DevIssuer
from .service import AuthMiddleware, HeaderTrust, Roles, identity_from_scope
from .testing import ClientResponse, TestClient

__all__ = ["DEMO_AUDIENCE", "ListenError", "demo_clients", "demo_config", "run_demo", "run_tour"]

DEMO_AUDIENCE = "gatekeep-demo"
# Kong's reference rate limit, per consumer, on the Order and Payment services.
REFERENCE_LIMITS = {"second": 5, "hour": 1000}
# carol is a trial client: a consumer-scoped rate-limiting plugin overrides the services' one.
TRIAL_LIMITS = {"second": 3, "hour": 1000}
# The Order service's roles, the same in the gateway's rbac filter and in the service itself.
ORDER_HIERARCHY = {"admin": ["user"]}
ORDER_ROLES = {"GET": "admin", "POST": "user"}
# Where the gateway's connections to the services come from. Everything in the demo is on
# loopback, so "the gateway's address" is 127.0.0.1 (and so is any other local process's);
# behind a real gateway a service trusts a client certificate instead (docs/authorization.md).
GATEWAY_PEERS = ("127.0.0.1",)
# A loopback address that is not the gateway's, for the tour's requests straight to a service.
OUTSIDER = "127.0.0.2"


def demo_clients() -> dict[str, DevClient]:
    """The dev issuer's clients: alice (user), bob (admin) and carol (user, on a trial rate limit)."""
    return {**DEMO_CLIENTS, "carol": DevClient("carol-secret", ("user",), "orders")}


# -- the three demo services --------------------------------------------------


async def _read_body(receive: Callable[[], Awaitable[Any]]) -> bytes:
    body: bytes = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def _answer(send: Callable[[Any], Awaitable[None]], status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


# What a demo service echoes of the headers it received (when present), so the
# tour can show what crossed the gateway: who called, and the trace context.
_ECHOED = {
    "x-request-id": "request_id",
    "x-forwarded-for": "forwarded_for",
    "x-consumer-username": "consumer",
    "x-authenticated-roles": "roles",
    "traceparent": "traceparent",
}


class _Service:
    """A tiny JSON service keeping its records in memory.

    Behind ``AuthMiddleware`` it echoes the identity the middleware established
    (``consumer``, ``roles``) rather than the raw headers.
    """

    def __init__(self, name: str, collection: str, seed: Sequence[Mapping[str, Any]]) -> None:
        self.name = name
        self.collection = collection
        self.records: list[dict[str, Any]] = [dict(r) for r in seed]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        method = scope["method"]
        parts = [p for p in scope["path"].split("/") if p]
        body = await _read_body(receive)
        seen: dict[str, Any] = {"service": self.name, "path": scope["path"]}
        for k, v in scope["headers"]:
            key = _ECHOED.get(k.decode("latin-1"))
            if key is not None:
                seen[key] = v.decode("latin-1")
        identity = identity_from_scope(scope)
        if identity is not None:
            seen["consumer"] = identity.consumer or identity.subject
            seen["roles"] = ", ".join(sorted(identity.roles))
        if parts[:1] != [self.collection]:
            return await _answer(send, 404, {"error": "not found", **seen})
        if len(parts) == 1 and method == "GET":
            return await _answer(send, 200, {self.collection: self.records, **seen})
        if len(parts) == 1 and method == "POST":
            try:
                record = json.loads(body or b"{}")
            except ValueError:
                return await _answer(send, 400, {"error": "body must be JSON", **seen})
            record = (
                {"id": len(self.records) + 1, **record} if isinstance(record, dict) else {"value": record}
            )
            self.records.append(record)
            return await _answer(send, 201, {"created": record, **seen})
        if len(parts) == 2 and method == "GET":
            for r in self.records:
                if str(r.get("id")) == parts[1]:
                    return await _answer(send, 200, {"item": r, **seen})
            return await _answer(send, 404, {"error": f"no {self.collection} {parts[1]}", **seen})
        return await _answer(send, 405, {"error": "method not allowed", **seen})


def order_service(orders: _Service, trusted_peers: Sequence[str] = GATEWAY_PEERS) -> AuthMiddleware:
    """The Order service enforcing its own roles, as the seed's Node.js one does with ``checkRBAC``.

    ``AuthMiddleware`` believes the gateway's identity headers only from ``trusted_peers``
    (401 ``untrusted-identity-headers`` from anyone else) and, with ``required``, refuses a
    caller without an identity (401). The guards then ask for the same roles as the
    gateway's ``rbac``: ``GET`` admin, ``POST`` user, an admin being a user too.
    """
    roles = Roles(hierarchy=ORDER_HIERARCHY)
    guarded = {method: roles.require(role).asgi(orders.__call__) for method, role in ORDER_ROLES.items()}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # Other methods reach the service, which answers 405 (to an authenticated caller).
        await guarded.get(scope["method"], orders)(scope, receive, send)

    return AuthMiddleware(app, trust=HeaderTrust(trusted_peers=trusted_peers), required=True)


def demo_services() -> dict[str, Callable[[Any, Any, Any], Awaitable[None]]]:
    return {
        "order-service": order_service(
            _Service("order-service", "orders", [{"id": 1, "item": "book", "qty": 1}])
        ),
        "payment-service": _Service("payment-service", "payments", [{"id": 1, "order": 1, "amount": 12.5}]),
        "inventory-service": _Service(
            "inventory-service", "items", [{"id": 42, "name": "book", "stock": 7}, {"id": 43, "name": "pen"}]
        ),
    }


def demo_config(
    ports: Mapping[str, int],
    issuer: str,
    *,
    redis: str | None = None,
    access_log: bool = False,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """The demo gateway's config (Kong's shape).

    Args:
        ports: where each service listens on loopback.
        issuer: the dev issuer's URL; the ``jwt`` filter reads its discovery document and JWKS.
        redis: a Redis URL for ``policy = "redis"``; ``None`` keeps the limits in memory.
        access_log: add the ``access-log`` filter.
    """
    jwt = {
        "name": "jwt",
        "config": {
            "issuers": [{"issuer": issuer, "audiences": [DEMO_AUDIENCE], "algorithms": ["RS256"]}],
            "typ": "at+jwt",
            # The token's client_id names the consumer, so consumer-scoped plugins and
            # X-Consumer-Username apply to it.
            "consumer_claim": ["client_id"],
        },
    }

    def rate_limiting(limits: Mapping[str, int]) -> dict[str, Any]:
        policy: dict[str, Any] = (
            {"policy": "redis", "redis": {"url": redis}} if redis else {"policy": "local"}
        )
        return {"name": "rate-limiting", "config": {**limits, "limit_by": "consumer", **policy}}

    plugins: list[dict[str, Any]] = [
        {"name": "correlation-id", "config": {"echo_downstream": True}},
        {"name": "tracing"},
        {"name": "prometheus", "config": {"per_consumer": True}},
    ]
    if access_log:
        plugins.append({"name": "access-log"})
    return {
        "_format_version": "3.0",
        "services": [
            {
                "name": "order-service",
                "url": f"http://{host}:{ports['order-service']}",
                "routes": [{"name": "orders", "paths": ["/orders"], "strip_path": False}],
                "plugins": [
                    jwt,
                    {
                        "name": "rbac",
                        "config": {
                            "hierarchy": ORDER_HIERARCHY,
                            "rules": [
                                {"methods": [method], "any_of": [role]}
                                for method, role in ORDER_ROLES.items()
                            ],
                        },
                    },
                    rate_limiting(REFERENCE_LIMITS),
                ],
            },
            {
                "name": "payment-service",
                "url": f"http://{host}:{ports['payment-service']}",
                "routes": [
                    {
                        "name": "payments",
                        "paths": ["/payments"],
                        "methods": ["GET", "POST"],
                        "strip_path": False,
                    }
                ],
                "plugins": [
                    jwt,
                    rate_limiting(REFERENCE_LIMITS),
                    {
                        "name": "request-size-limiting",
                        "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"},
                    },
                ],
            },
            {
                "name": "inventory-service",
                "url": f"http://{host}:{ports['inventory-service']}/items",
                "routes": [{"name": "inventory", "paths": ["/inventory"], "methods": ["GET"]}],
            },
        ],
        "plugins": plugins,
        "consumers": [
            {"username": "alice"},
            {"username": "bob"},
            {"username": "carol", "plugins": [rate_limiting(TRIAL_LIMITS)]},
        ],
    }


# -- the tour -----------------------------------------------------------------

Check = Callable[[ClientResponse], "str | None"]

# A traceparent the tour sends, as an upstream caller would (W3C's example ids).
_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
_TRACEPARENT = f"00-{_TRACE_ID}-00f067aa0ba902b7-01"
_RATE_HEADERS = (
    "x-ratelimit-limit-second",
    "x-ratelimit-remaining-second",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
)


@attrs.frozen
class Step:
    """One request of the tour and what its answer must be."""

    says: str
    method: str
    path: str
    status: int
    # The route label the gateway's metrics count this request under ("" when no route matched).
    route: str = ""
    # Whose token to send: a client of the dev issuer, or ``ALICE_AS_ADMIN`` (tampered).
    token: str | None = None
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()
    # Response headers worth printing.
    show: Sequence[str] = ()
    check: Check | None = None
    # Send up to this many times, stopping at the first answer with ``status``.
    burst: int = 0
    # What the service echoed that this step is about (others are left out of the printout).
    echo: Sequence[str] = ()
    # Send straight to the Order service's port, bypassing the gateway, on a connection from
    # this loopback address ("" : through the gateway).
    direct_from: str = ""


ALICE_AS_ADMIN = "alice-edited"


def _all(*checks: Check) -> Check:
    def check(r: ClientResponse) -> str | None:
        for c in checks:
            found = c(r)
            if found:
                return found
        return None

    return check


def _doc(r: ClientResponse) -> dict[str, Any] | None:
    try:
        doc = r.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _json_has(key: str, value: Any = None) -> Check:
    def check(r: ClientResponse) -> str | None:
        doc = _doc(r)
        if doc is None:
            return "answer is not a JSON object"
        if key not in doc:
            return f"answer has no {key!r}"
        if value is not None and doc[key] != value:
            return f"{key} is {doc[key]!r}, expected {value!r}"
        return None

    return check


def _json_lacks(key: str) -> Check:
    def check(r: ClientResponse) -> str | None:
        doc = _doc(r)
        return None if doc is not None and key not in doc else f"the service saw {key!r}"

    return check


def _problem(status: int, detail: str | None = None) -> Check:
    def check(r: ClientResponse) -> str | None:
        if r.header("content-type") != "application/problem+json":
            return f"content-type is {r.header('content-type')!r}, expected application/problem+json"
        doc = _doc(r) or {}
        if doc.get("status") != status or not doc.get("request_id"):
            return "problem document lacks status or request_id"
        if detail is not None and detail not in str(doc.get("detail")):
            return f"detail is {doc.get('detail')!r}, expected it to say {detail!r}"
        return None

    return check


def _service_problem(status: int, slug: str, detail: str | None = None) -> Check:
    """A problem document from the Order service's own ``AuthMiddleware`` (no gateway request id)."""

    def check(r: ClientResponse) -> str | None:
        if r.header("content-type") != "application/problem+json":
            return f"content-type is {r.header('content-type')!r}, expected application/problem+json"
        doc = _doc(r) or {}
        if doc.get("status") != status or not str(doc.get("type")).endswith("/" + slug):
            return f"problem is {doc.get('type')!r} {doc.get('status')!r}, expected {slug} {status}"
        if "request_id" in doc:
            return "the answer went through the gateway (it has a request_id)"
        if detail is not None and detail not in str(doc.get("detail")):
            return f"detail is {doc.get('detail')!r}, expected it to say {detail!r}"
        return None

    return check


def _header(name: str, expected: str | None = None, *, prefix: bool = False) -> Check:
    def check(r: ClientResponse) -> str | None:
        value = r.header(name)
        if value is None:
            return f"no {name} header"
        if expected is not None and not (value.startswith(expected) if prefix else value == expected):
            return f"{name} is {value!r}, expected {expected!r}{' ...' if prefix else ''}"
        return None

    return check


def _trace_continued(r: ClientResponse) -> str | None:
    got = str((_doc(r) or {}).get("traceparent"))
    parts = got.split("-")
    if len(parts) != 4 or parts[1] != _TRACE_ID:
        return f"upstream got traceparent {got!r}, expected trace id {_TRACE_ID}"
    if parts[2] == _TRACEPARENT.split("-")[2]:
        return "the gateway did not start its own span (same parent id)"
    return None


def _rate_limited(limit: int) -> Check:
    def retry_after(r: ClientResponse) -> str | None:
        value = r.header("retry-after") or ""
        return None if value.isdigit() and int(value) >= 1 else f"Retry-After is {value!r}"

    return _all(
        _problem(429, "API rate limit exceeded"),
        _header("x-ratelimit-limit-second", str(limit)),
        _header("x-ratelimit-remaining-second", "0"),
        _header("ratelimit-limit"),
        _header("ratelimit-remaining", "0"),
        _header("ratelimit-reset"),
        retry_after,
    )


def _allow(expected: str) -> Check:
    return _header("allow", expected)


def tour_steps() -> list[Step]:
    json_body = [("content-type", "application/json")]
    return [
        Step(
            "Inventory is open (GET only, no token): /inventory/42 reaches the service as /items/42",
            "GET",
            "/inventory/42",
            200,
            route="inventory",
            echo=["path"],
            check=_json_has("path", "/items/42"),
        ),
        Step(
            "tracing: the service gets your trace id with the gateway's own span as parent",
            "GET",
            "/inventory/43",
            200,
            route="inventory",
            headers=[("traceparent", _TRACEPARENT)],
            echo=["traceparent"],
            check=_trace_continued,
        ),
        Step(
            "a spoofed identity header never reaches a service",
            "GET",
            "/inventory/42",
            200,
            route="inventory",
            headers=[("x-consumer-username", "bob"), ("x-authenticated-roles", "admin")],
            check=_all(_json_lacks("consumer"), _json_lacks("roles")),
        ),
        Step(
            "Orders need a token: none sent, 401 with a Bearer challenge",
            "GET",
            "/orders",
            401,
            route="orders",
            show=["www-authenticate"],
            check=_all(_problem(401), _header("www-authenticate", "Bearer", prefix=True)),
        ),
        Step(
            "rbac: alice (role user) may not list orders, GET /orders is admin only",
            "GET",
            "/orders",
            403,
            route="orders",
            token="alice",
            check=_problem(403, "'admin'"),
        ),
        Step(
            "rbac: alice (user) may create an order",
            "POST",
            "/orders",
            201,
            route="orders",
            token="alice",
            body=b'{"item": "lamp", "qty": 2}',
            headers=json_body,
            show=["x-ratelimit-limit-second", "x-ratelimit-remaining-second"],
            check=_all(_json_has("created"), _json_has("consumer", "alice")),
        ),
        Step(
            "rbac: bob (admin) lists orders; the Order service checks again, with who the gateway says he is",
            "GET",
            "/orders",
            200,
            route="orders",
            token="bob",
            check=_all(_json_has("orders"), _json_has("consumer", "bob"), _json_has("roles", "admin")),
        ),
        Step(
            "rbac hierarchy: admin includes user, so bob may create an order too",
            "POST",
            "/orders",
            201,
            route="orders",
            token="bob",
            body=b'{"item": "desk", "qty": 1}',
            headers=json_body,
            check=_json_has("created"),
        ),
        Step(
            "alice edits her token to say roles: [admin]; the signature no longer matches",
            "GET",
            "/orders",
            401,
            route="orders",
            token=ALICE_AS_ADMIN,
            show=["www-authenticate"],
            check=_all(
                _problem(401), _header("www-authenticate", 'Bearer error="invalid_token"', prefix=True)
            ),
        ),
        Step(
            "alice claims to be bob in X-Consumer-Username: the service still sees alice",
            "POST",
            "/orders",
            201,
            route="orders",
            token="alice",
            body=b'{"item": "chair", "qty": 1}',
            headers=[*json_body, ("x-consumer-username", "bob")],
            check=_json_has("consumer", "alice"),
        ),
        Step(
            "straight to the Order service's port, bypassing the gateway, with no identity:"
            " the service's own AuthMiddleware answers 401",
            "GET",
            "/orders",
            401,
            direct_from=GATEWAY_PEERS[0],
            show=["www-authenticate"],
            check=_all(_service_problem(401, "unauthorized"), _header("www-authenticate", "Bearer")),
        ),
        Step(
            f"straight to the Order service from {OUTSIDER} with a forged identity: it believes"
            f" identity headers only from the gateway's address ({GATEWAY_PEERS[0]}), 401",
            "GET",
            "/orders",
            401,
            direct_from=OUTSIDER,
            headers=[("x-consumer-username", "bob"), ("x-authenticated-roles", "admin")],
            check=_service_problem(401, "untrusted-identity-headers"),
        ),
        Step(
            f"from {GATEWAY_PEERS[0]}, the gateway's address, the service believes the headers (as it would"
            " from any local process: production trusts mTLS) and checks its own roles: a user may not list"
            " orders",
            "GET",
            "/orders",
            403,
            direct_from=GATEWAY_PEERS[0],
            headers=[("x-consumer-username", "alice"), ("x-authenticated-roles", "user")],
            check=_service_problem(403, "insufficient-role", "needs the role 'admin'"),
        ),
        Step(
            "your X-Request-ID is kept, sent upstream and echoed",
            "GET",
            "/payments",
            200,
            route="payments",
            token="bob",
            headers=[("x-request-id", "tour-123")],
            show=["x-request-id"],
            echo=["request_id"],
            check=_json_has("request_id", "tour-123"),
        ),
        Step(
            "percent-encoded path /%6Frders is normalised before routing",
            "GET",
            "/%6Frders",
            200,
            route="orders",
            token="bob",
            echo=["path"],
            check=_json_has("service", "order-service"),
        ),
        Step(
            "dot-segments cannot skip a route: /orders/../admin is /admin (404)",
            "GET",
            "/orders/../admin",
            404,
            check=_problem(404),
        ),
        Step(
            "a wrong method answers 405 with Allow",
            "DELETE",
            "/payments",
            405,
            show=["allow"],
            check=_all(_problem(405), _allow("GET, POST")),
        ),
        Step(
            "request-size-limiting on the Payment service: a 2 KiB body is refused",
            "POST",
            "/payments",
            413,
            route="payments",
            token="bob",
            body=b"x" * 2048,
            check=_problem(413),
        ),
        Step("an unknown path answers 404 problem+json", "GET", "/nowhere", 404, check=_problem(404)),
        Step(
            "rate-limiting: carol (trial, 3/s) bursts on /payments until 429",
            "GET",
            "/payments",
            429,
            route="payments",
            token="carol",
            burst=8,
            show=[*_RATE_HEADERS, "retry-after"],
            check=_rate_limited(TRIAL_LIMITS["second"]),
        ),
    ]


async def _fetch_tokens(issuer: TestClient, out: Any) -> tuple[dict[str, str], list[str]]:
    """Client-credentials tokens for each demo client, plus alice's token edited to claim admin."""
    tokens: dict[str, str] = {}
    problems: list[str] = []
    for name, client in demo_clients().items():
        basic = base64.b64encode(f"{name}:{client.secret}".encode()).decode()
        try:
            answer = await issuer.post(
                "/token",
                body=b"grant_type=client_credentials",
                headers={
                    "authorization": f"Basic {basic}",
                    "content-type": "application/x-www-form-urlencoded",
                },
            )
            token = str((_doc(answer) or {})["access_token"])
        except (OSError, KeyError, TimeoutError) as exc:
            problems.append(f"no token for {name}: {type(exc).__name__} {exc}")
            token = "not-a-token"
        tokens[name] = token
    tokens[ALICE_AS_ADMIN] = _edit_claims(tokens["alice"], roles=["admin"])
    mark = "ok " if not problems else "FAIL"
    print(f"\n[{mark}] 0. tokens from the dev issuer (client-credentials grant, RS256, typ at+jwt)", file=out)
    print(f"  > POST {issuer.host}:{issuer.port}/token  grant_type=client_credentials", file=out)
    for name, client in demo_clients().items():
        print(f"  < {name} ({', '.join(client.roles)}): {_short(tokens[name], 40)}", file=out)
    for p in problems:
        print(f"  !! {p}", file=out)
    return tokens, problems


def _edit_claims(token: str, **claims: Any) -> str:
    """The token with its payload changed and its signature kept (a forgery)."""
    parts = token.split(".")
    if len(parts) != 3:
        return token + "x"
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return token + "x"
    payload.update(claims)
    edited = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return ".".join([parts[0], edited, parts[2]])


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# Echoed by every service answer (or every problem document): noise unless a step is about them.
_NOISE = ("request_id", "traceparent", "forwarded_for", "path")


def _body_line(r: ClientResponse, echo: Sequence[str]) -> str:
    doc = _doc(r)
    if doc is None:
        return _short(r.text, 200)
    shown = {
        k: (f"[{len(v)} records]" if isinstance(v, list) and len(v) > 1 else v)
        for k, v in doc.items()
        if k not in _NOISE or k in echo
    }
    return _short(json.dumps(shown), 240)


def _source(status: int) -> str:
    # Through the gateway every answer the demo services give is 2xx (the Order service's own
    # checks ask for what the gateway's rbac already did); every refusal comes from the gateway.
    return "service" if status < 400 else "gateway"


async def _requests_total(client: TestClient) -> Counter[tuple[str, str, str]] | str:
    """``gatekeep_http_requests_total`` summed by (route, code, source), or what went wrong."""
    try:
        answer = await client.get("/metrics")
    except OSError as exc:
        return f"/metrics: {exc}"
    if answer.status != 200:
        return f"/metrics answered {answer.status}"
    totals: Counter[tuple[str, str, str]] = Counter()
    try:
        for family in text_string_to_metric_families(answer.text):
            for s in family.samples:
                if s.name == "gatekeep_http_requests_total":
                    totals[(s.labels["route"], s.labels["code"], s.labels["source"])] += int(s.value)
    except (ValueError, KeyError) as exc:
        return f"/metrics is not Prometheus' text format: {exc}"
    return totals


def _direct(
    source: str, target: TestClient, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
) -> ClientResponse:
    """One request to ``target`` on a connection from ``source`` (blocking: run it in a thread)."""
    conn = http.client.HTTPConnection(target.host, target.port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, body=body or None, headers=dict(headers))
        answer = conn.getresponse()
        return ClientResponse(answer.status, [(k.lower(), v) for k, v in answer.getheaders()], answer.read())
    finally:
        conn.close()


def _can_bind(address: str) -> bool:
    """Whether this host has ``address`` (Linux has all of 127.0.0.0/8; macOS only 127.0.0.1)."""
    try:
        with socket.socket() as s:
            s.bind((address, 0))
    except OSError:
        return False
    return True


async def run_tour(
    client: TestClient, issuer: TestClient, out: Any = sys.stdout, *, orders: TestClient | None = None
) -> bool:
    """Send the tour's requests through the gateway at ``client``; print them; True when all pass.

    ``orders`` is the Order service itself, for the steps that bypass the gateway.
    """
    before = await _requests_total(client)
    tokens, token_problems = await _fetch_tokens(issuer, out)
    ok = not token_problems
    sent: Counter[tuple[str, str, str]] = Counter()
    for n, step in enumerate(tour_steps(), 1):
        headers = list(step.headers)
        if step.token is not None:
            headers.append(("authorization", f"Bearer {tokens[step.token]}"))
        if step.direct_from and not _can_bind(step.direct_from):
            print(f"\n[skip] {n}. {step.says}", file=out)
            print(f"  (this host has no loopback address {step.direct_from}: skipped)", file=out)
            continue
        tries: list[ClientResponse] = []
        problems = []
        if step.direct_from:
            try:
                if orders is None:
                    raise OSError("run_tour was not given the Order service's address")
                response = await anyio.to_thread.run_sync(
                    _direct, step.direct_from, orders, step.method, step.path, headers, step.body
                )
            except (OSError, http.client.HTTPException) as exc:
                response = ClientResponse(0, [], b"")
                problems.append(f"no answer: {type(exc).__name__} {exc}")
            tries.append(response)
        for _ in range(0 if step.direct_from else max(step.burst, 1)):
            response = await client.request(step.method, step.path, headers=headers, body=step.body)
            tries.append(response)
            sent[(step.route, str(response.status), _source(response.status))] += 1
            if response.status == step.status:
                break
        if response.status != step.status:
            problems.append(f"status {response.status}, expected {step.status}")
        if step.check is not None and not problems:
            found = step.check(response)
            if found:
                problems.append(found)
        mark = "ok " if not problems else "FAIL"
        print(f"\n[{mark}] {n}. {step.says}", file=out)
        extra = [f"{k}: {v}" for k, v in step.headers if k != "content-type"]
        if step.token is not None:
            who = "alice's token, edited" if step.token == ALICE_AS_ADMIN else f"{step.token}'s token"
            extra.append(f"authorization: Bearer <{who}>")
        if step.body:
            extra.append(f"({len(step.body)} byte body)")
        if step.direct_from:
            extra.insert(0, f"(to order-service from {step.direct_from}, not through the gateway)")
        print(f"  > {step.method} {step.path}" + "".join(f"  {e}" for e in extra), file=out)
        if len(tries) > 1:
            line = ", ".join(
                f"{r.status} (remaining {r.header('x-ratelimit-remaining-second')})" for r in tries
            )
            print(f"  < {len(tries)} requests: {line}", file=out)
        shown = [f"{h}: {response.header(h)}" for h in step.show if response.header(h) is not None]
        print(f"  < {response.status}" + "".join(f"\n  < {s}" for s in shown), file=out)
        print(f"  < {_body_line(response, step.echo)}", file=out)
        for p in problems:
            ok = False
            print(f"  !! {p}", file=out)
    ok = await _check_metrics(client, before, sent, len(tour_steps()) + 1, out) and ok
    print(f"\ntour {'passed' if ok else 'FAILED'}", file=out)
    return ok


async def _check_metrics(
    client: TestClient,
    before: Counter[tuple[str, str, str]] | str,
    sent: Counter[tuple[str, str, str]],
    n: int,
    out: Any,
) -> bool:
    """Compare the movement of ``gatekeep_http_requests_total`` with what the tour sent."""
    moved: Counter[tuple[str, str, str]] | str = "not read"
    # The log phase runs after the last byte left, so the latest count may land a moment after
    # the client had its answer: read again for a little while before calling it a mismatch.
    with anyio.move_on_after(2.0):
        while True:
            after = await _requests_total(client)
            if isinstance(before, str) or isinstance(after, str):
                moved = before if isinstance(before, str) else str(after)
                break
            moved = Counter({k: v - before[k] for k, v in after.items() if v != before[k]})
            if moved == sent:
                break
            await anyio.sleep(0.05)
    ok = moved == sent
    says = "/metrics: gatekeep_http_requests_total moved by what the tour sent"
    print(f"\n[{'ok ' if ok else 'FAIL'}] {n}. {says}", file=out)
    print("  > GET /metrics  (before and after the tour, parsed with prometheus_client.parser)", file=out)
    if isinstance(moved, str):
        print(f"  !! {moved}", file=out)
        return False
    print(f"  < {'route':<10} {'code':<5} {'source':<8} {'moved':>5}  {'sent':>4}", file=out)
    for key in sorted(set(moved) | set(sent), key=lambda k: (k[2], k[0], k[1])):
        route, code, source = key
        print(
            f"  < {route or '(none)':<10} {code:<5} {source:<8} {'+' + str(moved[key]):>5}  {sent[key]:>4}",
            file=out,
        )
    if not ok:
        print("  !! the counters did not move by what the tour sent", file=out)
    return ok


# -- running it ---------------------------------------------------------------


class ListenError(Exception):
    """A port the demo needs cannot be had; the message is the one line ``gatekeep demo`` prints."""


def _cannot_listen(host: str, port: int, what: str, exc: OSError) -> ListenError:
    reason = exc.strerror or str(exc)
    if what != "gateway":
        # The services and the issuer take any free port: only the address can be wrong.
        return ListenError(
            f"gatekeep demo: cannot listen on {host} for the {what} ({reason}); pick another with --host"
        )
    if exc.errno == errno.EADDRINUSE:
        return ListenError(f"gatekeep demo: port {port} on {host} is in use; pick another with --port")
    flag = "--port" if exc.errno == errno.EACCES else "--host"
    return ListenError(f"gatekeep demo: cannot listen on {host}:{port} ({reason}); pick another with {flag}")


async def _serve_on(stack: AsyncExitStack, app: Any, host: str, what: str, port: int = 0) -> int:
    try:
        bound: int = await stack.enter_async_context(serve_asgi(app, host, port))
    except OSError as exc:
        raise _cannot_listen(host, port, what, exc) from None
    return bound


def _listening_socket(host: str, port: int) -> socket.socket:
    """The gateway's socket, bound here so that a busy port is our one-line error, not uvicorn's exit."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise _cannot_listen(host, port, "gateway", exc) from None
    try:
        # As uvicorn: a restart may reuse a port whose old connections linger in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise _cannot_listen(host, port, "gateway", exc) from None
    return sock


async def run_demo(
    host: str = "127.0.0.1",
    port: int = 8000,
    tour: bool = False,
    out: Any = sys.stdout,
    *,
    redis: str | None = None,
    access_log: bool = False,
) -> int:
    """Run the demo; with ``tour``, run the tour and return its exit code."""
    services = demo_services()
    async with AsyncExitStack() as stack:
        ports: dict[str, int] = {}
        for name, app in services.items():
            ports[name] = await _serve_on(stack, app, host, name)
        idp = DevIssuer(audience=DEMO_AUDIENCE, clients=demo_clients(), lifetime=3600)
        idp_port = await _serve_on(stack, idp, host, "dev issuer")
        loopback = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        idp.issuer = f"http://{loopback}:{idp_port}"
        if access_log:
            _log_access_to_stderr(stack)
        gateway = Gateway(demo_config(ports, idp.issuer, redis=redis, access_log=access_log, host=host))
        gateway_port, stopped = await _serve_gateway(stack, gateway, host, port)
        _print_banner(out, host, ports, idp.issuer, f"http://{loopback}:{gateway_port}", redis)
        if tour:
            ok = await run_tour(
                TestClient(loopback, gateway_port),
                TestClient(loopback, idp_port),
                out,
                orders=TestClient(loopback, ports["order-service"]),
            )
            return 0 if ok else 1
        print("\nCtrl-C to stop.", file=out)
        # uvicorn stops on SIGINT/SIGTERM (and raises the signal again once it has): stop with it.
        await stopped.wait()
    return 0


def _print_banner(
    out: Any, host: str, ports: Mapping[str, int], issuer: str, base: str, redis: str | None
) -> None:
    limits = f"rate limits in Redis ({redis})" if redis else "rate limits in memory"
    parts = [
        ("order-service", f"http://{host}:{ports['order-service']}"),
        ("", "/orders: token; GET admin only, POST user or admin; 5/s, 1000/h per consumer"),
        ("", "and it checks for itself (gatekeep.service): the same roles; identity headers believed only"),
        ("", f"from the gateway's address, {GATEWAY_PEERS[0]}, which every local process shares here"),
        ("", "(production trusts the gateway's client certificate: mTLS, see docs/authorization.md)"),
        ("payment-service", f"http://{host}:{ports['payment-service']}"),
        ("", "/payments: token (any role); 5/s, 1000/h per consumer; bodies up to 1 KiB"),
        ("inventory-service", f"http://{host}:{ports['inventory-service']}"),
        ("", "/inventory: open, GET only, no token"),
        ("dev issuer", f"{issuer}  (OIDC discovery, JWKS, POST /token)"),
        ("", "clients alice:alice-secret (user), bob:bob-secret (admin), carol:carol-secret (user, 3/s)"),
        ("gateway", f"{base}  (/metrics from loopback; {limits})"),
    ]
    bearer = '-H "authorization: Bearer $TOKEN"'
    loopback = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    orders = f"http://{loopback}:{ports['order-service']}"
    tries = [
        (f"curl -i {base}/inventory/42", "open: reaches /items/42"),
        (f"curl -i {base}/orders", "401: needs a token"),
        (f"curl -s -u bob:bob-secret -d grant_type=client_credentials {issuer}/token", "a token for bob"),
        (f"TOKEN=$(gatekeep token --user bob --issuer {issuer})", "the same, just the token"),
        (f"curl -i {base}/orders {bearer}", "bob is admin: 200"),
        (
            f"curl -i -X POST {base}/orders {bearer} -H 'content-type: application/json'"
            """ -d '{"item": "lamp"}'""",
            "201",
        ),
        (f"TOKEN=$(gatekeep token --user alice --issuer {issuer})", ""),
        (f"curl -i {base}/orders {bearer}", "alice is user: 403"),
        (
            "for i in 1 2 3 4 5 6; do"
            f" curl -s -o /dev/null -w '%{{http_code}} ' {base}/payments {bearer}; done",
            "429 after 5 in a second",
        ),
        (
            f"curl -i {orders}/orders -H 'x-consumer-username: alice' -H 'x-authenticated-roles: user'",
            "straight to the service: its own 403",
        ),
        (
            f"curl -i --interface {OUTSIDER} {orders}/orders"
            " -H 'x-consumer-username: bob' -H 'x-authenticated-roles: admin'",
            "not from the gateway's address: 401",
        ),
        (f"curl -i -X DELETE {base}/payments", "405 problem+json with Allow"),
        (f"curl -i --path-as-is {base}/orders/../admin", "normalised to /admin: 404"),
        (f"curl -s {base}/metrics | grep gatekeep_http_requests_total", ""),
    ]
    print("gatekeep demo: three services, a dev OIDC issuer and one gateway", file=out)
    for name, what in parts:
        print(f"  {name:<18} {what}", file=out)
    print("\ntry:", file=out)
    for line, comment in tries:
        print(f"  {line}" + (f"   # {comment}" if comment else ""), file=out)


def _log_access_to_stderr(stack: AsyncExitStack) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("gatekeep.access")
    previous = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]

    stack.callback(restore)


async def _serve_gateway(
    stack: AsyncExitStack, gateway: Gateway, host: str, port: int
) -> tuple[int, anyio.Event]:
    """Serve the gateway; its port, and an event set when the server stopped (on a signal)."""
    app = asgi(gateway)
    stopped = anyio.Event()
    try:
        import uvicorn
    except ImportError:
        await stack.enter_async_context(gateway)
        return await _serve_on(stack, app, host, "gateway", port), stopped
    sock = _listening_socket(host, port)
    stack.callback(sock.close)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stopped.set()

    async def shut_down() -> None:
        # Before the task group exits: with an exception in flight it would cancel uvicorn
        # mid-shutdown (its lifespan task then fails noisily); let it stop on its own instead.
        server.should_exit = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await stopped.wait()

    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.push_async_callback(shut_down)
    tg.start_soon(serve)
    while not server.started:
        if server.should_exit or stopped.is_set():
            raise OSError(f"could not start the gateway on {host}:{port}")
        await anyio.sleep(0.01)
    sockets = [s for srv in server.servers for s in srv.sockets]
    bound: int = sockets[0].getsockname()[1] if sockets else port
    return bound, stopped
