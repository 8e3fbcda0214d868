"""The code in this plugin's README and in gatekeep's plugin author's guide runs.

Python blocks of one document run in order, as one module (a reader follows
along in one file); every ``test_*`` function they define is then called.
TOML blocks must parse, and those that are whole gateway configs must load.
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

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
GUIDE = HERE.parents[2] / "docs" / "plugins.md"  # only in gatekeep's repository

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(path: Path, language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(path.read_text()) if lang == language]


def _document(name: str) -> Path:
    path = {"README": README, "guide": GUIDE}[name]
    if not path.exists():
        pytest.skip(f"{path} is not here (the plugin was installed outside gatekeep's repository)")
    return path


@pytest.mark.parametrize("name", ["README", "guide"])
def test_python_blocks_run(name: str) -> None:
    path = _document(name)
    blocks = _blocks(path, "python")
    assert blocks
    module = types.ModuleType(f"_doc_{name}")
    sys.modules[module.__name__] = module  # attrs and typing resolve annotations through it
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{path.name}[python block {i}]", "exec"), module.__dict__)
        tests = [f for n, f in vars(module).items() if n.startswith("test_") and callable(f)]
        assert tests or name == "README", "the guide shows runnable tests"
        for test in tests:
            if inspect.iscoroutinefunction(test):
                anyio.run(test)
            else:
                test()
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize("name", ["README", "guide"])
def test_toml_blocks_parse_and_configs_load(name: str) -> None:
    path = _document(name)
    for code in _blocks(path, "toml"):
        document = tomllib.loads(code)
        if "services" in document:
            load_config(document)
