"""An Order service behind gatekeep, enforcing its own roles (the seed's ``checkRBAC``).

``GET /orders`` is for admins only; ``POST /orders`` for users, and for admins
because the hierarchy says an admin includes a user.

The service learns who calls in one of two ways (``create_app``):

* ``trust=HeaderTrust(gateway_names=[...])``: believe the gateway's identity
  headers (``X-Consumer-Username``, ``X-Authenticated-Roles`` ...) only on
  connections whose verified client certificate is the gateway's.  Needs a
  server that passes the client certificate to the app (the ASGI TLS
  extension) or ``trusted_peers=["127.0.0.1"]`` behind a TLS-terminating
  sidecar on the same host; see docs/authorization.md.
* ``verifier=JWTVerifier(VerifierConfig(...))``: verify the bearer token here,
  with the same config objects as the gateway's ``jwt`` filter.

Run it (header trust from a sidecar on loopback)::

    ORDERS_TRUSTED_PEERS=127.0.0.1 uvicorn order_service:app --host 127.0.0.1 --port 9001
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from gatekeep import Identity
from gatekeep.service import AuthMiddleware, HeaderTrust, Roles

roles = Roles(hierarchy={"admin": ["user"]})
AdminOnly = Annotated[Identity, Depends(roles.require("admin").dependency)]
UserOrAdmin = Annotated[Identity, Depends(roles.require("user").dependency)]


def create_app(*, trust: HeaderTrust | None = None, verifier: Any = None) -> AuthMiddleware:
    """The Order service as an ASGI app, behind ``AuthMiddleware``."""
    api = FastAPI(title="orders")
    orders: list[dict[str, Any]] = [{"id": 1, "item": "book", "qty": 1, "by": "seed"}]

    @api.get("/orders")
    async def list_orders(identity: AdminOnly) -> dict[str, Any]:
        return {"orders": orders, "seen_by": identity.subject}

    @api.post("/orders", status_code=201)
    async def create_order(order: dict[str, Any], identity: UserOrAdmin) -> dict[str, Any]:
        created = {"id": len(orders) + 1, **order, "by": identity.subject}
        orders.append(created)
        return created

    return AuthMiddleware(api, trust=trust, verifier=verifier)


def _from_env() -> AuthMiddleware:
    names = [n for n in os.environ.get("ORDERS_GATEWAY_NAMES", "gateway.internal").split(",") if n]
    peers = [p for p in os.environ.get("ORDERS_TRUSTED_PEERS", "").split(",") if p]
    return create_app(trust=HeaderTrust(gateway_names=names, trusted_peers=peers))


app = _from_env()
