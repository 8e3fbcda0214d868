"""The compiled router: which route a request belongs to.

Theory of operation
-------------------
A ``RouteRule`` says which requests it wants: path patterns, methods, hosts
and header values; every condition given must hold.  ``CompiledRouter``
turns a list of rules into lookup structures once, at construction, so that
``match`` costs the same with ten routes or ten thousand:

* Hosts.  One *table* per exact host (a dict), one per wildcard suffix
  (``*.example.com`` is stored under ``.example.com``; a request host is
  looked up once per dot it contains, longest suffix first) and one for rules
  without a host.  A request visits the tables that fit its host, most
  specific first, and stops at the first full match.
* Paths, inside a table.  Exact paths are a dict.  Templates are a segment
  trie (a literal child per segment text plus one parameter child) walked
  once over the request's segments; prefixes are a second, literal-only
  segment trie, where each node on the request's path may hold rules.
  Regular expressions are a list tried in order: the only part whose cost
  grows with the number of routes, so keep them few.
* Every (rule, host, path pattern) becomes one ``_Entry`` whose rank in its
  table is computed once from the precedence rules (see ``docs/routing.md``):

      exact host > longer wildcard suffix > no host
      then  exact > template > regex > prefix
      then  template: more literal segments, then without a ``{x:path}`` tail
            prefix: longer prefix
      then  with header conditions > without
      then  with methods > any method
      then  configuration order.

  Whole-path patterns (exact, template, regex) rank before prefixes so that a
  catch-all prefix such as ``/`` never hides a more precise route.

Per request, ``match`` splits the path into segments once and allocates one
``RouteMatch`` only when the route has parameters (others are prebuilt).
The path given must already be normalised (``gatekeep._normalise``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import attrs

from ._errors import BadRequest
from ._http import is_header_name
from ._normalise import normalise_path

__all__ = [
    "CompiledRouter",
    "RouteMatch",
    "RouteRule",
    "check_host_pattern",
    "check_path_pattern",
]


def _as_strings(value: str | Iterable[str]) -> tuple[str, ...]:
    # A lone string is one item, not a sequence of characters.
    return (value,) if isinstance(value, str) else tuple(value)


def _as_methods(value: str | Iterable[str]) -> frozenset[str]:
    return frozenset(m.upper() for m in _as_strings(value))


@attrs.frozen
class RouteRule:
    """What requests a route wants; every condition given must hold.

    Attributes:
        name: for messages and logs.
        paths: path patterns (any of); empty means any path.
        methods: upper-case methods (any of); empty means any method.
        hosts: ``api.example.com`` or ``*.example.com`` (any of); empty
            means any host.
        headers: lower-case header name -> accepted values (any of, compared
            case-insensitively); every name must match.  An empty tuple of
            values only requires the header to be present.
        target: opaque payload for the caller.
    """

    name: str
    paths: tuple[str, ...] = attrs.field(default=(), converter=_as_strings)
    methods: frozenset[str] = attrs.field(default=frozenset(), converter=_as_methods)
    hosts: tuple[str, ...] = attrs.field(default=(), converter=_as_strings)
    headers: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    target: Any = None


@attrs.frozen
class RouteMatch:
    """The route a request matched.

    Attributes:
        rule: the rule that matched.
        params: template parameters or named regex groups, as they appear in
            the normalised path (not percent-decoded).  Read-only.
        matched: the part of the path the pattern consumed: the whole path
            for exact, template and regex patterns; for a prefix pattern the
            prefix without a trailing slash (``""`` for ``/``), so that
            ``path[len(matched):]`` is empty or starts with ``/``.
    """

    rule: RouteRule
    params: Mapping[str, str]
    matched: str


_NO_PARAMS: Final[Mapping[str, str]] = MappingProxyType({})

# Path kinds, in precedence order.
_EXACT: Final = 0
_TEMPLATE: Final = 1
_REGEX: Final = 2
_PREFIX: Final = 3


# -- patterns -----------------------------------------------------------------


@attrs.frozen
class _Pattern:
    """A parsed path pattern."""

    kind: int
    # Exact/prefix: the normalised path.  Template: the pattern as written.
    text: str
    # Template: one item per segment, the literal text or None for a parameter.
    segments: tuple[str | None, ...] = ()
    # Template: (segment index, name) of each one-segment parameter.
    names: tuple[tuple[int, str], ...] = ()
    # Template: name of the final ``{name:path}`` parameter, if any.
    rest: str | None = None
    # Template / prefix: the pattern ends with "/".
    trailing_slash: bool = False
    regex: re.Pattern[str] | None = None

    @property
    def specificity(self) -> tuple[int, int]:
        if self.kind == _TEMPLATE:
            literals = sum(1 for s in self.segments if s is not None)
            return (-literals, self.rest is not None)
        if self.kind == _PREFIX:
            return (-len(self.text), 0)
        return (0, 0)


def _literal(pattern: str) -> str:
    """Normalise a literal path of a pattern; refuse what is surely a mistake."""
    if not pattern.startswith("/"):
        raise ValueError("must start with '/' (or '=/' for exact, '~' for a regex)")
    # Dots may be percent-encoded; they would still be removed by normalisation.
    spelled = pattern.replace("%2e", ".").replace("%2E", ".")
    inner = spelled[1:-1] if spelled.endswith("/") else spelled[1:]
    if (inner or spelled != "/") and any(s in ("", ".", "..") for s in inner.split("/")):
        raise ValueError("must not contain empty ('//') or dot ('.', '..') segments")
    try:
        return normalise_path(pattern.encode("utf-8"))
    except BadRequest as exc:
        raise ValueError(exc.detail) from None


def _parse_template(pattern: str) -> _Pattern:
    if not pattern.startswith("/"):
        raise ValueError("must start with '/'")
    parts = pattern[1:].split("/")
    trailing = parts[-1] == "" and len(parts) > 1
    if trailing:
        parts.pop()
    segments: list[str | None] = []
    names: list[tuple[int, str]] = []
    rest: str | None = None
    seen: set[str] = set()
    for index, part in enumerate(parts):
        if part == "":
            raise ValueError("must not contain empty segments ('//')")
        if not (part.startswith("{") and part.endswith("}")):
            if "{" in part or "}" in part:
                raise ValueError(f"a parameter must be a whole segment, like '/{{name}}' (got {part!r})")
            segments.append(_literal("/" + part)[1:])
            continue
        name, _, converter = part[1:-1].partition(":")
        if not name.isidentifier():
            raise ValueError(f"parameter name {name!r} is not a valid identifier")
        if name in seen:
            raise ValueError(f"parameter {name!r} appears twice")
        seen.add(name)
        if converter == "path":
            if index != len(parts) - 1 or trailing:
                raise ValueError(f"'{{{name}:path}}' must be the last segment, without a trailing slash")
            rest = name
        elif converter:
            raise ValueError(
                f"unknown parameter type {converter!r} in {part!r}; only ':path' is supported "
                "(use a '~' regex pattern for anything else)"
            )
        else:
            names.append((index, name))
        segments.append(None)
    return _Pattern(
        _TEMPLATE,
        pattern,
        segments=tuple(segments),
        names=tuple(names),
        rest=rest,
        trailing_slash=trailing,
    )


def _parse_pattern(pattern: str) -> _Pattern:
    """Parse one path pattern.

    Raises:
        ValueError: the pattern is invalid; the message says why.
    """
    if not pattern:
        raise ValueError("must not be empty")
    if pattern.startswith("~"):
        source = pattern[1:]
        if not source:
            raise ValueError("the regex after '~' must not be empty")
        try:
            regex = re.compile(source)
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from None
        return _Pattern(_REGEX, pattern, regex=regex)
    if pattern.startswith("="):
        if "{" in pattern or "}" in pattern:
            raise ValueError("an exact ('=') path cannot have parameters")
        return _Pattern(_EXACT, _literal(pattern[1:]))
    if "{" in pattern or "}" in pattern:
        return _parse_template(pattern)
    text = _literal(pattern)
    return _Pattern(_PREFIX, text, trailing_slash=text.endswith("/"))


def check_path_pattern(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid path pattern, or ``None`` when it is.

    Forms: ``/orders`` (prefix), ``=/orders`` (exact), ``/orders/{id}`` and
    ``/files/{rest:path}`` (template), ``~^/orders/\\d+$`` (regex).
    """
    try:
        _parse_pattern(pattern)
    except ValueError as exc:
        return str(exc)
    return None


