"""The demo's three microservices: Order, Payment and Inventory, as plain ASGI apps.

Each keeps its records in memory and echoes what crossed the gateway (who called, the
trace context, the request id). The Order service also checks for itself, as a real
service behind a gateway should: ``gatekeep.service``'s ``AuthMiddleware`` and role guards.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..service import AuthMiddleware, HeaderTrust, Roles, identity_from_scope

__all__ = ["GATEWAY_PEERS", "ORDER_HIERARCHY", "ORDER_ROLES", "demo_services", "order_service"]

# The Order service's roles, the same in the gateway's rbac filter and in the service itself.
ORDER_HIERARCHY = {"admin": ["user"]}
ORDER_ROLES = {"GET": "admin", "POST": "user"}
# Where the gateway's connections to the services come from. Everything in the demo is on
# loopback, so "the gateway's address" is 127.0.0.1 (and so is any other local process's);
# behind a real gateway a service trusts a client certificate instead (docs/authorization.md).
GATEWAY_PEERS = ("127.0.0.1",)


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
    """The three services by name, each a fresh ASGI app with its seed records."""
    return {
        "order-service": order_service(
            _Service("order-service", "orders", [{"id": 1, "item": "book", "qty": 1}])
        ),
        "payment-service": _Service("payment-service", "payments", [{"id": 1, "order": 1, "amount": 12.5}]),
        "inventory-service": _Service(
            "inventory-service", "items", [{"id": 42, "name": "book", "stock": 7}, {"id": 43, "name": "pen"}]
        ),
    }
