"""The app factories of ``gatekeep serve``: each server worker builds its own gateway.

``app`` is the factory uvicorn imports by name (``gatekeep._serve:app``, config in
``$GATEKEEP_CONFIG``, or a store in ``$GATEKEEP_CONFIG_SOURCE``); ``app_for(path)``
and ``app_for_source(url)`` are the ones handed to gatekeep's front server.  Every
gateway watches where its config lives and reloads on a change or on SIGHUP
(docs/configuration-reload.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import anyio

from ._gateway import Gateway
from .adapters import asgi
from .admin._server import ASGI, with_admin
from .configsource import ConfigSourceError, FileStore, open_store

__all__ = ["app", "app_for", "app_for_source", "read_source"]


def app() -> ASGI:
    """Build the gateway from ``$GATEKEEP_CONFIG_SOURCE`` or ``$GATEKEEP_CONFIG``."""
    source = os.environ.get("GATEKEEP_CONFIG_SOURCE")
    if source:
        return app_for_source(source)
    return app_for(os.environ["GATEKEEP_CONFIG"])


def app_for(config_path: str) -> ASGI:
    """Build the gateway from the config file at ``config_path``, watched."""
    gateway = Gateway(config_path, config_source=FileStore(config_path))
    gateway.reloads.sighup = True
    return with_admin(asgi(gateway), gateway)  # the [admin] table's Admin API, in the app's lifespan


def app_for_source(source: str) -> ASGI:
    """Build the gateway from the config a store holds (``consul://host:8500/key``), watched."""
    gateway = Gateway(read_source(source), config_source=open_store(source))
    gateway.reloads.sighup = True
    return with_admin(asgi(gateway), gateway)  # the [admin] table's Admin API, in the app's lifespan


def read_source(source: str) -> Mapping[str, Any]:
    """The config ``source`` holds now (before any event loop runs).

    Raises:
        ConfigSourceError: unreachable, empty, or not parsable.
    """

    async def read() -> Mapping[str, Any]:
        store = open_store(source)
        try:
            snapshot = await store.read()
        finally:
            await store.aclose()
        if snapshot.error is not None:
            raise ConfigSourceError(f"{store.name}: {snapshot.error}")
        if snapshot.document is None:
            raise ConfigSourceError(
                f"{store.name} holds no config yet: gatekeep config push FILE --to {source}"
            )
        return snapshot.document.data

    result: Mapping[str, Any] = anyio.run(read)
    return result
