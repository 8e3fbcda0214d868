"""docs/resilience.md runs: its TOML configs load and its Python block runs."""

from __future__ import annotations

import tomllib

from gatekeep import ConsistentHash, PowerOfTwoEWMA, load_config
from gatekeep._balancer import make_balancer
from gatekeep.resilience import HealthchecksConfig
from tests._docs import blocks, run_python_blocks


def test_toml_configs_load() -> None:
    found = blocks("resilience.md", "toml")
    assert len(found) == 3
    orders = load_config(tomllib.loads(found[0])).service("orders")
    assert orders.retries == 2 and orders.breaker is not None and orders.breaker.half_open_probes == 3
    assert orders.healthchecks.active is not None and orders.healthchecks.active.http_path == "/health"
    assert orders.healthchecks.passive is not None and orders.healthchecks.passive.max_ejection_percent == 50
    assert orders.retry_policy.per_try_timeout == 2.0
    assert isinstance(make_balancer(orders), PowerOfTwoEWMA)
    assert orders.retry_policy.failovers == 3
    assert orders.healthchecks.passive.unhealthy.connect_failures == 1
    # The passive table that spells out the default is the default.
    spelled = load_config(tomllib.loads(found[2])).service("defaults")
    assert spelled.healthchecks == HealthchecksConfig()
    carts = load_config(tomllib.loads(found[1])).service("carts")
    assert isinstance(make_balancer(carts), ConsistentHash)


def test_python_blocks_run() -> None:
    assert blocks("resilience.md", "python")
    run_python_blocks("resilience.md")
