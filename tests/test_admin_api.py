"""The Admin API over real sockets: Kong's endpoints, shapes, errors, and the store as the only truth.

Each test serves an ``AdminAPI`` on a loopback port (``serve_admin``) over a
real store (memory, or a TOML file) and talks to it with httpx, form-encoded
as Kong's users do unless a test says otherwise.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatekeep import AdminAPI, AdminSettings, serve_admin
from gatekeep.configsource import ConfigDocument, FileStore, MemoryStore, Snapshot
from tests._servers import free_port

pytestmark = pytest.mark.anyio

FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}


async def _served(store: Any, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = kwargs.pop("settings", AdminSettings(listen=f"127.0.0.1:{free_port()}"))
    api = AdminAPI(store, settings=settings, **kwargs)
    async with serve_admin(api, settings) as (host, port):
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            yield client


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore({})


@pytest.fixture
async def admin(store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _served(store):
        yield client


def form(*pairs: tuple[str, str]) -> dict[str, Any]:
    from urllib.parse import urlencode

    return {"content": urlencode(pairs), "headers": FORM}


async def stored(store: Any) -> dict[str, Any]:
    snapshot: Snapshot = await store.read()
    assert snapshot.document is not None
    return dict(snapshot.document.data)


async def seed(admin: httpx.AsyncClient, upstream: str = "http://127.0.0.1:9") -> None:
    r = await admin.post("/services", **form(("name", "orders"), ("url", upstream)))
    assert r.status_code == 201, r.text
    r = await admin.post("/services/orders/routes", **form(("name", "orders"), ("paths[]", "/orders")))
    assert r.status_code == 201, r.text


# -- services -----------------------------------------------------------------------------


async def test_a_service_from_a_url_is_shown_as_kong_shows_it(
    admin: httpx.AsyncClient, store: MemoryStore
) -> None:
    r = await admin.post(
        "/services", **form(("name", "order-service"), ("url", "https://order-service:3000/v1"))
    )
    assert r.status_code == 201
    body = r.json()
    assert body["name"] == "order-service"
    assert (body["protocol"], body["host"], body["port"], body["path"]) == (
        "https",
        "order-service",
        3000,
        "/v1",
    )
    assert "url" not in body  # Kong never returns the shorthand
    assert body["retries"] == 2 and body["connect_timeout"] == 60000
    assert len(body["id"]) == 36 and body["id"].count("-") == 4
    assert (await stored(store))["services"] == [
        {"name": "order-service", "url": "https://order-service:3000/v1"}
    ]

    by_name = (await admin.get("/services/order-service")).json()
    by_id = (await admin.get(f"/services/{body['id']}")).json()
    assert by_name == by_id == body
    listed = (await admin.get("/services")).json()
    assert listed == {"data": [body], "next": None}


async def test_a_service_from_its_parts_and_json(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await admin.post(
        "/services", json={"name": "a", "host": "10.0.0.5", "port": 8080, "protocol": "http"}
    )
    assert r.status_code == 201, r.text
    assert (await stored(store))["services"][0]["url"] == "http://10.0.0.5:8080"
    r = await admin.patch("/services/a", **form(("port", "9090"), ("retries", "4"), ("read_timeout", "1500")))
    assert r.status_code == 200, r.text
    assert (r.json()["port"], r.json()["retries"], r.json()["read_timeout"]) == (9090, 4, 1500)
    service = (await stored(store))["services"][0]
    assert service == {"name": "a", "url": "http://10.0.0.5:9090", "retries": 4, "read_timeout": 1500}


async def test_put_creates_then_replaces(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await admin.put("/services/billing", **form(("url", "http://127.0.0.1:7000"), ("retries", "1")))
    assert r.status_code == 200 and r.json()["name"] == "billing"
    r = await admin.put("/services/billing", **form(("url", "http://127.0.0.1:7001")))
    assert r.status_code == 200
    assert (await stored(store))["services"] == [{"name": "billing", "url": "http://127.0.0.1:7001"}]


async def test_delete_is_204_and_a_service_with_routes_is_kept(
    admin: httpx.AsyncClient, store: MemoryStore
) -> None:
    await seed(admin)
    r = await admin.delete("/services/orders")
    assert r.status_code == 400
    assert r.json()["name"] == "foreign key violation"
    assert r.json()["fields"] == {"@referenced_by": "routes"}
    assert (await admin.delete("/routes/orders")).status_code == 204
    assert (await admin.delete("/services/orders")).status_code == 204
    assert (await admin.delete("/services/orders")).status_code == 204  # Kong: not there is no error
    assert (await admin.get("/services/orders")).json() == {"message": "Not found"}
    assert (await stored(store))["services"] == []


async def test_unique_names_are_409(admin: httpx.AsyncClient) -> None:
    await seed(admin)
    r = await admin.post("/services", **form(("name", "orders"), ("url", "http://127.0.0.1:1")))
    assert r.status_code == 409
    assert r.json() == {
        "code": 5,
        "name": "unique constraint violation",
        "message": "UNIQUE violation detected on '{name=\"orders\"}'",
        "fields": {"name": "orders"},
    }
    r = await admin.post("/routes", **form(("name", "orders"), ("paths[]", "/x"), ("service.name", "orders")))
    assert r.status_code == 409


# -- routes -------------------------------------------------------------------------------


async def test_routes_arrays_in_every_spelling(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    await seed(admin)
    r = await admin.post(
        "/services/orders/routes",
        **form(
            ("paths[1]", "/a"),
            ("paths[2]", "/b"),
            ("methods", "GET"),
            ("methods", "post"),
            ("hosts[]", "x.io"),
        ),
    )
    assert r.status_code == 201, r.text
    route = r.json()
    assert (
        route["paths"] == ["/a", "/b"] and route["methods"] == ["GET", "POST"] and route["hosts"] == ["x.io"]
    )
    service_id = (await admin.get("/services/orders")).json()["id"]
    assert route["service"] == {"id": service_id}
    assert route["protocols"] == ["http", "https"] and route["strip_path"] is True
    r = await admin.post("/routes", json={"name": "r3", "paths": ["/c"], "service": {"id": service_id}})
    assert r.status_code == 201, r.text
    listed = (await admin.get("/services/orders/routes")).json()["data"]
    assert [x["paths"] for x in listed] == [["/orders"], ["/a", "/b"], ["/c"]]
    assert (await admin.get(f"/routes/{route['id']}")).json() == route
    r = await admin.patch("/routes/r3", **form(("strip_path", "false"), ("paths[]", "/d")))
    assert r.status_code == 200 and r.json()["strip_path"] is False and r.json()["paths"] == ["/d"]
    assert (await stored(store))["services"][0]["routes"][2] == {
        "name": "r3",
        "paths": ["/d"],
        "strip_path": False,
    }


async def test_a_route_without_a_service_is_refused(admin: httpx.AsyncClient) -> None:
    r = await admin.post("/routes", **form(("paths[]", "/x")))
    assert r.status_code == 400
    assert r.json()["name"] == "schema violation" and "service" in r.json()["fields"]
    r = await admin.post("/routes", **form(("paths[]", "/x"), ("service.name", "ghost")))
    assert r.status_code == 400 and r.json()["name"] == "foreign key violation"


async def test_kong_only_route_fields(admin: httpx.AsyncClient) -> None:
    await seed(admin)
    ok = form(("paths[]", "/k"), ("protocols[]", "https"), ("regex_priority", "0"), ("tags[]", "x"))
    assert (await admin.post("/services/orders/routes", **ok)).status_code == 201
    r = await admin.post("/services/orders/routes", **form(("paths[]", "/t"), ("protocols[]", "tcp")))
    assert r.status_code == 400 and "protocols" in r.json()["fields"]
    r = await admin.post("/services/orders/routes", **form(("paths[]", "/t"), ("colour", "red")))
    assert r.status_code == 400 and r.json()["fields"] == {"colour": "unknown field"}


# -- plugins ------------------------------------------------------------------------------


async def test_plugin_config_is_typed_by_the_plugins_schema(
    admin: httpx.AsyncClient, store: MemoryStore
) -> None:
    await seed(admin)
    r = await admin.post(
        "/services/orders/plugins",
        **form(
            ("name", "rate-limiting"),
            ("config.second", "5"),
            ("config.hour", "1000"),
            ("config.policy", "local"),
            ("config.fault_tolerant", "false"),
            ("config.minute", ""),
        ),
    )
    assert r.status_code == 201, r.text
    plugin = r.json()
    assert plugin["config"]["second"] == 5 and plugin["config"]["hour"] == 1000
    assert plugin["config"]["fault_tolerant"] is False and plugin["config"]["minute"] is None
    assert plugin["config"]["error_code"] == 429  # defaults are shown
    assert plugin["service"] == {"id": (await admin.get("/services/orders")).json()["id"]}
    assert plugin["route"] is None and plugin["consumer"] is None and plugin["enabled"] is True
    assert (await stored(store))["services"][0]["plugins"] == [
        {
            "name": "rate-limiting",
            "config": {"second": 5, "hour": 1000, "policy": "local", "fault_tolerant": False},
        }
    ]
    assert (await admin.get(f"/plugins/{plugin['id']}")).json() == plugin
    assert (await admin.get("/services/orders/plugins")).json()["data"] == [plugin]

    r = await admin.patch(f"/plugins/{plugin['id']}", **form(("config.second", "7")))
    assert r.status_code == 200 and r.json()["config"]["second"] == 7 and r.json()["config"]["hour"] == 1000
    r = await admin.patch(f"/plugins/{plugin['id']}", json={"enabled": False})
    assert r.json()["enabled"] is False
    assert (await admin.delete(f"/plugins/{plugin['id']}")).status_code == 204
    assert (await admin.get("/plugins")).json() == {"data": [], "next": None}


async def test_route_consumer_and_global_plugins(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    await seed(admin)
    await admin.post("/consumers", **form(("username", "alice")))
    r = await admin.post("/routes/orders/plugins", **form(("name", "key-auth")))
    assert (
        r.status_code == 201 and r.json()["route"]["id"] == (await admin.get("/routes/orders")).json()["id"]
    )
    r = await admin.post("/plugins", **form(("name", "prometheus"), ("config.per_consumer", "true")))
    assert r.status_code == 201 and r.json()["service"] is None and r.json()["config"]["per_consumer"] is True
    r = await admin.post(
        "/plugins", **form(("name", "rate-limiting"), ("config.minute", "3"), ("consumer.username", "alice"),
                           ("service.name", "orders"))
    )  # fmt: skip
    assert r.status_code == 201, r.text
    doc = await stored(store)
    assert doc["plugins"][1] == {
        "name": "rate-limiting", "config": {"minute": 3}, "service": "orders", "consumer": "alice"
    }  # fmt: skip
    assert doc["services"][0]["routes"][0]["plugins"] == [{"name": "key-auth"}]
    assert len((await admin.get("/plugins")).json()["data"]) == 3
    assert [p["name"] for p in (await admin.get("/consumers/alice/plugins")).json()["data"]] == [
        "rate-limiting"
    ]
    r = await admin.post("/plugins", **form(("name", "prometheus")))
    assert r.status_code == 409


async def test_deleting_an_entity_deletes_its_plugins(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    await seed(admin)
    await admin.post("/consumers", **form(("username", "bob")))
    scoped = form(
        ("name", "rate-limiting"),
        ("config.minute", "3"),
        ("consumer.username", "bob"),
        ("route.name", "orders"),
    )
    assert (await admin.post("/plugins", **scoped)).status_code == 201
    assert len((await stored(store))["plugins"]) == 1
    assert (await admin.delete("/consumers/bob")).status_code == 204
    assert (await stored(store))["plugins"] == []


# -- consumers and credentials ------------------------------------------------------------


async def test_consumers(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await admin.post("/consumers", **form(("username", "alice"), ("custom_id", "a-1")))
    assert r.status_code == 201
    alice = r.json()
    assert set(alice) >= {"id", "username", "custom_id", "created_at", "tags"}
    assert (await admin.get(f"/consumers/{alice['id']}")).json() == alice
    assert (await admin.get("/consumers/alice")).json() == alice
    r = await admin.post("/consumers", **form(("username", "alice")))
    assert r.status_code == 409
    r = await admin.post("/consumers", **form(("tags[]", "x")))
    assert r.status_code == 400
    assert r.json()["fields"] == {
        "@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]
    }
    r = await admin.patch("/consumers/alice", **form(("custom_id", "a-2")))
    assert r.json()["custom_id"] == "a-2" and r.json()["id"] == alice["id"]
    assert (await stored(store))["consumers"] == [
        {"username": "alice", "custom_id": "a-2", "id": alice["id"]}
    ]


async def test_jwt_credentials_hide_their_secret(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    await admin.post("/consumers", **form(("username", "alice")))
    r = await admin.post("/consumers/alice/jwt", **form(("key", "alice-iss"), ("secret", "very-secret")))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"] == "very-secret" and created["algorithm"] == "HS256"  # once, to its creator
    listed = (await admin.get("/consumers/alice/jwt")).json()["data"]
    assert listed == [{**created, "secret": None}]
    assert (await admin.get(f"/consumers/alice/jwt/{created['id']}")).json()["secret"] is None
    assert "very-secret" not in (await admin.get("/consumers/alice")).text
    generated = (await admin.post("/consumers/alice/jwt", **form())).json()
    assert len(generated["key"]) == 32 and len(generated["secret"]) == 32
    r = await admin.post("/consumers/alice/jwt", **form(("key", "alice-iss"), ("secret", "x")))
    assert r.status_code == 409 and r.json()["fields"] == {"key": "alice-iss"}
    r = await admin.patch(f"/consumers/alice/jwt/{created['id']}", **form(("secret", "rotated")))
    assert r.status_code == 200 and r.json()["secret"] is None
    secrets = [c["secret"] for c in (await stored(store))["consumers"][0]["jwt_secrets"]]
    assert secrets[0] == "rotated"
    assert (await admin.delete(f"/consumers/alice/jwt/{created['id']}")).status_code == 204
    assert len((await admin.get("/consumers/alice/jwt")).json()["data"]) == 1


async def test_key_auth_credentials(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    await admin.post("/consumers", **form(("username", "svc")))
    r = await admin.post("/consumers/svc/key-auth", **form(("key", "k-123")))
    assert r.status_code == 201 and r.json()["key"] == "k-123"
    assert (await admin.get("/consumers/svc/key-auth")).json()["data"][0]["key"] is None
    assert (await stored(store))["consumers"][0]["keyauth_credentials"] == [{"key": "k-123"}]
    assert (await admin.get("/consumers/nobody/key-auth")).status_code == 404
    credential = r.json()["id"]
    assert (await admin.get(f"/consumers/svc/key-auth/{credential}")).json()["id"] == credential
    r = await admin.patch(f"/consumers/svc/key-auth/{credential}", **form(("key", "k-456")))
    assert r.status_code == 200 and r.json()["key"] is None
    r = await admin.put("/consumers/svc/key-auth/k-789", **form())
    assert r.status_code == 200
    keys = [c["key"] for c in (await stored(store))["consumers"][0]["keyauth_credentials"]]
    assert keys == ["k-456", "k-789"]
    assert (await admin.delete("/consumers/svc/key-auth/k-456")).status_code == 204
    assert len((await admin.get("/consumers/svc/key-auth")).json()["data"]) == 1
    r = await admin.post("/consumers/svc/key-auth", **form(("key", "k-789")))
    assert r.status_code == 409


async def test_plugin_secrets_are_redacted(admin: httpx.AsyncClient) -> None:
    await seed(admin)
    r = await admin.post(
        "/plugins", json={"name": "rate-limiting", "config": {"minute": 5, "policy": "redis",
                          "redis": {"host": "127.0.0.1", "password": "hunter2"}}},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["config"]["redis"]["password"] is None
    assert "hunter2" not in (await admin.get("/plugins")).text


# -- errors -------------------------------------------------------------------------------


async def test_a_bad_plugin_field_is_a_kong_schema_violation_with_its_path(
    admin: httpx.AsyncClient, store: MemoryStore
) -> None:
    await seed(admin)
    before = await store.read()
    r = await admin.post(
        "/services/orders/plugins", **form(("name", "rate-limiting"), ("config.second", "abc"))
    )
    assert r.status_code == 400
    body = r.json()
    assert body["name"] == "schema violation" and body["code"] == 2
    assert body["fields"] == {"config": {"second": "expected an integer, got string 'abc'"}}
    assert body["message"] == "schema violation (config.second: expected an integer, got string 'abc')"
    assert body["errors"] == [
        {"path": "services[0].plugins[0].config.second", "message": "expected an integer, got string 'abc'"}
    ]
    assert (await store.read()).version == before.version  # the store did not change


async def test_bad_input_answers(admin: httpx.AsyncClient) -> None:
    r = await admin.post("/services", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"message": "Cannot parse JSON body"}
    r = await admin.post("/services", **form(("name", "x"), ("url", "ftp://h:21")))
    assert r.status_code == 400 and r.json()["name"] == "schema violation"
    r = await admin.post("/services", **form(("name", "x"), ("url", "http://127.0.0.1:1"), ("port", "x")))
    assert r.status_code == 400
    r = await admin.post("/services", **form(("paths[99999]", "/x")))
    assert r.status_code == 400
    r = await admin.post("/nope")
    assert r.status_code == 404 and r.json() == {"message": "Not found"}
    r = await admin.delete("/services")
    assert r.status_code == 405 and r.json() == {"message": "Method not allowed"}
    r = await admin.post("/services", content=b"x" * (2 * 1024 * 1024), headers=FORM)
    assert r.status_code == 413
    r = await admin.get("/services?size=0")
    assert r.status_code == 400


async def test_multipart_bodies(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await admin.post("/services", files={"name": (None, "m"), "url": (None, "http://127.0.0.1:5000")})
    assert r.status_code == 201, r.text
    r = await admin.post(
        "/services/m/plugins",
        files={
            "name": (None, "rate-limiting"),
            "config": (None, json.dumps({"second": 2}), "application/json"),
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["config"]["second"] == 2


async def test_lists_page(admin: httpx.AsyncClient) -> None:
    for i in range(5):
        await admin.post("/consumers", **form(("username", f"c{i}")))
    first = (await admin.get("/consumers?size=2")).json()
    assert [c["username"] for c in first["data"]] == ["c0", "c1"] and first["next"]
    second = (await admin.get(first["next"])).json()
    assert [c["username"] for c in second["data"]] == ["c2", "c3"]
    last = (await admin.get(second["next"])).json()
    assert [c["username"] for c in last["data"]] == ["c4"] and last["next"] is None


async def test_root_and_status(admin: httpx.AsyncClient) -> None:
    root = (await admin.get("/")).json()
    assert root["tagline"] == "Welcome to gatekeep"
    assert "rate-limiting" in root["plugins"]["available_on_server"]
    status = (await admin.get("/status")).json()
    assert status["database"] == {"reachable": True}
    assert status["configuration_hash"] == ConfigDocument.of({}).hash


async def test_db_less_config(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    declarative = {
        "_format_version": "3.0",
        "services": [
            {"name": "s", "url": "http://127.0.0.1:5001", "routes": [{"name": "r", "paths": ["/s"]}]}
        ],
    }
    r = await admin.post("/config", json=declarative)
    assert r.status_code == 201, r.text
    assert [s["name"] for s in r.json()["services"]] == ["s"]
    assert (await admin.post("/config?check_hash=1", json=declarative)).status_code == 304
    r = await admin.post("/config", json={"services": [{"name": "s"}]})
    assert r.status_code == 400 and r.json()["name"] == "schema violation"
    assert (await stored(store)) == declarative


# -- the store is the truth ---------------------------------------------------------------


class RacingStore(MemoryStore):
    """A store another writer changes between the Admin API's read and its first write."""

    def __init__(self) -> None:
        super().__init__({})
        self.raced = False

    async def write(self, data: Mapping[str, Any] | ConfigDocument, expected_version: str | None) -> str:
        if not self.raced:
            self.raced = True
            snapshot = await self.read()
            await super().write({"consumers": [{"username": "from-elsewhere"}]}, snapshot.version)
        return await super().write(data, expected_version)


