"""Turn plain data (TOML tables, dicts) into frozen attrs config objects.

The converter walks an attrs class's typed fields and the data side by side,
so every problem is reported with the exact path of the bad field
(``services[1].routes[0].paths[2]: ...``).  It collects all errors instead
of stopping at the first; the caller refuses the whole config when any was
found.  Strings of the form ``{env://NAME}`` or ``{file:///path}`` are
secret references, resolved here.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs

from ._errors import ConfigError, FieldError

__all__ = ["EXTRA_FIELDS", "Errors", "join", "resolve_secret", "structure", "structure_or_raise"]

# Metadata key of the one field of an attrs class that takes the table's keys no
# other field names (as plain data, for a later pass) instead of refusing them:
# ``consumers[].<credential field>``, declared by plugins, not by the core.
EXTRA_FIELDS = "gatekeep.extra_fields"


# What ``structure`` returns for a value of the wrong shape (already reported).
INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "<invalid>"})()


class Errors(list[FieldError]):
    def add(self, path: str, message: str) -> None:
        self.append(FieldError(path, message))


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def resolve_secret(value: str, path: str, errors: Errors) -> Any:
    """Resolve ``{env://NAME}`` and ``{file:///path}`` references."""
    if not (value.startswith("{") and value.endswith("}")):
        return value
    ref = value[1:-1]
    if ref.startswith("env://"):
        name = ref[len("env://") :]
        found = os.environ.get(name)
        if found is None:
            errors.add(path, f"environment variable {name!r} is not set")
            return INVALID
        return found
    if ref.startswith("file://"):
        file = ref[len("file://") :]
        try:
            return Path(file).read_text().strip()
        except OSError as exc:
            errors.add(path, f"cannot read secret file {file!r}: {exc.strerror}")
            return INVALID
    return value


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    if tp in names:
        return names[tp]
    origin = get_origin(tp)
    if origin in (list, tuple, Sequence, frozenset, set):
        return "an array"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a table"
    if attrs.has(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def structure(tp: Any, data: Any, path: str, errors: Errors) -> Any:
    """Convert ``data`` to ``tp``; on failure record errors and return a sentinel-free best effort."""
    if tp is Any or tp is object:
        return data
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if data is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for arg in non_none:
            trial = Errors()
            value = structure(arg, data, path, trial)
            if not trial:
                return value
        if len(non_none) == 1:
            return structure(non_none[0], data, path, errors)
        errors.add(path, f"expected {' or '.join(_type_name(a) for a in non_none)}, got {_describe(data)}")
        return INVALID
    if origin is Literal:
        choices = get_args(tp)
        if data not in choices:
            errors.add(path, f"must be one of {', '.join(repr(c) for c in choices)}, got {data!r}")
            return INVALID
        return data
    if tp is bool:
        if not isinstance(data, bool):
            errors.add(path, f"expected a boolean, got {_describe(data)}")
            return INVALID
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            errors.add(path, f"expected an integer, got {_describe(data)}")
            return INVALID
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            errors.add(path, f"expected a number, got {_describe(data)}")
            return INVALID
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            errors.add(path, f"expected a string, got {_describe(data)}")
            return INVALID
        return resolve_secret(data, path, errors)
    if origin in (list, tuple, Sequence, frozenset, set) or tp in (list, tuple):
        if isinstance(data, str | bytes) or not isinstance(data, list | tuple):
            errors.add(path, f"expected an array, got {_describe(data)}")
            return INVALID
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [structure(item_tp, item, join(path, i), errors) for i, item in enumerate(data)]
        items = [None if item is INVALID else item for item in items]
        if origin is frozenset:
            return frozenset(items)
        if origin is set:
            return set(items)
        if origin is list:
            return items
        return tuple(items)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(data, Mapping):
            errors.add(path, f"expected a table, got {_describe(data)}")
            return INVALID
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): structure(val_tp, v, join(path, str(k)), errors) for k, v in data.items()}
    if attrs.has(tp):
        return _structure_attrs(tp, data, path, errors)
    if isinstance(tp, type):
        if not isinstance(data, tp):
            errors.add(path, f"expected {_type_name(tp)}, got {_describe(data)}")
            return INVALID
        return data
    return data


def _describe(data: Any) -> str:
    if data is None:
        return "nothing"
    if isinstance(data, bool):
        return f"boolean {str(data).lower()}"
    if isinstance(data, int | float):
        return f"number {data!r}"
    if isinstance(data, str):
        return f"string {data!r}" if len(data) < 40 else "a string"
    if isinstance(data, Mapping):
        return "a table"
    if isinstance(data, list | tuple):
        return "an array"
    return type(data).__name__


def _structure_attrs(cls: type[Any], data: Any, path: str, errors: Errors) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        errors.add(path, f"expected a table, got {_describe(data)}")
        return INVALID
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    extra = next((f for f in fields if f.init and f.metadata.get(EXTRA_FIELDS)), None)
    known = {f.alias or f.name: f for f in fields if f.init and f is not extra}
    unknown = [k for k in data if k not in known]
    kwargs: dict[str, Any] = {}
    if extra is not None:
        kwargs[extra.alias or extra.name] = {str(k): data[k] for k in unknown}
    else:
        for k in unknown:
            errors.add(join(path, str(k)), f"unknown field (expected one of: {', '.join(sorted(known))})")
    start = len(errors)
    missing = False
    for key, field in known.items():
        fpath = join(path, key)
        if key not in data:
            if field.default is attrs.NOTHING:
                errors.add(fpath, "is required")
                missing = True
            continue
        value = structure(hints.get(field.name, Any), data[key], fpath, errors)
        if value is INVALID or value is None and field.default is attrs.NOTHING:
            # Wrong shape: keep checking the rest with the default in its place.
            if field.default is attrs.NOTHING:
                missing = True
            continue
        if field.converter is not None:
            try:
                value = field.converter(value)
            except (TypeError, ValueError) as exc:
                errors.add(fpath, str(exc))
                continue
        if field.validator is not None:
            try:
                field.validator(None, field, value)
            except (TypeError, ValueError) as exc:
                errors.add(fpath, _clean(str(exc)))
        kwargs[key] = value
    if missing:
        return INVALID
    try:
        if len(errors) != start:
            # Build it anyway (validators off) so the whole-config checks can
            # still look at it and report their errors too.
            with attrs.validators.disabled():
                return cls(**kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.add(path, _clean(str(exc)))
        return INVALID


def _clean(message: str) -> str:
    # attrs' messages quote the attribute name first; the path already says it.
    return message.split(": <", 1)[0] if ": <" in message else message


def structure_or_raise(tp: type[Any], data: Any, path: str = "") -> Any:
    """Like ``structure`` but raises ``ConfigError`` listing every problem."""
    errors = Errors()
    value = structure(tp, data, path, errors)
    if errors:
        raise ConfigError(errors)
    return value
