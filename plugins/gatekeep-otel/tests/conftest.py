"""The plugin's tests run on asyncio, as gatekeep does.

anyio's pytest plugin takes its backend from the ``anyio_backend`` fixture;
some anyio releases default it to every backend installed or known (trio
included), so the plugin names its own.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
