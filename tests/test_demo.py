"""``gatekeep demo --tour``: the README's first command, proven end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_the_demo_tour_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatekeep", "demo", "--tour", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tour passed" in result.stdout
    assert "[FAIL]" not in result.stdout
    assert "order-service" in result.stdout and "curl" in result.stdout


def test_gatekeep_command_lists_its_subcommands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatekeep", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for command in ("demo", "serve", "check"):
        assert command in result.stdout


@pytest.mark.anyio
async def test_the_tour_fails_when_an_answer_is_wrong() -> None:
    import io

    from gatekeep._demo import run_tour
    from gatekeep.testing import EchoUpstream, TestClient, serve_asgi

    # Pointed at a plain echo service instead of the gateway, the tour must notice.
    async with serve_asgi(EchoUpstream()) as port:
        out = io.StringIO()
        assert await run_tour(TestClient("127.0.0.1", port), out) is False
    assert "[FAIL]" in out.getvalue() and "tour FAILED" in out.getvalue()
