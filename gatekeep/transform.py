"""Kong's transformer rules — remove, rename, replace, add, append — as compiled, sans-IO objects.

The ``request-transformer`` and ``response-transformer`` plugins share this
library: a config's ``"name:value"`` strings are checked and compiled once
(``HeaderRules``, ``FieldRules``), then applied to headers, a query string, a
JSON object or a form body without further parsing of the rules.

Kong's semantics, in Kong's order (remove, rename, replace, add, append):

- ``remove``: drop the field;
- ``rename`` ``old:new``: move the field's value(s) to ``new``, if ``old`` is there;
- ``replace`` ``name:value``: set the value, only if the field is there;
- ``add`` ``name:value``: set the value, only if the field is not there;
- ``append`` ``name:value``: add one more value (one more header line or query
  parameter; in JSON, the field becomes an array holding its old value(s) and the new one).

Safety: header rules that would *set* a header (``rename`` to it, ``replace``,
``add``, ``append``) may not name a hop-by-hop header, ``Content-Length``,
``Host`` (requests) or an identity header (``X-Consumer-*`` …, in any
spelling: only authentication sets those); values may not hold CR, LF or NUL.
Such a config is refused when it loads, with the path of the entry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final, Generic, Literal, TypeVar
from urllib.parse import quote, unquote_to_bytes

import attrs

from ._forwarding import HOP_BY_HOP
from .auth import is_identity_header

__all__ = [
    "HOP_BY_HOP",
    "FieldRules",
    "HeaderRules",
    "JsonType",
    "check_header_names",
    "check_header_pairs",
    "check_json_types",
    "check_names",
    "check_pairs",
    "check_rename",
    "config_entries",
    "config_json_types",
    "dump_json",
    "header_rules_validator",
    "json_object",
    "over_limit",
    "parse_form",
    "plain_media_type",
    "render_form",
]

JsonType = Literal["string", "number", "boolean"]
_N = TypeVar("_N")
_V = TypeVar("_V")

# A transformer config's sections, in the order the rules apply.
_SECTIONS: Final = ("remove", "rename", "replace", "add", "append")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


def _split(entry: str) -> tuple[str, str]:
    name, sep, value = entry.partition(":")
    if not sep or not name:
        raise ValueError(f"{entry!r} is not 'name:value'")
    return name, value


def _entries(value: Sequence[str], check: Any) -> None:
    for i, entry in enumerate(value):
        try:
            check(entry)
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None


def _header_name(name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name")


def _settable(name: str, protected: frozenset[bytes]) -> None:
    _header_name(name)
    low = name.lower().encode("latin-1")
    if low.replace(b"_", b"-") in protected or is_identity_header(low):
        raise ValueError(f"{name!r} is set by the gateway, not by a transformer")


def _header_value(value: str) -> None:
    if _BAD_VALUE.search(value):
        raise ValueError("a header value may not hold CR, LF or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("a header value must be Latin-1 text") from None


# -- attrs validators (the plugins' config classes) -------------------------------------------


def _non_empty(entry: str) -> None:
    if not entry:
        raise ValueError("an empty name")


def check_names(_: Any, attribute: Any, value: Sequence[str]) -> None:
    """Non-empty field names (query parameters, body fields)."""
    _entries(value, _non_empty)


def check_pairs(_: Any, attribute: Any, value: Sequence[str]) -> None:
    """``name:value`` entries (query parameters, body fields)."""
    _entries(value, _split)


def check_rename(_: Any, attribute: Any, value: Sequence[str]) -> None:
    """``old:new`` entries (query parameters, body fields)."""

    def one(entry: str) -> None:
        old, new = _split(entry)
        if not new:
            raise ValueError(f"{entry!r} is not 'old:new'")

    _entries(value, one)


def check_header_names(_: Any, attribute: Any, value: Sequence[str]) -> None:
    _entries(value, _header_name)


def header_rules_validator(protected: frozenset[bytes], *, rename: bool = False) -> Any:
    """A validator of header entries that set headers: never one in ``protected``."""

    def one(entry: str) -> None:
        name, rest = _split(entry)
        if rename:
            _header_name(name)
            _settable(rest, protected)
        else:
            _settable(name, protected)
            _header_value(rest)

    def check(_: Any, attribute: Any, value: Sequence[str]) -> None:
        _entries(value, one)

    return check


check_header_pairs = header_rules_validator(HOP_BY_HOP)


# -- headers ----------------------------------------------------------------------------------


def _pairs(entries: Iterable[str]) -> tuple[tuple[bytes, bytes], ...]:
    out = []
    for entry in entries:
        name, value = _split(entry)
        out.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return tuple(out)


def config_entries(config: Any, field: str) -> tuple[Sequence[str], ...]:
    """``field``'s entries in each section of a transformer config, in ``compile``'s order.

    ``config`` has Kong's ``remove``, ``rename``, ``replace``, ``add`` and
    ``append`` sections, each with a ``field`` (``headers``, ``body`` …).
    """
    return tuple(getattr(getattr(config, section), field) for section in _SECTIONS)


def config_json_types(config: Any) -> tuple[Sequence[JsonType], Sequence[JsonType], Sequence[JsonType]]:
    """The ``json_types`` of a transformer config's ``replace``, ``add`` and ``append`` sections."""
    return (config.replace.json_types, config.add.json_types, config.append.json_types)


