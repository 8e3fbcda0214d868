"""``FileStore``: a config file, watched; written atomically.

Theory of operation
-------------------
The watcher polls the file's ``(mtime, size, inode)`` every
``poll_interval`` seconds (no inotify: it works on every filesystem,
including bind mounts and Kubernetes ConfigMaps, whose updates are a
symlink swap).  When it changed, the file must then stay unchanged for
``settle`` seconds before it is read, and unchanged across the read: an
editor or ``cp`` writing the file in place is seen only once it finished.
Bytes that do not parse (a half-written file that slipped through) are
reported as ``Snapshot.error``; the reloader keeps the last good config.
The version is the sha256 of the bytes: rewriting the same content is no
change.

``write`` serialises by the file's extension (TOML, JSON, YAML), writes a
temporary file in the same directory, fsyncs it and renames it over the
file (atomic on POSIX), under an ``flock`` on a ``.<name>.lock`` file beside
it so that the check-and-set holds between processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .._errors import ConfigError
from ._document import ConfigDocument, Snapshot, format_of, parse_config_bytes
from ._errors import ConfigSourceError, VersionConflict
from ._store import as_document
from ._toml import dumps_toml

__all__ = ["FileStore"]

_Stat = tuple[int, int, int] | None


class FileStore:
    """A config file (TOML, JSON, or YAML/decK) as a config store.

    Args:
        path: the file.
        poll_interval: seconds between two looks at the file.
        settle: seconds a changed file must stay unchanged before it is read.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, poll_interval: float = 0.2, settle: float = 0.1
    ) -> None:
        self.path = Path(path).absolute()
        self.format = format_of(self.path.name)
        self.poll_interval = poll_interval
        self.settle = settle
        self._wake = anyio.Event()

    @property
    def name(self) -> str:
        return f"file:{self.path}"

    def _stat(self) -> _Stat:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigSourceError(f"cannot read {self.path}: {exc.strerror}") from exc
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_stable(self) -> tuple[_Stat, bytes | None]:
        """The file's bytes, read while its stat did not change (else read again)."""
        for _ in range(50):
            before = self._stat()
            if before is None:
                return None, None
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ConfigSourceError(f"cannot read {self.path}: {exc.strerror}") from exc
            if self._stat() == before:
                return before, raw
        raise ConfigSourceError(f"{self.path} keeps changing while it is read")

    def _snapshot(self, raw: bytes | None) -> Snapshot:
        if raw is None:
            return Snapshot(None, "0")
        version = hashlib.sha256(raw).hexdigest()[:32]
        try:
            data = parse_config_bytes(raw, self.format, str(self.path))
            return Snapshot(ConfigDocument.of(data), version)
        except ConfigError as exc:
            return Snapshot(None, version, exc)

    async def read(self) -> Snapshot:
        _, raw = await anyio.to_thread.run_sync(self._read_stable)
        return self._snapshot(raw)

    def notify(self) -> None:
        """Look at the file now (SIGHUP), not at the next poll."""
        self._wake.set()

    async def watch(self, after_version: str) -> AsyncIterator[Snapshot]:
        seen_version = after_version
        seen_stat: _Stat | tuple[()] = ()  # never equal to a stat: look once at the start
        while True:
            try:
                stat = await anyio.to_thread.run_sync(self._stat)
                if stat != seen_stat:
                    # Changed: wait until it stays put for ``settle`` (a writer in the middle of it).
                    while True:
                        await anyio.sleep(self.settle)
                        again = await anyio.to_thread.run_sync(self._stat)
                        if again == stat:
                            break
                        stat = again
                    stat, raw = await anyio.to_thread.run_sync(self._read_stable)
                    seen_stat = stat
                    snapshot = self._snapshot(raw)
                    if snapshot.version != seen_version:
                        seen_version = snapshot.version
                        yield snapshot
            except ConfigSourceError:
                pass  # unreadable for now (permissions, a disappearing mount): look again later
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()
                seen_stat = ()

    async def write(self, data: Mapping[str, Any] | ConfigDocument, expected_version: str | None) -> str:
        document = as_document(data)
        text = self._serialise(document.data)
        return await anyio.to_thread.run_sync(self._write, text.encode("utf-8"), expected_version)

    def _serialise(self, data: Mapping[str, Any]) -> str:
        try:
            if self.format == "json":
                return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            if self.format == "yaml":
                try:
                    yaml: Any = importlib.import_module("yaml")
                except ImportError as exc:
                    raise ConfigSourceError(
                        "writing YAML needs PyYAML: pip install 'gatekeep[kong]'"
                    ) from exc
                text: str = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
                return text
            return dumps_toml(data)
        except ValueError as exc:
            raise ConfigSourceError(
                f"cannot write this config as {self.format} ({self.path}): {exc}"
            ) from exc

    def _write(self, raw: bytes, expected_version: str | None) -> str:
        directory = self.path.parent
        lock_path = directory / f".{self.path.name}.lock"
        try:
            with open(lock_path, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if expected_version is not None:
                    _, current = self._read_stable()
                    version = self._snapshot(current).version
                    if version != expected_version:
                        raise VersionConflict(expected_version, version)
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(raw)
                        out.flush()
                        os.fsync(out.fileno())
                    with contextlib.suppress(OSError):
                        os.chmod(tmp, self.path.stat().st_mode & 0o777)
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                dir_fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            raise ConfigSourceError(f"cannot write {self.path}: {exc.strerror}") from exc
        return hashlib.sha256(raw).hexdigest()[:32]

    async def aclose(self) -> None:
        return None
