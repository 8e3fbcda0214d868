"""``gatekeep demo --tour``: the README's first command, proven end to end."""

from __future__ import annotations

import importlib
import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import jwt
import pytest
import redis

from gatekeep.demo import DEMO_CLIENTS, DevClient, DevIssuer, order_service, run_tour
from gatekeep.demo._runner import _print_banner
from gatekeep.demo._services import _Service
from gatekeep.demo._steps import OUTSIDER
from gatekeep.demo._tour import _can_bind, _direct
from gatekeep.testing import ClientResponse, EchoUpstream, TestClient, serve_asgi

DEMO = [sys.executable, "-m", "gatekeep", "demo", "--tour", "--port", "0"]
GETTING_STARTED = Path(__file__).parent.parent / "docs" / "getting-started.md"


def _doc_block(lang: str, after: str) -> list[str]:
    text = GETTING_STARTED.read_text()
    text = text[text.index(after) :]
    found = re.search(rf"```{lang}\n(.*?)```", text, re.S)
    assert found is not None
    return found.group(1).splitlines()


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=100)


def _assert_tour_passed(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "tour passed" in out and "[FAIL]" not in out
    assert "order-service" in out and "curl" in out and "gatekeep token --user bob" in out
    # Identity: the 401 challenges, the 403 naming the role, the tampered token.
    assert "www-authenticate: Bearer\n" in out
    assert "needs the role 'admin'" in out
    assert 'www-authenticate: Bearer error="invalid_token"' in out
    assert '"consumer": "alice"' in out and '"consumer": "bob"' in out
    # The Order service's own checks, straight to its port: no identity, forged headers from
    # another address, and its own role check for what it believes.
    direct = out[out.index("bypassing the gateway, with no identity") :]
    assert "(to order-service from 127.0.0.1, not through the gateway)\n  < 401\n" in direct
    assert "(to order-service from 127.0.0.2, not through the gateway)" in direct
    assert "problems/untrusted-identity-headers" in direct
    assert '"detail": "GET /orders needs the role \'admin\'"' in direct
    # Rate limiting: the burst's 429 with its headers.
    assert "x-ratelimit-limit-second: 3\n" in out and "x-ratelimit-remaining-second: 0\n" in out
    assert "ratelimit-reset:" in out and "retry-after:" in out
    assert '"status": 429, "detail": "API rate limit exceeded"' in out
    # Observability: the upstream got the caller's trace id; the counters moved by what was sent.
    assert '"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-' in out
    assert "gatekeep_http_requests_total moved by what the tour sent" in out
    metrics = out[out.index("gatekeep_http_requests_total moved") :]
    assert "payments   429   gateway     +1     1" in metrics
    assert "orders     403   gateway     +1     1" in metrics


@pytest.mark.timeout(120)
def test_the_demo_tour_passes() -> None:
    started = time.monotonic()
    result = _run(DEMO)
    elapsed = time.monotonic() - started
    _assert_tour_passed(result)
    assert "rate limits in memory" in result.stdout
    assert result.stderr == ""  # no access log unless asked
    print(f"demo tour: {elapsed:.2f} s")
    # The excerpt in docs/getting-started.md is what the tour prints (but for timing-dependent lines).
    timing = ("  < 4 requests:", "  < payments   200")
    excerpt = [line for line in _doc_block("text", "An excerpt") if line and not line.startswith(timing)]
    missing = [line for line in excerpt if line not in result.stdout.splitlines()]
    assert not missing, missing


def test_the_documented_curl_lines_are_the_printed_ones() -> None:
    out = io.StringIO()
    ports = {"order-service": 9001, "payment-service": 9002, "inventory-service": 9003}
    _print_banner(out, "127.0.0.1", ports, "$ISSUER", "http://127.0.0.1:8000", None)
    # The docs call the Order service's own URL $ORDERS, as the issuer's $ISSUER.
    printed = out.getvalue().split("try:\n", 1)[1].replace("http://127.0.0.1:9001", "$ORDERS").splitlines()
    assert _doc_block("sh", "lines to try") == [line.removeprefix("  ") for line in printed]


@pytest.mark.timeout(120)
def test_the_demo_tour_passes_with_redis(redis_url: str) -> None:
    result = _run([*DEMO, "--redis", redis_url])
    _assert_tour_passed(result)
    assert f"rate limits in Redis ({redis_url})" in result.stdout
    # The buckets really were in Redis: the services' per-consumer ones and carol's trial one
    # (the hour buckets: a second bucket's key expires as soon as it is full again).
    with redis.Redis.from_url(redis_url) as client:
        keys = {k.decode() for k in client.keys("gk:rl:*")}
    assert {
        "gk:rl:{service%3Aorder-service:consumer:alice}:1000/3600.0/1000",
        "gk:rl:{service%3Aorder-service:consumer:bob}:1000/3600.0/1000",
        "gk:rl:{service%3Apayment-service:consumer:bob}:1000/3600.0/1000",
        "gk:rl:{consumer%3Acarol:consumer:carol}:1000/3600.0/1000",
    } <= keys, keys


@pytest.mark.timeout(120)
def test_the_access_log_goes_to_stderr_when_asked() -> None:
    result = _run([*DEMO, "--access-log"])
    _assert_tour_passed(result)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {(r["route"], r["status"]) for r in lines} >= {("orders", 403), ("payments", 429)}
    tracing = [r for r in lines if r.get("trace_id") == "4bf92f3577b34da6a3ce929d0e0e4736"]
    assert len(tracing) == 1 and tracing[0]["route"] == "inventory"
    assert not any(line.startswith('{"time"') for line in result.stdout.splitlines())


@pytest.mark.parametrize("tour", [False, True])
def test_a_busy_port_is_one_line_naming_port(tour: bool) -> None:
    # Issue 11 row 16: uvicorn's bind error, then a 25-line CancelledError traceback, exit 3.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "gatekeep", "demo", "--port", str(port)] + (["--tour"] if tour else [])
        result = _run(argv)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == f"gatekeep demo: port {port} on 127.0.0.1 is in use; pick another with --port\n"


def test_an_address_the_services_cannot_listen_on_is_one_line_naming_host() -> None:
    # The services and the issuer take any free port: only the address can fail them.
    result = _run([sys.executable, "-m", "gatekeep", "demo", "--host", "192.0.2.1"])  # TEST-NET-1
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("gatekeep demo: cannot listen on 192.0.2.1 for the order-service (")
    assert result.stderr.endswith("; pick another with --host\n")


def test_gatekeep_command_lists_its_subcommands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatekeep", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for command in ("demo", "serve", "check", "token"):
        assert command in result.stdout


@pytest.mark.anyio
async def test_gatekeep_token_asks_the_issuer() -> None:
    idp = DevIssuer(audience="gatekeep-demo")
    async with serve_asgi(idp) as port:
        idp.issuer = f"http://127.0.0.1:{port}"
        token_cmd = [sys.executable, "-m", "gatekeep", "token"]
        good = await anyio.run_process([*token_cmd, "--user", "bob", "--issuer", idp.issuer], check=False)
        wrong = await anyio.run_process(
            [*token_cmd, "--user", "bob", "--secret", "guess", "--issuer", idp.issuer], check=False
        )
    nowhere = await anyio.run_process([*token_cmd, "--user", "bob", "--issuer", ""], check=False)
    assert good.returncode == 0, good.stderr
    claims = jwt.decode(
        good.stdout.decode().strip(),
        jwt.PyJWK(idp.jwk).key,
        algorithms=["RS256"],
        audience="gatekeep-demo",
        issuer=idp.issuer,
    )
    assert claims["sub"] == "bob" and claims["roles"] == ["admin"]
    assert wrong.returncode == 1 and b"401" in wrong.stderr and b"invalid_client" in wrong.stderr
    assert nowhere.returncode == 2 and b"--issuer" in nowhere.stderr


@pytest.mark.anyio
async def test_the_tour_fails_when_an_answer_is_wrong() -> None:
    # Pointed at a plain echo service instead of the gateway and the issuer, the tour must notice.
    async with serve_asgi(EchoUpstream()) as port:
        out = io.StringIO()
        echo = TestClient("127.0.0.1", port)
        assert await run_tour(echo, echo, out, orders=echo) is False
    text = out.getvalue()
    assert "[FAIL] 0. tokens" in text and "[FAIL] 5. rbac" in text and "tour FAILED" in text
    # Straight to a service that does not check (the echo): the Order service's steps notice.
    assert "[FAIL] 11. straight to the Order service's port" in text
    assert "[FAIL] 12. straight to the Order service from 127.0.0.2" in text
    assert "/metrics: gatekeep_http_requests_total" in text


async def _direct_to(
    port: int, source: str, method: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> ClientResponse:
    target = TestClient("127.0.0.1", port)
    return await anyio.to_thread.run_sync(
        _direct, source, target, method, "/orders", list((headers or {}).items()), body
    )


BOB = {"x-consumer-username": "bob", "x-authenticated-roles": "admin"}
ALICE = {"x-consumer-username": "alice", "x-authenticated-roles": "user"}


@pytest.mark.anyio
async def test_the_demo_order_service_checks_for_itself() -> None:
    assert _can_bind(OUTSIDER), "this test needs the loopback address 127.0.0.2 (Linux has it)"
    assert not _can_bind("192.0.2.1")  # TEST-NET-1: on no host
    orders = _Service("order-service", "orders", [{"id": 1, "item": "book"}])
    async with serve_asgi(order_service(orders)) as port:
        # From the gateway's address: the headers are the identity, and the roles are checked.
        anonymous = await _direct_to(port, "127.0.0.1", "GET")
        assert anonymous.status == 401 and anonymous.header("www-authenticate") == "Bearer"
        assert (
            (await _direct_to(port, "127.0.0.1", "GET", ALICE)).json()["type"].endswith("insufficient-role")
        )
        listed = await _direct_to(port, "127.0.0.1", "GET", BOB)
        assert (
            listed.status == 200 and listed.json()["consumer"] == "bob" and listed.json()["roles"] == "admin"
        )
        created = await _direct_to(port, "127.0.0.1", "POST", ALICE, b'{"item": "pen"}')
        assert created.status == 201 and created.json()["consumer"] == "alice"
        assert (await _direct_to(port, "127.0.0.1", "POST", BOB, b"{}")).status == 201  # admin is a user
        assert (await _direct_to(port, "127.0.0.1", "DELETE", ALICE)).status == 405  # the service's own
        assert (await _direct_to(port, "127.0.0.1", "DELETE")).status == 401
        # From any other address, identity headers are refused and nothing reaches the records.
        forged = await _direct_to(port, OUTSIDER, "POST", BOB, b'{"item": "forged"}')
        assert forged.status == 401 and forged.json()["type"].endswith("untrusted-identity-headers")
        assert (await _direct_to(port, OUTSIDER, "GET")).status == 401
    assert [r.get("item") for r in orders.records] == ["book", "pen", None]
    # The trust is the peer address, not the loopback: trusting only 127.0.0.2 refuses 127.0.0.1.
    async with serve_asgi(order_service(orders, trusted_peers=[OUTSIDER])) as port:
        assert (await _direct_to(port, "127.0.0.1", "GET", BOB)).status == 401
        assert (await _direct_to(port, OUTSIDER, "GET", BOB)).status == 200


def test_the_dev_issuers_old_import_path_works_for_one_release(monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/authentication.md showed gatekeep.auth.devissuer before the demo became a package.
    monkeypatch.delitem(sys.modules, "gatekeep.auth.devissuer", raising=False)
    with pytest.warns(DeprecationWarning, match="moved to gatekeep.demo"):
        old = importlib.import_module("gatekeep.auth.devissuer")
    assert (old.DevIssuer, old.DevClient, old.DEMO_CLIENTS) == (DevIssuer, DevClient, DEMO_CLIENTS)
