"""docs/security.md runs: its config spells out the edge defaults, and they are the defaults."""

from __future__ import annotations

import tomllib

from gatekeep import load_config
from tests._docs import DOCS, blocks


def test_the_documented_edge_settings_load_and_are_the_defaults() -> None:
    (page,) = blocks("security.md", "toml")
    documented = load_config(tomllib.loads(page))
    defaults = load_config(
        {
            "services": [
                {"name": "orders", "url": "http://127.0.0.1:9001", "routes": [{"paths": ["/orders"]}]},
            ]
        }
    )
    assert documented.gateway == defaults.gateway
    assert documented.server == defaults.server
    orders, plain = documented.service("orders"), defaults.service("orders")
    assert orders.request_buffering and orders.retry_policy == plain.retry_policy
    assert orders.retry_policy.failovers == 3
    # 50 is what "half of pool.max_connections" comes to by default.
    assert orders.max_streaming_uploads == 50 and plain.max_streaming_uploads in (None, 50)
    assert defaults.gateway.pool.max_connections == 100


def test_every_attack_file_the_page_promises_exists() -> None:
    page = (DOCS / "security.md").read_text()
    for name in (
        "test_websocket_middleware",
        "test_path_normalisation",
        "test_identity_spoofing",
        "test_smuggling",
        "test_host_and_target",
        "test_front_server",
        "test_slow_clients",
        "test_jwt_forgery",
        "test_upstream_misbehaviour",
        "test_client_aborts",
    ):
        assert f"`{name}.py`" in page
        assert (DOCS.parent / "tests" / "attacks" / f"{name}.py").exists(), name
