"""The examples in docs/authorization.md run (Python blocks as one module) and its TOML loads."""

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

DOC = Path(__file__).resolve().parent.parent / "docs" / "authorization.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(DOC.read_text()) if lang == language]


def test_python_blocks_run() -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 5
    module = types.ModuleType("_doc_authorization")
    sys.modules[module.__name__] = module
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"authorization.md[python block {i}]", "exec"), module.__dict__)
        tests = [f for n, f in vars(module).items() if n.startswith("test_") and callable(f)]
        assert len(tests) >= 5
        for test in tests:
            if inspect.iscoroutinefunction(test):
                anyio.run(test)
            else:
                test()
    finally:
        del sys.modules[module.__name__]


def test_toml_blocks_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_JWT_SECRET", "a-long-enough-hmac-secret-for-hs256-docs!")
    blocks = _blocks("toml")
    assert len(blocks) == 2
    for code in blocks:
        load_config(tomllib.loads(code))
