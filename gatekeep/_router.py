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

``explain`` (at the end of this module) is ``match`` with its reasons, for
the Admin API's ``/explain``: the same walk, every candidate's verdict.
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
    "Candidate",
    "CompiledRouter",
    "RouteExplanation",
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

    def first(
        self, method: str, path: str, segments: list[str], trailing: bool, headers: Any
    ) -> tuple[_Entry, re.Match[str] | None] | None:
        """The first of ``candidates`` whose method and header conditions accept the request.

        ``candidates``' walk, in the same order, without a generator (``match``
        runs it on every request; ``allowed_methods`` and ``explain`` walk
        ``candidates`` itself).
        """
        exact = self.exact.get(path)
        if exact:
            for entry in exact:
                methods = entry.methods
                if (methods is None or method in methods) and (
                    not entry.headers or entry.accepts_headers(headers)
                ):
                    return entry, None
        if self.templates is not None:
            found: list[_Entry] = []
            self.templates.walk(segments, 0, trailing, found)
            if len(found) > 1:
                found.sort(key=_rank)
            for entry in found:
                methods = entry.methods
                if (methods is None or method in methods) and (
                    not entry.headers or entry.accepts_headers(headers)
                ):
                    return entry, None
        for entry in self.regexes:
            assert entry.regex is not None
            m = entry.regex.fullmatch(path)
            if m is not None:
                methods = entry.methods
                if (methods is None or method in methods) and (
                    not entry.headers or entry.accepts_headers(headers)
                ):
                    return entry, m
        node = self.prefixes
        if node is not None:
            chain = [node]
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
                    methods = entry.methods
                    if (methods is None or method in methods) and (
                        not entry.headers or entry.accepts_headers(headers)
                    ):
                        return entry, None
        return None


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
        self._explained: list[_Info] | None = None  # ``explain``'s ranking, made on its first call

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
        for table in self._tables(host) if self._by_host else self._only_any:
            hit = table.first(method, path, segments, trailing, headers)
            if hit is not None:
                entry, found = hit
                fixed = entry.fixed  # (``build``'s first case, inline)
                return fixed if fixed is not None else entry.build(path, segments, trailing, found)
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

    def explain(self, method: str, host: str, path: str, headers: Any = None) -> RouteExplanation:
        """``match`` with its reasons, for operators (the Admin API's ``/explain``); not for the hot path.

        Returns the route ``match`` would return (always the same), every
        candidate considered with why it was or was not taken (a failed method
        or header condition, outranked by precedence, another host), the
        nearest routes when no path matches, and ``allowed_methods`` for a 405.
        """
        return _explain(self, method, host, path, headers)


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


# -- explaining a choice (CompiledRouter.explain) --------------------------------
#
# ``explain`` walks the compiled tables exactly as ``match`` does and stops at
# the entry ``match`` stops at, so its choice is ``match``'s by construction
# (a property test holds it to that), recording every entry it saw: the ones
# before the chosen one failed on their method or header conditions, the ones
# after it were outranked.  Then, off the hot path, it looks at the host tables
# the request's host does not fit and, when no path matched at all, at the
# routes whose literal path is nearest.  The router keeps only a rank per
# entry; the precedence key behind it is recomputed from the rules in the same
# order, so that each verdict can say which part of the key decided.  That
# ranking is a sort of all entries, made on a router's first explain and kept.

_ANY_PATH = _Pattern(_PREFIX, "/", trailing_slash=True)  # a rule without paths
_KINDS = {_EXACT: "exact", _TEMPLATE: "template", _REGEX: "regex", _PREFIX: "prefix"}