_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOST: Final = re.compile(rf"(?:\*\.)?{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9a-f:.]+\]")


def check_host_pattern(host: str) -> str | None:
    """Why ``host`` is not a valid host pattern, or ``None`` when it is.

    Forms: ``api.example.com``, ``*.example.com`` (one or more labels in
    place of ``*``), an IPv4 address, or a bracketed IPv6 address.  Ports are
    not part of a host pattern: a request's port is ignored when matching.
    """
    host = host.lower().rstrip(".")
    if not host:
        return "must not be empty"
    if ":" in host and not host.startswith("["):
        return "must not include a port"
    if "*" in host[1:] or (host.startswith("*") and not host.startswith("*.")):
        return "a wildcard is only allowed as the whole leftmost label, like '*.example.com'"
    if not _HOST.fullmatch(host):
        return "is not a valid host name"
    return None


def _request_host(host: str) -> str:
    """Host header value -> the key hosts are indexed by (lower case, no port)."""
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if ":" in host:
        host = host.partition(":")[0]
    return host.rstrip(".")


# -- compiled structures --------------------------------------------------------


class _Entry:
    """One (rule, host, path pattern) in one table, with everything precomputed."""

    __slots__ = ("fixed", "headers", "methods", "names", "rank", "regex", "needs_more", "rest", "rule")

    def __init__(
        self,
        rule: RouteRule,
        pattern: _Pattern,
        headers: tuple[tuple[bytes, frozenset[bytes]], ...],
    ) -> None:
        self.rule = rule
        self.methods: frozenset[str] | None = rule.methods or None
        self.headers = headers
        self.rank = 0
        self.names = pattern.names
        self.regex = pattern.regex
        # Template with a {name:path} tail: (segment index, name).
        self.rest = (len(pattern.segments) - 1, pattern.rest) if pattern.rest is not None else None
        # Prefix ending with "/": the path must go on past the prefix.
        self.needs_more = pattern.kind == _PREFIX and pattern.trailing_slash
        # Exact and prefix matches do not depend on the request: build them once.
        self.fixed: RouteMatch | None = None
        if pattern.kind == _EXACT:
            self.fixed = RouteMatch(rule, _NO_PARAMS, pattern.text)
        elif pattern.kind == _PREFIX:
            self.fixed = RouteMatch(rule, _NO_PARAMS, pattern.text.rstrip("/"))

    def build(
        self, path: str, segments: list[str], trailing: bool, found: re.Match[str] | None
    ) -> RouteMatch:
        if self.fixed is not None:
            return self.fixed
        if found is not None:
            groups = {k: v for k, v in found.groupdict().items() if v is not None}
            return RouteMatch(self.rule, groups or _NO_PARAMS, path)
        params = {name: segments[i] for i, name in self.names}
        if self.rest is not None:
            start, name = self.rest
            params[name] = "/".join(segments[start:]) + ("/" if trailing else "")
        return RouteMatch(self.rule, params or _NO_PARAMS, path)

    def accepts_headers(self, headers: Any) -> bool:
        if not self.headers:
            return True
        if headers is None:
            return False
        raw = getattr(headers, "raw", headers)
        for name, accepted in self.headers:
            for key, value in raw:
                if key == name and (not accepted or value.strip().lower() in accepted):
                    break
            else:
                return False
        return True