async def test_a_write_conflict_is_retried_and_loses_nothing() -> None:
    store = RacingStore()
    async for admin in _served(store):
        r = await admin.post("/consumers", **form(("username", "mine")))
        assert r.status_code == 201
    doc = await stored(store)
    assert [c["username"] for c in doc["consumers"]] == ["from-elsewhere", "mine"]


async def test_writes_go_to_the_file_and_reads_come_from_it(tmp_path: Path) -> None:
    path = tmp_path / "gatekeep.toml"
    path.write_text('[[services]]\nname = "a"\nurl = "http://127.0.0.1:5000"\n')
    store = FileStore(path)
    async for admin in _served(store):
        r = await admin.post("/services/a/routes", **form(("paths[]", "/a")))
        assert r.status_code == 201, r.text
        assert tomllib.loads(path.read_text())["services"][0]["routes"] == [{"paths": ["/a"]}]
        # Someone edits the file: the next read sees it, nothing is cached.
        path.write_text('[[services]]\nname = "b"\nurl = "http://127.0.0.1:5000"\n')
        assert [s["name"] for s in (await admin.get("/services")).json()["data"]] == ["b"]
    await store.aclose()


# -- who may use it -----------------------------------------------------------------------


async def test_a_token_is_required_when_configured(store: MemoryStore) -> None:
    settings = AdminSettings(listen=f"127.0.0.1:{free_port()}", token="s3cret")
    async for admin in _served(store, settings=settings):
        r = await admin.get("/services")
        assert r.status_code == 401 and r.json()["message"].startswith("Invalid credentials")
        assert (await admin.get("/services", headers={"Kong-Admin-Token": "wrong"})).status_code == 401
        assert (await admin.get("/services", headers={"Kong-Admin-Token": "s3cret"})).status_code == 200


