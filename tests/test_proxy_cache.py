"""``proxy-cache``: Kong's fields, RFC 9111 with ``cache_control``, coalescing, purges, metrics, attacks.

Everything over real loopback sockets (``gateway_for``) in front of ``Origin``,
an upstream whose answers each test scripts per path and which counts what
reached it.  The Redis strategy is in ``test_proxy_cache_redis.py``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from email.utils import formatdate
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

import gatekeep
from gatekeep.cache import (
    Entry,
    Flights,
    KeyBuilder,
    MemoryCacheStore,
    freshness,
    purge_caches,
    request_directives,
)
from gatekeep.cache._entry import decode, encode
from gatekeep.plugins.proxy_cache import ProxyCacheConfig, ProxyCacheFilter
from gatekeep.testing import ClientResponse, Harness, gateway_for

pytestmark = pytest.mark.anyio

JSON = ("content-type", "application/json")
Body = bytes | Callable[[Mapping[str, str], int], bytes]


class Origin:
    """An ASGI upstream: ``script(path, ...)`` sets a path's answer; ``seen[path]`` counts requests.

    The default answer is JSON naming the path, the query and the request's
    number for that path (so a test can tell a cached answer from a fresh one).
    ``chunks`` sends the body in that many pieces without ``Content-Length``.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.seen: Counter[str] = Counter()
        self.scripts: dict[str, tuple[int, list[tuple[str, str]], Body | None, int]] = {}
        self.delay = delay

    def script(
        self,
        path: str,
        *,
        status: int = 200,
        headers: Sequence[tuple[str, str]] = (JSON,),
        body: Body | None = None,
        chunks: int = 0,
    ) -> None:
        self.scripts[path] = (status, list(headers), body, chunks)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        path = scope["path"]
        self.seen[path] += 1
        n = self.seen[path]
        if self.delay:
            await anyio.sleep(self.delay)
        request_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status, headers, body, chunks = self.scripts.get(path, (200, [JSON], None, 0))
        if body is None:
            query = scope["query_string"].decode()
            data = json.dumps({"path": path, "query": query, "n": n}).encode()
        elif callable(body):
            data = body(request_headers, n)
        else:
            data = body
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        if not chunks:
            raw.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        if not chunks:
            await send({"type": "http.response.body", "body": data})
            return
        step = max(1, len(data) // chunks)
        for i in range(0, len(data), step):
            await send({"type": "http.response.body", "body": data[i : i + step], "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def cache(**config: Any) -> dict[str, Any]:
    return {"name": "proxy-cache", "config": config}


def status(answer: ClientResponse) -> str | None:
    return answer.header("x-cache-status")


def the_cache(gw: Harness) -> ProxyCacheFilter:
    (plugin,) = [p for p in gw.gateway.plugin_context.plugins if isinstance(p, ProxyCacheFilter)]
    return plugin


# -- the acceptance line, and Kong's fields -----------------------------------------------------


async def test_the_second_get_is_a_hit_and_never_reaches_the_upstream() -> None:
    origin = Origin()
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        first = await gw.client.get("/orders/7?b=2&a=1")
        second = await gw.client.get("/orders/7?a=1&b=2")  # same parameters, another order
    assert (status(first), status(second)) == ("Miss", "Hit")
    assert origin.seen["/orders/7"] == 1
    assert second.body == first.body
    assert second.header("x-cache-key") == first.header("x-cache-key")
    assert len(first.header("x-cache-key") or "") == 32
    assert second.header("age") == "0"
    assert first.header("age") is None
    assert second.header("content-length") == str(len(first.body))


async def test_head_is_answered_from_the_get_entry() -> None:
    origin = Origin()
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        get = await gw.client.get("/orders/7")
        head = await gw.client.request("HEAD", "/orders/7")
    assert status(head) == "Hit"
    assert head.body == b""
    assert head.header("content-length") == str(len(get.body))
    assert origin.seen["/orders/7"] == 1


async def test_request_method_response_code_and_content_type_decide_what_is_cached() -> None:
    origin = Origin()
    origin.script("/html", headers=[("content-type", "text/html")], body=b"<p>hi</p>")
    origin.script("/created", status=201)
    origin.script("/missing", status=404)
    origin.script("/text", headers=[("content-type", "Text/Plain; charset=utf-8")], body=b"hi")
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        for path in ("/html", "/created", "/missing", "/text"):
            await gw.client.get(path)
        html, created = await gw.client.get("/html"), await gw.client.get("/created")
        missing, text = await gw.client.get("/missing"), await gw.client.get("/text")
        posted = await gw.client.post("/text", body=b"x")
    assert (status(html), status(created)) == ("Bypass", "Bypass")
    assert html.header("x-cache-key") is None
    assert (status(missing), status(text)) == ("Hit", "Hit")
    assert status(posted) == "Bypass"
    assert origin.seen["/text"] == 2  # the GET once, the POST


async def test_content_type_wildcards_and_own_lists() -> None:
    origin = Origin()
    origin.script("/img", headers=[("content-type", "image/png")], body=b"\x89PNG")
    origin.script("/json", body=b"{}")
    config = cache(content_type=["image/*"], response_code=[200], request_method=["GET"])
    async with gateway_for(plugins=[config], upstream=origin) as gw:
        await gw.client.get("/img")
        await gw.client.get("/json")
        img, js = await gw.client.get("/img"), await gw.client.get("/json")
        head = await gw.client.request("HEAD", "/img")
    assert (status(img), status(js), status(head)) == ("Hit", "Bypass", "Bypass")


async def test_cache_ttl_ends_an_entry() -> None:
    origin = Origin()
    async with gateway_for(plugins=[cache(cache_ttl=1)], upstream=origin) as gw:
        await gw.client.get("/a")
        assert status(await gw.client.get("/a")) == "Hit"
        await anyio.sleep(1.1)
        again = await gw.client.get("/a")
    assert status(again) == "Miss"
    assert json.loads(again.body)["n"] == 2


async def test_vary_query_params_and_vary_headers_pick_the_key() -> None:
    origin = Origin()
    config = cache(vary_query_params=["page"], vary_headers=["Accept-Language"])
    async with gateway_for(plugins=[config], upstream=origin) as gw:
        en = await gw.client.get("/list?page=1&utm=a", headers={"accept-language": "en"})
        en_again = await gw.client.get("/list?page=1&utm=b", headers={"accept-language": "en"})
        fr = await gw.client.get("/list?page=1", headers={"accept-language": "fr"})
        page2 = await gw.client.get("/list?page=2", headers={"accept-language": "en"})
    assert [status(a) for a in (en, en_again, fr, page2)] == ["Miss", "Hit", "Miss", "Miss"]
    assert origin.seen["/list"] == 3


async def test_ignore_uri_case() -> None:
    origin = Origin()
    async with gateway_for(plugins=[cache(ignore_uri_case=True)], upstream=origin) as gw:
        await gw.client.get("/Orders")
        assert status(await gw.client.get("/orders")) == "Hit"


# -- RFC 9111 with cache_control ----------------------------------------------------------------


async def test_cache_control_directives_of_the_response() -> None:
    origin = Origin()
    for path, value in {
        "/no-store": "no-store",
        "/private": "private, max-age=60",
        "/no-cache": "no-cache",
        "/zero": "max-age=0",
        "/shared": "max-age=0, s-maxage=60",
        "/public": "public, max-age=60",
    }.items():
        origin.script(path, headers=[JSON, ("cache-control", value)])
    async with gateway_for(plugins=[cache(cache_control=True)], upstream=origin) as gw:
        answers = {}
        for path in ("/no-store", "/private", "/no-cache", "/zero", "/shared", "/public"):
            await gw.client.get(path)
            answers[path] = status(await gw.client.get(path))
    assert answers == {
        "/no-store": "Bypass",
        "/private": "Bypass",
        "/no-cache": "Bypass",
        "/zero": "Bypass",
        "/shared": "Hit",
        "/public": "Hit",
    }


async def test_without_cache_control_the_directives_are_not_read() -> None:
    origin = Origin()
    origin.script("/private", headers=[JSON, ("cache-control", "private")])
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        await gw.client.get("/private")
        assert status(await gw.client.get("/private")) == "Hit"  # Kong's default: cache_ttl rules


async def test_max_age_bounds_the_entry_and_age_counts_upstream_age() -> None:
    origin = Origin()
    origin.script("/short", headers=[JSON, ("cache-control", "max-age=1")])
    origin.script("/aged", headers=[JSON, ("cache-control", "max-age=100"), ("age", "30")])
    async with gateway_for(plugins=[cache(cache_control=True)], upstream=origin) as gw:
        await gw.client.get("/short")
        await gw.client.get("/aged")
        aged = await gw.client.get("/aged")
        await anyio.sleep(1.1)
        short = await gw.client.get("/short")
    assert status(aged) == "Hit"
    assert int(aged.header("age") or 0) >= 30
    assert status(short) == "Miss"


async def test_expires_is_the_lifetime() -> None:
    # The gateway drops the upstream's Date (hide_upstream_headers): Expires counts from receipt.
    origin = Origin()
    origin.script("/e", headers=[JSON, ("expires", formatdate(time.time() + 60, usegmt=True))])
    origin.script("/past", headers=[JSON, ("expires", formatdate(time.time() - 60, usegmt=True))])
    origin.script("/bad", headers=[JSON, ("expires", "0")])
    async with gateway_for(plugins=[cache(cache_control=True)], upstream=origin) as gw:
        for path in ("/e", "/past", "/bad"):
            await gw.client.get(path)
        assert status(await gw.client.get("/e")) == "Hit"
        assert status(await gw.client.get("/past")) == "Bypass"
        assert status(await gw.client.get("/bad")) == "Bypass"  # an invalid Expires: already stale


async def test_request_no_cache_refreshes_and_no_store_bypasses() -> None:
    origin = Origin()
    async with gateway_for(plugins=[cache(cache_control=True)], upstream=origin) as gw:
        await gw.client.get("/r")
        refreshed = await gw.client.get("/r", headers={"cache-control": "no-cache"})
        after = await gw.client.get("/r")
        pragma = await gw.client.get("/r", headers={"pragma": "no-cache"})
        bypassed = await gw.client.get("/r", headers={"cache-control": "no-store"})
        young = await gw.client.get("/r", headers={"cache-control": "max-age=3600"})
    assert status(refreshed) == "Refresh"
    assert json.loads(refreshed.body)["n"] == 2
    assert status(after) == "Hit" and json.loads(after.body)["n"] == 2  # the refreshed answer
    assert status(pragma) == "Refresh"
    assert status(bypassed) == "Bypass"
    assert status(young) == "Hit"
    assert origin.seen["/r"] == 4


async def test_vary_of_the_response_is_honoured() -> None:
    origin = Origin()
    origin.script("/v", headers=[JSON, ("vary", "Accept-Encoding")])
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        gzip = await gw.client.get("/v", headers={"accept-encoding": "gzip"})
        same = await gw.client.get("/v", headers={"accept-encoding": "gzip"})
        other = await gw.client.get("/v", headers={"accept-encoding": "br"})
    assert [status(a) for a in (gzip, same, other)] == ["Miss", "Hit", "Miss"]


# -- coalescing ---------------------------------------------------------------------------------


async def test_a_hundred_clients_missing_one_key_make_one_upstream_request() -> None:
    origin = Origin(delay=0.3)
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        answers: list[ClientResponse] = []

        async def one() -> None:
            answers.append(await gw.client.get("/hot"))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
    assert origin.seen["/hot"] == 1
    assert len(answers) == 100
    assert {a.status for a in answers} == {200}
    assert {a.body for a in answers} == {answers[0].body}
    assert Counter(status(a) for a in answers) == {"Miss": 1, "Hit": 99}


async def test_followers_wait_for_a_streamed_answer_to_be_stored() -> None:
    origin = Origin(delay=0.2)
    origin.script("/stream", body=b"y" * 40_000, chunks=8)
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        answers: list[ClientResponse] = []

        async def one() -> None:
            answers.append(await gw.client.get("/stream"))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    assert origin.seen["/stream"] == 1
    assert {a.body for a in answers} == {b"y" * 40_000}
    assert Counter(status(a) for a in answers) == {"Miss": 1, "Hit": 19}


async def test_followers_of_an_answer_that_is_not_stored_go_to_the_upstream() -> None:
    origin = Origin(delay=0.2)
    origin.script("/cookie", headers=[JSON, ("set-cookie", "s=1")])
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(gw.client.get, "/cookie")
    assert origin.seen["/cookie"] == 5


def test_a_flight_whose_leader_vanished_is_taken_over() -> None:
    now = [0.0]
    flights = Flights(10.0, clock=lambda: now[0])
    leader = flights.lead("k")
    assert leader is not None and flights.lead("k") is None
    now[0] = 11.0
    taken = flights.lead("k")
    assert taken is not None and taken is not leader
    assert leader.event.is_set()  # its followers woke up
    leader.land()  # late: does not end the new flight
    assert flights.in_flight["k"] is taken


# -- size: the byte budget and the per-entry cap ------------------------------------------------


async def test_an_answer_over_the_entry_cap_streams_through_untouched() -> None:
    origin = Origin()
    big = bytes(range(256)) * 400  # 100 KiB
    origin.script("/big", body=big)
    origin.script("/chunked", body=big, chunks=10)
    async with gateway_for(plugins=[cache(max_entry_size=50_000)], upstream=origin) as gw:
        known = [await gw.client.get("/big") for _ in range(2)]
        chunked = [await gw.client.get("/chunked") for _ in range(2)]
    assert [status(a) for a in known] == ["Bypass", "Bypass"]
    assert [status(a) for a in chunked] == ["Miss", "Miss"]  # too big found out while streaming
    assert all(a.body == big for a in known + chunked)
    assert origin.seen["/big"] == 2 and origin.seen["/chunked"] == 2


async def test_a_streamed_answer_under_the_cap_is_stored() -> None:
    origin = Origin()
    origin.script("/chunked", body=b"x" * 5000, chunks=5)
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        await gw.client.get("/chunked")
        hit = await gw.client.get("/chunked")
    assert status(hit) == "Hit"
    assert hit.body == b"x" * 5000
    assert hit.header("content-length") == "5000"


async def test_the_memory_store_is_an_lru_under_its_byte_budget() -> None:
    now = [0.0]
    store = MemoryCacheStore(3000, clock=lambda: now[0])

    def entry(size: int, retain: float = 60) -> Entry:
        return Entry(200, (), b"x" * size, fresh=retain, retain=retain)

    await store.set("r", "a", entry(1000))
    await store.set("r", "b", entry(1000))
    assert await store.get("r", "a") is not None  # a is now the most recently used
    await store.set("r", "c", entry(1000))  # over budget: b goes
    assert await store.get("r", "b") is None
    assert await store.get("r", "a") is not None and await store.get("r", "c") is not None
    assert store.bytes <= 3000 and store.evictions == 1
    await store.set("r", "huge", entry(5000))  # larger than the whole budget: not stored
    assert await store.get("r", "huge") is None and len(store) == 2
    now[0] = 61
    assert await store.get("r", "a") is None  # expired
    assert store.bytes == entry(1000).size


# -- never cached unless configured: Authorization, Set-Cookie; consumers --------------------


async def test_authorization_and_set_cookie_are_not_cached_by_default() -> None:
    origin = Origin()
    origin.script("/cookie", headers=[JSON, ("set-cookie", "session=abc")])
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        auth = [await gw.client.get("/me", headers={"authorization": "Bearer t"}) for _ in range(2)]
        cookie = [await gw.client.get("/cookie") for _ in range(2)]
    assert [status(a) for a in auth + cookie] == ["Bypass"] * 4
    assert origin.seen["/me"] == 2 and origin.seen["/cookie"] == 2


async def test_cache_authorized_keeps_one_entry_per_credentials() -> None:
    origin = Origin()
    config = cache(cache_authorized=True, cache_set_cookie=True)
    origin.script("/cookie", headers=[JSON, ("set-cookie", "theme=dark")])
    async with gateway_for(plugins=[config], upstream=origin) as gw:
        alice = [await gw.client.get("/me", headers={"authorization": "Bearer alice"}) for _ in range(2)]
        bob = await gw.client.get("/me", headers={"authorization": "Bearer bob"})
        anonymous = await gw.client.get("/me")
        await gw.client.get("/cookie")
        cookie = await gw.client.get("/cookie")
    assert [status(a) for a in alice] == ["Miss", "Hit"]
    assert (status(bob), status(anonymous)) == ("Miss", "Miss")
    assert status(cookie) == "Hit" and cookie.header("set-cookie") == "theme=dark"


KEYED_CONSUMERS: dict[str, Any] = {
    "services": [{"name": "api", "url": "{upstream}", "routes": [{"name": "all", "paths": ["/"]}]}],
    "plugins": [{"name": "key-auth"}, cache()],
    "consumers": [
        {"username": "alice", "keyauth_credentials": [{"key": "alice-key"}]},
        {"username": "mallory", "keyauth_credentials": [{"key": "mallory-key"}]},
    ],
}


async def test_attack_cache_deception_never_serves_one_consumers_page_to_another() -> None:
    # The victim is lured to /account/x.css; the upstream ignores the suffix and answers with
    # her private page (as JSON, a cacheable type).  The attacker then asks for the same URL.
    origin = Origin()
    origin.script(
        "/account/x.css", body=lambda h, n: json.dumps({"owner": h["x-consumer-username"]}).encode()
    )
    async with gateway_for(KEYED_CONSUMERS, upstream=origin) as gw:
        victim = await gw.client.get("/account/x.css", headers={"apikey": "alice-key"})
        attacker = await gw.client.get("/account/x.css", headers={"apikey": "mallory-key"})
        nobody = await gw.client.get("/account/x.css")
    assert json.loads(victim.body) == {"owner": "alice"}
    assert status(attacker) == "Miss"
    assert json.loads(attacker.body) == {"owner": "mallory"}
    assert nobody.status == 401
    assert origin.seen["/account/x.css"] == 2


# -- attacks ------------------------------------------------------------------------------------


async def test_attack_cache_deception_with_a_session_cookie() -> None:
    # No authentication plugin: the upstream itself reads the session cookie.
    origin = Origin()
    origin.script("/account/x.css", body=lambda h, n: json.dumps({"session": h.get("cookie", "")}).encode())
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        victim = await gw.client.get("/account/x.css", headers={"cookie": "session=alice"})
        again = await gw.client.get("/account/x.css", headers={"cookie": "session=alice"})
        attacker = await gw.client.get("/account/x.css")
    assert (status(victim), status(again), status(attacker)) == ("Miss", "Hit", "Miss")
    assert json.loads(attacker.body) == {"session": ""}


async def test_cookies_can_be_left_out_of_the_key() -> None:
    origin = Origin()
    async with gateway_for(plugins=[cache(cookie_in_key=False)], upstream=origin) as gw:
        await gw.client.get("/page", headers={"cookie": "_ga=1"})
        other = await gw.client.get("/page", headers={"cookie": "_ga=2"})
    assert status(other) == "Hit"


async def test_attack_poisoning_through_an_unkeyed_forwarding_header_fails() -> None:
    # The upstream builds links from X-Forwarded-Host: a classic poisoning vector.  The gateway
    # drops forwarding headers from untrusted clients, so the entry cannot carry the attacker's host.
    origin = Origin()
    origin.script("/home", body=lambda h, n: json.dumps({"link": h.get("x-forwarded-host", "")}).encode())
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        await gw.client.get("/home", headers={"x-forwarded-host": "evil.example", "forwarded": "host=evil"})
        victim = await gw.client.get("/home")
    assert status(victim) == "Hit"
    assert b"evil" not in victim.body


async def test_attack_poisoning_through_a_varied_header_stays_with_the_attacker() -> None:
    origin = Origin()
    origin.script(
        "/page", headers=[JSON, ("vary", "X-Theme")], body=lambda h, n: h.get("x-theme", "plain").encode()
    )
    async with gateway_for(plugins=[cache(content_type=["*/*"])], upstream=origin) as gw:
        await gw.client.get("/page", headers={"x-theme": "<script>evil()</script>"})
        victim = await gw.client.get("/page")
    assert status(victim) == "Miss"
    assert victim.body == b"plain"


async def test_attack_poisoning_through_the_host_header_gets_its_own_entry() -> None:
    origin = Origin()
    origin.script("/h", body=lambda h, n: h.get("host", "").encode())
    route = {"name": "all", "paths": ["/"], "preserve_host": True}
    async with gateway_for(plugins=[cache(content_type=["*/*"])], upstream=origin, routes=[route]) as gw:
        await gw.client.get("/h", host="evil.example")
        victim = await gw.client.get("/h", host="shop.example")
    assert status(victim) == "Miss" and victim.body == b"shop.example"


async def test_attack_vary_star_is_never_stored() -> None:
    origin = Origin()
    origin.script("/star", headers=[JSON, ("vary", "*")])
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        answers = [await gw.client.get("/star") for _ in range(2)]
    assert [status(a) for a in answers] == ["Bypass", "Bypass"]


async def test_attack_a_fat_get_is_not_cached() -> None:
    # A GET with a body the upstream reads would be stored under a key that ignores the body.
    origin = Origin()
    async with gateway_for(plugins=[cache()], upstream=origin) as gw:
        fat = await gw.client.get("/f", body=b"poison")
        clean = await gw.client.get("/f")
    assert (status(fat), status(clean)) == ("Bypass", "Miss")


async def test_attack_an_oversized_answer_does_not_evict_the_cache() -> None:
    origin = Origin()
    origin.script("/huge", body=b"x" * 200_000, chunks=20)
    config = cache(memory_size=100_000, max_entry_size=50_000)
    async with gateway_for(plugins=[config], upstream=origin) as gw:
        await gw.client.get("/small")
        for _ in range(3):
            await gw.client.get("/huge")
        small = await gw.client.get("/small")
        assert the_cache(gw).stats()["memory_bytes"] < 100_000
    assert status(small) == "Hit"


# -- purge --------------------------------------------------------------------------------------

TWO_ROUTES: dict[str, Any] = {
    "services": [
        {
            "name": "api",
            "url": "{upstream}",
            "routes": [{"name": "orders", "paths": ["/orders"]}, {"name": "users", "paths": ["/users"]}],
        }
    ],
    "plugins": [cache()],
}


async def test_purge_by_key_by_route_and_all() -> None:
    origin = Origin()
    async with gateway_for(TWO_ROUTES, upstream=origin) as gw:
        plugins = gw.gateway.plugin_context.plugins
        one = await gw.client.get("/orders/1")
        await gw.client.get("/orders/2")
        await gw.client.get("/users/1")
        assert await purge_caches(plugins, key=one.header("x-cache-key")) == 1
        assert status(await gw.client.get("/orders/1")) == "Miss"
        assert status(await gw.client.get("/users/1")) == "Hit"
        assert await purge_caches(plugins, route="orders") == 2
        assert status(await gw.client.get("/orders/2")) == "Miss"
        assert status(await gw.client.get("/users/1")) == "Hit"
        assert await purge_caches(plugins) == 2
        assert status(await gw.client.get("/users/1")) == "Miss"


# -- metrics ------------------------------------------------------------------------------------


async def test_hits_misses_and_bytes_are_metrics() -> None:
    origin = Origin()
    async with gateway_for(plugins=[cache(), {"name": "prometheus"}], upstream=origin) as gw:
        first = await gw.client.get("/m")
        await gw.client.get("/m")
        await gw.client.get("/m", headers={"authorization": "Bearer x"})
        text = (await gw.client.get("/metrics")).text
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("gatekeep_proxy_cache_requests_total", (("status", "hit"),))] == 1
    assert found[("gatekeep_proxy_cache_requests_total", (("status", "miss"),))] == 1
    assert found[("gatekeep_proxy_cache_requests_total", (("status", "bypass"),))] == 1
    assert found[("gatekeep_proxy_cache_bytes_total", (("direction", "served"),))] == len(first.body)
    assert found[("gatekeep_proxy_cache_bytes_total", (("direction", "stored"),))] == len(first.body)
    assert found[("gatekeep_proxy_cache_entries", ())] == 1


# -- config ---------------------------------------------------------------------------------------


def config_with(plugin: dict[str, Any]) -> dict[str, Any]:
    return {
        "services": [{"name": "api", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        "plugins": [plugin],
    }


def test_config_errors_name_their_path() -> None:
    bad = cache(request_method=["GET", "POST"], response_code=[99], content_type=["json"], cache_ttl=0)
    with pytest.raises(gatekeep.ConfigError) as caught:
        gatekeep.load_config(config_with(bad))
    errors = {e.path: e.message for e in caught.value.errors}
    assert errors["plugins[0].config.request_method"].startswith("entry 1: 'POST' cannot be cached")
    assert errors["plugins[0].config.response_code"] == "entry 0: 99 is not a final HTTP status (200-599)"
    assert "entry 0: 'json' is not a media type" in errors["plugins[0].config.content_type"]
    assert "plugins[0].config.cache_ttl" in errors
    with pytest.raises(gatekeep.ConfigError) as caught:
        gatekeep.load_config(config_with(cache(strategy="redis")))
    (error,) = caught.value.errors
    assert error.path == "plugins[0].config"
    assert "strategy 'redis' needs a redis table" in error.message


def test_kong_defaults() -> None:
    c = ProxyCacheConfig()
    assert c.response_code == (200, 301, 404)
    assert c.request_method == ("GET", "HEAD")
    assert c.content_type == ("text/plain", "application/json")
    assert (c.cache_ttl, c.strategy, c.cache_control) == (300, "memory", False)
    assert ProxyCacheFilter.priority == 100


# -- sans-IO parts ------------------------------------------------------------------------------


NOW = 1_000_000_000.0


def test_freshness_follows_rfc_9111() -> None:
    def life(cc: str = "", expires: str | None = None, date: str | None = None) -> float | None:
        return freshness(
            [cc.encode()] if cc else [],
            expires=None if expires is None else expires.encode(),
            date=None if date is None else date.encode(),
            default=300,
            now=NOW,
        )

    assert life() == 300
    assert life("max-age=60") == 60
    assert life("max-age=60, s-maxage=10") == 10
    assert life('max-age="60"') == 60
    assert life("max-age=abc") is None
    assert life("no-store") is None and life("private") is None and life("no-cache") is None
    assert life(expires="Mon, 01 Jan 2001 00:01:00 GMT", date="Mon, 01 Jan 2001 00:00:00 GMT") == 60
    assert life("max-age=5", expires="0", date="x") == 5  # max-age wins over Expires
    assert life(expires=formatdate(NOW + 30, usegmt=True)) == 30  # no Date: from now
    assert life("max-age=99999999999") == 2**31


def test_request_directives() -> None:
    assert request_directives([b"no-store"], None).store is False
    assert request_directives([b"no-cache"], None).refresh
    assert request_directives([b"max-age=0"], None).refresh
    assert request_directives([], b"no-cache").refresh
    assert request_directives([b"max-age=30"], None).max_age == 30
    assert request_directives([], None).store


def test_keys_take_every_part_and_cannot_be_spliced() -> None:
    keys = KeyBuilder(vary_headers=["X-A"], vary_query_params=(), ignore_uri_case=False)

    def key(**kw: Any) -> str:
        parts: dict[str, Any] = {
            "method": "GET",
            "host": "a.example",
            "path": "/p",
            "query_string": b"",
            "header_values": [None],
            "route": "r",
            "principal": "",
        }
        parts.update(kw)
        return keys.key(**parts)

    base = key()
    assert key(method="HEAD") == base
    assert key(host="A.EXAMPLE") == base
    for changed in (
        {"host": "b.example"},
        {"path": "/P"},
        {"query_string": b"a=1"},
        {"header_values": [b""]},
        {"route": "s"},
        {"principal": "consumer:x"},
        {"method": "POST"},
    ):
        assert key(**changed) != base, changed
    assert key(path="/a", route="b") != key(path="/ab", route="")
    assert key(query_string=b"a=1&b=2") == key(query_string=b"b=2&a=1")
    assert key(query_string=b"a=1&a=2") != key(query_string=b"a=2&a=1")  # order within a name matters


def test_an_entry_survives_the_wire_format() -> None:
    entry = Entry(
        200, ((b"content-type", b"text/plain; \xe9"),), b"\x00\n body", 60.0, 120.0, 3.0, ((b"x-a", None),)
    )
    assert decode(encode(entry), 0.0) == entry
    assert decode(b"2{}\n", 0.0) is None
    assert decode(b"1{not json\n", 0.0) is None