def _rank(entry: _Entry) -> int:
    return entry.rank


class _TemplateNode:
    __slots__ = ("end", "literal", "param", "rest", "slash")

    def __init__(self) -> None:
        self.literal: dict[str, _TemplateNode] = {}
        self.param: _TemplateNode | None = None
        self.end: list[_Entry] = []  # the path ends here
        self.slash: list[_Entry] = []  # the path ends here with a "/"
        self.rest: list[_Entry] = []  # a {name:path} tail starts here

    def walk(self, segments: list[str], i: int, trailing: bool, found: list[_Entry]) -> None:
        if self.rest and i < len(segments):
            found.extend(self.rest)
        if i == len(segments):
            found.extend(self.slash if trailing else self.end)
            return
        child = self.literal.get(segments[i])
        if child is not None:
            child.walk(segments, i + 1, trailing, found)
        if self.param is not None and segments[i]:
            self.param.walk(segments, i + 1, trailing, found)


class _PrefixNode:
    __slots__ = ("children", "entries")

    def __init__(self) -> None:
        self.children: dict[str, _PrefixNode] = {}
        self.entries: list[_Entry] = []


class _Table:
    """The rules of one host (or host wildcard, or of any host), by path kind."""

    __slots__ = ("exact", "prefixes", "regexes", "templates")

    def __init__(self) -> None:
        self.exact: dict[str, list[_Entry]] = {}
        self.templates: _TemplateNode | None = None
        self.regexes: list[_Entry] = []
        self.prefixes: _PrefixNode | None = None

    def add(self, entry: _Entry, pattern: _Pattern) -> None:
        if pattern.kind == _EXACT:
            self.exact.setdefault(pattern.text, []).append(entry)
        elif pattern.kind == _REGEX:
            self.regexes.append(entry)
        elif pattern.kind == _TEMPLATE:
            node = self.templates = self.templates or _TemplateNode()
            for literal in pattern.segments[:-1] if pattern.rest is not None else pattern.segments:
                if literal is None:
                    node.param = node.param or _TemplateNode()
                    node = node.param
                else:
                    node = node.literal.setdefault(literal, _TemplateNode())
            if pattern.rest is not None:
                node.rest.append(entry)
            else:
                (node.slash if pattern.trailing_slash else node.end).append(entry)
        else:
            pnode = self.prefixes = self.prefixes or _PrefixNode()
            for literal in pattern.text.strip("/").split("/") if pattern.text != "/" else ():
                pnode = pnode.children.setdefault(literal, _PrefixNode())
            pnode.entries.append(entry)

    def finish(self) -> None:
        """Sort every list of entries by rank."""
        for entries in self.exact.values():
            entries.sort(key=_rank)
        self.regexes.sort(key=_rank)
        stack_t = [self.templates] if self.templates else []
        while stack_t:
            tnode = stack_t.pop()
            for entries in (tnode.end, tnode.slash, tnode.rest):
                entries.sort(key=_rank)
            stack_t.extend(tnode.literal.values())
            if tnode.param is not None:
                stack_t.append(tnode.param)
        stack_p = [self.prefixes] if self.prefixes else []
        while stack_p:
            pnode = stack_p.pop()
            pnode.entries.sort(key=_rank)
            stack_p.extend(pnode.children.values())

    def candidates(
        self, path: str, segments: list[str], trailing: bool
    ) -> Iterator[tuple[_Entry, re.Match[str] | None]]:
        """Entries whose path pattern matches, best first."""
        exact = self.exact.get(path)
        if exact:
            for entry in exact:
                yield entry, None
        if self.templates is not None:
            found: list[_Entry] = []
            self.templates.walk(segments, 0, trailing, found)
            if len(found) > 1:
                found.sort(key=_rank)
            for entry in found:
                yield entry, None
        for entry in self.regexes:
            assert entry.regex is not None
            m = entry.regex.fullmatch(path)
            if m is not None:
                yield entry, m
        if self.prefixes is not None:
            chain = [self.prefixes]
            node = self.prefixes
            for segment in segments:
                child = node.children.get(segment)
                if child is None:
                    break
                node = child
                chain.append(node)
            end = len(segments)
            for depth in range(len(chain) - 1, -1, -1):
                for entry in chain[depth].entries:
                    if entry.needs_more and depth == end and not trailing:
                        continue
                    yield entry, None


