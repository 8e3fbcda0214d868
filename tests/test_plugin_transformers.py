"""``request-transformer`` and ``response-transformer``: Kong's remove/rename/replace/add/append."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gatekeep import ConfigError, load_config
from gatekeep.testing import gateway_for
from gatekeep.transform import FieldRules, HeaderRules
from tests._docs import run_python_blocks

pytestmark = pytest.mark.anyio


def _config(name: str, plugin: dict[str, Any]) -> dict[str, Any]:
    return {
        "services": [{"name": "api", "url": "{upstream}", "routes": [{"name": "api", "paths": ["/"]}]}],
        "plugins": [{"name": name, "config": plugin}],
    }


def _errors(name: str, plugin: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        load_config({**_config(name, plugin), "services": []})
    return {e.path: e.message for e in exc.value.errors}


# -- the rules, sans-IO -----------------------------------------------------------------------


def test_field_rules_in_kongs_order_on_a_query_string() -> None:
    rules = FieldRules.compile(
        remove=["drop"],
        rename=["old:new"],
        replace=["keep:changed", "absent:x"],
        add=["keep:not-added", "fresh:a b"],
        append=["multi:2"],
    )
    out = rules.apply_form(b"drop=1&old=v%20v&keep=1&keep=2&multi=1&other=%41")
    assert out == b"new=v%20v&keep=changed&multi=1&other=%41&fresh=a%20b&multi=2"


def test_field_rules_on_a_json_object() -> None:
    rules = FieldRules.compile(
        remove=["secret"],
        rename=["user:username"],
        replace=["role:viewer", "missing:x"],
        add=["count:3", "role:admin", "on:true"],
        append=["tags:new", "list:b", "fresh:x"],
        types=((), ("number", "string", "boolean"), ()),
    )
    doc = {"secret": "s", "user": "ann", "role": "admin", "tags": "old", "list": ["a"]}
    assert rules.apply_json(doc) == {
        "username": "ann",
        "role": "viewer",
        "tags": ["old", "new"],
        "list": ["a", "b"],
        "count": 3,
        "on": True,
        "fresh": ["x"],
    }


def test_header_rules() -> None:
    from gatekeep import Headers

    headers = Headers([(b"x-drop", b"1"), (b"x-old", b"a"), (b"x-old", b"b"), (b"x-keep", b"1")])
    HeaderRules.compile(
        remove=["X-Drop"],
        rename=["x-old:x-new"],
        replace=["x-keep:2", "x-absent:3"],
        add=["x-keep:no", "x-added:yes"],
        append=["x-keep:again"],
    ).apply(headers)
    assert sorted(headers.raw) == [
        (b"x-added", b"yes"),
        (b"x-keep", b"2"),
        (b"x-keep", b"again"),
        (b"x-new", b"a"),
        (b"x-new", b"b"),
    ]
    assert headers.get_all(b"x-keep") == [b"2", b"again"]  # appended after the replaced value


# -- request-transformer ----------------------------------------------------------------------


async def test_request_headers_and_query() -> None:
    plugin = {
        "remove": {"headers": ["x-internal"], "querystring": ["debug"]},
        "rename": {"headers": ["x-token:x-api-token"], "querystring": ["q:query"]},
        "replace": {"headers": ["user-agent:gatekeep"], "querystring": ["page:1"]},
        "add": {"headers": ["x-env:prod", "user-agent:never"], "querystring": ["lang:en"]},
        "append": {"headers": ["x-tag:b"], "querystring": ["tag:b"]},
    }
    async with gateway_for(_config("request-transformer", plugin)) as gw:
        headers = {"x-internal": "1", "x-token": "t", "user-agent": "curl", "x-tag": "a"}
        response = await gw.client.get("/x?debug=1&q=cats&page=7&tag=a", headers=headers)
        assert response.status == 200
        seen = gw.upstream.requests[-1]
        assert "x-internal" not in seen.headers and "x-token" not in seen.headers
        assert seen.headers["x-api-token"] == "t"
        assert seen.headers["user-agent"] == "gatekeep"
        assert seen.headers["x-env"] == "prod"
        assert seen.headers["x-tag"] == "a, b"
        assert seen.query == "query=cats&page=1&tag=a&lang=en&tag=b"


async def test_request_json_body() -> None:
    plugin = {
        "remove": {"body": ["password"]},
        "rename": {"body": ["user:username"]},
        "replace": {"body": ["role:user"]},
        "add": {"body": ["source:gateway", "version:2"], "json_types": ["string", "number"]},
        "append": {"body": ["tags:api"]},
    }
    body = json.dumps({"user": "ann", "password": "p", "role": "admin", "tags": ["x"], "n": 1.5}).encode()
    async with gateway_for(_config("request-transformer", plugin)) as gw:
        response = await gw.client.post("/x", body=body, headers={"content-type": "application/json"})
        assert response.status == 200
        seen = gw.upstream.requests[-1]
        assert json.loads(seen.body) == {
            "username": "ann",
            "role": "user",
            "tags": ["x", "api"],
            "n": 1.5,
            "source": "gateway",
            "version": 2,
        }
        assert seen.headers["content-length"] == str(len(seen.body))


async def test_request_form_body() -> None:
    plugin = {"remove": {"body": ["csrf"]}, "add": {"body": ["via:gk"]}}
    async with gateway_for(_config("request-transformer", plugin)) as gw:
        form = {"content-type": "application/x-www-form-urlencoded"}
        assert (await gw.client.post("/x", body=b"a=1&csrf=x&b=%2F", headers=form)).status == 200
        assert gw.upstream.requests[-1].body == b"a=1&b=%2F&via=gk"


async def test_http_method() -> None:
    async with gateway_for(_config("request-transformer", {"http_method": "POST"})) as gw:
        assert (await gw.client.get("/x")).status == 200
        assert gw.upstream.requests[-1].method == "POST"


async def test_bodies_the_rules_do_not_apply_to_stream_through_untouched() -> None:
    plugin = {"add": {"body": ["x:1"]}}
    async with gateway_for(_config("request-transformer", plugin)) as gw:
        for ctype, body in (
            ("application/octet-stream", b"\x00\x01binary"),
            ("application/json", b"[1, 2]"),  # not an object
            ("application/json", b"{not json"),
            ("multipart/form-data; boundary=x", b"--x--\r\n"),
        ):
            assert (await gw.client.post("/x", body=body, headers={"content-type": ctype})).status == 200
            assert gw.upstream.requests[-1].body == body
        gzip = {"content-type": "application/json", "content-encoding": "gzip"}
        assert (await gw.client.post("/x", body=b"\x1f\x8b...", headers=gzip)).status == 200
        assert gw.upstream.requests[-1].body == b"\x1f\x8b..."


async def test_without_body_rules_a_large_body_streams() -> None:
    plugin = {"add": {"headers": ["x-a:1"]}, "max_body_size": 10}
    async with gateway_for(_config("request-transformer", plugin)) as gw:
        body = b"{" + b" " * 100_000 + b"}"
        response = await gw.client.post("/x", body=body, headers={"content-type": "application/json"})
        assert response.status == 200 and gw.upstream.requests[-1].body == body


async def test_a_body_over_the_cap_is_a_413_problem() -> None:
    plugin = {"add": {"body": ["x:1"]}, "max_body_size": 100}
    async with gateway_for(_config("request-transformer", plugin)) as gw:
        body = b'{"a":"' + b"x" * 200 + b'"}'
        response = await gw.client.post("/x", body=body, headers={"content-type": "application/json"})
        assert response.status == 413
        assert response.header("content-type") == "application/problem+json"
        chunked = [("content-type", "application/json"), ("transfer-encoding", "chunked")]
        response = await gw.client.request("POST", "/x", body=b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body),
                                           headers=chunked)  # fmt: skip
        assert response.status == 413
        assert not gw.upstream.requests


@pytest.mark.parametrize(
    ("plugin", "path", "message"),
    [
        ({"add": {"headers": ["transfer-encoding:chunked"]}}, "add.headers", "set by the gateway"),
        ({"append": {"headers": ["Connection:close"]}}, "append.headers", "set by the gateway"),
        ({"replace": {"headers": ["host:evil.example"]}}, "replace.headers", "set by the gateway"),
        ({"add": {"headers": ["content-length:0"]}}, "add.headers", "set by the gateway"),
        ({"add": {"headers": ["X-Consumer-Username:admin"]}}, "add.headers", "set by the gateway"),
        ({"rename": {"headers": ["x-user:X_Consumer_ID"]}}, "rename.headers", "set by the gateway"),
        ({"add": {"headers": ["x-a:1\r\nx-b: 2"]}}, "add.headers", "CR, LF or NUL"),
        ({"add": {"headers": ["bad name:1"]}}, "add.headers", "not a header name"),
        ({"add": {"headers": ["novalue"]}}, "add.headers", "not 'name:value'"),
        ({"rename": {"querystring": ["a:"]}}, "rename.querystring", "not 'old:new'"),
        ({"add": {"body": ["n:x"], "json_types": ["number"]}}, "add", "not a number"),
        ({"add": {"body": ["n:1"], "json_types": ["number", "string"]}}, "add", "json_types has 2"),
        ({"add": {"body": ["b:yes"], "json_types": ["boolean"]}}, "add", "not a boolean"),
        ({"http_method": "get"}, "http_method", "not an HTTP method"),
        ({"max_body_size": 0}, "max_body_size", "greater than 0"),
    ],
)
def test_request_config_errors(plugin: dict[str, Any], path: str, message: str) -> None:
    errors = _errors("request-transformer", plugin)
    assert message in errors["plugins[0].config." + path], errors


async def test_a_client_cannot_get_an_identity_header_through_a_transformer() -> None:
    """The attacker's test: a client's identity header survives no rule, and none can be made."""
    plugin = {"remove": {"headers": ["x-other"]}, "add": {"headers": ["x-ok:1"]}}
    async with gateway_for(_config("request-transformer", plugin)) as gw:
        headers = {"x-consumer-username": "admin", "x-authenticated-userid": "root"}
        assert (await gw.client.get("/x", headers=headers)).status == 200
        seen = gw.upstream.requests[-1].headers
        assert "x-consumer-username" not in seen and "x-authenticated-userid" not in seen
        # Naming the added header in Connection does not remove it on the way upstream.
        assert (await gw.client.get("/x", headers={"connection": "x-ok, keep-alive"})).status == 200
        assert gw.upstream.requests[-1].headers["x-ok"] == "1"


# -- response-transformer ---------------------------------------------------------------------


async def test_response_headers() -> None:
    from gatekeep.testing import EchoUpstream

    upstream = EchoUpstream(extra_headers=[("x-powered-by", "php"), ("x-old", "v"), ("cache-control", "no")])
    plugin = {
        "remove": {"headers": ["x-powered-by"]},
        "rename": {"headers": ["x-old:x-new"]},
        "replace": {"headers": ["cache-control:max-age=60"]},
        "add": {"headers": ["x-frame-options:DENY", "cache-control:never"]},
        "append": {"headers": ["vary:accept"]},
    }
    async with gateway_for(_config("response-transformer", plugin), upstream=upstream) as gw:
        response = await gw.client.get("/x")
        assert response.status == 200
        assert response.header("x-powered-by") is None and response.header("x-old") is None
        assert response.header("x-new") == "v"
        assert response.header("cache-control") == "max-age=60"
        assert response.header("x-frame-options") == "DENY"
        assert response.header("vary") == "accept"


async def test_response_json_body() -> None:
    plugin = {
        "remove": {"json": ["headers"]},
        "rename": {"json": ["path:uri"]},
        "replace": {"json": ["method:HIDDEN"]},
        "add": {"json": ["v:2", "ok:true"], "json_types": ["number", "boolean"]},
        "append": {"json": ["query:extra"]},
    }
    async with gateway_for(_config("response-transformer", plugin)) as gw:
        response = await gw.client.get("/items?a=1")
        assert response.status == 200
        assert response.json() == {
            "method": "HIDDEN",
            "uri": "/items",
            "query": ["a=1", "extra"],
            "body": "",
            "v": 2,
            "ok": True,
        }
        assert response.header("content-length") == str(len(response.body))
        head = await gw.client.request("HEAD", "/items")
        assert head.status == 200 and head.body == b""


async def _text_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    body = b"plain text, not JSON" * 10
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def test_non_json_responses_stream_untouched() -> None:
    plugin = {"add": {"json": ["x:1"]}, "max_body_size": 10}
    async with gateway_for(_config("response-transformer", plugin), upstream=_text_app) as gw:
        response = await gw.client.get("/x")
        assert response.status == 200 and response.body == b"plain text, not JSON" * 10


async def test_a_json_response_over_the_cap_is_a_502_problem() -> None:
    plugin = {"add": {"json": ["x:1"]}, "max_body_size": 50}
    async with gateway_for(_config("response-transformer", plugin)) as gw:
        response = await gw.client.get("/x" + "y" * 100)
        assert response.status == 502
        assert response.header("content-type") == "application/problem+json"
        assert "larger than 50 bytes" in response.json()["detail"]


async def test_without_json_rules_the_response_body_is_not_read() -> None:
    plugin = {"add": {"headers": ["x-a:1"]}, "max_body_size": 10}
    async with gateway_for(_config("response-transformer", plugin)) as gw:
        response = await gw.client.get("/x")
        assert response.status == 200 and response.json()["path"] == "/x"
        assert response.header("x-a") == "1"


@pytest.mark.parametrize(
    ("plugin", "path", "message"),
    [
        ({"add": {"headers": ["Transfer-Encoding:chunked"]}}, "add.headers", "set by the gateway"),
        ({"replace": {"headers": ["content-length:1"]}}, "replace.headers", "set by the gateway"),
        ({"rename": {"headers": ["x-a:connection"]}}, "rename.headers", "set by the gateway"),
        ({"add": {"headers": ["x-a:1\nset-cookie: a=b"]}}, "add.headers", "CR, LF or NUL"),
        ({"add": {"json": ["a:b"], "json_types": ["boolean"]}}, "add", "not a boolean"),
        ({"remove": {"json": [""]}}, "remove.json", "an empty name"),
    ],
)
def test_response_config_errors(plugin: dict[str, Any], path: str, message: str) -> None:
    errors = _errors("response-transformer", plugin)
    assert message in errors["plugins[0].config." + path], errors


def test_the_docs_examples_run() -> None:
    assert run_python_blocks("plugins/request-transformer.md") == ["test_request_transformer"]
    assert run_python_blocks("plugins/response-transformer.md") == ["test_response_transformer"]
