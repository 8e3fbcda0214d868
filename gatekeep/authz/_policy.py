"""The RBAC policy engine: role- and scope-based access rules per route and method.

The ``rbac`` plugin (``gatekeep.plugins.rbac``) and ``gatekeep.service``'s
middleware and ``require_roles`` enforce a ``Policy`` compiled from an
``RbacConfig``.  Kong's ``acl`` allows or denies consumer groups; ``rbac`` does
more, and is meant to read well in a TOML config::

    [[services.routes.plugins]]
    name = "rbac"
    config.hierarchy = { admin = ["user"] }
    config.rules = [
      { methods = ["GET"], any_of = ["admin"] },
      { methods = ["POST"], any_of = ["user"] },
    ]

Theory of operation.  The config compiles into a ``Policy``: for every HTTP
method a tuple of rules that may apply to it (a rule without ``methods``
applies to all; ``GET`` also covers ``HEAD``).  A request is allowed when
*any* applicable rule is satisfied, and a rule is satisfied when *all* of its
conditions hold (``any_of``: one of these roles; ``all_of``: each of these
roles; ``scopes_any`` / ``scopes_all`` likewise for OAuth scopes).  A rule
with no condition allows everyone, even without credentials.  When no rule
applies, or none is satisfied, the request is denied: once a rule set is
present, access is denied by default.

Roles come from the ``Identity`` authentication produced (its ``roles`` and,
with ``groups_as_roles``, its ``groups`` and the consumer's ``groups``) and
from the token's claims at ``roles_claims`` paths; scopes from
``Identity.scopes`` and the ``scopes_claims`` paths (see ``_claims``).

The role hierarchy (``admin = ["user"]``: an admin may do what a user may;
transitive; cycles are refused at load time) is folded into the rules at
config time: a requirement "user" becomes the set of held roles that imply
it, ``{"user", "admin"}``.  So at request time nothing is expanded: each
condition is one ``isdisjoint``/``<=`` on small frozensets.  Because every
condition is positive and rules are or-ed, granting more roles or scopes can
never turn an allow into a deny (tested with hypothesis).

Denials: with no identity (or Kong's anonymous consumer) the answer is 401,
so that the client knows to authenticate, as Kong's ``acl`` does; an
authenticated identity gets 403 naming what is missing, and when a scope is
missing ``WWW-Authenticate: Bearer error="insufficient_scope", scope="..."``
(RFC 6750 §3.1).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import attrs

from .._errors import AuthError, Forbidden
from .._protocols import Identity
from .._structure import structure_or_raise
from ..validators import also_named
from ._claims import ClaimPath, compile_paths, extract, path_problem

__all__ = [
    "DEFAULT_ROLES_CLAIMS",
    "DEFAULT_SCOPES_CLAIMS",
    "AuthenticationRequired",
    "InsufficientRole",
    "InsufficientScope",
    "Policy",
    "RbacConfig",
    "RuleConfig",
    "Grants",
    "role_closure",
]

DEFAULT_ROLES_CLAIMS: tuple[str, ...] = (
    "realm_access.roles",
    "resource_access.{client}.roles",
    "roles",
    "role",
)
DEFAULT_SCOPES_CLAIMS: tuple[str, ...] = ("scope", "scp")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6750 scope-token (no space, '"' or '\')


# -- errors -------------------------------------------------------------------


class AuthenticationRequired(AuthError):
    """The route's rules need an identity and the request has none (401)."""

    slug = "authentication-required"

    def __init__(self, detail: str, *, extensions: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail, headers=[("www-authenticate", "Bearer")], extensions=extensions)


class InsufficientRole(Forbidden):
    """The identity lacks a role the rules ask for (403)."""

    slug = "insufficient-role"


class InsufficientScope(Forbidden):
    """The token lacks a scope the rules ask for (403, RFC 6750 ``insufficient_scope``)."""

    slug = "insufficient-scope"


# -- config -------------------------------------------------------------------


def _names(_: Any, attribute: Any, value: Sequence[str]) -> None:
    for i, name in enumerate(value):
        if not name or name != name.strip() or any(c.isspace() for c in name):
            raise ValueError(f"entry {i}: {name!r} is not a name (empty, or has white space)")


