"""The ``rate-limiting`` filter to a redis-server over real TLS (trustme certificates)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from gatekeep import ConfigError
from gatekeep._structure import structure_or_raise
from gatekeep.plugins.rate_limiting import RateLimitingConfig, RateLimitingFilter
from gatekeep.testing import Harness, gateway_for
from tests._redis_fixture import TLS_NAME, TLSRedis

pytestmark = pytest.mark.anyio

TIMEOUT_MS = 1000


def tls_config(server: TLSRedis, hour: int = 2, fault_tolerant: bool = True, **redis_settings: Any) -> Any:
    settings = {
        "host": "127.0.0.1",
        "port": server.port,
        "timeout": TIMEOUT_MS,
        "ssl": True,
        **redis_settings,
    }
    config = {"hour": hour, "limit_by": "ip", "policy": "redis", "fault_tolerant": fault_tolerant}
    return [{"name": "rate-limiting", "config": {**config, "redis": settings}}]


def the_filter(gw: Harness) -> RateLimitingFilter:
    (found,) = [f for f in gw.gateway.filters if isinstance(f, RateLimitingFilter)]
    return found


def stored(server: TLSRedis) -> list[bytes]:
    with redis.Redis(host="127.0.0.1", port=server.port, ssl=True, ssl_ca_certs=server.ca_file) as client:
        found: list[bytes] = client.keys("gk:rl:*")
        client.flushall()
    return found


async def admits_two_of_three(plugins: Any) -> RateLimitingFilter:
    async with gateway_for(plugins=plugins) as gw:
        seen = [await gw.client.get("/") for _ in range(3)]
        assert [r.status for r in seen] == [200, 200, 429]
        assert [r.header("x-ratelimit-remaining-hour") for r in seen] == ["1", "0", "0"]
        f = the_filter(gw)
        assert (f.stats.allowed, f.stats.rejected, f.stats.fallback, f.stats.outages) == (2, 1, 0, 0)
        return f


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"ssl_verify": True, "ca_file": "CA"}, id="verified-by-ip"),
        pytest.param(
            {"ssl_verify": True, "ca_file": "CA", "server_name": TLS_NAME}, id="verified-by-server-name"
        ),
        pytest.param({"ssl_verify": False}, id="unverified"),
        pytest.param({"ssl_verify": False, "server_name": "any.name"}, id="unverified-any-server-name"),
    ],
)
async def test_tls_connections_that_work(redis_tls: TLSRedis, settings: dict[str, Any]) -> None:
    if settings.get("ca_file") == "CA":
        settings = {**settings, "ca_file": redis_tls.ca_file}
    await admits_two_of_three(tls_config(redis_tls, **settings))
    assert len(stored(redis_tls)) == 1  # decided by the TLS server, not per process


async def test_a_rediss_url_with_the_ca_file(redis_tls: TLSRedis) -> None:
    url = f"rediss://127.0.0.1:{redis_tls.port}/0"
    settings = {"url": url, "timeout": TIMEOUT_MS, "ca_file": redis_tls.ca_file}
    plugins = [
        {
            "name": "rate-limiting",
            "config": {"hour": 2, "limit_by": "ip", "policy": "redis", "redis": settings},
        }
    ]
    await admits_two_of_three(plugins)
    assert len(stored(redis_tls)) == 1


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "wrong-server-name": (
        {"ssl_verify": True, "ca_file": "CA", "server_name": "wrong.example"},
        "Hostname mismatch",
    ),
    "unknown-ca": ({"ssl_verify": True, "ca_file": "OTHER"}, "certificate verify failed"),
    "system-cas": ({"ssl_verify": True}, "certificate verify failed"),
    "plain-to-tls": ({"ssl": False}, "Redis failed"),
}


@pytest.mark.parametrize("fault_tolerant", [True, False], ids=["fault-tolerant", "fail-closed"])
@pytest.mark.parametrize("case", list(BAD))
async def test_a_server_that_fails_verification_is_an_outage(
    redis_tls: TLSRedis, caplog: pytest.LogCaptureFixture, case: str, fault_tolerant: bool
) -> None:
    caplog.set_level(logging.WARNING, "gatekeep.rate_limiting")
    settings, reason = BAD[case]
    files = {"CA": redis_tls.ca_file, "OTHER": redis_tls.unknown_ca_file}
    settings = {k: files.get(v, v) if k == "ca_file" else v for k, v in settings.items()}
    async with gateway_for(plugins=tls_config(redis_tls, fault_tolerant=fault_tolerant, **settings)) as gw:
        started = time.monotonic()
        seen = [await gw.client.get("/") for _ in range(3)]
        elapsed = time.monotonic() - started
        f = the_filter(gw)
    if fault_tolerant:
        # Decided per process with the same limits: the limit still holds.
        assert [r.status for r in seen] == [200, 200, 429]
        assert (f.stats.fallback_allowed, f.stats.fallback_rejected, f.stats.allowed) == (2, 1, 0)
    else:
        assert [r.status for r in seen] == [503] * 3
        assert all(r.header("content-type") == "application/problem+json" for r in seen)
        assert all("certificate" not in r.text and "127.0.0.1" not in r.text for r in seen)
        assert f.stats.unavailable == 3
    assert f.stats.outages == 1
    assert elapsed < TIMEOUT_MS / 1000 + 0.5  # one failed handshake, then no request waits for it
    (line,) = [r.getMessage() for r in caplog.records if "Redis is unavailable" in r.getMessage()]
    assert reason in line, line
    assert stored(redis_tls) == []


# -- load-time validation (no server needed) ------------------------------------


def refused(redis_settings: dict[str, Any]) -> list[tuple[str, str]]:
    data = {"minute": 5, "policy": "redis", "redis": redis_settings}
    with pytest.raises(ConfigError) as info:
        structure_or_raise(RateLimitingConfig, data, "config")
    return [(e.path, e.message) for e in info.value.errors]


def test_a_missing_ca_file_fails_the_config(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    errors = refused({"host": "h", "ssl": True, "ssl_verify": True, "ca_file": missing})
    assert any(path == "config.redis.ca_file" and "no such file" in m for path, m in errors), errors


def test_a_ca_file_without_certificates_fails_the_config(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    errors = refused({"host": "h", "ssl": True, "ssl_verify": True, "ca_file": str(junk)})
    assert any(path == "config.redis.ca_file" and "no PEM CA certificates" in m for path, m in errors), errors


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"host": "h", "ssl": True, "ssl_verify": False}, "only used with ssl = true and ssl_verify = true"),
        ({"host": "h", "ssl": False, "ssl_verify": True}, "only used with ssl = true and ssl_verify = true"),
        ({"url": "redis://h:6379"}, "only used with ssl = true and ssl_verify = true (or a rediss:// url)"),
    ],
)
def test_a_ca_file_that_would_not_be_used_fails_the_config(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    errors = refused({**settings, "ca_file": str(ca)})
    assert any(path == "config.redis" and message in m for path, m in errors), errors


@pytest.mark.parametrize(
    "settings",
    [
        {"host": "h", "server_name": "n"},
        {"url": "rediss://h:6379", "server_name": "n"},
        {"host": "h", "ssl": True, "mode": "cluster", "server_name": "n"},
    ],
)
def test_a_server_name_that_would_not_be_used_fails_the_config(settings: dict[str, Any]) -> None:
    errors = refused(settings)
    assert any(path == "config.redis" and "server_name needs ssl = true" in m for path, m in errors), errors
