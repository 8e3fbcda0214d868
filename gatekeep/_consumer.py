"""The consumer and plugin entries of a config: the part of the config a request carries.

``Request.consumer`` is a ``ConsumerConfig``; these classes live below
``gatekeep._http`` (they import nothing of gatekeep's but the structuring
marker) so that the request can be typed with them without an import cycle.
``gatekeep._config`` re-exports them with the rest of the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from ._structure import EXTRA_FIELDS

__all__ = ["ConsumerConfig", "PluginConfig"]


@attrs.frozen
class PluginConfig:
    """A filter attached to a scope; ``config`` is checked against the filter's ``Config``."""

    name: str
    config: Mapping[str, Any] = attrs.field(factory=dict)
    enabled: bool = True
    # Only for top-level plugins (Kong's flat form): narrow the scope.
    service: str | None = None
    route: str | None = None
    consumer: str | None = None


@attrs.frozen
class ConsumerConfig:
    """A client of the API (Kong's consumer).

    Its credentials are plugins' business: every other key of a consumer's
    table (``jwt_secrets``, ``keyauth_credentials`` ...) is a credential field
    declared by an installed plugin (``BaseFilter.consumer_credentials``) and
    validated with that plugin's class when the config loads.  Plugins read
    them as ``consumer.credentials.get("jwt_secrets", ())``: a tuple of the
    declared class.
    """

    kong_names: ClassVar[Mapping[str, str]] = {n: n for n in ("username", "id", "custom_id", "plugins")}

    username: str | None = None
    id: str | None = None
    custom_id: str | None = None
    groups: tuple[str, ...] = ()
    plugins: tuple[PluginConfig, ...] = ()
    credentials: Mapping[str, tuple[Any, ...]] = attrs.field(factory=dict, metadata={EXTRA_FIELDS: True})

    @property
    def key(self) -> str:
        return self.id or self.username or self.custom_id or ""
