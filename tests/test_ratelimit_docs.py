"""The examples of docs/rate-limiting.md run: Python blocks in order as one module, TOML blocks load."""

from __future__ import annotations

import inspect
import re
import sys
import tomllib
import types
from pathlib import Path

import anyio
import pytest

from gatekeep import load_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "rate-limiting.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(DOC.read_text()) if lang == language]


def test_python_blocks_run() -> None:
    module = types.ModuleType("_doc_rate_limiting")
    sys.modules[module.__name__] = module
    try:
        for i, code in enumerate(_blocks("python")):
            exec(compile(code, f"rate-limiting.md[python block {i}]", "exec"), module.__dict__)
        tests = [f for n, f in vars(module).items() if n.startswith("test_") and callable(f)]
        assert len(tests) == 3
        for test in tests:
            assert inspect.iscoroutinefunction(test)
            anyio.run(test)
    finally:
        del sys.modules[module.__name__]


def test_toml_blocks_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import trustme

    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    monkeypatch.chdir(tmp_path)  # the TLS example's ca_file is read at load time
    trustme.CA().cert_pem.write_to_path("redis-ca.pem")
    blocks = _blocks("toml")
    assert len(blocks) == 5
    for code in blocks:
        config = load_config(tomllib.loads(code))
        assert config.services
    kong = load_config(tomllib.loads(blocks[0]))
    rate_limiting = kong.plugins[1].config
    assert (rate_limiting["second"], rate_limiting["hour"], rate_limiting["policy"]) == (5, 1000, "redis")
    tls = load_config(tomllib.loads(blocks[3])).services[0].routes[0].plugins[0].config["redis"]
    assert (tls["ssl_verify"], tls["ca_file"], tls["server_name"]) == (
        True,
        "redis-ca.pem",
        "redis.internal.example",
    )
