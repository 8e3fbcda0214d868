"""Shared pytest setup.  Fixture modules of each topic register here."""

from __future__ import annotations

import pytest

pytest_plugins: list[str] = ["tests._redis_fixture", "tests._redis_cluster"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
