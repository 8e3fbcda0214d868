"""docs/observability.md runs, and docs/grafana/ is sound: promtool checks the scrape config and the
alerting rules, and a real Prometheus accepts every dashboard and alert query."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from gatekeep import load_config
from tests._docs import blocks, run_python_blocks
from tests._servers import free_port, running
from tests.test_metrics_multiprocess import get, prometheus_ready

DOCS = Path(__file__).resolve().parent.parent / "docs"
GRAFANA = DOCS / "grafana"

promtool = shutil.which("promtool")
prometheus = shutil.which("prometheus")

# Every metric the prometheus filter can export (family names as queried).
EXPORTED = {
    "gatekeep_http_requests_total",
    "gatekeep_request_duration_seconds_bucket",
    "gatekeep_upstream_duration_seconds_bucket",
    "gatekeep_gateway_duration_seconds_bucket",
    "gatekeep_bandwidth_bytes_total",
    "gatekeep_filter_errors_total",
    "gatekeep_breaker_transitions_total",
    "gatekeep_info",
    "gatekeep_ratelimit_decisions_total",
    "gatekeep_breaker_state",
    "gatekeep_upstream_target_health",
    "gatekeep_discovery_instances",
    "gatekeep_discovery_errors_total",
    "gatekeep_discovery_up",
    "gatekeep_jwks_fetches_total",
}


def test_python_blocks_run() -> None:
    assert len(blocks("observability.md", "python")) >= 2
    access = logging.getLogger("gatekeep.access")
    saved = (list(access.handlers), access.level, access.propagate)
    try:
        assert run_python_blocks("observability.md")
    finally:
        access.handlers[:] = saved[0]
        access.setLevel(saved[1])
        access.propagate = saved[2]


def test_toml_blocks_load() -> None:
    [block] = blocks("observability.md", "toml")
    load_config(tomllib.loads(block))


def test_json_example_has_every_access_log_field() -> None:
    [block] = blocks("observability.md", "json")
    fields = set(re.findall(r'"(\w+)":', block))
    from gatekeep import Exchange, Request
    from gatekeep.plugins.access_log import access_fields

    exchange = Exchange(Request("GET", "/"))
    assert set(access_fields(exchange)) | {"request", "gateway", "upstream"} == fields


def queries() -> list[str]:
    dashboard = json.loads((GRAFANA / "gatekeep-dashboard.json").read_text())
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = (GRAFANA / "alerts.yml").read_text()
    # The rules' expressions: promtool checks their syntax; here, the names they use.
    found = re.findall(r"expr: \|?\n?((?:.|\n)*?)\n\s+(?:for|labels):", rules)
    assert len(found) == rules.count("- alert:")
    return out + found


def test_dashboard_and_rules_use_only_exported_metrics() -> None:
    dashboard = json.loads((GRAFANA / "gatekeep-dashboard.json").read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "requests",
        "error rate",
        "gateway",
        "upstream",
        "rate-limit",
        "breaker",
        "health",
        "consumers",
    ):
        assert topic in titles, topic
    used = {name for q in queries() for name in re.findall(r"\bgatekeep_\w+", q)}
    assert used, "no queries found"
    assert used <= EXPORTED, used - EXPORTED


@pytest.mark.skipif(promtool is None, reason="promtool is not installed")
def test_promtool_checks_config_and_rules() -> None:
    assert promtool is not None
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        result = subprocess.run([promtool, *args], cwd=GRAFANA, capture_output=True, timeout=60)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def _substitute(expr: str) -> str:
    for var, value in (("$__rate_interval", "1m"), ("$__range", "5m"), ("$service", ".*"), ("$route", ".*")):
        expr = expr.replace(var, value)
    return expr


@pytest.mark.skipif(prometheus is None, reason="the prometheus server is not installed")
@pytest.mark.timeout(90)
def test_prometheus_accepts_every_dashboard_query(tmp_path: Path) -> None:
    assert prometheus is not None
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\n")
    port = free_port()
    argv = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running("prometheus", "", app_dir=tmp_path, argv=argv, port=port):
        prometheus_ready(port)
        dashboard = json.loads((GRAFANA / "gatekeep-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert len(exprs) >= 15
        for expr in exprs:
            query = "/api/v1/query?" + urllib.parse.urlencode(
                {"query": _substitute(expr), "time": str(time.time())}
            )
            status, body = get(port, query)
            answer: dict[str, Any] = json.loads(body)
            assert status == 200 and answer["status"] == "success", (expr, answer)
