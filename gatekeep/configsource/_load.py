"""``to_config``: a stored document (gatekeep's shape or Kong's declarative one) as a checked config."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._config import GatewayConfig, load_config
from .._registry import PluginRegistry
from ._document import ConfigDocument

__all__ = ["to_config"]


def to_config(
    data: Mapping[str, Any] | ConfigDocument,
    *,
    plugins: Iterable[type[Any]] | PluginRegistry = (),
) -> GatewayConfig:
    """The checked config of a document: Kong's declarative fields translated
    (``gatekeep/_kong_format.py``, inside ``load_config``), every field checked.

    Raises:
        ConfigError: every problem, with its path.
    """
    raw = data.data if isinstance(data, ConfigDocument) else data
    return load_config(raw, plugins=plugins)
