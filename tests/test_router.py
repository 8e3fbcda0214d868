"""The compiled router: each path kind, each precedence rule, 404 vs 405, hosts, headers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep import CompiledRouter, Headers, RouteMatch, Router, RouteRule
from gatekeep._router import check_host_pattern, check_path_pattern

from . import strategies as gs


def router(*rules: RouteRule) -> CompiledRouter:
    return CompiledRouter(rules)


def name_of(
    r: CompiledRouter, path: str, method: str = "GET", host: str = "h", headers: object = None
) -> str | None:
    m = r.match(method, host, path, headers)
    return None if m is None else m.rule.name


def test_satisfies_the_router_protocol() -> None:
    assert isinstance(router(), Router)


def test_rule_converts_its_fields() -> None:
    rule = RouteRule("r", paths="/a", methods=["get", "Post"], hosts="example.com")
    assert rule.paths == ("/a",)
    assert rule.methods == frozenset({"GET", "POST"})
    assert rule.hosts == ("example.com",)


# -- path kinds -------------------------------------------------------------------


class TestPrefix:
    r = router(RouteRule("orders", ["/orders"]))

    @pytest.mark.parametrize("path", ["/orders", "/orders/", "/orders/1", "/orders/1/items/"])
    def test_matches_on_a_segment_boundary(self, path: str) -> None:
        m = self.r.match("GET", "h", path)
        assert m is not None
        assert m.matched == "/orders"
        assert m.params == {}

    @pytest.mark.parametrize("path", ["/ordersx", "/order", "/", "/x/orders"])
    def test_does_not_match_elsewhere(self, path: str) -> None:
        assert self.r.match("GET", "h", path) is None

    def test_trailing_slash_prefix_needs_more_path(self) -> None:
        r = router(RouteRule("o", ["/orders/"]))
        assert name_of(r, "/orders") is None
        assert name_of(r, "/orders/") == "o"
        m = r.match("GET", "h", "/orders/1")
        assert m is not None and m.matched == "/orders"

    def test_root_matches_everything_and_consumes_nothing(self) -> None:
        r = router(RouteRule("root", ["/"]))
        for path in ("/", "/a", "/a/b/"):
            m = r.match("GET", "h", path)
            assert m is not None and m.matched == ""

    def test_no_paths_means_any_path(self) -> None:
        r = router(RouteRule("any"))
        assert name_of(r, "/") == name_of(r, "/x/y") == "any"

    def test_strip_path_recipe(self) -> None:
        r = router(RouteRule("o", ["/api/v1"]))
        for path, rest in [("/api/v1", "/"), ("/api/v1/", "/"), ("/api/v1/orders", "/orders")]:
            m = r.match("GET", "h", path)
            assert m is not None
            assert (path[len(m.matched) :] or "/") == rest

    def test_pattern_is_normalised_like_a_request(self) -> None:
        r = router(RouteRule("c", ["/café"]))
        assert name_of(r, "/caf%C3%A9/menu") == "c"


class TestExact:
    r = router(RouteRule("health", ["=/health"]))

    def test_only_the_exact_path(self) -> None:
        m = self.r.match("GET", "h", "/health")
        assert m == RouteMatch(self.r.rules[0], {}, "/health")
        assert self.r.match("GET", "h", "/health/") is None
        assert self.r.match("GET", "h", "/health/x") is None

    def test_root(self) -> None:
        r = router(RouteRule("root", ["=/"]))
        assert name_of(r, "/") == "root"
        assert name_of(r, "/a") is None


class TestTemplate:
    def test_one_segment_params(self) -> None:
        r = router(RouteRule("item", ["/orders/{order}/items/{item}"]))
        m = r.match("GET", "h", "/orders/7/items/a%20b")
        assert m is not None
        assert m.params == {"order": "7", "item": "a%20b"}
        assert m.matched == "/orders/7/items/a%20b"

    @pytest.mark.parametrize("path", ["/orders", "/orders/", "/orders/1/", "/orders/1/x", "/orders/1/items"])
    def test_whole_path_only(self, path: str) -> None:
        r = router(RouteRule("o", ["/orders/{id}"]))
        assert name_of(r, path) is None

    def test_trailing_slash_is_significant(self) -> None:
        r = router(RouteRule("slash", ["/orders/{id}/"]))
        assert name_of(r, "/orders/1/") == "slash"
        assert name_of(r, "/orders/1") is None

    def test_path_param_takes_the_rest(self) -> None:
        r = router(RouteRule("files", ["/files/{rest:path}"]))
        for path, rest in [("/files/a", "a"), ("/files/a/b", "a/b"), ("/files/a/b/", "a/b/")]:
            m = r.match("GET", "h", path)
            assert m is not None and m.params == {"rest": rest}
        assert name_of(r, "/files") is None
        assert name_of(r, "/files/") is None

    def test_params_only_template(self) -> None:
        r = router(RouteRule("p", ["/{a}/{b}"]))
        m = r.match("GET", "h", "/x/y")
        assert m is not None and m.params == {"a": "x", "b": "y"}

    def test_backtracks_from_a_literal_branch(self) -> None:
        r = router(RouteRule("param", ["/a/{x}/c"]), RouteRule("literal", ["/a/b/d"]))
        assert name_of(r, "/a/b/c") == "param"
        assert name_of(r, "/a/b/d") == "literal"


class TestRegex:
    def test_fullmatch_with_named_groups(self) -> None:
        r = router(RouteRule("num", [r"~/orders/(?P<id>\d+)(?:/(?P<tail>.+))?"]))
        m = r.match("GET", "h", "/orders/42")
        assert m is not None
        assert m.params == {"id": "42"}
        assert m.matched == "/orders/42"
        m = r.match("GET", "h", "/orders/42/x")
        assert m is not None and m.params == {"id": "42", "tail": "x"}
        assert name_of(r, "/orders/x") is None
        assert name_of(r, "/v1/orders/42") is None

    def test_anchors_are_harmless(self) -> None:
        r = router(RouteRule("num", [r"~^/orders/\d+$"]))
        assert name_of(r, "/orders/1") == "num"
        assert name_of(r, "/orders/1/") is None


# -- precedence ---------------------------------------------------------------------


class TestPrecedence:
    def test_exact_host_before_wildcard_before_any(self) -> None:
        r = router(
            RouteRule("any", ["=/x"]),
            RouteRule("wild", ["/"], hosts=["*.example.com"]),
            RouteRule("longer-wild", ["/"], hosts=["*.api.example.com"]),
            RouteRule("exact", ["/"], hosts=["v1.api.example.com"]),
        )
        # Host beats path kind: a prefix "/" on the host beats an exact path without one.
        assert name_of(r, "/x", host="v1.api.example.com") == "exact"
        assert name_of(r, "/x", host="v2.api.example.com") == "longer-wild"
        assert name_of(r, "/x", host="www.example.com") == "wild"
        assert name_of(r, "/x", host="example.org") == "any"

    def test_falls_back_to_a_less_specific_host(self) -> None:
        r = router(RouteRule("host", ["/a"], hosts=["example.com"]), RouteRule("any", ["/b"]))
        assert name_of(r, "/b", host="example.com") == "any"

    def test_exact_before_template_before_regex_before_prefix(self) -> None:
        rules = [
            RouteRule("prefix", ["/orders"]),
            RouteRule("regex", [r"~/orders/\d+"]),
            RouteRule("template", ["/orders/{id}"]),
            RouteRule("exact", ["=/orders/1"]),
        ]
        r = router(*rules)
        assert name_of(r, "/orders/1") == "exact"
        assert name_of(r, "/orders/2") == "template"
        r = router(*(x for x in rules if x.name != "template"))
        assert name_of(r, "/orders/2") == "regex"
        assert name_of(r, "/orders/x") == "prefix"

    def test_catch_all_prefix_does_not_hide_a_regex(self) -> None:
        r = router(RouteRule("root", ["/"]), RouteRule("num", [r"~/\d+"]))
        assert name_of(r, "/12") == "num"
        assert name_of(r, "/x") == "root"

    def test_template_with_more_literal_segments_first(self) -> None:
        r = router(
            RouteRule("two-params", ["/{a}/{b}/c"]),
            RouteRule("one-param", ["/orders/{id}/c"]),
            RouteRule("late-literal", ["/{a}/x/c"]),
        )
        assert name_of(r, "/orders/1/c") == "one-param"
        assert name_of(r, "/y/x/c") == "late-literal"
        assert name_of(r, "/y/z/c") == "two-params"

    def test_equal_templates_by_config_order(self) -> None:
        r = router(RouteRule("first", ["/{a}/x"]), RouteRule("second", ["/x/{b}"]))
        assert name_of(r, "/x/x") == "first"

    def test_path_tail_param_loses_to_one_segment_param(self) -> None:
        r = router(RouteRule("tail", ["/files/{p:path}"]), RouteRule("one", ["/files/{name}"]))
        assert name_of(r, "/files/a") == "one"
        assert name_of(r, "/files/a/b") == "tail"

    def test_longest_prefix_first(self) -> None:
        r = router(
            RouteRule("short", ["/api"]),
            RouteRule("long", ["/api/v1"]),
            RouteRule("long-slash", ["/api/v1/"]),
        )
        assert name_of(r, "/api/v1/x") == "long-slash"
        assert name_of(r, "/api/v1") == "long"
        assert name_of(r, "/api/v2") == "short"

    def test_headers_before_no_headers(self) -> None:
        r = router(RouteRule("plain", ["/a"]), RouteRule("v2", ["/a"], headers={"x-version": ("2",)}))
        assert name_of(r, "/a") == "plain"
        assert name_of(r, "/a", headers=Headers([(b"x-version", b"2")])) == "v2"

    def test_methods_before_any_method(self) -> None:
        r = router(RouteRule("any", ["/a"]), RouteRule("post", ["/a"], methods=["POST"]))
        assert name_of(r, "/a", "POST") == "post"
        assert name_of(r, "/a", "GET") == "any"

    def test_headers_outrank_methods(self) -> None:
        r = router(
            RouteRule("methods", ["/a"], methods=["GET"]),
            RouteRule("headers", ["/a"], headers={"x-a": ()}),
        )
        assert name_of(r, "/a", headers=Headers([(b"x-a", b"1")])) == "headers"

    def test_config_order_last(self) -> None:
        r = router(RouteRule("first", ["/a"]), RouteRule("second", ["/a"]))
        assert name_of(r, "/a") == "first"

    def test_path_kind_outranks_headers_and_methods(self) -> None:
        r = router(
            RouteRule("prefix", ["/a"], methods=["GET"], headers={"x-a": ()}),
            RouteRule("exact", ["=/a"]),
        )
        assert name_of(r, "/a", headers=Headers([(b"x-a", b"1")])) == "exact"

    def test_a_rule_with_several_paths_ranks_each(self) -> None:
        r = router(RouteRule("multi", ["/a", "=/b"]), RouteRule("exact-a", ["=/a"]))
        assert name_of(r, "/a") == "exact-a"
        assert name_of(r, "/b") == "multi"
        assert name_of(r, "/a/x") == "multi"


# -- 404 and 405 ----------------------------------------------------------------------


class TestMethodNotAllowed:
    r = router(
        RouteRule("read", ["/orders/{id}"], methods=["GET", "HEAD"]),
        RouteRule("delete", ["=/orders/1"], methods=["DELETE"]),
        RouteRule("v2-only", ["/orders"], methods=["PATCH"], headers={"x-version": ("2",)}),
        RouteRule("other-host", ["/orders"], methods=["PUT"], hosts=["other.example.com"]),
    )

    def test_method_mismatch_is_none_with_allowed_methods(self) -> None:
        assert self.r.match("POST", "h", "/orders/1") is None
        assert self.r.allowed_methods("h", "/orders/1") == {"GET", "HEAD", "DELETE"}
        assert self.r.allowed_methods("h", "/orders/2") == {"GET", "HEAD"}

    def test_methods_are_case_sensitive(self) -> None:
        assert self.r.match("get", "h", "/orders/2") is None

    def test_headers_and_host_count_for_the_allowed_set(self) -> None:
        v2 = Headers([(b"x-version", b"2")])
        assert self.r.allowed_methods("h", "/orders/2", v2) == {"GET", "HEAD", "PATCH"}
        assert self.r.allowed_methods("other.example.com", "/orders/2") == {"GET", "HEAD", "PUT"}

    def test_no_path_match_is_an_empty_set(self) -> None:
        assert self.r.match("GET", "h", "/nothing") is None
        assert self.r.allowed_methods("h", "/nothing") == frozenset()

    def test_falls_through_to_a_route_that_accepts_the_method(self) -> None:
        r = router(RouteRule("get", ["=/a"], methods=["GET"]), RouteRule("root", ["/"]))
        assert name_of(r, "/a", "POST") == "root"

    def test_path_must_be_normalised_form(self) -> None:
        r = router(RouteRule("root", ["/"]))
        assert r.match("GET", "h", "relative") is None
        assert r.allowed_methods("h", "relative") == frozenset()


# -- hosts and headers ------------------------------------------------------------------


class TestHosts:
    r = router(
        RouteRule("api", hosts=["api.example.com"]),
        RouteRule("wild", hosts=["*.example.com"]),
        RouteRule("ip", hosts=["127.0.0.1", "[::1]"]),
    )

    @pytest.mark.parametrize(
        ("host", "name"),
        [
            ("api.example.com", "api"),
            ("API.Example.COM", "api"),
            ("api.example.com:8443", "api"),
            ("api.example.com.", "api"),
            ("www.example.com", "wild"),
            ("a.b.example.com", "wild"),
            ("example.com", None),
            ("xexample.com", None),
            ("127.0.0.1:80", "ip"),
            ("[::1]:8080", "ip"),
            ("", None),
            ("other.org", None),
        ],
    )
    def test_host_matching(self, host: str, name: str | None) -> None:
        assert name_of(self.r, "/x", host=host) == name


class TestHeaders:
    r = router(RouteRule("h", ["/"], headers={"x-version": ("2", "v2"), "x-tenant": ()}))

    @pytest.mark.parametrize(
        ("pairs", "ok"),
        [
            ([(b"x-version", b"2"), (b"x-tenant", b"a")], True),
            ([(b"x-version", b"V2"), (b"x-tenant", b"")], True),
            ([(b"x-version", b" 2 "), (b"x-tenant", b"a")], True),
            ([(b"x-version", b"1"), (b"x-version", b"2"), (b"x-tenant", b"a")], True),
            ([(b"x-version", b"3"), (b"x-tenant", b"a")], False),
            ([(b"x-version", b"2")], False),
            ([(b"x-tenant", b"a")], False),
        ],
    )
    def test_all_names_any_value(self, pairs: list[tuple[bytes, bytes]], ok: bool) -> None:
        assert (name_of(self.r, "/", headers=Headers(pairs)) == "h") is ok

    def test_no_headers_given(self) -> None:
        assert name_of(self.r, "/") is None

    def test_plain_list_of_pairs_also_works(self) -> None:
        assert name_of(self.r, "/", headers=[(b"x-version", b"2"), (b"x-tenant", b"a")]) == "h"


# -- invalid configuration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "must not be empty"),
        ("orders", "must start with '/'"),
        ("=orders", "must start with '/'"),
        ("/a//b", "empty"),
        ("/a/../b", "dot"),
        ("/a/./b", "dot"),
        ("/a/%2e%2E", "dot"),
        ("/{a}/%2e", "dot"),
        ("/a%2Fb", "encoded slash"),
        ("/a%zz", "malformed"),
        ("=/a/{id}", "cannot have parameters"),
        ("/a/x{id}", "whole segment"),
        ("/a/{id", "whole segment"),
        ("/a/{1x}", "not a valid identifier"),
        ("/a/{}", "not a valid identifier"),
        ("/{a}/{a}", "appears twice"),
        ("/{a:int}", "unknown parameter type"),
        ("/{a:path}/b", "must be the last segment"),
        ("/{a:path}/", "must be the last segment"),
        ("/a//{b}", "empty segments"),
        ("/../{b}", "dot"),
        ("~", "must not be empty"),
        ("~/orders/(", "invalid regex"),
    ],
)
def test_invalid_path_patterns(pattern: str, why: str) -> None:
    problem = check_path_pattern(pattern)
    assert problem is not None and why in problem
    with pytest.raises(ValueError, match=re.escape(f"route 'bad': path {pattern!r}: ")):
        router(RouteRule("bad", [pattern]))


@pytest.mark.parametrize(
    "pattern", ["/", "/a", "/a/", "=/", "=/a/", "/{a}", "/a/{b}/", "/x/{p:path}", r"~/\d+"]
)
def test_valid_path_patterns(pattern: str) -> None:
    assert check_path_pattern(pattern) is None


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("", "empty"),
        ("example.com:80", "port"),
        ("*example.com", "wildcard"),
        ("api.*.com", "wildcard"),
        ("example.*", "wildcard"),
        ("*", "wildcard"),
        ("a..b", "not a valid host"),
        ("-a.com", "not a valid host"),
        ("a b", "not a valid host"),
    ],
)
def test_invalid_hosts(host: str, why: str) -> None:
    problem = check_host_pattern(host)
    assert problem is not None and why in problem
    if host:
        with pytest.raises(ValueError, match="route 'bad': host"):
            router(RouteRule("bad", hosts=[host]))


@pytest.mark.parametrize(
    "host", ["example.com", "*.example.com", "Example.COM.", "10.0.0.1", "[::1]", "a_b.local"]
)
def test_valid_hosts(host: str) -> None:
    assert check_host_pattern(host) is None


@pytest.mark.parametrize(("name", "why"), [("host", "hosts"), ("bad name", "valid token")])
def test_invalid_header_conditions(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        router(RouteRule("bad", headers={name: ("x",)}))


# -- properties ------------------------------------------------------------------------------


@given(gs.canonical_paths())
def test_a_literal_route_matches_its_own_path(path: str) -> None:
    for pattern in (path, "=" + path):
        m = router(RouteRule("r", [pattern])).match("GET", "h", path)
        assert m is not None
        assert m.matched == (path if pattern.startswith("=") else path.rstrip("/"))


@given(gs.canonical_paths(), gs.segments, gs.canonical_paths())
def test_prefix_never_matches_a_non_boundary_extension(prefix: str, glued: str, tail: str) -> None:
    r = router(RouteRule("p", [prefix.rstrip("/") or "/"]))
    assert r.match("GET", "h", prefix.rstrip("/") + "/" + glued + tail) is not None
    if prefix != "/":
        assert r.match("GET", "h", prefix.rstrip("/") + glued + tail) is None


@given(
    st.lists(st.one_of(gs.plain_segments, st.none()), min_size=1, max_size=6),
    st.lists(gs.segments, min_size=6, max_size=6),
    st.booleans(),
)
def test_template_params_round_trip(shape: list[str | None], values: list[str], slash: bool) -> None:
    names = [f"p{i}" for i in range(len(shape))]
    pattern = "/" + "/".join(s if s is not None else "{" + n + "}" for s, n in zip(shape, names, strict=True))
    pattern += "/" if slash else ""
    if "{" not in pattern:
        pattern = "=" + pattern
    path = "/" + "/".join(s if s is not None else v for s, v in zip(shape, values, strict=False))
    path += "/" if slash else ""
    m = router(RouteRule("t", [pattern])).match("GET", "h", path)
    assert m is not None
    assert m.matched == path
    assert m.params == {n: v for s, n, v in zip(shape, names, values, strict=False) if s is None}


@given(st.lists(gs.segments, min_size=1, max_size=5))
def test_path_tail_round_trip(rest: list[str]) -> None:
    m = router(RouteRule("t", ["/files/{p:path}"])).match("GET", "h", "/files/" + "/".join(rest))
    assert m is not None and m.params == {"p": "/".join(rest)}


@given(st.lists(gs.canonical_paths(gs.plain_segments), min_size=1, max_size=20, unique=True), st.data())
def test_exact_routes_each_find_their_own_rule(paths: list[str], data: st.DataObject) -> None:
    r = router(*(RouteRule(p, ["=" + p]) for p in paths))
    path = data.draw(st.sampled_from(paths))
    assert name_of(r, path) == path