@attrs.frozen
class Candidate:
    """One (route, host pattern, path pattern) the router considered, and its verdict.

    Attributes:
        route: the rule's name.
        host: the host pattern (``""``: any host).
        path: the path pattern as written (``"/"`` for a route without paths).
        kind: ``"exact"``, ``"template"``, ``"regex"`` or ``"prefix"``.
        taken: this is the route ``match`` returns.
        failed: the condition that failed (``"host"``, ``"path"``, ``"method"``,
            ``"headers"``), ``None`` when taken or outranked.
        reason: why, in a sentence.
    """

    route: str
    host: str
    path: str
    kind: str
    taken: bool
    failed: str | None
    reason: str


@attrs.frozen
class RouteExplanation:
    """What ``CompiledRouter.explain`` found.

    Attributes:
        match: what ``match`` returns for the same request.
        candidates: the chosen route first, then the others considered, in
            the order the router tried them.
        allowed: the methods of a 405's ``Allow`` (``allowed_methods``); empty
            when nothing matches the path (404).
        truncated: more candidates existed than were listed.
    """

    match: RouteMatch | None
    candidates: tuple[Candidate, ...]
    allowed: frozenset[str]
    truncated: bool = False


@attrs.frozen
class _Info:
    route: str
    host: str
    text: str
    pattern: _Pattern
    key: tuple[Any, ...]


def _infos(router: CompiledRouter) -> list[_Info]:
    """Per entry rank: the host, pattern and precedence key the router ranked it by.

    Made on the router's first ``explain`` and kept: the rules of a router never change.
    """
    if router._explained is not None:
        return router._explained
    ranked: list[_Info] = []
    for order, rule in enumerate(router.rules):
        patterns = [(p, _parse_pattern(p)) for p in rule.paths] or [("/", _ANY_PATH)]
        for host in rule.hosts or ("",):
            for text, pattern in patterns:
                key = (pattern.kind, pattern.specificity, not rule.headers, not rule.methods, order)
                ranked.append(_Info(rule.name, host.lower().rstrip("."), text, pattern, key))
    ranked.sort(key=lambda info: info.key)  # stable, as in CompiledRouter.__init__
    router._explained = ranked
    return ranked


def _candidate(info: _Info, taken: bool, failed: str | None, reason: str) -> Candidate:
    return Candidate(info.route, info.host, info.text, _KINDS[info.pattern.kind], taken, failed, reason)


def _host_kind(host: str) -> str:
    if not host:
        return "any host"
    return f"wildcard host {host!r}" if host.startswith("*.") else f"exact host {host!r}"


def _describe(info: _Info) -> str:
    kind = _KINDS[info.pattern.kind]
    return f"{kind} path {info.text!r} on {_host_kind(info.host)}"


def _outranked(chosen: _Info, other: _Info, same_table: bool) -> str:
    """Which part of the precedence put ``chosen`` before ``other``."""
    if not same_table:
        return f"{_host_kind(chosen.host)} is tried before {_host_kind(other.host)}"
    a, b = chosen.key, other.key
    if a[0] != b[0]:
        first, then = _KINDS[a[0]], _KINDS[b[0]]
        return f"{'an' if first == 'exact' else 'a'} {first} path ranks before a {then} path"
    if a[1] != b[1]:
        if a[0] == _PREFIX:
            return f"the longer prefix {chosen.pattern.text!r} ranks before {other.pattern.text!r}"
        if a[1][0] != b[1][0]:
            return f"a template with more literal segments ({-a[1][0]} > {-b[1][0]}) ranks first"
        return "a template without a '{x:path}' tail ranks first"
    if a[2] != b[2]:
        return "a route with header conditions ranks before one without"
    if a[3] != b[3]:
        return "a route with a method list ranks before one for any method"
    return "it comes first in the configuration"


def _headers_failure(entry: _Entry, headers: Any) -> str:
    raw = [] if headers is None else getattr(headers, "raw", headers)
    for name, accepted in entry.headers:
        values = [v.strip().lower() for k, v in raw if k == name]
        shown = name.decode("latin-1")
        if not values:
            return f"header {shown!r} is missing"
        if accepted and not any(v in accepted for v in values):
            wanted = sorted(v.decode("latin-1") for v in accepted)
            return f"header {shown!r} is not one of {wanted}"
    return "a header condition does not hold"


