"""A fleet sharing one config in Consul KV (issue 15): real ``gatekeep serve`` processes, the Consul test
double on loopback, ``gatekeep config push``.  Every process (and every worker) converges on a push
within a second; a bad config is refused by every node; a file under load switches with no failed request.
"""

from __future__ import annotations

import http.client
import importlib.util
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio.from_thread
import pytest

from gatekeep.configsource import ConsulKVStore
from gatekeep.testing import EchoUpstream
from tests._consul_server import ConsulDouble, serve_consul
from tests._servers import free_port, running, upstream_thread

KEY = "gatekeep/fleet/config"


def _config(upstream: int, path: str) -> str:
    return f"""
[server]
drain_timeout = 2

[[services]]
name = "orders"
url = "http://127.0.0.1:{upstream}"
routes = [{{ name = "orders", paths = ["{path}"] }}]
"""


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeep", *args], capture_output=True, text=True, timeout=60, check=False
    )


@contextmanager
def _consul() -> Iterator[tuple[str, ConsulDouble]]:
    double = ConsulDouble()
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(serve_consul(double)) as address:
            yield address, double


def _wait(check: Callable[[], bool], within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if check():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"not within {within} s")


def _logged_at(line: str) -> float:
    """The time of a log line (``2026-12-04 22:49:22,823 INFO ...``, local time)."""
    return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000


def _started(log: Path, workers: int) -> None:
    """Wait until ``workers`` processes completed their start (the parent listens before they do)."""
    _wait(lambda: log.read_text().count("Application startup complete.") >= workers, 20.0)


def test_two_gateways_converge_on_a_push_within_a_second(tmp_path: Path) -> None:
    with _consul() as (address, double), upstream_thread(EchoUpstream()) as up:
        source = address.replace("http://", "consul://") + "/" + KEY
        (tmp_path / "v1.toml").write_text(_config(up, "/v1"))
        (tmp_path / "v2.toml").write_text(_config(up, "/v2"))
        pushed = _cli("config", "push", str(tmp_path / "v1.toml"), "--to", source)
        assert pushed.returncode == 0, pushed.stderr
        assert "version" in pushed.stdout and "hash" in pushed.stdout
        with ExitStack() as stack:
            ports = []
            for extra in ((), ("--workers", "2")):
                port = free_port()
                argv = [sys.executable, "-m", "gatekeep", "serve", "--config-source", source]
                argv += ["--port", str(port)]
                _, port = stack.enter_context(
                    running("gatekeep-fleet", "", app_dir=tmp_path, argv=[*argv, *extra], port=port)
                )
                _started(tmp_path / f"gatekeep-fleet-{port}.log", 2 if extra else 1)
                ports.append(port)
            for port in ports:
                assert _status(port, "/v1") == 200 and _status(port, "/v2") == 404

            pushed = _cli("config", "push", str(tmp_path / "v2.toml"), "--to", source)
            assert pushed.returncode == 0, pushed.stderr
            pushed_at, pushed_wall = time.monotonic(), time.time()

            def converged() -> bool:
                # Fresh connections: each lands on any worker of a process.
                return all(_status(port, "/v2") == 200 for port in ports for _ in range(6))

            _wait(converged, 5.0)
            assert time.monotonic() - pushed_at < 1.0 + 0.5  # 1 s, plus the polling itself on 2 CPUs
            # Every worker of both processes reports the pushed hash, within a second of the push.
            digest = pushed.stdout.split("hash ")[1].strip()
            logs = [tmp_path / f"gatekeep-fleet-{port}.log" for port in ports]

            def reported() -> list[str]:
                lines = [line for log in logs for line in log.read_text().splitlines()]
                return [line for line in lines if f"config {digest} applied" in line]

            _wait(lambda: len(reported()) == 3, 3.0)  # 1 + 2 workers
            for line in reported():
                assert _logged_at(line) - pushed_wall < 1.0, line

            # A config every node refuses, written past the CLI's check: nobody applies it.
            async def bad_write() -> None:
                store = ConsulKVStore(address, KEY)
                snapshot = await store.read()
                bad = {"services": [{"name": "orders", "url": "ftp://x", "routes": [{"paths": ["/v3"]}]}]}
                await store.write(bad, snapshot.version)
                await store.aclose()

            anyio.run(bad_write)
            time.sleep(1.0)
            for port in ports:
                assert _status(port, "/v2") == 200 and _status(port, "/v3") == 404

            # The CLI refuses a bad file, and a push against a stale version.
            (tmp_path / "bad.toml").write_text(_config(up, "/v3").replace("http://", "ftp://"))
            refused = _cli("config", "push", str(tmp_path / "bad.toml"), "--to", source)
            assert refused.returncode == 1 and "services[0].url" in refused.stderr
            assert "nothing was written" in refused.stderr
            stale = _cli("config", "push", str(tmp_path / "v1.toml"), "--to", source, "--expect-version", "1")
            assert stale.returncode == 1 and "changed" in stale.stderr

            pulled = _cli("config", "pull", "--from", source, "--format", "toml")
            assert pulled.returncode == 0 and "ftp://x" in pulled.stdout  # what the store holds, as is
    assert double.kv


