"""The code checks CI runs: ruff (lint and format) and mypy --strict.

They live in the suite so that the README's one test command runs them.
They skip only when the tool itself is not installed (the README's test
command installs both, pinned in ``constraints/dev.txt``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["gatekeep", "tests", "benchmarks", "plugins"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def test_ruff_lint() -> None:
    result = _run(_tool("ruff"), "check", *CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run(_tool("ruff"), "format", "--check", *CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_strict() -> None:
    # No paths: pyproject's [tool.mypy] files, which name gatekeep/ and every plugin's src/.
    result = _run(sys.executable, "-m", "mypy", "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_checks_the_core_and_every_plugin() -> None:
    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    plugins = sorted(f"plugins/{p.parent.name}/src" for p in ROOT.glob("plugins/*/pyproject.toml"))
    assert set(files) == {"gatekeep", *plugins}


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```sh\n")
    demo, tests = blocks[1].split("```")[0].strip(), blocks[2].split("```")[0].strip()
    assert demo == "pip install -e '.[serve]' && gatekeep demo"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, f"{tests!r} is not a line of .ci/run"
