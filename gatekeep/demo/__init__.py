"""``gatekeep demo``: Order, Payment and Inventory services behind one gateway.

Everything runs on loopback in one process: the three services and a
development OIDC issuer (``DevIssuer``) on gatekeep's small h11 server, the
gateway on uvicorn when it is installed (the ``serve`` extra), otherwise on
the same small server.  No Redis (unless ``--redis URL``), no Consul, no auth
server of yours.

The gateway shows every built-in concern at once: ``jwt`` trusting the dev
issuer through OIDC discovery and JWKS, ``rbac`` on the Order service,
``rate-limiting`` per consumer (Kong's reference ``second = 5, hour = 1000``;
``carol``, a trial client, has a consumer-scoped ``second = 3``),
``prometheus`` with ``/metrics``, ``tracing`` and, on request, ``access-log``.
The demo configures them by name, as a user does; it imports no plugin.

The Order service also checks for itself, as a real service behind the gateway
should (defence in depth): ``gatekeep.service.AuthMiddleware`` believes the
gateway's identity headers only from the gateway's address (``127.0.0.1``:
everything here is loopback; in production the trust is mTLS, see
docs/authorization.md) and ``Roles(...).require(...)`` guards apply the same
rules as the gateway's ``rbac``.

``--tour`` sends a scripted set of requests, prints each request and answer,
compares the movement of ``gatekeep_http_requests_total`` with what it sent,
and exits 0 only when every answer is what the tour expects.

Where things are: ``_services`` (the three ASGI apps), ``_devissuer`` (the dev
OIDC issuer, also handy in tests), ``_config`` (the gateway config and its
consumers), ``_checks`` and ``_steps`` (the tour as a table of requests and the
answers they must get), ``_tour`` (sends the steps and prints them),
``_listen`` (ports and the busy-port messages) and ``_runner`` (starts
everything and prints where it is).
"""

from __future__ import annotations

from ._config import DEMO_AUDIENCE, demo_clients, demo_config
from ._devissuer import DEMO_CLIENTS, DevClient, DevIssuer
from ._listen import ListenError
from ._runner import run_demo
from ._services import demo_services, order_service
from ._tour import run_tour

__all__ = [
    "DEMO_AUDIENCE",
    "DEMO_CLIENTS",
    "DevClient",
    "DevIssuer",
    "ListenError",
    "demo_clients",
    "demo_config",
    "demo_services",
    "order_service",
    "run_demo",
    "run_tour",
]
