"""The examples in docs/authorization.md run (Python blocks as one module) and its TOML loads."""

from __future__ import annotations

import tomllib

import pytest

from gatekeep import load_config
from tests._docs import blocks, run_python_blocks


def test_python_blocks_run() -> None:
    assert len(blocks("authorization.md", "python")) >= 5
    assert len(run_python_blocks("authorization.md")) >= 5


def test_toml_blocks_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_JWT_SECRET", "a-long-enough-hmac-secret-for-hs256-docs!")
    found = blocks("authorization.md", "toml")
    assert len(found) == 2
    for code in found:
        load_config(tomllib.loads(code))
