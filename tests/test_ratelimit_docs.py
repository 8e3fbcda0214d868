"""The examples of docs/rate-limiting.md run: Python blocks in order as one module, TOML blocks load."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gatekeep import load_config
from tests._docs import blocks, run_python_blocks


def test_python_blocks_run() -> None:
    assert len(run_python_blocks("rate-limiting.md")) == 3


def test_toml_blocks_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import trustme

    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    monkeypatch.chdir(tmp_path)  # the TLS example's ca_file is read at load time
    trustme.CA().cert_pem.write_to_path("redis-ca.pem")
    found = blocks("rate-limiting.md", "toml")
    assert len(found) == 6
    for code in found:
        config = load_config(tomllib.loads(code))
        assert config.services
    kong = load_config(tomllib.loads(found[0]))
    rate_limiting = kong.plugins[1].config
    assert (rate_limiting["second"], rate_limiting["hour"], rate_limiting["policy"]) == (5, 1000, "redis")
    tls = load_config(tomllib.loads(found[4])).services[0].routes[0].plugins[0].config["redis"]
    assert (tls["ssl_verify"], tls["ca_file"], tls["server_name"]) == (
        True,
        "redis-ca.pem",
        "redis.internal.example",
    )
