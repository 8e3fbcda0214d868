"""Running the tour: send each step, check its answer, print both, then check the metrics.

``run_tour`` gets tokens from the dev issuer, sends the steps of ``_steps.tour_steps`` through
the gateway (or straight to the Order service, from a chosen loopback address), prints each
request and answer, and finally compares the movement of ``gatekeep_http_requests_total`` on
``/metrics`` with what it sent. It returns True only when every answer is what the tour expects.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
from prometheus_client.parser import text_string_to_metric_families

from ..testing import ClientResponse, TestClient
from ._checks import json_object
from ._config import demo_clients
from ._steps import ALICE_AS_ADMIN, tour_steps

__all__ = ["run_tour"]


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
            token = str((json_object(answer) or {})["access_token"])
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
    doc = json_object(r)
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
