"""The two dependency sets CI and the README stand on.

- ``constraints/floors.txt`` pins every runtime dependency at the lowest
  version ``pyproject.toml`` declares; these tests keep the two in step.
- ``constraints/dev.txt`` pins the toolchain (ruff, mypy, pytest ...) and none of
  the runtime dependencies, which stay ranges: CI tests them at their newest.
- A ``policy = "redis"`` start of ``gatekeep serve`` prints no warning (redis-py
  8 warns when an asyncio client is given the synchronous ``Retry``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import IO

import anyio
import pytest
from packaging.version import Version

from gatekeep.testing import EchoUpstream, TestClient, serve_asgi
from tests._redis_fixture import _free_port

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        assert version, f"{path.name}: {line!r} is not a name==version pin"
        pins[_canonical(name)] = version.strip()
    return pins


def _declared_floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors: dict[str, str] = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?>=([0-9][0-9A-Za-z.]*)", requirement)
        assert match, f"runtime dependency {requirement!r} must be a plain 'name>=floor' range"
        floors[_canonical(match.group(1))] = match.group(3)
    return floors


def test_the_floors_file_pins_every_runtime_dependency_at_its_declared_floor() -> None:
    pins = _pins(ROOT / "constraints" / "floors.txt")
    floors = _declared_floors()
    assert sorted(pins) == sorted(floors)
    for name, floor in floors.items():
        assert Version(pins[name]) == Version(floor), f"{name}: floors.txt {pins[name]}, pyproject >={floor}"


def test_the_dev_constraints_leave_every_runtime_dependency_unpinned() -> None:
    dev = _pins(ROOT / "constraints" / "dev.txt")
    pinned_runtime = sorted(set(dev) & set(_declared_floors()) | set(dev) & {"cryptography"})
    assert pinned_runtime == [], "runtime dependencies must stay ranges"
    for tool in ("ruff", "mypy", "pytest", "pytest-timeout", "hypothesis"):
        assert tool in dev, f"{tool} is not pinned in constraints/dev.txt"


def test_the_readme_test_command_uses_the_pinned_toolchain() -> None:
    readme = (ROOT / "README.md").read_text()
    command = readme.split("```sh\n")[2].split("```")[0]
    assert "-c constraints/dev.txt" in command


def test_floors_runner_installs_both_constraint_files() -> None:
    script = (ROOT / ".ci" / "floors").read_text()
    assert "-c constraints/floors.txt" in script and "-c constraints/dev.txt" in script


CONFIG = """
[[services]]
name = "api"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  paths = ["/"]

[[plugins]]
name = "rate-limiting"

  [plugins.config]
  second = 100
  limit_by = "ip"
  policy = "redis"
  fault_tolerant = false

  [plugins.config.redis]
  {where}
"""


def _serve(config: Path, port: int, out: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["url", "host"])
async def test_a_redis_policy_start_prints_no_warning(redis_url: str, tmp_path: Path, where: str) -> None:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    settings = f'url = "{redis_url}"' if where == "url" else f'host = "{host}"\n  port = {port}'
    config, log = tmp_path / "gateway.toml", tmp_path / "serve.log"
    gateway_port = _free_port()
    async with serve_asgi(EchoUpstream()) as upstream:
        config.write_text(CONFIG.format(upstream=upstream, where=settings))
        with log.open("wb") as out:
            proc = _serve(config, gateway_port, out)
            try:
                client = TestClient("127.0.0.1", gateway_port, timeout=2)
                deadline = time.monotonic() + 30
                while True:
                    assert proc.poll() is None, log.read_text()
                    try:
                        answer = await client.get("/orders")
                        break
                    except OSError:
                        assert time.monotonic() < deadline, log.read_text()
                        await anyio.sleep(0.1)
                # fault_tolerant = false: a 200 with a count means Redis really decided.
                assert answer.status == 200, log.read_text()
                assert answer.header("x-ratelimit-remaining-second") == "99"
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    text = log.read_text()
    assert "Warning" not in text and "warn" not in text.lower(), text
