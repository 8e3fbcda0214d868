"""docs/admin-api.md runs: its TOML blocks load as configs, its Python block runs."""

from __future__ import annotations

import tomllib

import pytest

from gatekeep import ConfigError, load_config
from tests._docs import blocks, run_python_blocks


def test_toml_blocks_load(monkeypatch: pytest.MonkeyPatch) -> None:
    found = blocks("admin-api.md", "toml")
    assert len(found) == 3
    assert load_config(tomllib.loads(found[0])).admin is not None
    with pytest.raises(ConfigError) as refused:  # the token is an {env://} reference
        load_config(tomllib.loads(found[1]))
    assert [e.path for e in refused.value.errors] == ["admin.token"]
    monkeypatch.setenv("GATEKEEP_ADMIN_TOKEN", "t0ken")
    admin = load_config(tomllib.loads(found[1])).admin
    assert admin is not None and admin.token == "t0ken" and admin.mtls
    stored = load_config(tomllib.loads(found[2]))
    assert [p.name for p in stored.services[0].plugins] == ["jwt", "rate-limiting"]


def test_python_blocks_run() -> None:
    assert run_python_blocks("admin-api.md") == ["test_an_embedded_admin_api"]