class CompiledRouter:
    """A ``Router`` over a fixed list of rules, compiled once.

    Raises:
        ValueError: a path pattern, host or header condition is invalid; the
            message names the rule.
    """

    def __init__(self, rules: Sequence[RouteRule]) -> None:
        self.rules: tuple[RouteRule, ...] = tuple(rules)
        self._any = _Table()
        self._hosts: dict[str, _Table] = {}
        self._wildcards: dict[str, _Table] = {}
        ranked: list[tuple[tuple[Any, ...], _Entry]] = []
        for order, rule in enumerate(self.rules):
            headers = _compile_headers(rule)
            patterns = [_parse_rule_pattern(rule, p) for p in rule.paths] or [
                _Pattern(_PREFIX, "/", trailing_slash=True)
            ]
            for host in rule.hosts or ("",):
                table = self._table_for(rule, host)
                for pattern in patterns:
                    entry = _Entry(rule, pattern, headers)
                    key = (pattern.kind, pattern.specificity, not entry.headers, entry.methods is None, order)
                    ranked.append((key, entry))
                    table.add(entry, pattern)
        ranked.sort(key=lambda item: item[0])
        for rank, (_, entry) in enumerate(ranked):
            entry.rank = rank
        for table in (self._any, *self._hosts.values(), *self._wildcards.values()):
            table.finish()
        self._by_host = bool(self._hosts or self._wildcards)
        self._only_any: tuple[_Table, ...] = (self._any,)

    def _table_for(self, rule: RouteRule, host: str) -> _Table:
        if not host:
            return self._any
        problem = check_host_pattern(host)
        if problem is not None:
            raise ValueError(f"route {rule.name!r}: host {host!r}: {problem}")
        host = host.lower().rstrip(".")
        if host.startswith("*."):
            return self._wildcards.setdefault(host[1:], _Table())
        return self._hosts.setdefault(host, _Table())

    def _tables(self, host: str) -> Sequence[_Table]:
        if not self._by_host:
            return self._only_any
        key = _request_host(host)
        tables: list[_Table] = []
        table = self._hosts.get(key)
        if table is not None:
            tables.append(table)
        if self._wildcards:
            dot = key.find(".", 1)
            while dot != -1:
                table = self._wildcards.get(key[dot:])
                if table is not None:
                    tables.append(table)
                dot = key.find(".", dot + 1)
        tables.append(self._any)
        return tables

    def match(self, method: str, host: str, path: str, headers: Any = None) -> RouteMatch | None:
        """The best route for a request, or ``None`` (see ``allowed_methods``).

        Args:
            method: the request method, compared case-sensitively.
            host: the ``Host`` header (a port and letter case are ignored).
            path: the normalised path.
            headers: ``gatekeep.Headers`` (or a list of lower-case byte pairs).
        """
        if not path.startswith("/"):
            return None
        segments = path[1:].split("/")
        trailing = segments[-1] == ""
        if trailing:
            segments.pop()
        for table in self._tables(host):
            for entry, found in table.candidates(path, segments, trailing):
                methods = entry.methods
                if (methods is None or method in methods) and (
                    not entry.headers or entry.accepts_headers(headers)
                ):
                    return entry.build(path, segments, trailing, found)
        return None

    def allowed_methods(self, host: str, path: str, headers: Any = None) -> frozenset[str]:
        """Methods accepted at this host, path and headers, for a 405 ``Allow``.

        Only rules that list methods contribute: when a rule without a method
        condition matches, ``match`` does not fail.  An empty set means that
        no rule matches the path at all (404).
        """
        if not path.startswith("/"):
            return frozenset()
        segments = path[1:].split("/")
        trailing = segments[-1] == ""
        if trailing:
            segments.pop()
        allowed: set[str] = set()
        for table in self._tables(host):
            for entry, _ in table.candidates(path, segments, trailing):
                if entry.methods is not None and entry.accepts_headers(headers):
                    allowed |= entry.methods
        return frozenset(allowed)


def _parse_rule_pattern(rule: RouteRule, pattern: str) -> _Pattern:
    try:
        return _parse_pattern(pattern)
    except ValueError as exc:
        raise ValueError(f"route {rule.name!r}: path {pattern!r}: {exc}") from None


def _compile_headers(rule: RouteRule) -> tuple[tuple[bytes, frozenset[bytes]], ...]:
    compiled = []
    for name, values in rule.headers.items():
        lower = name.lower()
        if not lower.isascii() or not is_header_name(lower.encode("ascii")):
            raise ValueError(f"route {rule.name!r}: header name {name!r} is not a valid token")
        if lower == "host":
            raise ValueError(f"route {rule.name!r}: match the host with 'hosts', not a header condition")
        accepted = frozenset(v.strip().lower().encode("latin-1") for v in _as_strings(values))
        compiled.append((lower.encode("latin-1"), accepted))
    return tuple(compiled)
