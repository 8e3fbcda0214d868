"""Run the examples of a page in docs/: its Python blocks in order as one
module (then every ``test_*`` function they define), its TOML blocks parsed."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import anyio

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: str, language: str) -> list[str]:
    """The code blocks of ``docs/<page>`` written in ``language``."""
    return [code for lang, code in _BLOCK.findall((DOCS / page).read_text()) if lang == language]


def run_python_blocks(page: str) -> list[str]:
    """Execute the page's Python blocks as one module and run its tests.

    Returns the names of the ``test_*`` functions that ran (coroutine
    functions under ``anyio.run``).
    """
    module = types.ModuleType("_doc_" + page.replace(".", "_").replace("-", "_"))
    sys.modules[module.__name__] = module
    try:
        for i, code in enumerate(blocks(page, "python")):
            exec(compile(code, f"{page}[python block {i}]", "exec"), module.__dict__)
        ran = []
        for name, test in list(vars(module).items()):
            if not (name.startswith("test_") and callable(test)):
                continue
            if inspect.iscoroutinefunction(test):
                anyio.run(test)
            else:
                test()
            ran.append(name)
        return ran
    finally:
        del sys.modules[module.__name__]
