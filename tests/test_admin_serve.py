"""The Admin API of ``gatekeep serve``: the seed's curl lines verbatim, then the proxy obeys them.

The gateway runs as a real ``gatekeep serve`` process over a TOML file; the
Admin API writes to that file (the store), the gateway's reloader applies it.
Kong's curl lines run with the real ``curl`` (host:port changed, and the
upstream and Redis addresses made real), as an operator would type them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from gatekeep.testing import EchoUpstream
from tests._servers import ServerProcess, free_port, upstream_thread

CURL = shutil.which("curl")
SECRET = "alice-secret-of-at-least-32-bytes!"


@pytest.fixture
def upstream() -> Iterator[int]:
    with upstream_thread(EchoUpstream()) as port:
        yield port


def serve(tmp_path: Path, config: str, *, name: str = "gateway") -> tuple[ServerProcess, int]:
    path = tmp_path / "gatekeep.toml"
    if not path.exists():
        path.write_text(config)
    port = free_port()
    argv = [sys.executable, "-m", "gatekeep", "serve", str(path), "--port", str(port)]
    process = ServerProcess(
        argv, log_path=tmp_path / f"{name}.log", env={"PYTHONUNBUFFERED": "1"}, cwd=tmp_path
    )
    process.wait_ready(port)
    return process, port


def curl(line: str, admin: int) -> tuple[int, str]:
    """Run one of Kong's documented curl lines with its host:port pointed at ``admin``."""
    assert CURL is not None
    argv = line.replace("http://kong:8001", f"http://127.0.0.1:{admin}").split()
    argv = [a.strip("'") for a in argv]
    assert argv[0] == "curl"
    done = subprocess.run([CURL, "-sS", *argv[1:]], capture_output=True, text=True, timeout=30, check=True)
    head = done.stdout.split("\r\n", 1)[0]
    return int(head.split()[1]), done.stdout


def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


SEED = """\
curl -i -X POST http://kong:8001/services --data name=order-service --data url={upstream}
curl -i -X POST http://kong:8001/services/order-service/routes --data 'paths[]=/orders' --data methods[]=GET --data methods[]=POST
curl -i -X POST http://kong:8001/services/order-service/plugins --data name=jwt --data config.key_claim_name=iss --data config.secret_is_base64=false
curl -i -X POST http://kong:8001/services/order-service/plugins --data name=rate-limiting --data config.second=5 --data config.hour=1000 --data config.policy=redis --data config.redis_host={redis_host} --data config.redis_port={redis_port} --data config.redis_timeout=1000
curl -i -X POST http://kong:8001/plugins --data name=prometheus --data config.per_consumer=true
"""  # noqa: E501 - Kong's lines as documented


