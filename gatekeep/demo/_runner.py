"""``gatekeep demo``: start the services, the dev issuer and the gateway; print where they are.

Everything listens on ``--host`` in this one process and stops together (one exit stack).
Without ``--tour`` the demo prints lines to try and runs until Ctrl-C; with it, it runs the
tour and returns its exit code.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from .. import Gateway
from ..testing import TestClient
from ._config import DEMO_AUDIENCE, demo_clients, demo_config
from ._devissuer import DevIssuer
from ._listen import serve_gateway, serve_on
from ._services import GATEWAY_PEERS, demo_services
from ._steps import OUTSIDER
from ._tour import run_tour

__all__ = ["run_demo"]


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
            ports[name] = await serve_on(stack, app, host, name)
        idp = DevIssuer(audience=DEMO_AUDIENCE, clients=demo_clients(), lifetime=3600)
        idp_port = await serve_on(stack, idp, host, "dev issuer")
        loopback = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        idp.issuer = f"http://{loopback}:{idp_port}"
        if access_log:
            _log_access_to_stderr(stack)
        gateway = Gateway(demo_config(ports, idp.issuer, redis=redis, access_log=access_log, host=host))
        gateway_port, stopped = await serve_gateway(stack, gateway, host, port)
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
