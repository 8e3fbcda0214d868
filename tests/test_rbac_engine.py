"""The rbac rule engine, sans-IO: tables, hierarchy, claim paths, config errors, invariants."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep import ConfigError, Identity
from gatekeep.authz import (
    AuthenticationRequired,
    Grants,
    InsufficientRole,
    InsufficientScope,
    Policy,
    RbacConfig,
    RuleConfig,
    role_closure,
)
from gatekeep.authz._claims import compile_paths, extract

from .strategies import rbac_hierarchies, rbac_roles, rbac_rules, rbac_scopes

# The reference scenario: GET /orders admin only, POST /orders users and admins.
ORDERS = {
    "hierarchy": {"admin": ["user"]},
    "rules": [
        {"methods": ["GET"], "any_of": ["admin"]},
        {"methods": ["POST"], "any_of": ["user"]},
    ],
}


def grants(*roles: str, scopes: tuple[str, ...] = (), authenticated: bool = True) -> Grants:
    return Grants(frozenset(roles), frozenset(scopes), authenticated)


def outcome(policy: Policy, method: str, path: str, g: Grants) -> int:
    try:
        policy.check(method, path, g)
    except (AuthenticationRequired, InsufficientRole, InsufficientScope) as exc:
        assert policy.allows(method, path, g) is False
        return exc.status
    assert policy.allows(method, path, g) is True
    return 200


@pytest.mark.parametrize(
    ("method", "roles", "status"),
    [
        ("GET", ("admin",), 200),
        ("GET", ("user",), 403),
        ("GET", (), 403),
        ("HEAD", ("admin",), 200),  # GET rules cover HEAD
        ("HEAD", ("user",), 403),
        ("POST", ("user",), 200),
        ("POST", ("admin",), 200),  # the hierarchy: an admin may do what a user may
        ("POST", ("viewer",), 403),
        ("DELETE", ("admin",), 403),  # no rule for DELETE: denied by default
        ("PUT", ("admin", "user"), 403),
    ],
)
def test_reference_scenario(method: str, roles: tuple[str, ...], status: int) -> None:
    assert outcome(Policy.of(ORDERS), method, "/orders", grants(*roles)) == status


def test_unauthenticated_is_401_and_anonymous_too() -> None:
    policy = Policy.of(ORDERS)
    assert outcome(policy, "GET", "/orders", Grants()) == 401
    assert outcome(policy, "DELETE", "/orders", Grants()) == 401
    # Kong's anonymous consumer may hold groups; when they are not enough it is still told to log in.
    assert outcome(policy, "GET", "/orders", grants("user", authenticated=False)) == 401
    assert outcome(policy, "POST", "/orders", grants("user", authenticated=False)) == 200


def test_a_rule_without_conditions_is_public() -> None:
    policy = Policy.of({"rules": [{"methods": ["OPTIONS"]}, {"methods": ["GET"], "any_of": ["user"]}]})
    assert outcome(policy, "OPTIONS", "/x", Grants()) == 200
    assert outcome(policy, "GET", "/x", Grants()) == 401


def test_all_of_and_any_of_together() -> None:
    policy = Policy.of(
        {
            "hierarchy": {"admin": ["ops"]},
            "rules": [{"any_of": ["user", "admin"], "all_of": ["ops", "auditor"]}],
        }
    )
    assert outcome(policy, "GET", "/", grants("user", "ops", "auditor")) == 200
    assert outcome(policy, "GET", "/", grants("admin", "auditor")) == 200  # admin includes ops
    assert outcome(policy, "GET", "/", grants("user", "ops")) == 403
    with pytest.raises(InsufficientRole) as info:
        policy.check("GET", "/", grants("user", "ops"))
    assert info.value.detail == "GET / needs each of the roles 'auditor'".replace(
        "each of the roles", "the role"
    )
    assert info.value.extensions["required_roles"] == {"any_of": [], "all_of": ["auditor"]}


def test_denial_names_the_missing_role() -> None:
    with pytest.raises(InsufficientRole) as info:
        Policy.of(ORDERS).check("GET", "/orders", grants("user"))
    error = info.value
    assert error.status == 403
    assert error.detail == "GET /orders needs the role 'admin'"
    assert error.extensions["required_roles"] == {"any_of": ["admin"], "all_of": []}
    assert not any(name == "www-authenticate" for name, _ in error.headers)


def test_no_rule_for_the_method_says_so() -> None:
    with pytest.raises(InsufficientRole) as info:
        Policy.of(ORDERS).check("DELETE", "/orders", grants("admin"))
    assert info.value.detail == "no access rule allows DELETE /orders"


def test_scopes_insufficient_scope_challenge() -> None:
    policy = Policy.of(
        {
            "rules": [
                {"methods": ["GET"], "scopes_any": ["orders:read", "orders:write"]},
                {"methods": ["POST"], "any_of": ["user"], "scopes_all": ["orders:write", "openid"]},
            ]
        }
    )
    assert outcome(policy, "GET", "/o", grants(scopes=("orders:read",))) == 200
    with pytest.raises(InsufficientScope) as info:
        policy.check("POST", "/o", grants("user", scopes=("openid",)))
    error = info.value
    assert error.status == 403
    assert error.detail == "POST /o needs the scope 'orders:write'"
    (challenge,) = [v for k, v in error.headers if k == "www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", ')
    assert challenge.endswith('scope="orders:write"')
    assert "error_description=\"POST /o needs the scope 'orders:write'\"" in challenge
    # Both a role and a scope missing: both named, the challenge still says which scope.
    with pytest.raises(InsufficientScope) as info:
        policy.check("POST", "/o", grants(scopes=("openid",)))
    assert info.value.detail == "POST /o needs the role 'user' and the scope 'orders:write'"


def test_the_closest_rule_is_reported() -> None:
    policy = Policy.of(
        {
            "rules": [
                {"all_of": ["a", "b", "c"]},
                {"all_of": ["a", "d"]},
                {"any_of": ["x", "y"], "all_of": ["a"]},
            ]
        }
    )
    with pytest.raises(InsufficientRole) as info:
        policy.check("GET", "/", grants("a"))
    assert info.value.detail == "GET / needs the role 'd'"


def test_rule_paths() -> None:
    policy = Policy.of(
        {
            "rules": [
                {"paths": ["=/orders"], "methods": ["GET"], "any_of": ["admin"]},
                {"paths": ["/orders/{id}"], "methods": ["GET"], "any_of": ["user"]},
                {"paths": ["/public"]},
            ]
        }
    )
    user = grants("user")
    assert outcome(policy, "GET", "/orders", user) == 403
    assert outcome(policy, "GET", "/orders/7", user) == 200
    assert outcome(policy, "GET", "/orders/7/lines", user) == 200  # a rule path is a prefix
    assert outcome(policy, "GET", "/ordersx/7", user) == 403  # segment-wise, not by characters
    assert outcome(policy, "GET", "/public/a", Grants()) == 200
    assert outcome(policy, "GET", "/publicity", Grants()) == 401
    assert outcome(policy, "GET", "/elsewhere", user) == 403


# -- hierarchy ------------------------------------------------------------------


def test_hierarchy_is_transitive() -> None:
    closure = role_closure({"admin": ["ops", "user"], "user": ["viewer"], "ops": ["viewer"]})
    assert closure["admin"] == {"admin", "ops", "user", "viewer"}
    assert closure["user"] == {"user", "viewer"}
    policy = Policy.of(
        {"hierarchy": {"admin": ["user"], "user": ["viewer"]}, "rules": [{"any_of": ["viewer"]}]}
    )
    assert outcome(policy, "GET", "/", grants("admin")) == 200
    assert policy.effective_roles(["admin", "other"]) == {"admin", "user", "viewer", "other"}


@pytest.mark.parametrize(
    ("hierarchy", "cycle"),
    [
        ({"admin": ["admin"]}, "admin -> admin"),
        ({"admin": ["user"], "user": ["admin"]}, "admin -> user -> admin"),
        ({"a": ["b"], "b": ["c"], "c": ["b"]}, "b -> c -> b"),
    ],
)
def test_hierarchy_cycles_are_refused_with_the_field_path(
    hierarchy: dict[str, list[str]], cycle: str
) -> None:
    config = {"plugins": [{"name": "rbac", "config": {"hierarchy": hierarchy, "rules": [{"any_of": ["a"]}]}}]}
    from gatekeep import load_config

    with pytest.raises(ConfigError) as info:
        load_config(config)
    (error,) = info.value.errors
    assert error.path == "plugins[0].config.hierarchy"
    assert error.message == f"the role hierarchy has a cycle: {cycle}"


def test_bad_rules_are_refused_with_their_paths() -> None:
    from gatekeep import load_config

    config = {
        "plugins": [
            {
                "name": "rbac",
                "config": {
                    "rules": [
                        {"methods": ["FETCH"], "any_of": ["ad min"]},
                        {"paths": ["orders", "/a/{x"], "scopes_any": ['a"b'], "anyof": ["x"]},
                    ],
                    "roles_claims": ["realm_access..roles"],
                },
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        load_config(config)
    found = {(e.path, e.message.split(":")[0]) for e in info.value.errors}
    assert found == {
        ("plugins[0].config.rules[0].methods", "entry 0"),
        ("plugins[0].config.rules[0].any_of", "entry 0"),
        ("plugins[0].config.rules[1].paths", "entry 0"),
        ("plugins[0].config.rules[1].scopes_any", "entry 0"),
        ("plugins[0].config.rules[1].anyof", "unknown field (expected one of"),
        ("plugins[0].config.roles_claims", "entry 0"),
    }
    with pytest.raises(ConfigError) as info:
        load_config({"plugins": [{"name": "rbac", "config": {}}]})
    assert [e.path for e in info.value.errors] == ["plugins[0].config.rules"]


# -- claim paths ------------------------------------------------------------------

KEYCLOAK = {
    "iss": "https://sso.example.com/realms/shop",
    "azp": "web",
    "realm_access": {"roles": ["offline_access", "user"]},
    "resource_access": {
        "orders-api": {"roles": ["orders-admin"]},
        "billing": {"roles": ["admin"]},
        "account": {"roles": ["view-profile"]},
    },
    "scope": "openid profile orders:read",
}


def keycloak_identity(**extra: Any) -> Identity:
    return Identity(subject="u1", claims={**KEYCLOAK, **extra})


def test_keycloak_claims_with_a_client() -> None:
    policy = Policy.of({"clients": ["orders-api"], "rules": [{"any_of": ["x"]}]})
    g = policy.grants(keycloak_identity())
    # billing's "admin" must not count for the orders API.
    assert g.roles == {"offline_access", "user", "orders-admin"}
    assert g.scopes == {"openid", "profile", "orders:read"}
    assert g.authenticated


def test_client_paths_are_dropped_without_clients_and_wildcard_is_opt_in() -> None:
    assert Policy.of({"rules": [{}]}).grants(keycloak_identity()).roles == {"offline_access", "user"}
    wild = Policy.of({"roles_claims": ["resource_access.*.roles"], "rules": [{}]})
    assert wild.grants(keycloak_identity()).roles == {"orders-admin", "admin", "view-profile"}


def test_plain_role_claims_scp_and_namespaced_keys() -> None:
    policy = Policy.of(
        {"roles_claims": ["roles", "role", ["https://example.com/roles"]], "rules": [{}]},
    )
    identity = Identity(
        subject="s",
        roles=frozenset({"from-identity"}),
        scopes=frozenset({"id-scope"}),
        groups=frozenset({"group-a"}),
        claims={
            "role": "admin",
            "roles": ["a", 3, None, "b"],
            "https://example.com/roles": ["ns"],
            "scp": ["x", "y"],
        },
    )
    g = policy.grants(identity, consumer_groups=("consumer-group",))
    assert g.roles == {"from-identity", "admin", "a", "b", "ns", "group-a", "consumer-group"}
    assert g.scopes == {"id-scope", "x", "y"}
    no_groups = Policy.of({"groups_as_roles": False, "rules": [{}]}).grants(identity, ("consumer-group",))
    assert "group-a" not in no_groups.roles and "consumer-group" not in no_groups.roles


def test_claims_of_the_wrong_shape_are_ignored() -> None:
    paths = compile_paths(["realm_access.roles", "scope", "a.*.b"])
    claims = {"realm_access": "admin", "scope": 7, "a": {"x": {"b": "r1 r2"}, "y": 5, "z": {"b": {"no": 1}}}}
    assert extract(claims, paths) == {"r1", "r2"}
    assert extract({"realm_access": {"roles": {"admin": True}}}, paths) == set()


def test_compile_paths_expands_clients() -> None:
    assert compile_paths(["resource_access.{client}.roles", "roles"], ["a", "b"]) == (
        ("resource_access", "a", "roles"),
        ("resource_access", "b", "roles"),
        ("roles",),
    )
    assert compile_paths(["resource_access.{client}.roles"]) == ()


# -- invariants -------------------------------------------------------------------

methods = st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PATCH"])
paths = st.sampled_from(["/", "/orders", "/orders/1", "/orders/1/x", "/admin", "/other"])


@given(
    hierarchy=rbac_hierarchies(),
    rules=st.lists(rbac_rules(), min_size=1, max_size=4),
    method=methods,
    path=paths,
    roles=st.frozensets(rbac_roles),
    more_roles=st.frozensets(rbac_roles),
    scopes=st.frozensets(rbac_scopes),
    more_scopes=st.frozensets(rbac_scopes),
    authenticated=st.booleans(),
)
def test_more_roles_or_scopes_never_deny_what_was_allowed(
    hierarchy: dict[str, list[str]],
    rules: list[dict[str, Any]],
    method: str,
    path: str,
    roles: frozenset[str],
    more_roles: frozenset[str],
    scopes: frozenset[str],
    more_scopes: frozenset[str],
    authenticated: bool,
) -> None:
    policy = Policy.of({"hierarchy": hierarchy, "rules": rules})
    before = Grants(roles, scopes, authenticated)
    after = Grants(roles | more_roles, scopes | more_scopes, True)
    if policy.allows(method, path, before):
        assert policy.allows(method, path, after)
        policy.check(method, path, after)


@given(hierarchy=rbac_hierarchies(), rules=st.lists(rbac_rules(), min_size=1, max_size=4), role=rbac_roles)
def test_holding_a_role_is_the_same_as_holding_its_closure(
    hierarchy: dict[str, list[str]], rules: list[dict[str, Any]], role: str
) -> None:
    """The hierarchy folded into the rules equals expanding the roles at request time."""
    policy = Policy.of({"hierarchy": hierarchy, "rules": rules})
    closure = policy.effective_roles([role])
    for method in ("GET", "POST", "DELETE"):
        for path in ("/orders", "/orders/1", "/admin", "/other"):
            held = Grants(frozenset({role}), frozenset(), True)
            expanded = Grants(closure, frozenset(), True)
            assert policy.allows(method, path, held) == policy.allows(method, path, expanded)


@given(hierarchy=rbac_hierarchies())
def test_closure_is_transitive_and_reflexive(hierarchy: dict[str, list[str]]) -> None:
    closure = role_closure(hierarchy)
    for role, implied in closure.items():
        assert role in implied
        for child in hierarchy.get(role, ()):
            assert closure.get(child, frozenset({child})) <= implied


@given(
    rules=st.lists(rbac_rules(), min_size=1, max_size=4),
    method=methods,
    path=paths,
    roles=st.frozensets(rbac_roles),
    scopes=st.frozensets(rbac_scopes),
)
def test_check_and_allows_agree_and_denials_are_well_formed(
    rules: list[dict[str, Any]], method: str, path: str, roles: frozenset[str], scopes: frozenset[str]
) -> None:
    policy = Policy.of({"rules": rules})
    g = Grants(roles, scopes, True)
    try:
        policy.check(method, path, g)
    except InsufficientScope as exc:
        assert not policy.allows(method, path, g)
        assert any(k == "www-authenticate" and "insufficient_scope" in v for k, v in exc.headers)
    except InsufficientRole as exc:
        assert not policy.allows(method, path, g)
        assert exc.detail.startswith(("no access rule allows", f"{method} {path} needs"))
    else:
        assert policy.allows(method, path, g)


def test_rbac_config_defaults() -> None:
    config = RbacConfig(rules=(RuleConfig(),))
    assert config.roles_claims == ("realm_access.roles", "resource_access.{client}.roles", "roles", "role")
    assert config.scopes_claims == ("scope", "scp")
