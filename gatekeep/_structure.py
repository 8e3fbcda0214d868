"""Turn plain data (TOML tables, dicts) into frozen attrs config objects.

The converter walks an attrs class's typed fields and the data side by side,
so every problem is reported with the exact path of the bad field
(``services[1].routes[0].paths[2]: ...``).  It collects all errors instead
of stopping at the first; the caller refuses the whole config when any was
found.  Strings of the form ``{env://NAME}`` or ``{file:///path}`` are
secret references, resolved here.
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs

from ._errors import ConfigError, FieldError
from ._secrets import Secret

__all__ = [
    "ALIASES",
    "EXTRA_FIELDS",
    "FLATTENED",
    "Errors",
    "join",
    "resolve_secret",
    "structure",
    "structure_or_raise",
]

# Metadata key of the one field of an attrs class that takes the table's keys no
# other field names (as plain data, for a later pass) instead of refusing them:
# ``consumers[].<credential field>``, declared by plugins, not by the core.
EXTRA_FIELDS = "gatekeep.extra_fields"
# Metadata key of the other names a field is accepted under in a config (old or
# another plugin's spelling: jwt ``roles_claim`` for ``roles_claims``); the
# field's own name is the documented one (docs/reference/).
ALIASES = "gatekeep.aliases"
# Metadata key of a table field that also takes its members flat, with this
# prefix: Kong's rate-limiting ``redis_host = ...`` for ``redis = {host = ...}``.
FLATTENED = "gatekeep.flattened"


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
    """Resolve ``{env://NAME}``, Kong's ``{vault://env/NAME}`` and ``{file:///path}`` references."""
    if isinstance(value, Secret) or not (value.startswith("{") and value.endswith("}")):
        # A decrypted {enc:...} value (gatekeep/_secrets.py) is a literal, never a reference.
        return value
    ref = value[1:-1]
    if ref.startswith("env://"):
        name = ref[len("env://") :]
        found = os.environ.get(name)
        if found is None:
            errors.add(path, f"environment variable {name!r} is not set")
            return INVALID
        return found
    if ref.startswith("vault://env/"):
        return _kong_env_vault(ref[len("vault://env/") :], path, errors)
    if ref.startswith("file://"):
        file = ref[len("file://") :]
        try:
            return Path(file).read_text().strip()
        except OSError as exc:
            errors.add(path, f"cannot read secret file {file!r}: {exc.strerror}")
            return INVALID
    return value


def _kong_env_vault(ref: str, path: str, errors: Errors) -> Any:
    """Kong's ``{vault://env/my-secret}``: the variable ``MY_SECRET``; ``/key`` picks a member of its JSON."""
    name, _, key = ref.partition("/")
    variable = name.upper().replace("-", "_")
    found = os.environ.get(variable)
    if found is None:
        errors.add(path, f"environment variable {variable!r} is not set (from {{vault://env/{ref}}})")
        return INVALID
    if not key:
        return found
    try:
        member = json.loads(found)[key]
    except (ValueError, TypeError, KeyError):
        errors.add(path, f"environment variable {variable!r} is not JSON with a {key!r} member")
        return INVALID
    return member if isinstance(member, str) else json.dumps(member)


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
    data = _unalias(known, data, path, errors)
    data = _unflatten(known, data, path, errors)
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
        before = len(errors)
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
        # A value with errors inside (an entry whose secret reference failed ...) is
        # incomplete: its validator would only report the same mistake again, or crash.
        if field.validator is not None and len(errors) == before:
            try:
                field.validator(None, field, value)
            except (TypeError, ValueError) as exc:
                errors.add(fpath, _clean(str(exc)))
        kwargs[key] = value
    if missing:
        return INVALID
    if len(errors) != start:
        # Build it anyway (validators off) so the whole-config checks can
        # still look at it and report their errors too; a class that cannot be
        # built from the incomplete fields adds nothing to what was reported.
        try:
            with attrs.validators.disabled():
                return cls(**kwargs)
        except Exception:
            return INVALID
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.add(path, _clean(str(exc)))
        return INVALID


def _unalias(
    known: Mapping[str, Any], data: Mapping[str, Any], path: str, errors: Errors
) -> Mapping[str, Any]:
    """``data`` with the other accepted names of fields (``ALIASES`` metadata) under the field's own."""
    renamed: dict[str, Any] | None = None
    for key, field in known.items():
        for alias in field.metadata.get(ALIASES, ()):
            if alias not in data:
                continue
            if renamed is None:
                renamed = dict(data)
            value = renamed.pop(alias)
            if key in data:
                errors.add(join(path, alias), f"is another name of {key!r}; set one of them")
                continue
            renamed[key] = value
    return data if renamed is None else renamed


def _unflatten(
    known: Mapping[str, Any], data: Mapping[str, Any], path: str, errors: Errors
) -> Mapping[str, Any]:
    """``data`` with ``<prefix><member>`` keys (``FLATTENED`` metadata) moved into the field's table."""
    out: dict[str, Any] | None = None
    for key, field in known.items():
        prefix = field.metadata.get(FLATTENED)
        if not prefix:
            continue
        flat = [k for k in data if isinstance(k, str) and k.startswith(prefix) and k not in known]
        if not flat:
            continue
        out = dict(data) if out is None else out
        table = out.get(key)
        if table is not None and not isinstance(table, Mapping):
            continue  # reported as the field's own error
        merged = dict(table or {})
        for k in flat:
            value = out.pop(k)
            member = k[len(prefix) :]
            if value is None:
                continue  # Kong's "unset"
            if member in merged:
                if merged[member] != value:  # Kong's dumps carry both spellings, alike
                    errors.add(join(path, k), f"is also set as {key}.{member}; set one of them")
                continue
            merged[member] = value
        if merged or table is not None:
            out[key] = merged
    return data if out is None else out


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
