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

__all__ = ["header_name", "header_names", "non_empty", "non_negative", "port", "positive", "tcp_port"]


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