def _scopes(_: Any, attribute: Any, value: Sequence[str]) -> None:
    for i, name in enumerate(value):
        if not _TOKEN.match(name):
            raise ValueError(f"entry {i}: {name!r} is not a scope token (RFC 6750 §3)")


def _methods(_: Any, attribute: Any, value: Sequence[str]) -> None:
    for i, m in enumerate(value):
        if m.upper() not in _METHODS:
            raise ValueError(f"entry {i}: unknown HTTP method {m!r}")


def _rule_paths(_: Any, attribute: Any, value: Sequence[str]) -> None:
    for i, p in enumerate(value):
        problem = _PathPattern.problem(p)
        if problem:
            raise ValueError(f"entry {i}: {problem}")


def _claim_paths(_: Any, attribute: Any, value: Sequence[str | Sequence[str]]) -> None:
    for i, p in enumerate(value):
        problem = path_problem(p)
        if problem:
            raise ValueError(f"entry {i}: {problem}")


@attrs.frozen
class RuleConfig:
    """One access rule: who may use ``methods`` on ``paths``.

    Empty ``methods`` means every method; empty ``paths`` every path of the
    routes the plugin is attached to.  Paths: ``/orders`` (that path and
    below), ``=/orders`` (exactly), ``/orders/{id}`` (``{name}`` is one
    segment).  All conditions given must hold; none given allows everyone.
    """

    methods: tuple[str, ...] = attrs.field(default=(), validator=_methods)
    paths: tuple[str, ...] = attrs.field(default=(), validator=_rule_paths)
    any_of: tuple[str, ...] = attrs.field(default=(), validator=_names)
    all_of: tuple[str, ...] = attrs.field(default=(), validator=_names)
    scopes_any: tuple[str, ...] = attrs.field(default=(), validator=_scopes)
    scopes_all: tuple[str, ...] = attrs.field(default=(), validator=_scopes)

    @property
    def public(self) -> bool:
        return not (self.any_of or self.all_of or self.scopes_any or self.scopes_all)


def _rules(_: Any, attribute: Any, value: Sequence[RuleConfig]) -> None:
    if not value:
        raise ValueError("needs at least one rule (an empty rule set would deny every request)")


def _hierarchy(_: Any, attribute: Any, value: Mapping[str, Sequence[str]]) -> None:
    for role, implied in value.items():
        _names(None, None, [role])
        try:
            _names(None, None, implied)
        except ValueError as exc:
            raise ValueError(f"{role}: {exc}") from None
    cycle = _find_cycle(value)
    if cycle:
        raise ValueError("the role hierarchy has a cycle: " + " -> ".join(cycle))


@attrs.frozen
class RbacConfig:
    """The ``rbac`` filter's config.

    Attributes:
        rules: the access rules; at least one.  Once present, a request no
            rule allows is denied.
        hierarchy: ``{role: [roles it includes]}``, transitive.
        roles_claims: claim paths that hold roles (``{client}`` expands to
            each of ``clients``; an array is a path of keys with dots in them).
        scopes_claims: claim paths that hold scopes (``scope`` is a
            space-separated string, ``scp`` an array).
        clients: client ids for ``{client}`` in claim paths (Keycloak's
            ``resource_access.<client>.roles``).
        groups_as_roles: consumer groups (``consumers[].groups`` and
            ``Identity.groups``) count as roles.
    """

    rules: tuple[RuleConfig, ...] = attrs.field(validator=_rules)
    hierarchy: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, validator=_hierarchy)
    roles_claims: tuple[str | tuple[str, ...], ...] = attrs.field(
        default=DEFAULT_ROLES_CLAIMS, validator=_claim_paths, metadata=also_named("roles_claim")
    )
    scopes_claims: tuple[str | tuple[str, ...], ...] = attrs.field(
        default=DEFAULT_SCOPES_CLAIMS, validator=_claim_paths, metadata=also_named("scopes_claim")
    )
    clients: tuple[str, ...] = attrs.field(default=(), validator=_names)
    groups_as_roles: bool = True


# -- the hierarchy ------------------------------------------------------------


