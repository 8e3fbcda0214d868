"""Run the recipes of docs/recipes/ as written: their files, their commands, real tokens.

A page names each file it shows (``<!-- file: app.py -->`` above the block);
``write`` puts them in a directory, ``commands`` lists its ``$ `` lines (the
``export`` lines are the test's to do: it sets ``JWT_SECRET`` itself) and
``start`` runs one of them with port 8000 swapped for a free one.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt

from gatekeep.testing import ClientResponse, TestClient

from .._servers import ServerProcess, free_port, running

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"
SECRET = "recipe-test-secret-" + "k" * 32  # HS256: at least 32 bytes (RFC 7518 §3.2)
_FILE = re.compile(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", re.DOTALL)
_CONSOLE = re.compile(r"```console\n(.*?)```", re.DOTALL)


def files(page: str) -> dict[str, str]:
    return dict(_FILE.findall((RECIPES / page).read_text()))


def commands(page: str) -> list[str]:
    return [
        line[2:]
        for block in _CONSOLE.findall((RECIPES / page).read_text())
        for line in block.splitlines()
        if line.startswith("$ ") and not line.startswith("$ export ")
    ]


def write(page: str, directory: Path) -> None:
    for name, text in files(page).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def token(subject: str, *roles: str) -> str:
    claims = {"sub": subject, "roles": list(roles), "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(subject: str, *roles: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(subject, *roles)}"}


def someone(name: str) -> str:
    """A subject of its own (each has its own rate-limit bucket)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


class Served:
    def __init__(self, proc: ServerProcess, port: int, directory: Path) -> None:
        self.proc = proc
        self.port = port
        self.directory = directory
        self.client = TestClient("127.0.0.1", port, timeout=20)


@contextmanager
def start(
    page: str, command: str, directory: Path, *, overrides: dict[str, str] | None = None
) -> Iterator[Served]:
    """Write the page's files (or ``overrides`` of some) to ``directory``; run ``command`` there."""
    write(page, directory)
    for name, text in (overrides or {}).items():
        (directory / name).write_text(text)
    port = free_port()
    argv = [a.replace("8000", str(port)) for a in shlex.split(command)]
    argv[0] = str(Path(sys.executable).parent / argv[0])
    env = {"JWT_SECRET": SECRET}
    with running(argv[0].rsplit("/", 1)[-1], "", app_dir=directory, argv=argv, port=port, env=env) as (
        proc,
        _,
    ):
        yield Served(proc, port, directory)


def problem(response: ClientResponse, status: int, slug: str | None = None) -> dict[str, Any]:
    """The response is the gateway's problem document (RFC 9457) with ``status``."""
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json", response.headers
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    assert doc["type"].startswith("https://") and doc["title"]
    assert doc["request_id"] == response.header("x-request-id")
    if slug is not None:
        assert doc["type"].rsplit("/", 1)[-1] == slug, doc
    return doc
