"""mypy reads gatekeep's types through an editable install in the mode docs/plugins.md tells
plugin authors to use (``editable_mode=compat``: the source folder on the path, through a
``.pth`` file); setuptools' default import hook hides the package from mypy (issue 13, point 5).

No network and no pip: a bare virtual environment gets the ``.pth`` file a compat install
writes, plus the dev environment's packages (attrs, anyio ...) on its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = """\
from gatekeep import BasePlugin, Request, Response
from gatekeep.plugins.jwt import JWTFilterConfig


class Mine(BasePlugin[JWTFilterConfig]):
    async def on_request(self, request: Request) -> Response | None:
        leeway: float = self.config.leeway
        wrong: str = self.config.leeway  # mypy must see the type to refuse this
        return None
"""


def _environment(tmp_path: Path, pth: str) -> Path:
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "__editable__.gatekeep-0.1.0.pth").write_text(pth)
    (Path(purelib) / "dev-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _mypy(tmp_path: Path, python: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "mine.py").write_text(PLUGIN)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-executable",
            str(python),
            "mine.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.timeout(300)
def test_mypy_reads_gatekeeps_types_through_a_compat_editable_install(tmp_path: Path) -> None:
    python = _environment(tmp_path, f"{ROOT}\n")
    result = _mypy(tmp_path, python)
    assert result.stdout.splitlines() == [
        'mine.py:8: error: Incompatible types in assignment (expression has type "float", variable has '
        'type "str")  [assignment]',
        "Found 1 error in 1 file (checked 1 source file)",
    ], result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_an_import_hook_alone_hides_gatekeep_from_mypy(tmp_path: Path) -> None:
    # What setuptools' default editable mode writes: a finder, no path. The reason for the advice.
    python = _environment(tmp_path, "import sys\n")
    result = _mypy(tmp_path, python)
    assert 'Cannot find implementation or library stub for module named "gatekeep"' in result.stdout
