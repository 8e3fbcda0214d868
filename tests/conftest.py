"""Shared pytest setup.  Fixture modules of each topic register here."""

from __future__ import annotations

import pytest

pytest_plugins: list[str] = ["tests._redis_fixture", "tests._redis_cluster", "tests._redis_sentinel"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["h11", "httptools"])
def each_codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per upstream codec (pools built without an explicit one)."""
    codec: str = request.param
    monkeypatch.setattr("gatekeep._upstream._pool.DEFAULT_CODEC", codec)
    return codec
