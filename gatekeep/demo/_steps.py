"""The tour: the requests ``gatekeep demo --tour`` sends, as a table, and what each answer must be.

Each ``Step`` says what it shows, the request, the status it must get and a check of the rest
(``_checks``); ``_tour.run_tour`` sends them in order and prints them.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ._checks import (
    Check,
    all_of,
    allow,
    continues_trace,
    header,
    json_has,
    json_lacks,
    problem,
    rate_limited,
    service_problem,
)
from ._config import TRIAL_LIMITS
from ._services import GATEWAY_PEERS

__all__ = ["ALICE_AS_ADMIN", "OUTSIDER", "Step", "tour_steps"]

# A loopback address that is not the gateway's, for the tour's requests straight to a service.
OUTSIDER = "127.0.0.2"
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


# The token ``_tour`` makes from alice's by editing its roles to admin (a forgery).
ALICE_AS_ADMIN = "alice-edited"


def tour_steps() -> list[Step]:
    """The tour's steps, in the order it sends them."""
    json_body = [("content-type", "application/json")]
    return [
        Step(
            "Inventory is open (GET only, no token): /inventory/42 reaches the service as /items/42",
            "GET",
            "/inventory/42",
            200,
            route="inventory",
            echo=["path"],
            check=json_has("path", "/items/42"),
        ),
        Step(
            "tracing: the service gets your trace id with the gateway's own span as parent",
            "GET",
            "/inventory/43",
            200,
            route="inventory",
            headers=[("traceparent", _TRACEPARENT)],
            echo=["traceparent"],
            check=continues_trace(_TRACEPARENT),
        ),
        Step(
            "a spoofed identity header never reaches a service",
            "GET",
            "/inventory/42",
            200,
            route="inventory",
            headers=[("x-consumer-username", "bob"), ("x-authenticated-roles", "admin")],
            check=all_of(json_lacks("consumer"), json_lacks("roles")),
        ),
        Step(
            "Orders need a token: none sent, 401 with a Bearer challenge",
            "GET",
            "/orders",
            401,
            route="orders",
            show=["www-authenticate"],
            check=all_of(problem(401), header("www-authenticate", "Bearer", prefix=True)),
        ),
        Step(
            "rbac: alice (role user) may not list orders, GET /orders is admin only",
            "GET",
            "/orders",
            403,
            route="orders",
            token="alice",
            check=problem(403, "'admin'"),
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
            check=all_of(json_has("created"), json_has("consumer", "alice")),
        ),
        Step(
            "rbac: bob (admin) lists orders; the Order service checks again, with who the gateway says he is",
            "GET",
            "/orders",
            200,
            route="orders",
            token="bob",
            check=all_of(json_has("orders"), json_has("consumer", "bob"), json_has("roles", "admin")),
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
            check=json_has("created"),
        ),
        Step(
            "alice edits her token to say roles: [admin]; the signature no longer matches",
            "GET",
            "/orders",
            401,
            route="orders",
            token=ALICE_AS_ADMIN,
            show=["www-authenticate"],
            check=all_of(
                problem(401), header("www-authenticate", 'Bearer error="invalid_token"', prefix=True)
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
            check=json_has("consumer", "alice"),
        ),
        Step(
            "straight to the Order service's port, bypassing the gateway, with no identity:"
            " the service's own AuthMiddleware answers 401",
            "GET",
            "/orders",
            401,
            direct_from=GATEWAY_PEERS[0],
            show=["www-authenticate"],
            check=all_of(service_problem(401, "unauthorized"), header("www-authenticate", "Bearer")),
        ),
        Step(
            f"straight to the Order service from {OUTSIDER} with a forged identity: it believes"
            f" identity headers only from the gateway's address ({GATEWAY_PEERS[0]}), 401",
            "GET",
            "/orders",
            401,
            direct_from=OUTSIDER,
            headers=[("x-consumer-username", "bob"), ("x-authenticated-roles", "admin")],
            check=service_problem(401, "untrusted-identity-headers"),
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
            check=service_problem(403, "insufficient-role", "needs the role 'admin'"),
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
            check=json_has("request_id", "tour-123"),
        ),
        Step(
            "percent-encoded path /%6Frders is normalised before routing",
            "GET",
            "/%6Frders",
            200,
            route="orders",
            token="bob",
            echo=["path"],
            check=json_has("service", "order-service"),
        ),
        Step(
            "dot-segments cannot skip a route: /orders/../admin is /admin (404)",
            "GET",
            "/orders/../admin",
            404,
            check=problem(404),
        ),
        Step(
            "a wrong method answers 405 with Allow",
            "DELETE",
            "/payments",
            405,
            show=["allow"],
            check=all_of(problem(405), allow("GET, POST")),
        ),
        Step(
            "request-size-limiting on the Payment service: a 2 KiB body is refused",
            "POST",
            "/payments",
            413,
            route="payments",
            token="bob",
            body=b"x" * 2048,
            check=problem(413),
        ),
        Step("an unknown path answers 404 problem+json", "GET", "/nowhere", 404, check=problem(404)),
        Step(
            "rate-limiting: carol (trial, 3/s) bursts on /payments until 429",
            "GET",
            "/payments",
            429,
            route="payments",
            token="carol",
            burst=8,
            show=[*_RATE_HEADERS, "retry-after"],
            check=rate_limited(TRIAL_LIMITS["second"]),
        ),
    ]
