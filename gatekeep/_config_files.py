"""Config files' formats: TOML, JSON, YAML (a decK ``kong.yml``), by the file's extension.

Below ``gatekeep._config`` (which reads files with it) and ``gatekeep.configsource`` (whose
stores hold files): plain bytes in, plain data out.
"""

from __future__ import annotations

import importlib
import json
import tomllib
from typing import Any, Literal

from ._errors import ConfigError, FieldError

__all__ = ["Format", "format_of", "parse_config_bytes"]

Format = Literal["toml", "json", "yaml"]


def format_of(name: str) -> Format:
    """The format a file name implies: ``.json``, ``.yml``/``.yaml``, else TOML."""
    lower = name.lower()
    if lower.endswith(".json"):
        return "json"
    if lower.endswith((".yml", ".yaml")):
        return "yaml"
    return "toml"


def parse_config_bytes(raw: bytes, fmt: Format, where: str) -> dict[str, Any]:
    """Parse a config file's bytes.

    Raises:
        ConfigError: not UTF-8, not valid ``fmt``, or not a table at the top; or
            YAML without PyYAML installed (``pip install 'gatekeep[kong]'``).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(f"{where}: not UTF-8: {exc}") from exc
    data: Any
    if fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _error(f"{where}: invalid TOML: {exc}") from exc
    elif fmt == "json":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _error(f"{where}: invalid JSON: {exc}") from exc
    else:
        data = _yaml(text, where)
    if not isinstance(data, dict):
        raise _error(f"{where}: expected a table (mapping) at the top, got {type(data).__name__}")
    return data


def _yaml(text: str, where: str) -> Any:
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError as exc:
        raise _error(f"{where}: reading YAML needs PyYAML: pip install 'gatekeep[kong]'") from exc
    try:
        # Safe loading: plain data only, no Python objects; dates stay strings below.
        return yaml.load(text, Loader=_loader(yaml))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _error(f"{where}: invalid YAML: {exc}") from exc


def _loader(yaml: Any) -> Any:
    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    # Timestamps stay strings (Kong's created_at is an integer anyway): the data must be JSON-able.
    Loader.yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader


def _error(message: str) -> ConfigError:
    return ConfigError([FieldError("", message)])
