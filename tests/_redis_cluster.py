"""A real three-node Redis Cluster for the tests.

``redis_cluster`` (session) starts three ``redis-server --cluster-enabled yes``
nodes on free loopback ports, joins them with ``redis-cli --cluster create
... --cluster-replicas 0 --cluster-yes`` and waits until every node reports
``cluster_state:ok``; it yields the URL of one node (any node is a startup
node for ``RedisCluster``).  It skips, saying why, when there is no
redis-server or redis-cli.  ``REDIS_CLUSTER_URL`` points the tests at an
existing cluster instead.  ``redis_cluster_url`` (function) is that cluster
with every node FLUSHALLed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests._redis_fixture import NO_RETRY, _free_port, redis_executable

__all__ = ["RedisCluster"]


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) exists and is free too."""
    while True:
        port = _free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def redis_cli() -> str | None:
    """redis-cli next to the redis-server in use, else the one on the PATH."""
    server = redis_executable()
    if server is not None:
        beside = Path(server).with_name("redis-cli")
        if os.access(beside, os.X_OK):
            return str(beside)
    return shutil.which("redis-cli")


class RedisCluster:
    """Three cluster-enabled redis-servers on 127.0.0.1, joined into one cluster."""

    def __init__(self, server: str, cli: str, nodes: int = 3) -> None:
        self.server = server
        self.cli = cli
        self.ports = [_cluster_port() for _ in range(nodes)]
        self.url = f"redis://127.0.0.1:{self.ports[0]}"
        self._dir = tempfile.TemporaryDirectory(prefix="gk-redis-cluster-")
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 20.0) -> None:
        for port in self.ports:
            workdir = Path(self._dir.name) / str(port)
            workdir.mkdir()
            self._procs.append(
                subprocess.Popen(
                    [
                        self.server,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(workdir / "nodes.conf"),
                        "--cluster-node-timeout", "5000",
                        "--save", "",
                        "--appendonly", "no",
                        "--dir", str(workdir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        for port, proc in zip(self.ports, self._procs, strict=True):
            self._wait(port, deadline, lambda c: bool(c.ping()), proc)
        subprocess.run(
            [self.cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports]]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        for port in self.ports:
            self._wait(port, deadline, lambda c: c.cluster("info")["cluster_state"] == "ok")

    def _wait(
        self, port: int, deadline: float, ready: object, proc: subprocess.Popen[bytes] | None = None
    ) -> None:
        with redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=1, retry=NO_RETRY, decode_responses=True
        ) as client:
            while True:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"redis-server (cluster node {port}) exited with {proc.returncode}")
                try:
                    if ready(client):  # type: ignore[operator]
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis cluster node {port} did not become ready")
                time.sleep(0.05)

    def flushall(self) -> None:
        for port in self.ports:
            with redis.Redis(host="127.0.0.1", port=port) as client:
                client.flushall()

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()
        self._procs = []
        self._dir.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """The URL of one node of a running three-node Redis Cluster."""
    if url := os.environ.get("REDIS_CLUSTER_URL"):
        yield url
        return
    server, cli = redis_executable(), redis_cli()
    if server is None or cli is None:
        pytest.skip("Redis Cluster tests need redis-server and redis-cli (apt install redis-tools)")
    cluster = RedisCluster(server, cli)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: str) -> str:
    """The session's cluster, every node emptied for this test."""
    with redis.RedisCluster.from_url(redis_cluster) as client:
        client.flushall(target_nodes=redis.RedisCluster.ALL_NODES)
    return redis_cluster
