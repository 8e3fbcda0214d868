"""The code in this plugin's README runs.

Python blocks run in order, as one module; every ``test_*`` function they
define is then called.  TOML blocks must parse, and whole gateway configs
must load (with this plugin found through its entry point).
"""

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

pytest.importorskip(
    "gatekeep_otel", reason="the gatekeep-otel plugin is not installed (pip install -e plugins/gatekeep-otel)"
)

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(README.read_text()) if lang == language]


def test_python_blocks_run() -> None:
    blocks = _blocks("python")
    assert blocks
    module = types.ModuleType("_doc_readme")
    sys.modules[module.__name__] = module
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md[python block {i}]", "exec"), module.__dict__)
        tests = [f for n, f in vars(module).items() if n.startswith("test_") and callable(f)]
        assert tests
        for test in tests:
            if inspect.iscoroutinefunction(test):
                anyio.run(test)
            else:
                test()
    finally:
        del sys.modules[module.__name__]


def test_toml_blocks_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTLP_TOKEN", "Bearer t0ken")
    configs = [tomllib.loads(code) for code in _blocks("toml")]
    assert configs
    for document in configs:
        load_config(document)
