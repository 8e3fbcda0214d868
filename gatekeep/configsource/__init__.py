"""Config sources: where a gateway's config lives, and how every process learns of a change.

One abstraction, ``ConfigStore`` (read, check-and-set write, watch), with a
file (watched, SIGHUP, atomic writes), Consul KV (blocking queries, ``cas``)
and memory.  The store is the single source of truth: ``gatekeep serve``
processes and workers watch it and reload (``gatekeep/_reload.py``), the
Admin API and ``gatekeep config push`` write to it.  See
docs/configuration-reload.md.
"""

from __future__ import annotations

from ._consul_kv import ConsulKVStore
from ._document import ConfigDocument, Snapshot, canonical_json, format_of, parse_config_bytes
from ._errors import ConfigSourceError, VersionConflict
from ._file import FileStore
from ._load import to_config
from ._open import open_store
from ._store import ConfigStore, MemoryStore
from ._toml import dumps_toml

__all__ = [
    "ConfigDocument",
    "ConfigSourceError",
    "ConfigStore",
    "ConsulKVStore",
    "FileStore",
    "MemoryStore",
    "Snapshot",
    "VersionConflict",
    "canonical_json",
    "dumps_toml",
    "format_of",
    "open_store",
    "parse_config_bytes",
    "to_config",
]
