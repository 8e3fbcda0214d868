"""Chaos: three instances under steady load, one killed mid-run and brought back.

Real in-process servers on loopback.  While instance 0 is down:

- GET requests see no error once the dead instance was ejected (its breaker
  opened): a connect failure, or a reset before the response head, is
  retried on another instance.  Only a response whose head was already
  forwarded when the instance died can break (at most one per client in
  flight), and only at the moment of the kill;
- POST requests are never executed twice: every POST carries a unique id
  that the instances count; one that was in flight when the instance died
  may fail (502), but is never re-sent;
- the instance's breaker opens, and closes again once the instance is back.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import anyio
import h11
import pytest

from gatekeep import Gateway, asgi
from gatekeep.testing import TestClient, serve_asgi
from tests._resilience_servers import Instance, free_port

pytestmark = pytest.mark.anyio


async def _serve_until_cancelled(app: Any, port: int, scope: anyio.CancelScope, ready: anyio.Event) -> None:
    with scope:
        async with serve_asgi(app, port=port):
            ready.set()
            await anyio.sleep_forever()


async def test_one_of_three_instances_dies_and_returns_under_load() -> None:
    instances = [Instance(f"i{k}") for k in range(3)]
    for inst in instances:
        inst.delay = 0.002
    ports = [free_port() for _ in instances]
    config = {
        "services": [
            {
                "name": "svc",
                "targets": [{"target": f"127.0.0.1:{p}"} for p in ports],
                # Round robin keeps sending the dead instance its share (P2C would
                # shun it after one failure, and its breaker would never be tested).
                "balancer": "round-robin",
                "retries": 2,
                "retry_policy": {"backoff": 0.005, "min_retries_per_second": 50},
                "breaker": {
                    "consecutive_failures": 3,
                    "open_for": 0.5,
                    "half_open_probes": 1,
                    "per_service": False,
                },
                "healthchecks": {"passive": {"unhealthy": {"tcp_failures": 3}, "base_ejection_time": 0.3}},
                "routes": [{"name": "all", "paths": ["/"]}],
            }
        ]
    }
    gets: Counter[int] = Counter()
    get_errors: list[float] = []  # when a GET failed (status or cut response)
    opened_at: list[float] = []
    posts: Counter[int] = Counter()
    post_ok: list[str] = []
    ids = itertools.count()
    changes: list[tuple[str, str, str]] = []
    stop = anyio.Event()
    closed_again = anyio.Event()

    async with anyio.create_task_group() as servers:
        scopes = [anyio.CancelScope() for _ in instances]
        for inst, port, scope in zip(instances, ports, scopes, strict=True):
            ready = anyio.Event()
            servers.start_soon(_serve_until_cancelled, inst, port, scope, ready)
            await ready.wait()
        gateway = Gateway(config)
        guard = gateway.services["svc"].guard
        assert guard is not None

        def changed(b: Any, old: Any, new: Any) -> None:
            changes.append((b.name.rsplit(":", 1)[1], str(old), str(new)))
            if str(new) == "open" and not opened_at:
                opened_at.append(anyio.current_time())
            if str(new) == "closed" and b.name.endswith(f":{ports[0]}"):
                closed_again.set()

        guard.on_change(changed)
        async with gateway, serve_asgi(asgi(gateway)) as gw_port:
            client = TestClient("127.0.0.1", gw_port, timeout=10)

            async def get_loop() -> None:
                while not stop.is_set():
                    try:
                        status = (await client.get("/")).status
                    except h11.RemoteProtocolError:  # the head was forwarded, then the instance died
                        status = 0
                    gets[status] += 1
                    if status != 200:
                        get_errors.append(anyio.current_time())

            async def post_loop() -> None:
                while not stop.is_set():
                    call_id = f"p{next(ids)}"
                    try:
                        response = await client.post("/", body=b"order", headers={"x-call-id": call_id})
                    except h11.RemoteProtocolError:
                        posts[0] += 1
                        continue
                    posts[response.status] += 1
                    if response.status == 200:
                        post_ok.append(call_id)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as load:
                    for _ in range(3):
                        load.start_soon(get_loop)
                    for _ in range(2):
                        load.start_soon(post_loop)
                    await anyio.sleep(0.7)
                    killed_after = instances[0].requests
                    scopes[0].cancel()  # kill instance 0 mid-run
                    await anyio.sleep(1.5)
                    down_requests = instances[0].requests
                    breaker = guard.breaker_for(_target(ports[0]))
                    assert breaker is not None
                    assert breaker.state in ("open", "half-open")
                    ready = anyio.Event()
                    scopes[0] = anyio.CancelScope()
                    servers.start_soon(_serve_until_cancelled, instances[0], ports[0], scopes[0], ready)
                    await ready.wait()
                    with anyio.fail_after(10):
                        await closed_again.wait()
                    await anyio.sleep(0.5)
                    stop.set()
            back_requests = instances[0].requests - down_requests
        for scope in scopes:
            scope.cancel()

    assert killed_after > 0 and back_requests > 0, (killed_after, back_requests)
    # GET: no error once the instance was out; at most one cut per client at the kill.
    assert gets[200] > 30  # load really flowed (the machine is shared: keep it modest)
    assert len(get_errors) <= 3, gets
    assert all(t <= opened_at[0] for t in get_errors), (get_errors, opened_at)
    # POST: never executed twice; every success was executed exactly once.
    seen = sum((inst.seen for inst in instances), Counter())
    assert max(seen.values()) == 1
    assert all(seen[call_id] == 1 for call_id in post_ok)
    assert posts[200] > 15 and set(posts) <= {0, 200, 502}, posts
    assert posts[0] + posts[502] <= 2  # only those in flight at the kill
    # The breaker of instance 0 opened, and closed once it was back.
    moves = [(old, new) for port, old, new in changes if port == str(ports[0])]
    assert moves[0] == ("closed", "open")
    assert moves[-1] == ("half-open", "closed")


def _target(port: int) -> Any:
    from gatekeep import Instance as Target

    return Target("127.0.0.1", port)
