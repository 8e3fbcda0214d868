"""``gatekeep check``: the whole load (shape, credentials, cross-checks, every plugin's ``bind``),
errors with their config paths, warnings, never a traceback (issue 13, points 1, 4 and 5)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from gatekeep import ConfigError, FieldError, Gateway, PluginContext, check_config
from gatekeep.cli import main

SERVICE = """
[[services]]
name = "orders"
url = "http://127.0.0.1:9001"

  [[services.routes]]
  name = "orders"
  paths = ["/orders"]
"""


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "gatekeep.toml"
    path.write_text(text)
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


# -- a validator never sees a half-loaded entry ------------------------------------------------


def test_a_failed_secret_reference_in_a_list_is_reported_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bug: the unresolved entry became None and the header-name validator called None.isascii().
    monkeypatch.delenv("GK_CHECK_MISSING", raising=False)
    code, out, err = _check(
        tmp_path,
        '[gateway]\nhide_upstream_headers = ["{env://GK_CHECK_MISSING}"]\n'
        + SERVICE
        + '[[plugins]]\nname = "cors"\nconfig = { origins = ["{env://GK_CHECK_MISSING}"] }\n',
        capsys,
    )
    assert code == 1
    assert "Traceback" not in err
    lines = [line.strip() for line in err.splitlines()[1:]]
    assert lines == [
        "gateway.hide_upstream_headers[0]: environment variable 'GK_CHECK_MISSING' is not set",
        "plugins[0].config.origins[0]: environment variable 'GK_CHECK_MISSING' is not set",
    ]


def test_a_validator_is_not_run_over_entries_that_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a second, misleading error ("entry 0: None is not a name") for the same mistake.
    monkeypatch.delenv("GK_CHECK_MISSING", raising=False)
    code, _, err = _check(
        tmp_path,
        SERVICE
        + '[[plugins]]\nname = "rbac"\n'
        + 'config = { rules = [{ methods = ["GET"], any_of = ["{env://GK_CHECK_MISSING}"] }] }\n',
        capsys,
    )
    assert code == 1
    assert err.splitlines()[1:] == [
        "  plugins[0].config.rules[0].any_of[0]: environment variable 'GK_CHECK_MISSING' is not set"
    ]


@attrs.frozen
class _Peer:
    host: str
    token: str = attrs.field(repr=False)


def _distinct_hosts(_: object, attribute: object, value: tuple[_Peer, ...]) -> None:
    hosts = [peer.host.lower() for peer in value]  # would raise AttributeError on None or a half entry
    if len(hosts) != len(set(hosts)):
        raise ValueError("hosts must be distinct")


@attrs.frozen
class _PeersConfig:
    peers: tuple[_Peer, ...] = attrs.field(default=(), validator=_distinct_hosts)


class _Peers:
    name = "peers"
    Config = _PeersConfig

    def __init__(self, config: object = None) -> None:
        self.config = config


def test_a_plugins_validator_never_sees_an_entry_whose_secret_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GK_CHECK_MISSING", raising=False)
    peers = [
        {"host": "a"},
        {"host": "b", "token": "{env://GK_CHECK_MISSING}"},
        {"host": "{env://GK_CHECK_MISSING}"},
    ]
    config = {
        "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "peers", "config": {"peers": peers}}],
    }
    with pytest.raises(ConfigError) as caught:
        check_config(config, plugins=[_Peers])
    assert [str(e) for e in caught.value.errors] == [
        "plugins[0].config.peers[0].token: is required",
        "plugins[0].config.peers[1].token: environment variable 'GK_CHECK_MISSING' is not set",
        "plugins[0].config.peers[2].host: environment variable 'GK_CHECK_MISSING' is not set",
        "plugins[0].config.peers[2].token: is required",
    ]


# -- every plugin's bind runs, its errors carry their paths ----------------------------------


def test_a_plugin_naming_an_unknown_consumer_fails_check_with_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: load_config alone passed it, and only `serve` found out.
    code, out, err = _check(
        tmp_path,
        SERVICE
        + '  [[services.plugins]]\n  name = "correlation-id"\n'
        + '  [[services.plugins]]\n  name = "key-auth"\n  config = { anonymous = "nobody" }\n',
        capsys,
    )
    assert (code, out) == (1, "")
    assert err.splitlines()[1:] == ["  services[0].plugins[1].config.anonymous: no consumer 'nobody'"]


def test_check_warns_about_an_hs256_secret_shorter_than_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _check(
        tmp_path,
        SERVICE
        + '[[plugins]]\nname = "jwt"\nconfig = { keys = [{ algorithm = "HS256", secret = "x" }] }\n'
        + '[[consumers]]\nusername = "alice"\n'
        + f'jwt_secrets = [{{ key = "a", algorithm = "HS512", secret = "{"s" * 63}" }},'
        + f' {{ key = "b", algorithm = "HS384", secret = "{"s" * 48}" }}]\n',
        capsys,
    )
    assert code == 0
    assert "1 services, 1 routes, 1 global plugins, 2 warning(s)" in out
    warnings = [line.split(": warning: ", 1)[1] for line in err.splitlines()]
    assert [w.split(": ", 1)[0] for w in warnings] == [
        "plugins[0].config.keys[0].secret",
        "consumers[0].jwt_secrets[0].secret",
    ]
    assert "a HS256 secret of 1 byte(s) can be guessed: RFC 7518 §3.2 asks for at least 32" in warnings[0]
    assert "HS512 secret of 63 byte(s)" in warnings[1]


class _Audit:
    """A third-party plugin whose bind refuses with a path relative to its entry."""

    name = "audit"

    def __init__(self, config: object = None) -> None:
        self.config = config

    def bind(self, context: PluginContext) -> None:
        if "auditor" not in context.consumers:
            raise ConfigError([FieldError("config", "no consumer 'auditor' to send the audit trail as")])


class _Broken:
    """A plugin whose bind has a bug."""

    name = "broken"

    def __init__(self, config: object = None) -> None:
        self.config = config

    def bind(self, context: PluginContext) -> None:
        raise KeyError("oops")


def test_errors_of_every_bind_come_back_together_each_at_its_entry() -> None:
    config = {
        "services": [
            {
                "name": "orders",
                "url": "http://127.0.0.1:9",
                "routes": [{"paths": ["/"], "plugins": [{"name": "broken"}]}],
            }
        ],
        "plugins": [{"name": "audit"}],
    }
    with pytest.raises(ConfigError) as caught:
        check_config(config, plugins=[_Audit, _Broken])
    assert [str(e) for e in caught.value.errors] == [
        "plugins[0].config: no consumer 'auditor' to send the audit trail as",
        "services[0].routes[0].plugins[0]: broken: KeyError('oops')",
    ]
    assert isinstance(caught.value.__cause__, KeyError)  # the bug's traceback is kept for its author
    with pytest.raises(ConfigError) as caught:
        Gateway(config, plugins=[_Audit, _Broken])  # the gateway refuses it the same way
    assert len(caught.value.errors) == 2


def test_check_config_is_the_python_api_of_the_command() -> None:
    report = check_config(
        {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}]}
    )
    assert report.warnings == ()
    assert report.config.services[0].name == "s"


def test_the_demo_config_checks_clean() -> None:
    from gatekeep.demo._config import demo_config

    ports = {"order-service": 9001, "payment-service": 9002, "inventory-service": 9003}
    report = check_config(demo_config(ports, "http://127.0.0.1:9000"))
    assert report.warnings == ()


def test_check_reads_the_tls_files_serve_would_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate path that cannot be read fails ``check`` as it fails ``serve``, with its path."""
    missing = tmp_path / "nowhere.pem"
    text = f"""
[server.tls]
cert_file = "{missing}"
key_file = "{missing}"

[[services]]
name = "up"
url = "http://127.0.0.1:9"
[[services.routes]]
paths = ["/"]
"""
    code, _, err = _check(tmp_path, text, capsys)
    assert code == 1
    assert "server.tls.cert_file: cannot read" in err
