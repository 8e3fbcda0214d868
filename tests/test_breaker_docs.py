"""docs/resilience.md runs: its TOML configs load and its Python block runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from gatekeep import load_config
from gatekeep._balancer import ConsistentHash, PowerOfTwoEWMA, make_balancer

DOC = Path(__file__).resolve().parent.parent / "docs" / "resilience.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(DOC.read_text()) if lang == language]


def test_toml_configs_load() -> None:
    blocks = _blocks("toml")
    assert len(blocks) == 2
    orders = load_config(tomllib.loads(blocks[0])).service("orders")
    assert orders.retries == 2 and orders.breaker is not None and orders.breaker.half_open_probes == 3
    assert orders.healthchecks.active is not None and orders.healthchecks.active.http_path == "/health"
    assert orders.healthchecks.passive is not None and orders.healthchecks.passive.max_ejection_percent == 50
    assert orders.retry_policy.per_try_timeout == 2.0
    assert isinstance(make_balancer(orders), PowerOfTwoEWMA)
    carts = load_config(tomllib.loads(blocks[1])).service("carts")
    assert isinstance(make_balancer(carts), ConsistentHash)


def test_python_blocks_run() -> None:
    blocks = _blocks("python")
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"resilience.md[python block {i}]", "exec"), {})
