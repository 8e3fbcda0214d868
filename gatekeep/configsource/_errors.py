"""Errors of config stores: unreachable or unreadable (503), and a lost check-and-set (409)."""

from __future__ import annotations

from typing import ClassVar

from .._errors import GatekeepError

__all__ = ["ConfigSourceError", "VersionConflict"]


class ConfigSourceError(GatekeepError):
    """A config store could not be read or written (Consul down, a file not writable ...)."""

    status: ClassVar[int] = 503
    title: ClassVar[str] = "Config Source Unavailable"
    slug: ClassVar[str] = "config-source-unavailable"


class VersionConflict(ConfigSourceError):
    """A check-and-set write lost: the store holds another version than the one expected.

    Attributes:
        current: the version stored now (``"0"``: nothing).
    """

    status: ClassVar[int] = 409
    title: ClassVar[str] = "Config Version Conflict"
    slug: ClassVar[str] = "config-version-conflict"

    def __init__(self, expected: str, current: str) -> None:
        super().__init__(
            f"the stored config changed (expected version {expected}, found {current}); read it again"
        )
        self.current = current
