"""The app factories of ``gatekeep serve``: each server worker builds its own gateway.

``app`` is the factory uvicorn imports by name (``gatekeep._serve:app``, config in
``$GATEKEEP_CONFIG``); ``app_for(path)`` is the one handed to gatekeep's front server.
"""

from __future__ import annotations

import os

from ._gateway import Gateway
from .adapters import ASGIApp, asgi


def app() -> ASGIApp:
    """Build the gateway from ``$GATEKEEP_CONFIG``."""
    return asgi(Gateway(os.environ["GATEKEEP_CONFIG"]))


def app_for(config_path: str) -> ASGIApp:
    """Build the gateway from the config file at ``config_path``."""
    return asgi(Gateway(config_path))
