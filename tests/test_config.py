"""Config loading: Kong's shape, every error reported with its exact path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import gatekeep
from gatekeep import ConfigError, load_config


def _errors(config: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    return {e.path: e.message for e in info.value.errors}


def _service(**extra: Any) -> dict[str, Any]:
    service: dict[str, Any] = {
        "name": "orders",
        "url": "http://127.0.0.1:9001",
        "routes": [{"paths": ["/orders"]}],
    }
    service.update(extra)
    return service


def test_a_good_config_loads_with_kong_defaults() -> None:
    config = load_config({"services": [_service()]})
    service = config.services[0]
    assert service.connect_timeout == 60_000
    assert service.routes[0].strip_path is True
    assert service.routes[0].preserve_host is False


def test_every_error_is_listed_with_its_path() -> None:
    errors = _errors(
        {
            "services": [
                _service(),
                {
                    "name": "payments",
                    "url": "ftp://x",
                    "connect_timeout": -1,
                    "routes": [{"paths": ["/ok", "/fine", "~(unclosed"], "methods": ["GET", "FETCH"]}],
                },
            ]
        }
    )
    assert errors.keys() == {
        "services[1].url",
        "services[1].connect_timeout",
        "services[1].routes[0].paths[2]",
        "services[1].routes[0].methods[1]",
    }
    assert "ftp" in errors["services[1].url"]
    assert "FETCH" in errors["services[1].routes[0].methods[1]"]


def test_wrong_types_and_unknown_fields_name_their_path() -> None:
    errors = _errors({"services": [_service(read_timeout="soon", colour="blue")], "extra": 1})
    assert "expected an integer" in errors["services[0].read_timeout"]
    assert "unknown field" in errors["services[0].colour"]
    assert "unknown field" in errors["extra"]


def test_missing_required_fields() -> None:
    errors = _errors({"services": [{"url": "http://a:1", "routes": [{"paths": ["/"]}]}]})
    assert errors == {"services[0].name": "is required"}


def test_unknown_filter_lists_the_installed_ones() -> None:
    errors = _errors({"services": [_service()], "plugins": [{"name": "no-such-filter"}]})
    message = errors["plugins[0].name"]
    assert "no-such-filter" in message
    assert "correlation-id" in message and "request-size-limiting" in message


def test_filter_config_is_validated_against_its_config_class() -> None:
    errors = _errors(
        {
            "services": [
                _service(
                    plugins=[
                        {
                            "name": "request-size-limiting",
                            "config": {"allowed_payload_size": 0, "size_unit": "tons"},
                        }
                    ]
                )
            ]
        }
    )
    assert "greater than 0" in errors["services[0].plugins[0].config.allowed_payload_size"]
    assert "'megabytes'" in errors["services[0].plugins[0].config.size_unit"]


def test_cross_references_are_checked() -> None:
    errors = _errors(
        {
            "services": [_service(), _service()],
            "plugins": [{"name": "correlation-id", "service": "nope", "route": "nada", "consumer": "nobody"}],
        }
    )
    assert "duplicate service name" in errors["services[1].name"]
    assert errors["plugins[0].service"] == "no service named 'nope'"
    assert errors["plugins[0].route"] == "no route named 'nada'"
    assert errors["plugins[0].consumer"] == "no consumer 'nobody'"


def test_targets_need_host_and_port() -> None:
    errors = _errors(
        {
            "services": [
                {
                    "name": "s",
                    "targets": [{"target": "a:1"}, {"target": "nope"}],
                    "routes": [{"paths": ["/"]}],
                }
            ]
        }
    )
    assert errors.keys() == {"services[0].targets[1].target"}


def test_secret_references(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GK_TEST_UPSTREAM", "http://127.0.0.1:9009")
    secret = tmp_path / "header"
    secret.write_text("X-From-File\n")
    config = load_config(
        {
            "services": [_service(url="{env://GK_TEST_UPSTREAM}")],
            "plugins": [{"name": "correlation-id", "config": {"header_name": f"{{file://{secret}}}"}}],
        }
    )
    assert config.services[0].url == "http://127.0.0.1:9009"
    filters = gatekeep.Gateway(config).filters
    assert filters[0].config.header_name == "X-From-File"
    errors = _errors({"services": [_service(url="{env://GK_TEST_MISSING_VAR}")]})
    assert "GK_TEST_MISSING_VAR" in errors["services[0].url"]


def test_toml_files_load_and_bad_toml_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        """
        [[services]]
        name = "orders"
        url = "http://127.0.0.1:9001"
          [[services.routes]]
          paths = ["/orders"]
        """
    )
    assert load_config(good).services[0].name == "orders"
    bad = tmp_path / "bad.toml"
    bad.write_text("[[services]\nname=")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_gatekeep_check_prints_every_error_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        """
        [[services]]
        name = "a"
        url = "http://127.0.0.1:1"
          [[services.routes]]
          paths = ["/a"]
        [[services]]
        name = "b"
        url = "http://127.0.0.1:2"
          [[services.routes]]
          paths = ["/b", "/c", "no-slash"]
        """
    )
    result = subprocess.run(
        [sys.executable, "-m", "gatekeep", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "services[1].routes[0].paths[2]:" in result.stderr
    path.write_text(path.read_text().replace('"no-slash"', '"/d"'))
    result = subprocess.run(
        [sys.executable, "-m", "gatekeep", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_gateway_refuses_a_bad_config_before_anything_starts() -> None:
    with pytest.raises(ConfigError):
        gatekeep.Gateway({"services": [_service(url="nope")]})


def test_the_documented_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "docs" / "examples" / "gateway.toml"
    config = load_config(example)
    assert [s.name for s in config.services] == ["order-service", "inventory-service", "payment-service"]
    gatekeep.Gateway(example)  # compiles: router, chains, pools


def test_hidden_upstream_headers_must_be_header_names() -> None:
    errors = _errors({"gateway": {"hide_upstream_headers": ["date", "not a name"]}, "services": [_service()]})
    assert errors == {"gateway.hide_upstream_headers": "expected a header name, got 'not a name'"}
    assert load_config({"gateway": {"hide_upstream_headers": []}}).gateway.hide_upstream_headers == ()
