"""attrs validators shared by every config class (core, libraries and plugins).

One home so that the same rule reads the same everywhere and a config error
says the same words whichever table it came from.  Each is an attrs validator
(``(instance, attribute, value)``); ``None`` passes where the field is
optional, so one validator serves ``int`` and ``int | None`` fields alike.
The message never names the field: the config loader prefixes the error
with its full path (``services[1].connect_timeout: must be greater than 0``).

A public module: plugin authors use the same validators in their config
classes (``attrs.field(validator=gatekeep.validators.positive)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._http import is_header_name
from ._structure import ALIASES, FLATTENED

__all__ = [
    "also_named",
    "kong_fields",
    "flattened",
    "header_name",
    "header_names",
    "non_empty",
    "non_negative",
    "port",
    "positive",
    "tcp_port",
]


def kong_fields(*same: str, **renamed: str) -> dict[str, str]:
    """A config class's ``kong_names``: which fields are Kong's, and Kong's name where it differs.

    ``kong_names: ClassVar[Mapping[str, str]] = kong_fields("second", "minute", tls="tls_verify")``;
    the reference (``docs/reference/``) shows the Kong equivalent of each field from it.
    """
    return {name: name for name in same} | renamed


def also_named(*names: str) -> dict[str, tuple[str, ...]]:
    """Field metadata: other names a config may give the field (an old or another plugin's spelling).

    ``roles_claims: tuple[str, ...] = attrs.field(default=(), metadata=also_named("roles_claim"))``
    accepts ``roles_claim = [...]`` in a config; both at once is an error.  The
    field's own name is the one the reference (``docs/reference/``) documents.
    """
    return {ALIASES: names}


def flattened(prefix: str) -> dict[str, str]:
    """Field metadata: a table field whose members a config may also give flat, with ``prefix``.

    ``redis: RedisSettings | None = attrs.field(default=None, metadata=flattened("redis_"))``
    accepts Kong's ``redis_host = "h"`` as ``redis = {host = "h"}``; a ``null`` is
    Kong's "unset"; one member both ways is an error.
    """
    return {FLATTENED: prefix}


def positive(_: Any, attribute: Any, value: float | None) -> None:
    """``value > 0`` (NaN fails too)."""
    if value is not None and not value > 0:
        raise ValueError(f"must be greater than 0, got {value}")


def non_negative(_: Any, attribute: Any, value: float | None) -> None:
    """``value >= 0`` (NaN fails too)."""
    if value is not None and not value >= 0:
        raise ValueError(f"must be 0 or more, got {value}")


def port(_: Any, attribute: Any, value: int | None) -> None:
    """A port to connect to: 1-65535."""
    if value is not None and not 0 < value < 65536:
        raise ValueError(f"must be a port number 1-65535, got {value}")


def tcp_port(_: Any, attribute: Any, value: int | None) -> None:
    """A port to listen on: 0-65535 (0 lets the system choose)."""
    if value is not None and not 0 <= value < 65536:
        raise ValueError(f"must be a TCP port (0-65535), got {value}")


def non_empty(_: Any, attribute: Any, value: Any) -> None:
    """A non-empty string (``None`` passes: the field is optional)."""
    if value is not None and not value:
        raise ValueError("must not be empty")


def _is_header_name(value: str) -> bool:
    return value.isascii() and is_header_name(value.encode("ascii")) is not None


def header_name(_: Any, attribute: Any, value: str | None) -> None:
    """An HTTP field name (RFC 9110 §5.1: a token)."""
    if value is not None and not _is_header_name(value):
        raise ValueError(f"must be a header name, got {value!r}")


def header_names(_: Any, attribute: Any, value: Iterable[str]) -> None:
    for item in value:
        if not _is_header_name(item):
            raise ValueError(f"expected a header name, got {item!r}")
