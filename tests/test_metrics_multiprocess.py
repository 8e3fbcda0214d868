"""Multiprocess mode: two real worker processes whose counters add up in one scrape,
and a real Prometheus server scraping a gateway (where ``prometheus`` is installed)."""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatekeep.testing import EchoUpstream
from tests._servers import free_port, running, upstream_thread


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def prometheus_ready(port: int, timeout: float = 30.0) -> None:
    """Prometheus listens before it is ready (503 until its storage is up)."""
    deadline = time.monotonic() + timeout
    while get(port, "/-/ready")[0] != 200:
        assert time.monotonic() < deadline, "prometheus not ready"
        time.sleep(0.1)


def counted(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "gatekeep_http_requests"
        for s in family.samples
        if s.name == "gatekeep_http_requests_total"
    )


@pytest.fixture
def upstream() -> Iterator[int]:
    with upstream_thread(EchoUpstream()) as port:
        yield port


def write_config(tmp_path: Path, upstream: int) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[[services]]
name = "up"
url = "http://127.0.0.1:{upstream}"

[[services.routes]]
name = "all"
paths = ["/"]

[[plugins]]
name = "prometheus"
"""
    )
    return config


@pytest.mark.timeout(120)
def test_two_workers_add_up(tmp_path: Path, upstream: int) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    config = write_config(tmp_path, upstream)
    port = free_port()
    argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port), "--workers", "2"]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with running("gatekeep", "", app_dir=tmp_path, argv=argv, env=env, port=port) as (proc, _):
        sent = 0
        # Connections are spread by the kernel; keep going until both workers have counted some.
        deadline = time.monotonic() + 60
        while True:
            for _ in range(20):
                status, _body = get(port, f"/orders/{sent}")
                assert status == 200
                sent += 1
            # (The parent checks the config, plugins bound, before it forks: its file, if any, holds zeros.)
            pids = {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")} - {f"{proc.pid}.db"}
            if len(pids) >= 2 or time.monotonic() > deadline:
                break
        assert len(pids) == 2, f"only {pids} served after {sent} requests:\n{proc.log()}"
        # Any worker's scrape adds up every worker's counters (the log phase runs
        # just after each answer: give the last one a moment).
        for _ in range(50):
            status, body = get(port, "/metrics")
            assert status == 200
            if counted(body.decode()) == sent:
                break
            time.sleep(0.05)
        assert counted(body.decode()) == sent
        for _ in range(4):
            assert counted(get(port, "/metrics")[1].decode()) == sent


prometheus = shutil.which("prometheus")


@pytest.mark.skipif(prometheus is None, reason="the prometheus server is not installed")
@pytest.mark.timeout(120)
def test_a_real_prometheus_scrapes_the_gateway(tmp_path: Path, upstream: int) -> None:
    assert prometheus is not None
    config = write_config(tmp_path, upstream)
    gateway_port = free_port()
    argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(gateway_port)]
    prom_port = free_port()
    scrape = tmp_path / "prometheus.yml"
    scrape.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: gatekeep
    static_configs:
      - targets: ["127.0.0.1:{gateway_port}"]
"""
    )
    prom_argv = [
        prometheus,
        f"--config.file={scrape}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    with (
        running("gatekeep", "", app_dir=tmp_path, argv=argv, port=gateway_port),
        running("prometheus", "", app_dir=tmp_path, argv=prom_argv, port=prom_port) as (prom, _),
    ):
        prometheus_ready(prom_port)
        for i in range(5):
            assert get(gateway_port, f"/x/{i}")[0] == 200
        query = "/api/v1/query?" + urllib.parse.urlencode(
            {"query": 'sum(gatekeep_http_requests_total{code="200"})'}
        )
        deadline = time.monotonic() + 30
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            status, body = get(prom_port, query)
            assert status == 200, body
            result = json.loads(body)["data"]["result"]
            if result and float(result[0]["value"][1]) == 5:  # type: ignore[index]
                break
            time.sleep(0.5)
        assert result and float(result[0]["value"][1]) == 5, (result, prom.log())  # type: ignore[index]
        status, body = get(prom_port, "/api/v1/targets")
        [target] = json.loads(body)["data"]["activeTargets"]
        assert target["health"] == "up", target
