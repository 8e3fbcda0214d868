"""A config as stored: plain data, its hash, when it was read; and what a store answers (``Snapshot``).

The hash is the sha256 of a canonical JSON form (keys sorted, no spaces,
UTF-8), so the same config has the same hash in every process, whatever the
file format or key order it came in: ``gatekeep serve`` processes converge on
one hash, and operators compare it across a fleet.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import attrs

from .._config_files import Format, format_of, parse_config_bytes
from .._errors import ConfigError, FieldError

__all__ = ["ConfigDocument", "Format", "Snapshot", "canonical_json", "format_of", "parse_config_bytes"]


def canonical_json(data: Mapping[str, Any]) -> bytes:
    """The one JSON spelling of ``data`` the hash is taken over (and Consul KV stores)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@attrs.frozen
class ConfigDocument:
    """A config as plain data (gatekeep's TOML shape, or a Kong declarative/decK file).

    Attributes:
        data: the config, JSON-able.
        hash: sha256 (hex) of ``canonical_json(data)``.
        loaded_at: when it was read (Unix time, for display only).
    """

    data: Mapping[str, Any]
    hash: str
    loaded_at: float

    @classmethod
    def of(cls, data: Mapping[str, Any], loaded_at: float | None = None) -> ConfigDocument:
        """A document for ``data`` (which must be JSON-able: TOML dates are refused)."""
        try:
            digest = hashlib.sha256(canonical_json(data)).hexdigest()
        except (TypeError, ValueError) as exc:
            raise ConfigError([FieldError("", f"the config is not plain data: {exc}")]) from exc
        return cls(data=data, hash=digest, loaded_at=time.time() if loaded_at is None else loaded_at)


@attrs.frozen
class Snapshot:
    """What a store holds at one version.

    Attributes:
        document: the config; ``None`` when nothing is stored or it could not be parsed.
        version: opaque, changes with every write (``"0"``: nothing stored).
        error: why the stored bytes could not be parsed (then ``document`` is ``None``).
    """

    document: ConfigDocument | None
    version: str
    error: ConfigError | None = None
