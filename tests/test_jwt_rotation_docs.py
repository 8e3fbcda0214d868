"""docs/jwt-secret-rotation.md: two HS secrets for one consumer by ``kid``, the old one removed
by a reload, and no request refused on the way (the page's example, run as it is)."""

from __future__ import annotations

import tomllib

from tests._docs import blocks, run_python_blocks


def test_the_rotation_example_runs() -> None:
    assert run_python_blocks("jwt-secret-rotation.md") == ["test_rotation_refuses_nothing"]


def test_the_toml_snippets_parse() -> None:
    for block in blocks("jwt-secret-rotation.md", "toml"):
        tomllib.loads(block.replace("…", "x"))