def _find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of roles (first == last), or ``None``."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        # Iterative depth-first search keeping the current path.
        path: list[str] = [start]
        on_path = {start}
        stack: list[Iterator[str]] = [iter(sorted(graph.get(start, ())))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                on_path.discard(path.pop())
                continue
            if nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            if nxt in done:
                continue
            done.add(nxt)
            path.append(nxt)
            on_path.add(nxt)
            stack.append(iter(sorted(graph.get(nxt, ()))))
        done.add(start)
    return None


def role_closure(hierarchy: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str]]:
    """Every role of ``hierarchy`` with all the roles it includes (itself too).

    Raises:
        ValueError: the hierarchy has a cycle.
    """
    cycle = _find_cycle(hierarchy)
    if cycle:
        raise ValueError("the role hierarchy has a cycle: " + " -> ".join(cycle))
    closure: dict[str, frozenset[str]] = {}

    def visit(role: str) -> frozenset[str]:
        found = closure.get(role)
        if found is None:
            found = frozenset({role}).union(*(visit(r) for r in hierarchy.get(role, ())))
            closure[role] = found
        return found

    for role in hierarchy:
        visit(role)
    return closure


# -- the rule engine (sans-IO) ------------------------------------------------


class _PathPattern:
    """A rule path: ``/p`` (prefix, segment-wise), ``=/p`` (exact), ``{name}`` one segment."""

    __slots__ = ("exact", "segments")

    def __init__(self, pattern: str) -> None:
        self.exact = pattern.startswith("=")
        body = pattern[1:] if self.exact else pattern
        self.segments: tuple[str | None, ...] = tuple(
            None if s.startswith("{") and s.endswith("}") else s for s in body.strip("/").split("/") if s
        )

    @staticmethod
    def problem(pattern: str) -> str | None:
        body = pattern[1:] if pattern.startswith("=") else pattern
        if not body.startswith("/"):
            return f"a rule path starts with '/' (or '=/' for an exact path), got {pattern!r}"
        if pattern.startswith("~"):
            return f"regex rule paths are not supported, got {pattern!r}"
        for s in body.split("/"):
            if ("{" in s or "}" in s) and not (s.startswith("{") and s.endswith("}") and len(s) > 2):
                return f"a '{{name}}' placeholder must be a whole segment, got {pattern!r}"
        return None

    def matches(self, segments: Sequence[str]) -> bool:
        mine = self.segments
        if len(segments) < len(mine) or (self.exact and len(segments) != len(mine)):
            return False
        for want, have in zip(mine, segments, strict=False):
            if want is not None and want != have:
                return False
        return True


class Grants(NamedTuple):
    """What the rules look at: the roles and scopes a request holds."""

    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    authenticated: bool = False


@attrs.frozen(eq=False)
class _Rule:
    index: int
    config: RuleConfig
    paths: tuple[_PathPattern, ...]
    # Each role requirement as the set of held roles that satisfy it (hierarchy folded in).
    any_of: frozenset[str]
    all_of: tuple[tuple[str, frozenset[str]], ...]
    scopes_any: frozenset[str]
    scopes_all: frozenset[str]

    def applies(self, segments: Sequence[str] | None) -> bool:
        if not self.paths:
            return True
        assert segments is not None
        return any(p.matches(segments) for p in self.paths)

    def allows(self, roles: frozenset[str] | set[str], scopes: frozenset[str] | set[str]) -> bool:
        if self.any_of and self.any_of.isdisjoint(roles):
            return False
        for _, satisfiers in self.all_of:
            if satisfiers.isdisjoint(roles):
                return False
        if self.scopes_any and self.scopes_any.isdisjoint(scopes):
            return False
        return not (self.scopes_all and not self.scopes_all <= scopes)

    def missing(self, grants: Grants) -> tuple[list[str], list[str], list[str], list[str]]:
        """(roles: one of, roles: each of, scopes: one of, scopes: each of) still needed."""
        roles, scopes = grants.roles, grants.scopes
        one_role = list(self.config.any_of) if self.any_of and self.any_of.isdisjoint(roles) else []
        each_role = [name for name, sat in self.all_of if sat.isdisjoint(roles)]
        one_scope = (
            list(self.config.scopes_any) if self.scopes_any and self.scopes_any.isdisjoint(scopes) else []
        )
        each_scope = [s for s in self.config.scopes_all if s not in scopes]
        return one_role, each_role, one_scope, each_scope


