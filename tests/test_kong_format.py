"""Kong's declarative format and field names (issue 15, point 4): docs/kong.md's files load and serve.

The decK examples of docs/kong.md run here as written (upstream addresses
swapped for real loopback upstreams): a gateway serves them over real sockets.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import jwt as pyjwt
import pytest

from gatekeep import ConfigError, Gateway, load_config
from gatekeep._config import plugin_config
from gatekeep._kong_format import from_kong
from gatekeep._structure import Errors
from gatekeep.adapters import asgi
from gatekeep.testing import EchoUpstream, TestClient, serve_asgi
from tests._docs import blocks

pytestmark = pytest.mark.anyio

yaml = pytest.importorskip("yaml")


def _file(tmp_path: Path, index: int, *ports: int, name: str = "kong.yml") -> Path:
    text = blocks("kong.md", "yaml")[index]
    for n, port in enumerate(ports):
        text = text.replace(f"127.0.0.1:900{n + 1}", f"127.0.0.1:{port}")
    path = tmp_path / name
    path.write_text(text)
    return path


async def test_kongs_db_less_example_serves(tmp_path: Path) -> None:
    upstream = EchoUpstream()
    async with serve_asgi(upstream) as up:
        gateway = Gateway(str(_file(tmp_path, 0, up)))
        async with gateway, serve_asgi(asgi(gateway)) as port:
            client = TestClient("127.0.0.1", port)
            assert (await client.get("/anything")).status == 401
            answer = await client.get("/anything", headers={"apikey": "my-key"})
            assert answer.status == 200
            assert answer.json()["headers"]["x-consumer-username"] == "my-user"


async def test_a_deck_dump_with_upstreams_serves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one, two = EchoUpstream(), EchoUpstream()
    async with serve_asgi(one) as p1, serve_asgi(two) as p2:
        with caplog.at_level(logging.WARNING, logger="gatekeep.config"):
            gateway = Gateway(str(_file(tmp_path, 1, p1, p2)))
        notes = [r.getMessage() for r in caplog.records if "accepted and ignored" in r.getMessage()]
        # One warning per ignored field name and entity kind.
        assert len(notes) == len(set(notes))
        assert any("services[0].id" in n for n in notes) and any("routes[0].protocols" in n for n in notes)
        assert any("regex_priority" in n for n in notes) and any("path_handling" in n for n in notes)
        service = gateway.config.services[0]
        assert service.url is None and [t.target for t in service.targets] == [
            f"127.0.0.1:{p1}",
            f"127.0.0.1:{p2}",
        ]
        assert service.path == "/api" and service.retries == 5
        async with gateway, serve_asgi(asgi(gateway)) as port:
            client = TestClient("127.0.0.1", port)
            token = pyjwt.encode(
                {"iss": "alice-issuer", "exp": int(time.time()) + 60},
                "a-secret-of-at-least-32-bytes-for-hs256!",
                algorithm="HS256",
            )
            auth = {"authorization": f"Bearer {token}"}
            assert (await client.get("/orders")).status == 401
            statuses = [(await client.get("/orders/1", headers=auth)).status for _ in range(6)]
            assert statuses[:5] == [200] * 5 and statuses[5] == 429  # second = 5
            assert {r.path for r in one.requests + two.requests} == {"/api/1"}
            assert one.requests and two.requests  # balanced over both targets


def test_the_seeds_rate_limiting_fields_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    toml = blocks("kong.md", "toml")[0]
    import tomllib

    config = load_config(tomllib.loads(toml))
    limits = plugin_config(config.services[0].plugins[0])
    assert limits.policy == "redis" and (limits.second, limits.hour) == (5, 1000)
    redis = limits.redis
    assert (redis.host, redis.port, redis.timeout, redis.password, redis.database, redis.ssl) == (
        "redis-host",
        6379,
        1000,
        "s3cret",
        0,
        False,
    )


def _rate_limiting(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "s",
                "url": "http://127.0.0.1:9",
                "routes": [{"paths": ["/"]}],
                "plugins": [{"name": "rate-limiting", "config": config}],
            }
        ]
    }


def test_a_redis_member_set_both_ways_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            _rate_limiting({"second": 1, "policy": "redis", "redis_host": "a", "redis": {"host": "b"}})
        )
    assert [e.path for e in caught.value.errors] == ["services[0].plugins[0].config.redis_host"]


def test_without_redis_fields_policy_redis_still_needs_them() -> None:
    with pytest.raises(ConfigError, match="needs a redis table"):
        load_config(_rate_limiting({"second": 1, "policy": "redis", "redis_host": None}))


def test_what_gatekeep_cannot_honour_is_refused_with_its_path() -> None:
    data = {
        "_format_version": "3.0",
        "services": [
            {"name": "grpc", "protocol": "grpc", "host": "x", "port": 9000, "routes": [{"paths": ["/"]}]},
            {
                "name": "web",
                "url": "http://x:80",
                "routes": [{"paths": ["/w"], "protocols": ["https", "tcp"], "snis": ["a.example"]}],
            },
        ],
        "certificates": [{"cert": "...", "key": "..."}],
        "snis": [],
        "plugins": [{"name": "cors", "ordering": {"before": {"access": ["jwt"]}}}],
    }
    with pytest.raises(ConfigError) as caught:
        load_config(data)
    paths = {e.path for e in caught.value.errors}
    assert {
        "services[0].protocol",
        "services[1].routes[0].protocols",
        "services[1].routes[0].snis",
        "certificates",
        "plugins[0].ordering",
    } <= paths
    assert "snis" not in paths  # decK writes empty lists of everything


def test_references_by_id_and_top_level_credentials() -> None:
    data = {
        "_format_version": "3.0",
        "services": [{"id": "svc-1", "name": "orders", "url": "http://127.0.0.1:9"}],
        "routes": [{"id": "r-1", "name": "list", "service": {"id": "svc-1"}, "paths": ["/orders"]}],
        "consumers": [{"id": "c-1", "username": "alice"}],
        "keyauth_credentials": [{"key": "k1", "consumer": {"id": "c-1"}, "created_at": 1}],
        "plugins": [
            {"name": "key-auth", "route": {"id": "r-1"}},
            {"name": "rate-limiting", "consumer": {"username": "alice"}, "config": {"minute": 5}},
        ],
    }
    config = load_config(data)
    assert config.services[0].routes[0].name == "list"
    assert [(p.name, p.route, p.consumer) for p in config.plugins] == [
        ("key-auth", "list", None),
        ("rate-limiting", None, "alice"),
    ]
    assert config.consumers[0].credentials["keyauth_credentials"][0].key == "k1"


def test_a_gatekeep_config_passes_through_unchanged() -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / "gateway.toml"
    import tomllib

    data = tomllib.loads(path.read_text())
    notes: list[str] = []
    errors = Errors()
    assert from_kong(data, errors, notes) == data
    assert not errors and not notes


def test_the_json_form_loads_without_pyyaml(tmp_path: Path) -> None:
    data = yaml.safe_load(blocks("kong.md", "yaml")[0])
    path = tmp_path / "kong.json"
    path.write_text(json.dumps(data))
    config = load_config(path)
    assert config.services[0].name == "my-service"
    assert config.consumers[0].credentials["keyauth_credentials"][0].key == "my-key"


def test_kongs_vault_env_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", "plain")
    monkeypatch.setenv("JSON_SECRET", json.dumps({"password": "deep"}))
    config = load_config(
        _rate_limiting(
            {
                "second": 1,
                "policy": "redis",
                "redis_host": "{vault://env/my-secret}",
                "redis_password": "{vault://env/json-secret/password}",
            }
        )
    )
    redis = plugin_config(config.services[0].plugins[0]).redis
    assert (redis.host, redis.password) == ("plain", "deep")
    monkeypatch.delenv("MY_SECRET")
    with pytest.raises(ConfigError, match="'MY_SECRET' is not set"):
        load_config(_rate_limiting({"second": 1, "policy": "redis", "redis_host": "{vault://env/my-secret}"}))


async def test_a_full_deck_dump_with_every_default_serves(tmp_path: Path) -> None:
    upstream = EchoUpstream()
    async with serve_asgi(upstream) as up:
        text = (Path(__file__).parent / "kong" / "deck-dump.yaml").read_text()
        path = tmp_path / "kong.yaml"
        path.write_text(text.replace("127.0.0.1:9001", f"127.0.0.1:{up}"))
        gateway = Gateway(str(path))
        service = gateway.config.services[0]
        assert service.healthchecks.active is None  # Kong's intervals of 0: off
        limits = plugin_config(service.plugins[0])
        assert limits.redis is None and (limits.second, limits.hour) == (5, 1000)
        async with gateway, serve_asgi(asgi(gateway)) as port:
            client = TestClient("127.0.0.1", port)
            claims = {"iss": "alice-issuer", "exp": int(time.time()) + 60}  # gatekeep asks for exp
            token = pyjwt.encode(claims, "a-secret-of-at-least-32-bytes-for-hs256!", "HS256")
            answer = await client.get("/orders/7", headers={"authorization": f"Bearer {token}"})
            assert answer.status == 200, answer.text
            assert upstream.requests[-1].path == "/7"
            with anyio.fail_after(2):  # the log phase runs after the answer's last byte
                while 'consumer="alice"' not in (await client.get("/metrics")).text:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
