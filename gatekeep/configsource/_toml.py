"""Plain data as TOML (for ``FileStore.write`` and ``gatekeep config pull``): tomllib only reads.

Every table below the top is written inline (``{a = 1}``) and every array on
one line: valid TOML 1.0 that ``tomllib`` reads back to the same data.  TOML
has no null: ``None`` members of a table are left out (gatekeep's defaults),
``None`` in an array is refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps_toml"]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def dumps_toml(data: Mapping[str, Any]) -> str:
    """``data`` as TOML text.

    Raises:
        ValueError: a value TOML cannot hold (``None`` in an array, NaN, an object).
    """
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if v is not None]
    return "\n".join(lines) + "\n"


def _key(key: Any) -> str:
    text = str(key)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r} here")
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are TOML basic-string escapes (json.dumps never writes "\/").
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        members = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
        return "{" + members + "}"
    if isinstance(value, Sequence):
        if any(v is None for v in value):
            raise ValueError("TOML cannot hold null in an array")
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ValueError(f"TOML cannot hold a {type(value).__name__}")
