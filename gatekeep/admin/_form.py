"""Request bodies of the Admin API, decoded the way Kong's Admin API decodes them.

Three content types carry the same arguments:

- ``application/x-www-form-urlencoded``: ``name=a&config.second=5&paths[]=/a&paths[]=/b``.
  A dotted key nests (``config.second`` is ``{"config": {"second": ...}}``); ``key[]``
  appends to an array, ``key[2]`` puts the value at that (1-based) place; a key
  given twice is an array.  Values arrive as strings; ``infer`` then types them
  by the schema of the entity (a plugin's ``Config`` class), and an empty value is
  ``None`` (Kong's null: "unset, use the default").
- ``multipart/form-data``: the same keys, one part each; a part of type
  ``application/json`` holds a decoded JSON value.
- ``application/json``: an object, taken as it is (JSON already has types).

Everything a client sends is bounded: at most ``MAX_ARGUMENTS`` arguments,
array positions up to ``MAX_INDEX``, keys ``MAX_DEPTH`` levels deep and JSON
``MAX_JSON_DEPTH`` levels deep; past that, or for an unreadable body,
``BadBody`` (a 400).
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qsl

import attrs

__all__ = ["BadBody", "decode_body", "decode_pairs", "infer"]

MAX_ARGUMENTS = 1000
MAX_INDEX = 1000
MAX_DEPTH = 8
MAX_JSON_DEPTH = 32

_INDEXED = re.compile(r"^(.+?)((?:\[\d*\])+)$")
_INDEX = re.compile(r"\[(\d*)\]")


class BadBody(ValueError):
    """The body cannot be read as arguments (answered 400 with this message)."""


def decode_body(content_type: str, body: bytes) -> dict[str, Any]:
    """The arguments of a request body (empty for no body); raises ``BadBody``."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if not body.strip() and kind != "multipart/form-data":
        return {}
    if kind == "application/json" or kind.endswith("+json"):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadBody("Cannot parse JSON body") from None
        if not isinstance(data, dict):
            raise BadBody("the JSON body must be an object")
        if _depth(data) > MAX_JSON_DEPTH:
            raise BadBody(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
        return data
    if kind == "multipart/form-data":
        return decode_pairs(_multipart(content_type, body))
    if kind in ("application/x-www-form-urlencoded", ""):
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(
                text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_ARGUMENTS
            )
        except (UnicodeDecodeError, ValueError):
            raise BadBody(f"a form body of UTF-8 text and at most {MAX_ARGUMENTS} arguments") from None
        return decode_pairs(pairs)
    raise BadBody(f"unsupported content type {kind!r} (form, multipart or JSON)")


def _multipart(content_type: str, body: bytes) -> list[tuple[str, Any]]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadBody("a multipart body without a boundary")
    pairs: list[tuple[str, Any]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        value: Any
        if part.get_content_type() == "application/json":
            try:
                value = json.loads(data)
                if _depth(value) > MAX_JSON_DEPTH:
                    raise ValueError("too deep")
            except (ValueError, RecursionError):
                raise BadBody(f"part {name!r}: invalid JSON") from None
        else:
            value = data.decode("utf-8", "replace")
        pairs.append((name, value))
        if len(pairs) > MAX_ARGUMENTS:
            raise BadBody(f"more than {MAX_ARGUMENTS} arguments")
    return pairs


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (iteratively: a hostile body cannot blow the stack)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest


def decode_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Kong's argument names (``a.b``, ``a[]``, ``a[2]``) to nested data; values stay as sent."""
    if len(pairs) > MAX_ARGUMENTS:
        raise BadBody(f"more than {MAX_ARGUMENTS} arguments")
    result: dict[str, Any] = {}
    indexed: dict[tuple[str, ...], dict[int, Any]] = {}
    for name, value in pairs:
        segments = [name] if name.startswith(".") or name.endswith(".") else name.split(".")
        if len(segments) > MAX_DEPTH or not all(segments):
            raise BadBody(f"argument {name!r}: not a usable name")
        *parents, last = segments
        index: int | None = None
        append = False
        match = _INDEXED.match(last)
        if match:
            last = match.group(1)
            positions = _INDEX.findall(match.group(2))
            if len(positions) > 1:
                raise BadBody(f"argument {name!r}: arrays of arrays are not supported")
            if positions[0]:
                index = int(positions[0])
                if not 0 < index <= MAX_INDEX:
                    raise BadBody(f"argument {name!r}: positions run from 1 to {MAX_INDEX}")
            else:
                append = True
        container = result
        for parent in parents:
            child = container.setdefault(parent, {})
            if not isinstance(child, dict):
                raise BadBody(f"argument {name!r}: {parent!r} is both a value and a table")
            container = child
        key = (*parents, last)
        if index is not None:
            slots = indexed.setdefault(key, {})
            slots[index] = value
            container[last] = [slots[i] for i in sorted(slots)]
        elif append:
            existing = container.get(last)
            container[last] = [*existing, value] if isinstance(existing, list) else [value]
        elif last in container:
            existing = container[last]
            if isinstance(existing, dict):
                raise BadBody(f"argument {name!r}: {last!r} is both a value and a table")
            container[last] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            container[last] = value
    return result


def infer(data: Mapping[str, Any], schema: Any) -> dict[str, Any]:
    """``data`` (from a form) typed by ``schema``: an attrs class or a mapping of field types.

    Strings become numbers and booleans where the schema says so; a string that
    does not convert is left alone for the validator to name.  ``""`` is ``None``.
    Unknown keys are left as they are (the validator refuses them).
    """
    fields = _fields(schema)
    return {key: _value(value, fields.get(key, Any)) for key, value in data.items()}


def _fields(schema: Any) -> Mapping[str, Any]:
    if isinstance(schema, Mapping):
        return schema
    if attrs.has(schema):
        hints = typing.get_type_hints(schema)
        return {f.alias or f.name: hints.get(f.name, Any) for f in attrs.fields(schema) if f.init}
    return {}


def _value(value: Any, tp: Any) -> Any:
    if isinstance(value, str) and value == "":
        return None
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        options = [a for a in get_args(tp) if a is not type(None)]
        if isinstance(value, dict):
            table = next((a for a in options if attrs.has(a) or _is_mapping(a)), None)
            return _value(value, table) if table is not None else value
        if isinstance(value, list):
            array = next((a for a in options if _is_array(a)), None)
            return _value(value, array) if array is not None else value
        for option in options:
            typed = _value(value, option)
            if typed is not value:
                return typed
        return value
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, str) and value not in choices:
            for choice in choices:
                if not isinstance(choice, str) and str(choice).lower() == value.lower():
                    return choice
        return value
    if isinstance(value, str):
        return _scalar(value, tp, origin)
    if isinstance(value, list) and _is_array(tp):
        args = get_args(tp)
        item = args[0] if args else Any
        return [_value(v, item) for v in value]
    if isinstance(value, dict):
        if attrs.has(tp):
            return infer(value, tp)
        if _is_mapping(tp):
            args = get_args(tp)
            item = args[1] if len(args) == 2 else Any
            return {k: _value(v, item) for k, v in value.items()}
    return value


def _scalar(value: str, tp: Any, origin: Any) -> Any:
    if tp is bool:
        return {"true": True, "false": False}.get(value, value)
    if tp is int:
        try:
            return int(value)
        except ValueError:
            return value
    if tp is float:
        try:
            return float(value)
        except ValueError:
            return value
    if _is_array(tp):
        # One value for an array field: an array of one (Kong's ``methods=GET``).
        args = get_args(tp)
        return [_value(value, args[0] if args else Any)]
    return value


def _is_array(tp: Any) -> bool:
    origin = get_origin(tp)
    return (
        origin in (list, tuple, frozenset, set)
        or tp in (list, tuple)
        or (origin is not None and getattr(origin, "__name__", "") == "Sequence")
    )


def _is_mapping(tp: Any) -> bool:
    origin = get_origin(tp)
    return origin in (dict, Mapping) or tp in (dict, Mapping)
