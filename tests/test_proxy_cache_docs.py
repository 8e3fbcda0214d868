"""The examples of docs/proxy-cache.md run: Python blocks in order as one module, TOML blocks load."""

from __future__ import annotations

import tomllib

import pytest

from gatekeep import load_config
from tests._docs import blocks, run_python_blocks


def test_python_blocks_run() -> None:
    assert run_python_blocks("proxy-cache.md") == [
        "test_the_second_get_is_a_hit",
        "test_a_cookie_is_never_shared",
        "test_a_client_can_ask_for_a_fresh_answer",
        "test_purge_one_key",
    ]


def test_toml_blocks_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    found = blocks("proxy-cache.md", "toml")
    assert len(found) == 2
    memory = load_config(tomllib.loads(found[0])).services[0].routes[0].plugins[0]
    assert (memory.name, memory.config["cache_ttl"]) == ("proxy-cache", 60)
    shared = load_config(tomllib.loads(found[1])).plugins[0].config
    assert shared["strategy"] == "redis"
    assert shared["redis"]["url"] == "redis://127.0.0.1:6379/0"
