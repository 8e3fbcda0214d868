"""Config stores (issue 15): file, Consul KV and memory behind one protocol.

Consul KV runs against the Consul test double on a real loopback socket (or a
real agent when ``CONSUL_HTTP_ADDR`` is set): documented answers, blocking
queries on the key, ``cas``.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest

from gatekeep.configsource import (
    ConfigDocument,
    ConfigSourceError,
    ConfigStore,
    ConsulKVStore,
    FileStore,
    MemoryStore,
    VersionConflict,
    dumps_toml,
    open_store,
)
from tests._consul_server import consul_endpoint

pytestmark = pytest.mark.anyio

CONFIG: dict[str, Any] = {
    "services": [
        {
            "name": "orders",
            "url": "http://127.0.0.1:9001",
            "routes": [{"name": "orders", "paths": ["/orders"], "methods": ["GET", "POST"]}],
            "plugins": [{"name": "rate-limiting", "config": {"second": 5, "hour": 1000}}],
        }
    ],
    "plugins": [{"name": "correlation-id"}],
}


def test_the_hash_is_the_same_whatever_the_key_order() -> None:
    a = ConfigDocument.of({"b": 1, "a": {"y": [1, 2], "x": "é"}})
    b = ConfigDocument.of({"a": {"x": "é", "y": [1, 2]}, "b": 1})
    assert a.hash == b.hash and len(a.hash) == 64
    assert ConfigDocument.of({"a": 1}).hash != ConfigDocument.of({"a": 2}).hash


def test_toml_written_for_a_store_reads_back_the_same() -> None:
    data = {
        **CONFIG,
        "gateway": {"via": 'gate "keep"\n', "trusted_proxies": ["10.0.0.0/8"], "gc_freeze": False},
    }
    data["services"][0]["timeout_note"] = None  # TOML has no null: left out
    text = dumps_toml(data)
    del data["services"][0]["timeout_note"]
    assert tomllib.loads(text) == data


async def _contract(store: ConfigStore) -> None:
    """What every store promises: read, check-and-set write, watch."""
    empty = await store.read()
    assert empty.document is None and empty.version == "0"
    version = await store.write(CONFIG, "0")
    snapshot = await store.read()
    assert snapshot.version == version != "0"
    assert snapshot.document is not None and snapshot.document.data == CONFIG
    assert snapshot.document.hash == ConfigDocument.of(CONFIG).hash
    with pytest.raises(VersionConflict) as conflict:
        await store.write({**CONFIG, "plugins": []}, "0")
    assert conflict.value.current == version and conflict.value.status == 409
    changed = {**CONFIG, "plugins": []}
    seen: list[Any] = []

    async def watch() -> None:
        async for s in store.watch(version):
            seen.append(s)
            return

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await anyio.sleep(0.3)
        assert not seen  # nothing new yet: the watch blocks
        new_version = await store.write(changed, version)
        with anyio.fail_after(3):
            while not seen:  # noqa: ASYNC110 - the watch task appends
                await anyio.sleep(0.01)
    assert seen[0].version == new_version
    assert seen[0].document.data == changed
    await store.aclose()


async def test_memory_store() -> None:
    await _contract(MemoryStore())


async def test_file_store_toml(tmp_path: Path) -> None:
    path = tmp_path / "gatekeep.toml"
    await _contract(FileStore(path, poll_interval=0.05, settle=0.02))
    assert tomllib.loads(path.read_text()) == {**CONFIG, "plugins": []}
    assert not [p.name for p in os.scandir(tmp_path) if p.name.endswith(".tmp")]


async def test_file_store_json(tmp_path: Path) -> None:
    path = tmp_path / "gatekeep.json"
    await _contract(FileStore(path, poll_interval=0.05, settle=0.02))
    assert json.loads(path.read_text()) == {**CONFIG, "plugins": []}


async def test_an_unparsable_file_is_a_snapshot_with_its_error(tmp_path: Path) -> None:
    path = tmp_path / "gatekeep.toml"
    path.write_text("[[services]\nname = ")
    snapshot = await FileStore(path).read()
    assert snapshot.document is None and snapshot.version != "0"
    assert snapshot.error is not None and "invalid TOML" in str(snapshot.error)


async def test_consul_kv_store() -> None:
    async with consul_endpoint() as consul:
        store = ConsulKVStore(consul.address, "gatekeep/test/config", token=consul.token, wait="2s")
        await _contract(store)


async def test_consul_kv_holds_the_canonical_json() -> None:
    async with consul_endpoint() as consul:
        if consul.double is None:
            pytest.skip("reads the double's state")
        store = open_store(consul.address.replace("http://", "consul://") + "/gatekeep/config")
        assert store.name.endswith("/gatekeep/config")
        await store.write(CONFIG, None)
        raw = consul.double.kv[("dc1", "gatekeep/config")]["Value"]
        assert json.loads(raw) == CONFIG and b" " not in raw.replace(b"GET, POST", b"")
        await store.aclose()


async def test_consul_kv_store_refuses_without_the_token() -> None:
    async with consul_endpoint(token="secret") as consul:
        if consul.double is None:
            pytest.skip("the double's ACLs")
        store = ConsulKVStore(consul.address, "gatekeep/config")
        with pytest.raises(ConfigSourceError) as caught:
            await store.write(CONFIG, None)
        assert caught.value.status == 503 and "403" in str(caught.value)
        await store.aclose()


def test_open_store_names() -> None:
    assert isinstance(open_store("/etc/gatekeep.toml"), FileStore)
    assert isinstance(open_store("file:///etc/gatekeep.toml"), FileStore)
    consul = open_store("consul://10.0.0.5:8500/gatekeep/prod?dc=eu1")
    assert isinstance(consul, ConsulKVStore)
    assert (consul.address, consul.key, consul.dc) == ("http://10.0.0.5:8500", "gatekeep/prod", "eu1")
    with pytest.raises(ValueError, match="unknown config source"):
        open_store("etcd://x/y")


def test_the_reload_guide_runs() -> None:
    from tests._docs import run_python_blocks

    assert run_python_blocks("configuration-reload.md") == ["test_a_gateway_follows_its_store"]