@attrs.frozen
class _Rules(Generic[_N, _V]):
    """The five compiled rule lists, in Kong's order; false when there are none."""

    remove: frozenset[_N] = frozenset()
    rename: tuple[tuple[_N, _N], ...] = ()
    replace: tuple[tuple[_N, _V], ...] = ()
    add: tuple[tuple[_N, _V], ...] = ()
    append: tuple[tuple[_N, _V], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.replace or self.add or self.append)


@attrs.frozen
class HeaderRules(_Rules[bytes, bytes]):
    """Compiled header rules; ``apply`` changes a ``Headers`` in place."""

    @classmethod
    def compile(
        cls,
        remove: Sequence[str] = (),
        rename: Sequence[str] = (),
        replace: Sequence[str] = (),
        add: Sequence[str] = (),
        append: Sequence[str] = (),
    ) -> HeaderRules:
        return cls(
            frozenset(n.lower().encode("latin-1") for n in remove),
            tuple((old, new) for old, new in _pairs(rename)),
            _pairs(replace),
            _pairs(add),
            _pairs(append),
        )

    def apply(self, headers: Any) -> None:
        """Apply the rules to ``headers`` (a ``gatekeep.Headers``: lower-case names)."""
        if self.remove:
            headers.raw = [p for p in headers.raw if p[0].lower() not in self.remove]
        for old, new in self.rename:
            values = headers.get_all(old)
            if values:
                headers.remove(old, new)
                headers.raw.extend((new, v) for v in values)
        for name, value in self.replace:
            if headers.get(name) is not None:
                headers.set(name, value)
        for name, value in self.add:
            if headers.get(name) is None:
                headers.raw.append((name, value))
        for name, value in self.append:
            headers.raw.append((name, value))


# -- query strings and form bodies ------------------------------------------------------------


def _quote(text: str) -> bytes:
    return quote(text, safe="").encode("ascii")


def parse_form(data: bytes) -> list[tuple[str, bytes]]:
    """``(decoded name, raw pair)`` of each ``&``-separated part (raw pairs kept byte for byte)."""
    out = []
    for part in data.split(b"&"):
        if part:
            name = unquote_to_bytes(part.partition(b"=")[0].replace(b"+", b" "))
            out.append((name.decode("utf-8", "surrogateescape"), part))
    return out


def render_form(pairs: Sequence[tuple[str, bytes]]) -> bytes:
    return b"&".join(raw for _, raw in pairs)


def _converted(value: str, kind: JsonType) -> Any:
    if kind == "boolean":
        if value not in ("true", "false"):
            raise ValueError(f"{value!r} is not a boolean (true or false)")
        return value == "true"
    if kind == "number":
        return _number(value)
    return value