async def test_mtls_lets_only_certificate_holders_in(store: MemoryStore, tmp_path: Path) -> None:
    import ssl

    import trustme

    from gatekeep.admin import AdminTLS

    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = AdminTLS(str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "ca.pem"))
    settings = AdminSettings(listen=f"127.0.0.1:{free_port()}", tls=tls)
    api = AdminAPI(store, settings=settings)

    def client_context(issuer: trustme.CA | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        if issuer is not None:
            issuer.issue_cert("operator@example.com").configure_cert(ctx)
        return ctx

    async with serve_admin(api, settings) as (host, port):
        url = f"https://{host}:{port}/services"
        async with httpx.AsyncClient(verify=client_context(ca)) as operator:
            assert (await operator.get(url)).status_code == 200
        for stranger in (None, other):
            async with httpx.AsyncClient(verify=client_context(stranger)) as client:
                with pytest.raises(httpx.TransportError):
                    await client.get(url)


def test_only_loopback_goes_without_a_token_or_mtls() -> None:
    from gatekeep import ConfigError, load_config

    load_config({"admin": {"listen": "127.0.0.1:8001"}})
    load_config({"admin": {"listen": "[::1]:8001"}})
    load_config({"admin": {"listen": "0.0.0.0:8001", "token": "t"}})
    load_config({"admin": {"listen": "10.0.0.1:8001", "tls": {"cert_file": "c", "key_file": "k",
                                                               "client_ca_file": "ca"}}})  # fmt: skip
    for bad in (
        {"listen": "0.0.0.0:8001"},
        {"listen": "10.0.0.1:8001", "tls": {"cert_file": "c", "key_file": "k"}},
    ):
        with pytest.raises(ConfigError) as refused:
            load_config({"admin": bad})
        assert [e.path for e in refused.value.errors] == ["admin.listen"]
    with pytest.raises(ConfigError) as refused:
        load_config({"admin": {"listen": "nowhere"}})
    assert str(refused.value.errors[0]) == "admin.listen: expected 'host:port', got 'nowhere'"


async def test_an_attackers_requests_get_4xx_and_change_nothing(
    admin: httpx.AsyncClient, store: MemoryStore
) -> None:
    await seed(admin)
    before = await store.read()
    hostile: list[tuple[str, str, dict[str, Any]]] = [
        (
            "POST",
            "/services",
            {"content": b"[" * 5000 + b"]" * 5000, "headers": {"content-type": "application/json"}},
        ),
        ("POST", "/services", {"content": b'{"name": ' + b"[" * 40 + b"]" * 40 + b"}", "headers": JSON}),
        ("POST", "/services", {"json": {"name": ["x"], "url": 5}}),
        ("POST", "/services", {"json": {"name": "../../etc", "url": "http://127.0.0.1:1"}}),
        ("POST", "/services/orders/routes", {"json": {"paths": "/not-a-list", "methods": [{"x": 1}]}}),
        ("POST", "/services/orders/routes", {"json": {"paths": ["~(a+)+$["]}}),
        ("POST", "/services/orders/plugins", {"json": {"name": "no-such-plugin"}}),
        ("POST", "/services/orders/plugins", {"json": {"name": "jwt", "config": "all of it"}}),
        ("POST", "/plugins", {"json": {"name": "prometheus", "service": {"id": 7}}}),
        ("POST", "/consumers", {"json": {"username": "x", "id": {"nested": True}}}),
        ("PATCH", "/services/orders", {"json": {"connect_timeout": -1}}),
        ("PUT", "/routes/orders", {"json": {"service": "orders"}}),
        ("POST", "/services", form(("name", "x"), ("url", "http://[::1"))),
        ("POST", "/services", form(("a.b", "1"), ("a", "2"))),
        (
            "POST",
            "/services",
            {"content": b"--x\r\n\r\n", "headers": {"content-type": "multipart/form-data"}},
        ),
        ("GET", "/services?offset=abc", {}),
        ("POST", "/config", {"json": {"services": "x"}}),
    ]
    for method, path, kwargs in hostile:
        r = await admin.request(method, path, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert "Traceback" not in r.text
    assert (await store.read()).version == before.version


async def test_route_items_put_move_and_delete(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    await seed(admin)
    await admin.post("/services", **form(("name", "billing"), ("url", "http://127.0.0.1:9")))
    assert (await admin.get("/services/orders/routes/orders")).json()["paths"] == ["/orders"]
    assert (await admin.get("/services/billing/routes/orders")).status_code == 404
    r = await admin.put("/routes/invoices", **form(("paths[]", "/invoices"), ("service.name", "billing")))
    assert r.status_code == 200 and r.json()["name"] == "invoices"
    r = await admin.patch("/routes/invoices", json={"service": {"name": "orders"}})
    assert r.status_code == 200
    assert r.json()["service"]["id"] == (await admin.get("/services/orders")).json()["id"]
    doc = await stored(store)
    assert [x.get("name") for x in doc["services"][0]["routes"]] == ["orders", "invoices"]
    assert doc["services"][1].get("routes", []) == []
    r = await admin.put("/services/orders/routes/invoices", **form(("paths[]", "/bills")))
    assert r.status_code == 200 and r.json()["paths"] == ["/bills"] and r.json()["methods"] is None
    assert (await admin.delete("/services/orders/routes/invoices")).status_code == 204
    assert [x["name"] for x in (await admin.get("/routes")).json()["data"]] == ["orders"]


async def test_put_by_id(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    wanted = "0b9a2f7e-8f3e-4c55-9a47-1b2c3d4e5f60"
    r = await admin.put(f"/consumers/{wanted}", **form(("username", "carol")))
    assert r.status_code == 200 and r.json()["id"] == wanted
    assert (await stored(store))["consumers"] == [{"username": "carol", "id": wanted}]
    r = await admin.put(f"/services/{wanted}", **form(("name", "x"), ("url", "http://127.0.0.1:9")))
    assert r.status_code == 400 and "id" in r.json()["fields"]  # a service's id is derived from its name


async def test_db_less_config_from_a_kong_yml_upload(admin: httpx.AsyncClient, store: MemoryStore) -> None:
    pytest.importorskip("yaml")
    kong_yml = b"""\
_format_version: "3.0"
services:
- name: example-service
  url: http://127.0.0.1:5002
  routes:
  - name: example-route
    paths:
    - /mock
"""
    # curl -X POST http://localhost:8001/config -F config=@kong.yml
    r = await admin.post("/config", files={"config": ("kong.yml", kong_yml, "application/octet-stream")})
    assert r.status_code == 201, r.text
    assert [x["name"] for x in (await admin.get("/routes")).json()["data"]] == ["example-route"]
    r = await admin.post(
        "/config", files={"config": ("kong.yml", b"services: [", "application/octet-stream")}
    )
    assert r.status_code == 400 and "config" in r.json()["fields"]