class Policy:
    """A compiled rule set: ``check(method, path, grants)`` raises when denied.

    Also an ``Authorizer`` (``authorize(identity, method, path)``): the one
    engine behind the ``rbac`` plugin, ``gatekeep.service``'s middleware and
    ``require_roles``.
    """

    def __init__(self, config: RbacConfig) -> None:
        self.config = config
        closure = role_closure(config.hierarchy)
        implied_by: dict[str, set[str]] = {}
        for holder, implied in closure.items():
            for role in implied:
                implied_by.setdefault(role, {role}).add(holder)

        def satisfiers(role: str) -> frozenset[str]:
            return frozenset(implied_by.get(role, {role}))

        rules: list[_Rule] = []
        for i, rc in enumerate(config.rules):
            rules.append(
                _Rule(
                    index=i,
                    config=rc,
                    paths=tuple(_PathPattern(p) for p in rc.paths),
                    any_of=frozenset().union(*(satisfiers(r) for r in rc.any_of)),
                    all_of=tuple((r, satisfiers(r)) for r in rc.all_of),
                    scopes_any=frozenset(rc.scopes_any),
                    scopes_all=frozenset(rc.scopes_all),
                )
            )
        self.rules = tuple(rules)
        self.closure = closure
        # Per method, the rules that may apply, in config order.
        by_method: dict[str, list[_Rule]] = {m: [] for m in _METHODS}
        for rule in rules:
            methods = {m.upper() for m in rule.config.methods} or _METHODS
            if "GET" in methods:
                methods = methods | {"HEAD"}
            for m in methods:
                by_method[m].append(rule)
        self._by_method = {m: tuple(rs) for m, rs in by_method.items()}
        self._any_paths = any(r.paths for r in rules)
        # Whether some rule looks at the path (else a decision is the method's and the grants' alone).
        self.reads_paths = self._any_paths
        self.role_paths: tuple[ClaimPath, ...] = compile_paths(config.roles_claims, config.clients)
        self.scope_paths: tuple[ClaimPath, ...] = compile_paths(config.scopes_claims, config.clients)
        # Grants by identity object: a verifier's cache hands out the same identity again.
        self._grants: dict[int, tuple[Identity, Grants, set[str]]] = {}
        self._groups_as_roles = config.groups_as_roles

    @classmethod
    def of(cls, config: RbacConfig | Mapping[str, Any]) -> Policy:
        """A policy from an ``RbacConfig`` or the same as a dict (checked, errors with paths)."""
        if isinstance(config, RbacConfig):
            return cls(config)
        checked: RbacConfig = structure_or_raise(RbacConfig, dict(config))
        return cls(checked)

    def effective_roles(self, roles: Iterable[str]) -> frozenset[str]:
        """``roles`` with everything the hierarchy makes them include."""
        out: set[str] = set()
        for r in roles:
            out |= self.closure.get(r, {r})
        return frozenset(out)

    def grants(self, identity: Identity | None, consumer_groups: Iterable[str] = ()) -> Grants:
        """The roles and scopes of ``identity`` (claims read at the configured paths)."""
        if identity is None:
            return Grants()
        roles = set(identity.roles)
        scopes = set(identity.scopes)
        claims = identity.claims
        if claims:
            if self.role_paths:
                roles |= extract(claims, self.role_paths)
            if self.scope_paths:
                scopes |= extract(claims, self.scope_paths)
        if self.config.groups_as_roles:
            roles.update(identity.groups)
            roles.update(consumer_groups)
        return Grants(frozenset(roles), frozenset(scopes), not identity.anonymous)

    def allows(self, method: str, path: str, grants: Grants) -> bool:
        """Whether some rule applicable to ``method path`` is satisfied."""
        segments = _split(path) if self._any_paths else None
        for rule in self._by_method.get(method, ()):
            if rule.applies(segments) and rule.allows(grants.roles, grants.scopes):
                return True
        return False

    def check(self, method: str, path: str, grants: Grants) -> None:
        """Return when allowed.

        Raises:
            AuthenticationRequired: denied and the request is not authenticated (401).
            InsufficientScope: denied for want of a scope (403, with the RFC 6750 challenge).
            InsufficientRole: denied for want of a role, or no rule covers the request (403).
        """
        segments = _split(path) if self._any_paths else None
        applicable: list[_Rule] = []
        for rule in self._by_method.get(method, ()):
            if rule.applies(segments):
                if rule.allows(grants.roles, grants.scopes):
                    return
                applicable.append(rule)
        raise self._denial(method, path, grants, applicable)

    def authorize(
        self, identity: Identity | None, method: str, path: str, consumer_groups: Iterable[str] = ()
    ) -> None:
        """The ``Authorizer`` protocol: return when ``identity`` may call ``method path``.

        ``consumer_groups`` count as roles too with ``groups_as_roles`` (the
        ``rbac`` plugin passes the consumer's).  The order before issue 12,
        ``authorize(identity, path, method)``, still works for one release
        (a path is never a method), with a ``DeprecationWarning``.

        Raises:
            AuthenticationRequired, InsufficientRole, InsufficientScope: see ``check``.
        """
        if method[:1] == "/":
            warnings.warn(
                "Policy.authorize(identity, path, method) is deprecated: "
                "use authorize(identity, method, path)",
                DeprecationWarning,
                stacklevel=2,
            )
            method, path = path, method
        if identity is None or (consumer_groups and self._groups_as_roles):
            self.check(method, path, self.grants(identity, consumer_groups))
            return
        # Per identity object (frozen; its claims are a verified token's, and a verifier's cache
        # hands out the same object again): its grants, and the methods already allowed when no
        # rule looks at the path (the decision is then the method's and the grants' alone).
        entry = self._grants.get(id(identity))
        if entry is None or entry[0] is not identity:
            entry = self._remember(identity)
        elif method in entry[2]:
            return
        self.check(method, path, entry[1])
        if not self._any_paths:
            entry[2].add(method)  # only methods some rule allowed: bounded by the rules' methods

    def _remember(self, identity: Identity) -> tuple[Identity, Grants, set[str]]:
        allowed: set[str] = set()
        entry = (identity, self.grants(identity), allowed)
        if len(self._grants) >= _MAX_GRANTS:
            self._grants.clear()
        self._grants[id(identity)] = entry  # holding it: its id is not reused meanwhile
        return entry

    def _denial(self, method: str, path: str, grants: Grants, applicable: list[_Rule]) -> Exception:
        where = f"{method} {path}"
        if not applicable:
            detail = f"no access rule allows {where}"
            if not grants.authenticated:
                return AuthenticationRequired(detail)
            return InsufficientRole(detail, extensions={"reason": "no-rule"})
        # Report the rule that is closest to being satisfied (fewest things missing).
        best = min(applicable, key=lambda r: (sum(map(len, r.missing(grants))), r.index))
        one_role, each_role, one_scope, each_scope = best.missing(grants)
        needs: list[str] = []
        if one_role:
            needs.append(_needs("role", one_role, one=True))
        if each_role:
            needs.append(_needs("role", each_role, one=False))
        if one_scope:
            needs.append(_needs("scope", one_scope, one=True))
        if each_scope:
            needs.append(_needs("scope", each_scope, one=False))
        detail = f"{where} needs {' and '.join(needs)}"
        extensions: dict[str, Any] = {}
        if one_role or each_role:
            extensions["required_roles"] = {"any_of": one_role, "all_of": each_role}
        if one_scope or each_scope:
            extensions["required_scopes"] = {"any_of": one_scope, "all_of": each_scope}
        if not grants.authenticated:
            return AuthenticationRequired(detail, extensions=extensions)
        if one_scope or each_scope:
            wanted = " ".join(dict.fromkeys(each_scope + one_scope))
            challenge = (
                f'Bearer error="insufficient_scope", error_description="{_quote(detail)}", scope="{wanted}"'
            )
            return InsufficientScope(detail, headers=[("www-authenticate", challenge)], extensions=extensions)
        return InsufficientRole(detail, extensions=extensions)


# Identities whose grants are kept (bounded: an uncached verifier makes one per request).
_MAX_GRANTS = 1024


def _needs(kind: str, names: Sequence[str], *, one: bool) -> str:
    if len(names) == 1:
        return f"the {kind} {names[0]!r}"
    listed = ", ".join(repr(n) for n in names)
    return f"one of the {kind}s {listed}" if one else f"each of the {kind}s {listed}"


def _quote(text: str) -> str:
    # RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E.
    return "".join(c if (" " <= c <= "~" and c not in '"\\') else "?" for c in text)


def _split(path: str) -> list[str]:
    return [s for s in path.split("/") if s]
