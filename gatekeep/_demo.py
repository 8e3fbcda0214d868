"""``gatekeep demo``: Order, Payment and Inventory services behind one gateway.

Everything runs on loopback in one process: the three services on gatekeep's
small h11 server, the gateway on uvicorn when it is installed (the ``serve``
extra), otherwise on the same small server.  No Redis, no Consul.
``--tour`` sends a scripted set of requests, prints each request and answer,
and exits 0 only when every answer is what the tour expects.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import attrs

from ._asgi import asgi
from ._gateway import Gateway
from ._miniserver import serve_asgi
from .testing import ClientResponse, TestClient

__all__ = ["demo_config", "run_demo"]


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


class _Service:
    """A tiny JSON service keeping its records in memory."""

    def __init__(self, name: str, collection: str, seed: Sequence[Mapping[str, Any]]) -> None:
        self.name = name
        self.collection = collection
        self.records: list[dict[str, Any]] = [dict(r) for r in seed]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        method = scope["method"]
        parts = [p for p in scope["path"].split("/") if p]
        body = await _read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen = {
            "service": self.name,
            "path": scope["path"],
            "request_id": headers.get("x-request-id"),
            "forwarded_for": headers.get("x-forwarded-for"),
        }
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


def demo_services() -> dict[str, _Service]:
    return {
        "order-service": _Service("order-service", "orders", [{"id": 1, "item": "book", "qty": 1}]),
        "payment-service": _Service("payment-service", "payments", [{"id": 1, "order": 1, "amount": 12.5}]),
        "inventory-service": _Service(
            "inventory-service", "items", [{"id": 42, "name": "book", "stock": 7}, {"id": 43, "name": "pen"}]
        ),
    }


def demo_config(ports: Mapping[str, int]) -> dict[str, Any]:
    """The demo gateway's config (Kong's shape), given where each service listens."""
    return {
        "_format_version": "3.0",
        "services": [
            {
                "name": "order-service",
                "url": f"http://127.0.0.1:{ports['order-service']}",
                "routes": [{"name": "orders", "paths": ["/orders"], "strip_path": False}],
            },
            {
                "name": "payment-service",
                "url": f"http://127.0.0.1:{ports['payment-service']}",
                "routes": [
                    {
                        "name": "payments",
                        "paths": ["/payments"],
                        "methods": ["GET", "POST"],
                        "strip_path": False,
                    }
                ],
                "plugins": [
                    {
                        "name": "request-size-limiting",
                        "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"},
                    }
                ],
            },
            {
                "name": "inventory-service",
                "url": f"http://127.0.0.1:{ports['inventory-service']}/items",
                "routes": [{"name": "inventory", "paths": ["/inventory"], "methods": ["GET"]}],
            },
        ],
        "plugins": [{"name": "correlation-id", "config": {"echo_downstream": True}}],
    }


# -- the tour -----------------------------------------------------------------


@attrs.frozen
class Step:
    """One request of the tour and what its answer must be."""

    says: str
    method: str
    path: str
    status: int
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()
    check: Callable[[ClientResponse], str | None] | None = None


def _json_has(key: str, value: Any = None) -> Callable[[ClientResponse], str | None]:
    def check(r: ClientResponse) -> str | None:
        try:
            doc = r.json()
        except ValueError:
            return "answer is not JSON"
        if key not in doc:
            return f"answer has no {key!r}"
        if value is not None and doc[key] != value:
            return f"{key} is {doc[key]!r}, expected {value!r}"
        return None

    return check


def _problem(status: int) -> Callable[[ClientResponse], str | None]:
    def check(r: ClientResponse) -> str | None:
        if r.header("content-type") != "application/problem+json":
            return f"content-type is {r.header('content-type')!r}, expected application/problem+json"
        doc = r.json()
        if doc.get("status") != status or not doc.get("request_id"):
            return "problem document lacks status or request_id"
        return None

    return check


def _allow(expected: str) -> Callable[[ClientResponse], str | None]:
    def check(r: ClientResponse) -> str | None:
        return (
            None
            if r.header("allow") == expected
            else f"Allow is {r.header('allow')!r}, expected {expected!r}"
        )

    return check


def tour_steps() -> list[Step]:
    return [
        Step("list orders through the gateway", "GET", "/orders", 200, check=_json_has("orders")),
        Step(
            "create an order (POST streams to the Order service)",
            "POST",
            "/orders",
            201,
            body=b'{"item": "lamp", "qty": 2}',
            headers=[("content-type", "application/json")],
            check=_json_has("created"),
        ),
        Step(
            "strip_path: /inventory/42 reaches the Inventory service as /items/42",
            "GET",
            "/inventory/42",
            200,
            check=_json_has("path", "/items/42"),
        ),
        Step(
            "your X-Request-ID is kept, sent upstream and echoed",
            "GET",
            "/payments",
            200,
            headers=[("x-request-id", "tour-123")],
            check=_json_has("request_id", "tour-123"),
        ),
        Step(
            "percent-encoded path /%6Frders is normalised before routing",
            "GET",
            "/%6Frders",
            200,
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
            check=_allow("GET, POST"),
        ),
        Step(
            "request-size-limiting on the Payment service: 2 KiB body is refused",
            "POST",
            "/payments",
            413,
            body=b"x" * 2048,
            check=_problem(413),
        ),
        Step("an unknown path answers 404 problem+json", "GET", "/nowhere", 404, check=_problem(404)),
    ]


async def run_tour(client: TestClient, out: Any = sys.stdout) -> bool:
    ok = True
    for n, step in enumerate(tour_steps(), 1):
        response = await client.request(step.method, step.path, headers=step.headers, body=step.body)
        problems = []
        if response.status != step.status:
            problems.append(f"status {response.status}, expected {step.status}")
        if step.check is not None and not problems:
            found = step.check(response)
            if found:
                problems.append(found)
        mark = "ok " if not problems else "FAIL"
        print(f"\n[{mark}] {n}. {step.says}", file=out)
        print(
            f"  > {step.method} {step.path}" + (f"  ({len(step.body)} byte body)" if step.body else ""),
            file=out,
        )
        shown = response.text if len(response.body) < 400 else response.text[:400] + "..."
        rid = response.header("x-request-id")
        print(f"  < {response.status}  x-request-id: {rid}", file=out)
        print(f"  < {shown}", file=out)
        for p in problems:
            ok = False
            print(f"  !! {p}", file=out)
    print(f"\ntour {'passed' if ok else 'FAILED'}", file=out)
    return ok


async def run_demo(
    host: str = "127.0.0.1", port: int = 8000, tour: bool = False, out: Any = sys.stdout
) -> int:
    """Run the demo; with ``tour``, run the tour and return its exit code."""
    services = demo_services()
    async with AsyncExitStack() as stack:
        ports: dict[str, int] = {}
        for name, app in services.items():
            ports[name] = await stack.enter_async_context(serve_asgi(app, host))
        gateway = Gateway(demo_config(ports))
        gateway_port = await _serve_gateway(stack, gateway, host, port)
        base = f"http://{host}:{gateway_port}"
        print("gatekeep demo: three services behind one gateway", file=out)
        for name, p in ports.items():
            print(f"  {name:<18} http://{host}:{p}", file=out)
        print(f"  {'gateway':<18} {base}\n", file=out)
        print("try:", file=out)
        print(f"  curl -i {base}/orders", file=out)
        print(
            f"  curl -i -X POST {base}/orders -H 'content-type: application/json'"
            " -d '{\"item\": \"lamp\"}'",
            file=out,
        )
        print(f"  curl -i {base}/inventory/42", file=out)
        print(f"  curl -i -X DELETE {base}/payments", file=out)
        print(f"  curl -i --path-as-is {base}/orders/../admin", file=out)
        if tour:
            ok = await run_tour(TestClient(host, gateway_port), out)
            return 0 if ok else 1
        print("\nCtrl-C to stop.", file=out)
        await anyio.sleep_forever()
    return 0


async def _serve_gateway(stack: AsyncExitStack, gateway: Gateway, host: str, port: int) -> int:
    app = asgi(gateway)
    try:
        import uvicorn
    except ImportError:
        await stack.enter_async_context(gateway)
        return await stack.enter_async_context(serve_asgi(app, host, port))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(lambda: setattr(server, "should_exit", True))
    tg.start_soon(server.serve)
    while not server.started:
        if server.should_exit:
            raise OSError(f"could not start the gateway on {host}:{port}")
        await anyio.sleep(0.01)
    sockets = [s for srv in server.servers for s in srv.sockets]
    bound: int = sockets[0].getsockname()[1] if sockets else port
    return bound
