"""docs/discovery.md runs: its Python blocks in order (one module), its TOML configs load."""

from __future__ import annotations

import re
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatekeep import load_config
from tests._consul_server import ConsulDouble, serve_consul

DOC = Path(__file__).resolve().parent.parent / "docs" / "discovery.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(DOC.read_text()) if lang == language]


@pytest.fixture
def doc_module() -> Iterator[types.ModuleType]:
    module = types.ModuleType("_doc_discovery")
    sys.modules[module.__name__] = module
    try:
        for i, code in enumerate(_blocks("python")):
            exec(compile(code, f"discovery.md[python block {i}]", "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


def test_toml_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
    blocks = _blocks("toml")
    assert blocks
    for code in blocks:
        config = load_config(tomllib.loads(code))
        consul = config.service("orders").discovery
        assert consul is not None and consul.consul is not None
        assert consul.consul.token == "from-the-environment"
        dns = config.service("billing").discovery
        assert dns is not None and dns.dns is not None and dns.dns.port == 8600


@pytest.mark.anyio
async def test_the_watcher_example_and_the_lifespan_example(
    doc_module: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    double = ConsulDouble()
    double.register(
        {
            "ID": "orders-1",
            "Name": "orders",
            "Address": "127.0.0.1",
            "Port": 9001,
            "Check": {"TTL": "60s", "Status": "passing"},
        }
    )
    async with serve_consul(double) as address:
        await doc_module.show(address)
        assert "orders-1" in capsys.readouterr().out
        # The lifespan example registers the reference body with that agent.
        source = _blocks("python")[3].replace("http://127.0.0.1:8500", address)
        exec(compile(source, "lifespan", "exec"), doc_module.__dict__)
        async with doc_module.lifespan(None):
            assert ("dc1", "node-1", "order-service-1") in double.services
            check = double.checks[("dc1", "node-1", "service:order-service-1")]
            assert (check["Type"], check["Interval"]) == ("http", "10s")
        assert ("dc1", "node-1", "order-service-1") not in double.services
