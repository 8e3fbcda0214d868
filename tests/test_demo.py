"""``gatekeep demo --tour``: the README's first command, proven end to end."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import anyio
import jwt
import pytest
import redis

from gatekeep._demo import _print_banner, run_tour
from gatekeep.auth.devissuer import DevIssuer
from gatekeep.testing import EchoUpstream, TestClient, serve_asgi

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
    ports = {"order-service": 1, "payment-service": 2, "inventory-service": 3}
    _print_banner(out, "127.0.0.1", ports, "$ISSUER", "http://127.0.0.1:8000", None)
    printed = out.getvalue().split("try:\n", 1)[1].splitlines()
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
        assert await run_tour(echo, echo, out) is False
    text = out.getvalue()
    assert "[FAIL] 0. tokens" in text and "[FAIL] 5. rbac" in text and "tour FAILED" in text
    assert "/metrics: gatekeep_http_requests_total" in text