@pytest.mark.skipif(CURL is None, reason="needs the curl command")
def test_the_seeds_curl_lines_configure_a_running_gateway(
    tmp_path: Path, upstream: int, redis_url: str
) -> None:
    admin = free_port()
    process, port = serve(tmp_path, f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
    try:
        redis = urlsplit(redis_url)
        lines = SEED.format(
            upstream=f"http://127.0.0.1:{upstream}", redis_host=redis.hostname, redis_port=redis.port
        ).splitlines()
        for line in lines:
            status, output = curl(line, admin)
            assert status == 201, output
        stored = tomllib.loads((tmp_path / "gatekeep.toml").read_text())
        assert stored["services"][0]["name"] == "order-service"
        assert stored["plugins"] == [{"name": "prometheus", "config": {"per_consumer": True}}]

        # A consumer with a JWT credential (Kong's calls too), then a token-bearing request.
        with httpx.Client(base_url=f"http://127.0.0.1:{admin}") as client:
            assert client.post("/consumers", data={"username": "alice"}).status_code == 201
            r = client.post("/consumers/alice/jwt", data={"key": "alice-iss", "secret": SECRET})
            assert r.status_code == 201
        token = jwt.encode({"iss": "alice-iss", "exp": int(time.time()) + 300}, SECRET, "HS256")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as proxy:
            wait_for(lambda: proxy.get("/orders").status_code == 401)  # the reload applied: jwt is on
            bearer = {"authorization": f"Bearer {token}"}
            answers = [proxy.get("/orders", headers=bearer).status_code for _ in range(6)]
            assert answers[:5] == [200] * 5 and answers[5] == 429, answers
            metrics = proxy.get("/metrics").text
            assert 'consumer="alice"' in metrics
        status = httpx.get(f"http://127.0.0.1:{admin}/status").json()
        assert (
            status["configuration_hash"] == status["stored_configuration_hash"]
        )  # the gateway runs the store's
        assert status["config"]["source"].startswith("file:")
    finally:
        process.stop()


def test_a_non_loopback_admin_without_token_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "gatekeep.toml"
    path.write_text('[admin]\nlisten = "0.0.0.0:8001"\n')
    argv = [sys.executable, "-m", "gatekeep", "serve", str(path), "--port", str(free_port())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "admin.listen: '0.0.0.0:8001' is not a loopback address" in done.stderr
    check = subprocess.run(
        [sys.executable, "-m", "gatekeep", "check", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 1 and "admin.listen" in check.stderr


def test_two_gateways_on_one_file_see_one_admin_write(tmp_path: Path, upstream: int) -> None:
    admin = free_port()
    config = f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
    first, port_a = serve(tmp_path, config, name="a")
    second, port_b = serve(tmp_path, config, name="b")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{admin}") as client:
            r = client.post("/services", data={"name": "echo", "url": f"http://127.0.0.1:{upstream}"})
            assert r.status_code == 201, r.text
            r = client.post("/services/echo/routes", data={"paths[]": "/echo"})
            assert r.status_code == 201, r.text
        for port in (port_a, port_b):
            wait_for(lambda port=port: httpx.get(f"http://127.0.0.1:{port}/echo").status_code == 200)
    finally:
        first.stop()
        second.stop()


def test_a_fleet_on_consul_kv_applies_an_admin_write_everywhere(tmp_path: Path, upstream: int) -> None:
    from contextlib import ExitStack

    import anyio.from_thread

    from tests._consul_server import ConsulDouble, serve_consul
    from tests._servers import running

    admin = free_port()
    with anyio.from_thread.start_blocking_portal("asyncio") as portal, ExitStack() as stack:
        address = stack.enter_context(portal.wrap_async_context_manager(serve_consul(ConsulDouble())))
        source = address.replace("http://", "consul://") + "/gatekeep/admin-fleet"
        (tmp_path / "seed.toml").write_text(f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
        push = [
            sys.executable,
            "-m",
            "gatekeep",
            "config",
            "push",
            str(tmp_path / "seed.toml"),
            "--to",
            source,
        ]
        pushed = subprocess.run(push, capture_output=True, text=True, timeout=60)
        assert pushed.returncode == 0, pushed.stderr
        ports = []
        for extra in ((), ("--workers", "2")):
            argv = [
                sys.executable,
                "-m",
                "gatekeep",
                "serve",
                "--config-source",
                source,
                "--port",
                str(free_port()),
            ]
            _, port = stack.enter_context(
                running(
                    "gatekeep-admin-fleet", "", app_dir=tmp_path, argv=[*argv, *extra], port=int(argv[-1])
                )
            )
            ports.append(port)
        with httpx.Client(base_url=f"http://127.0.0.1:{admin}") as client:
            r = client.post("/services", data={"name": "echo", "url": f"http://127.0.0.1:{upstream}"})
            assert r.status_code == 201, r.text
            r = client.post("/services/echo/routes", data={"paths[]": "/echo"})
            assert r.status_code == 201, r.text
            hashes = {client.get("/status").json()["stored_configuration_hash"] for _ in range(6)}
            assert len(hashes) == 1  # whichever process answers, one store

        def everywhere() -> bool:
            # Fresh connections: each may land on any worker of a process.
            return all(
                httpx.get(f"http://127.0.0.1:{port}/echo").status_code == 200
                for port in ports
                for _ in range(4)
            )

        wait_for(everywhere, timeout=5)


def test_a_busy_admin_port_fails_the_start(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin = taken.getsockname()[1]
        path = tmp_path / "gatekeep.toml"
        path.write_text(f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
        argv = [sys.executable, "-m", "gatekeep", "serve", str(path), "--port", str(free_port())]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"Admin API on 127.0.0.1:{admin}" in done.stderr
