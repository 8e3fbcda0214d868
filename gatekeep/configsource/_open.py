"""``open_store(url)``: the store a ``--config-source`` names (``gatekeep serve``, ``gatekeep config``)."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlsplit

from ._consul_kv import ConsulKVStore
from ._file import FileStore
from ._store import ConfigStore

__all__ = ["open_store"]


def open_store(source: str, *, token: str | None = None) -> ConfigStore:
    """The store ``source`` names.

    - ``consul://host:8500/gatekeep/config`` (``consul+https://`` for TLS): a Consul KV key;
      the token is ``token``, else ``$CONSUL_HTTP_TOKEN``; ``?dc=`` and ``?wait=`` as Consul's.
    - ``file:///etc/gatekeep/gatekeep.toml`` or a plain path: a file (TOML, JSON, YAML/decK).

    Raises:
        ValueError: not a source gatekeep knows.
    """
    parts = urlsplit(source)
    if parts.scheme in ("consul", "consul+http", "consul+https"):
        if not parts.hostname:
            raise ValueError(f"expected consul://host:port/key, got {source!r}")
        scheme = "https" if parts.scheme == "consul+https" else "http"
        port = parts.port or (8501 if scheme == "https" else 8500)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        query = dict(parse_qsl(parts.query))
        return ConsulKVStore(
            f"{scheme}://{host}:{port}",
            unquote(parts.path),
            token=token or os.environ.get("CONSUL_HTTP_TOKEN") or None,
            dc=query.get("dc"),
            wait=query.get("wait", "30s"),
        )
    if parts.scheme == "file":
        return FileStore(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        raise ValueError(f"unknown config source {source!r} (expected consul://host:port/key or a file path)")
    return FileStore(source)