def test_editing_the_served_file_under_load_switches_with_no_failed_request(tmp_path: Path) -> None:
    with upstream_thread(EchoUpstream()) as up:
        config = tmp_path / "gatekeep.toml"
        config.write_text(_config(up, "/v1"))
        port = free_port()
        argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port), "--workers", "2"]
        with running("gatekeep-file", "", app_dir=tmp_path, argv=argv, port=port) as (proc, _):
            _started(tmp_path / f"gatekeep-file-{port}.log", 2)
            failures: list[object] = []
            counts = [0]
            stop = threading.Event()

            def client() -> None:
                while not stop.is_set():
                    try:
                        status = _status(port, "/v1")
                    except OSError as exc:
                        failures.append(exc)
                        continue
                    counts[0] += 1
                    if status != 200:
                        failures.append(status)

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                time.sleep(0.5)
                both = _config(up, "/v1").replace('paths = ["/v1"]', 'paths = ["/v1", "/v2"]')
                tmp = tmp_path / "gatekeep.toml.new"
                tmp.write_text(both)
                tmp.replace(config)
                written = time.time()

                def switched() -> bool:
                    return _status(port, "/v2") == 200

                _wait(switched, 5.0)
                # Each worker applies it (its log says so) within a second of the write.
                log_path = tmp_path / f"gatekeep-file-{port}.log"

                def applied() -> list[str]:
                    return [line for line in log_path.read_text().splitlines() if "applied" in line]

                _wait(lambda: len(applied()) == 2, 3.0)
                for line in applied():
                    assert _logged_at(line) - written < 1.0, (line, written)
                # SIGHUP to the parent: every worker reloads, the file unchanged (secrets re-read).
                proc.process.send_signal(signal.SIGHUP)
                _wait(lambda: len(applied()) == 4, 3.0)
                time.sleep(0.5)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            assert counts[0] > 50
            assert failures == []


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)


@pytest.mark.skipif(importlib.util.find_spec("websockets") is None, reason="needs websockets")
def test_an_open_websocket_survives_reloads_even_of_its_own_service(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    from tests._websocket_upstream import websocket_upstream

    with websocket_upstream() as upstream:
        config = tmp_path / "gatekeep.toml"
        config.write_text(_config(upstream.port, "/ws"))
        port = free_port()
        argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port)]
        with running("gatekeep-ws", "", app_dir=tmp_path, argv=argv, port=port):
            log = tmp_path / f"gatekeep-ws-{port}.log"
            _started(log, 1)
            with connect(f"ws://127.0.0.1:{port}/ws/echo", open_timeout=10) as ws:
                ws.send("before")
                assert ws.recv(timeout=5) == "before"
                for n, text in enumerate(
                    (_config(upstream.port, "/ws").replace("/ws", "/ws2"), _config(9, "/x"))
                ):
                    tmp = tmp_path / "next.toml"
                    tmp.write_text(text)
                    tmp.replace(config)
                    _wait(lambda n=n: log.read_text().count(" applied ") == n + 1, 3.0)
                    ws.send(f"after {n}")
                    assert ws.recv(timeout=5) == f"after {n}"
            assert "Traceback" not in log.read_text()
