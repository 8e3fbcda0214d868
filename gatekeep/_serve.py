"""The app factory ``gatekeep serve`` hands to uvicorn (each worker builds its own)."""

from __future__ import annotations

import os

from ._asgi import ASGIApp, asgi
from ._gateway import Gateway


def app() -> ASGIApp:
    """Build the gateway from ``$GATEKEEP_CONFIG``."""
    return asgi(Gateway(os.environ["GATEKEEP_CONFIG"]))