def _common_prefix(path: str, literal: str) -> int:
    """How many leading characters ``path`` shares with a route's literal path."""
    n = 0
    for a, b in zip(path, literal, strict=False):
        if a != b:
            break
        n += 1
    return n


def _literal_head(pattern: _Pattern) -> str:
    if pattern.kind in (_EXACT, _PREFIX):
        return pattern.text
    if pattern.kind == _TEMPLATE:
        head = []
        for segment in pattern.segments:
            if segment is None:
                break
            head.append(segment)
        return "/" + "/".join(head)
    return ""


def _explain(
    router: CompiledRouter, method: str, host: str, path: str, headers: Any = None, *, limit: int = 20
) -> RouteExplanation:
    allowed = router.allowed_methods(host, path, headers)
    if not path.startswith("/"):
        return RouteExplanation(None, (), allowed)
    infos = _infos(router)
    segments = path[1:].split("/")
    trailing = segments[-1] == ""
    if trailing:
        segments.pop()

    seen: list[Candidate] = []
    chosen: _Info | None = None
    chosen_table: _Table | None = None
    chosen_name = ""
    found_match: RouteMatch | None = None
    truncated = False

    def add(candidate: Candidate) -> None:
        nonlocal truncated
        if len(seen) < limit or candidate.taken:
            seen.append(candidate)
        else:
            truncated = True

    visited = list(router._tables(host))
    for table in visited:
        for entry, regex_found in table.candidates(path, segments, trailing):
            info = infos[entry.rank]
            if chosen is not None:
                why = f"outranked by {chosen_name!r}: {_outranked(chosen, info, table is chosen_table)}"
                add(_candidate(info, False, None, why))
                continue
            if entry.methods is not None and method not in entry.methods:
                wanted = sorted(entry.methods)
                add(
                    _candidate(
                        info,
                        False,
                        "method",
                        f"{_describe(info)} matches, but not the method {method!r}: {wanted}",
                    )
                )
                continue
            if entry.headers and not entry.accepts_headers(headers):
                why = f"{_describe(info)} matches, but {_headers_failure(entry, headers)}"
                add(_candidate(info, False, "headers", why))
                continue
            chosen, chosen_table, chosen_name = info, table, info.route
            found_match = entry.build(path, segments, trailing, regex_found)
            why = f"the first candidate, in precedence order, whose conditions all hold: {_describe(info)}"
            if entry.methods is not None:
                why += f", method in {sorted(entry.methods)}"
            if entry.headers:
                why += ", header conditions hold"
            add(_candidate(info, True, None, why))

    # Routes for another host whose path would match.
    request_host = _request_host(host)
    visited_ids = {id(t) for t in visited}
    for table in (*router._hosts.values(), *router._wildcards.values()):
        if id(table) in visited_ids:
            continue
        for entry, _ in table.candidates(path, segments, trailing):
            info = infos[entry.rank]
            why = f"{_describe(info)} matches the path, but not the host {request_host!r}"
            add(_candidate(info, False, "host", why))

    if not seen:
        # Nothing matched the path anywhere: the routes whose literal path shares most with it.
        near: list[tuple[int, int, _Info]] = []
        for rank, info in enumerate(infos):
            head = _literal_head(info.pattern)
            shared = _common_prefix(path, head) if head else 0
            if shared > 1:
                near.append((-shared, rank, info))
        near.sort(key=lambda item: item[:2])
        for shared, _, info in near[:5]:
            why = f"{_describe(info)} does not match {path!r} (nearest: they share {path[:-shared]!r})"
            add(_candidate(info, False, "path", why))
    seen.sort(key=lambda c: not c.taken)  # the chosen one first, the rest in the order tried
    return RouteExplanation(found_match, tuple(seen), allowed, truncated)
