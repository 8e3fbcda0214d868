"""A third-party plugin end to end: ``gatekeep-cors`` found through its entry point,
named in a TOML config file, served over loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

import gatekeep
from gatekeep.testing import EchoUpstream, TestClient, serve_asgi

pytest.importorskip(
    "gatekeep_cors",
    reason="the gatekeep-cors plugin is not installed (pip install -e plugins/gatekeep-cors)",
)

pytestmark = pytest.mark.anyio

CONFIG = """
[[services]]
name = "orders"
url = "http://127.0.0.1:{port}"

  [[services.routes]]
  name = "orders"
  paths = ["/orders"]

[[plugins]]
name = "cors"

  [plugins.config]
  origins = ["https://shop.example.com", "~https://[a-z0-9-]+\\\\.preview\\\\.example\\\\.com"]
  credentials = true
  exposed_headers = ["X-Total"]
  max_age = 3600
"""


async def test_cors_from_a_toml_config_answers_preflights_and_marks_responses(tmp_path: Path) -> None:
    upstream = EchoUpstream()
    async with serve_asgi(upstream) as upstream_port:
        path = tmp_path / "gateway.toml"
        path.write_text(CONFIG.format(port=upstream_port))
        gateway = gatekeep.Gateway(path)
        assert type(gateway.routes[0].chain.filters[0]).__module__ == "gatekeep_cors"
        async with gateway, serve_asgi(gatekeep.asgi(gateway)) as port:
            client = TestClient("127.0.0.1", port)
            preflight = await client.request(
                "OPTIONS",
                "/orders/7",
                headers={
                    "origin": "https://pr-12.preview.example.com",
                    "access-control-request-method": "DELETE",
                    "access-control-request-headers": "authorization",
                },
            )
            actual = await client.get("/orders/7", headers={"origin": "https://shop.example.com"})
            stranger = await client.get("/orders/7", headers={"origin": "https://evil.example.net"})

    assert preflight.status == 200
    assert preflight.header("access-control-allow-origin") == "https://pr-12.preview.example.com"
    assert preflight.header("access-control-allow-credentials") == "true"
    assert "DELETE" in (preflight.header("access-control-allow-methods") or "").split(",")
    assert preflight.header("access-control-allow-headers") == "authorization"
    assert preflight.header("access-control-max-age") == "3600"

    assert actual.status == 200
    assert actual.json()["path"] == "/7"  # strip_path, as in Kong
    assert actual.header("access-control-allow-origin") == "https://shop.example.com"
    assert actual.header("access-control-allow-credentials") == "true"
    assert actual.header("access-control-expose-headers") == "X-Total"
    assert actual.header("vary") == "Origin"

    assert stranger.status == 200
    assert not [k for k, _ in stranger.headers if k.startswith("access-control-")]
    # Only the two real requests reached the upstream; the preflight did not.
    assert [r.method for r in upstream.requests] == ["GET", "GET"]


def test_a_bad_cors_config_in_toml_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(port=9).replace("max_age = 3600", "max_age = -1"))
    with pytest.raises(gatekeep.ConfigError) as info:
        gatekeep.Gateway(path)
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("plugins[0].config.max_age", "must be 0 or more seconds, got -1")
    ]