def _number(value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def check_json_types(pairs: Sequence[str], types: Sequence[JsonType]) -> None:
    """``json_types`` is empty (all strings) or gives one type per ``name:value`` entry."""
    if types and len(types) != len(pairs):
        raise ValueError(f"json_types has {len(types)} entries for {len(pairs)} json entries")
    for i, (entry, kind) in enumerate(zip(pairs, types, strict=False)):
        try:
            _converted(_split(entry)[1], kind)
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None


def _typed(entries: Sequence[str], types: Sequence[JsonType]) -> tuple[tuple[str, Any], ...]:
    out = []
    for i, entry in enumerate(entries):
        name, value = _split(entry)
        out.append((name, _converted(value, types[i]) if types else value))
    return tuple(out)


@attrs.frozen
class FieldRules(_Rules[str, Any]):
    """Compiled rules for named fields: query parameters, form fields, JSON object members."""

    @classmethod
    def compile(
        cls,
        remove: Sequence[str] = (),
        rename: Sequence[str] = (),
        replace: Sequence[str] = (),
        add: Sequence[str] = (),
        append: Sequence[str] = (),
        *,
        types: tuple[Sequence[JsonType], Sequence[JsonType], Sequence[JsonType]] = ((), (), ()),
    ) -> FieldRules:
        return cls(
            frozenset(remove),
            tuple(_split(e) for e in rename),
            _typed(replace, types[0]),
            _typed(add, types[1]),
            _typed(append, types[2]),
        )

    def apply_form(self, data: bytes) -> bytes:
        """Apply the rules to a query string or a form body (values are sent as strings)."""
        pairs = parse_form(data)
        if self.remove:
            pairs = [p for p in pairs if p[0] not in self.remove]
        for old, new in self.rename:
            pairs = [(new, _quote(new) + raw[len(raw.partition(b"=")[0]) :]) if n == old else (n, raw)
                     for n, raw in pairs]  # fmt: skip
        for name, value in self.replace:
            if any(n == name for n, _ in pairs):
                first = next(i for i, (n, _) in enumerate(pairs) if n == name)
                pairs = [p for i, p in enumerate(pairs) if p[0] != name or i == first]
                pairs[first] = (name, _quote(name) + b"=" + _quote(_text(value)))
        for name, value in self.add:
            if not any(n == name for n, _ in pairs):
                pairs.append((name, _quote(name) + b"=" + _quote(_text(value))))
        for name, value in self.append:
            pairs.append((name, _quote(name) + b"=" + _quote(_text(value))))
        return render_form(pairs)

    def apply_json(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Apply the rules to the members of a JSON object (in place; returned)."""
        for name in self.remove:
            doc.pop(name, None)
        for old, new in self.rename:
            if old in doc:
                doc[new] = doc.pop(old)
        for name, value in self.replace:
            if name in doc:
                doc[name] = value
        for name, value in self.add:
            if name not in doc:
                doc[name] = value
        for name, value in self.append:
            if name not in doc:
                doc[name] = [value]
            elif isinstance(doc[name], list):
                doc[name].append(value)
            else:
                doc[name] = [doc[name], value]
        return doc


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- bodies -----------------------------------------------------------------------------------


def plain_media_type(headers: Any) -> bytes | None:
    """The body's media type (lower-case, no parameters), or ``None`` if it is content-encoded."""
    encoding = headers.get(b"content-encoding")
    if encoding is not None and encoding.strip().lower() != b"identity":
        return None
    return (headers.get(b"content-type") or b"").split(b";")[0].strip().lower()


def over_limit(headers: Any, cap: int) -> bool:
    """Whether the ``Content-Length`` announces more than ``cap`` bytes."""
    length = headers.get(b"content-length")
    return length is not None and length.isdigit() and int(length) > cap


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` if it is not one (or not strict JSON)."""
    try:
        doc = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def dump_json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
