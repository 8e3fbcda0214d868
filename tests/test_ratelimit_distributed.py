"""Distributed accuracy: four gateway processes, one consumer's limit, real HTTP, one Redis.

Four ``python -m gatekeep serve`` processes (uvicorn) load the same TOML config
(key-auth, then rate-limiting with ``policy = "redis"`` and ``hour = 100``)
and proxy to one echo upstream.  Concurrent clients hammer all four with one
consumer's key.  An hour window makes timing irrelevant (a token comes back
every 36 s): exactly 100 requests may pass, and each admitted request must
have seen a different ``X-RateLimit-Remaining-Hour`` (99 down to 0), which
only holds if the decisions were atomic across the processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from gatekeep.testing import EchoUpstream, TestClient, serve_asgi
from tests._redis_fixture import _free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4
CLIENTS_PER_PROCESS = 8
REQUESTS_PER_PROCESS = 75
LIMIT = 100

CONFIG = """
[[services]]
name = "api"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "all"
  paths = ["/"]

[[plugins]]
name = "key-auth"

[[plugins]]
name = "rate-limiting"

  [plugins.config]
  hour = {limit}
  limit_by = "consumer"
  policy = "redis"

  [plugins.config.redis]
  url = "{redis}"
  timeout = 2000

[[consumers]]
username = "alice"
keyauth_credentials = [{{ key = "alice-key" }}]

[[consumers]]
username = "bob"
keyauth_credentials = [{{ key = "bob-key" }}]
"""


class Gateways:
    """``gatekeep serve`` processes on free ports, stopped at the end of the test."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.ports = [_free_port() for _ in range(PROCESSES)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for port in self.ports:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gatekeep", "serve", str(self.config), "--port", str(port)]
                    + ["--log-level", "warning"],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    fleet = Gateways(tmp_path / "gateway.toml")
    yield fleet
    for proc in fleet.procs:
        proc.terminate()
    for proc in fleet.procs:
        proc.terminate()
    for proc in fleet.procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    client = TestClient("127.0.0.1", port, timeout=2)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway on {port} exited with {proc.returncode}")
        try:
            # No key: key-auth answers 401 before rate limiting spends anything.
            if (await client.get("/ready")).status == 401:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway on {port} did not start")
        await anyio.sleep(0.1)


async def test_four_gateway_processes_admit_exactly_the_limit(redis_url: str, gateways: Gateways) -> None:
    ports, procs = gateways.ports, gateways.procs
    async with serve_asgi(EchoUpstream()) as upstream:
        gateways.config.write_text(CONFIG.format(upstream=upstream, limit=LIMIT, redis=redis_url))
        gateways.start()
        deadline = time.monotonic() + 60
        for port, proc in zip(ports, procs, strict=True):
            await wait_ready(port, proc, deadline)

        outcomes: list[tuple[int, str | None]] = []

        async def client(port: int, n: int) -> None:
            http = TestClient("127.0.0.1", port)
            for _ in range(n):
                r = await http.get("/orders", headers={"apikey": "alice-key"})
                outcomes.append((r.status, r.header("x-ratelimit-remaining-hour")))

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for port in ports:
                for _ in range(CLIENTS_PER_PROCESS):
                    tg.start_soon(client, port, REQUESTS_PER_PROCESS // CLIENTS_PER_PROCESS + 1)
        elapsed = time.monotonic() - started
        # Another consumer's budget is untouched.
        bob = [(await TestClient("127.0.0.1", p).get("/", headers={"apikey": "bob-key"})) for p in ports]

    assert elapsed < 30, "a token comes back every 36 s: the run must stay well inside that"
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == len(outcomes) - LIMIT > 0
    admitted = sorted(int(remaining or -1) for status, remaining in outcomes if status == 200)
    assert admitted == list(range(LIMIT))
    assert [r.status for r in bob] == [200] * PROCESSES
    assert [r.header("x-ratelimit-remaining-hour") for r in bob] == ["99", "98", "97", "96"]
