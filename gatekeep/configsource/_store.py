"""The ``ConfigStore`` protocol, and ``MemoryStore`` (one process: tests and embedding).

A store is the single source of truth of a gateway's config: every process
of a fleet reads it and watches it, and the Admin API writes to it (never
only to its own memory).  Versions are opaque strings that change with every
write (``"0"``: nothing stored); ``write`` is a check-and-set against the
version the writer read, so two writers cannot silently overwrite each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, runtime_checkable

import anyio

from ._document import ConfigDocument, Snapshot
from ._errors import VersionConflict

__all__ = ["ConfigStore", "MemoryStore", "as_document"]


@runtime_checkable
class ConfigStore(Protocol):
    """Where a gateway's config lives (a file, Consul KV, memory)."""

    @property
    def name(self) -> str:
        """Where, for humans: ``file:/etc/gatekeep.toml``, ``consul://127.0.0.1:8500/gatekeep/config``."""
        ...

    async def read(self) -> Snapshot:
        """The config stored now (``Snapshot.error`` when its bytes do not parse).

        Raises:
            ConfigSourceError: the store cannot be reached.
        """
        ...

    async def write(self, data: Mapping[str, Any] | ConfigDocument, expected_version: str | None) -> str:
        """Store ``data`` if the stored version is still ``expected_version``; the new version.

        ``expected_version`` ``None`` writes unconditionally, ``"0"`` only when nothing is stored.

        Raises:
            VersionConflict: another version is stored.
            ConfigSourceError: the store cannot be reached or written.
        """
        ...

    def watch(self, after_version: str) -> AsyncIterator[Snapshot]:
        """Each snapshot newer than ``after_version``, as soon as it is stored (runs until cancelled).

        Errors reaching the store are retried with a backoff, never raised.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def as_document(data: Mapping[str, Any] | ConfigDocument) -> ConfigDocument:
    return data if isinstance(data, ConfigDocument) else ConfigDocument.of(data)


class MemoryStore:
    """A store in this process's memory (tests, an embedded gateway with an Admin API)."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._snapshot = Snapshot(None, "0") if data is None else Snapshot(as_document(data), "1")
        self._counter = 0 if data is None else 1
        self._changed = anyio.Event()

    @property
    def name(self) -> str:
        return "memory:"

    async def read(self) -> Snapshot:
        return self._snapshot

    async def write(self, data: Mapping[str, Any] | ConfigDocument, expected_version: str | None) -> str:
        if expected_version is not None and expected_version != self._snapshot.version:
            raise VersionConflict(expected_version, self._snapshot.version)
        self._counter += 1
        self._snapshot = Snapshot(as_document(data), str(self._counter))
        self._changed.set()
        self._changed = anyio.Event()
        return self._snapshot.version

    async def watch(self, after_version: str) -> AsyncIterator[Snapshot]:
        seen = after_version
        while True:
            if self._snapshot.version != seen:
                seen = self._snapshot.version
                yield self._snapshot
                continue
            await self._changed.wait()

    async def aclose(self) -> None:
        return None
