"""Encrypted config values (``{enc:v1:...}``, AES-256-GCM) and ``gatekeep secret``.

The plaintexts of these tests are distinctive strings; every test that could
leak one greps for it in what an operator sees (errors, ``check``'s output,
reprs, logs, metrics).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import stat
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

import gatekeep
from gatekeep import ConfigError, Keyring, Secret, SecretError, SecretKey, load_config
from gatekeep._secrets import canonical_path, decrypt, encrypt, new_key, parse_path
from gatekeep.cli import main
from gatekeep.testing import gateway_for
from tests._docs import run_python_blocks
from tests._servers import free_port, running

JWT_SECRET = "jwt-plaintext-Zq81vX-0123456789abcdef"
REDIS_PASSWORD = "redis-plaintext-Pk27wQ"
SECRET_PATH = "consumers[0].jwt_secrets[0].secret"


def _env_value(*keys: SecretKey) -> str:
    return ",".join(f"{k.id}:{base64.b64encode(k.key).decode()}" for k in keys)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Keyring:
    ring = Keyring((new_key("old"), new_key("new")))
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(*ring.keys))
    monkeypatch.delenv("GATEKEEP_SECRET_KEY_FILE", raising=False)
    return ring


def _config(secret: str, url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {
        "services": [{"name": "api", "url": url, "routes": [{"name": "api", "paths": ["/"]}]}],
        "plugins": [{"name": "jwt"}],
        "consumers": [{"username": "alice", "jwt_secrets": [{"key": "alice-iss", "secret": secret}]}],
    }


def _errors(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {e.path: e.message for e in exc.value.errors}


# -- the format -------------------------------------------------------------------------------


def test_a_value_decrypts_at_its_own_path_and_its_repr_hides_it() -> None:
    ring = Keyring((new_key("k1"),))
    token = encrypt(JWT_SECRET, SECRET_PATH, ring)
    assert re.fullmatch(r"\{enc:v1:k1:[A-Za-z0-9+/]+=*\}", token)
    assert JWT_SECRET not in token
    value = decrypt(token, SECRET_PATH, ring)
    assert value == JWT_SECRET and isinstance(value, Secret) and isinstance(value, str)
    assert JWT_SECRET not in repr(value) and JWT_SECRET not in f"{value!r}"
    # A random nonce: the same plaintext never gives the same value twice.
    assert encrypt(JWT_SECRET, SECRET_PATH, ring) != token


def test_canonical_paths() -> None:
    assert canonical_path(("services", 0, "plugins", 1, "config", "redis", "password")) == (
        "services[0].plugins[1].config.redis.password"
    )
    assert canonical_path(("services", 0, "routes", 0, "headers", "x.y", 0)) == (
        'services[0].routes[0].headers["x.y"][0]'
    )
    assert parse_path('services[0]["url"]') == ("services", 0, "url")
    assert parse_path('a["x.y"].b') == ("a", "x.y", "b")
    for bad in (".a", "a..b", "a[0]b", "a b", "", "a[x]"):
        with pytest.raises(SecretError):
            parse_path(bad)


@given(
    st.lists(
        st.one_of(st.integers(min_value=0, max_value=10**6), st.text(min_size=1, max_size=12)),
        min_size=1,
        max_size=6,
    ).filter(lambda parts: isinstance(parts[0], str))
)
def test_a_canonical_path_parses_back_to_its_parts(parts: list[str | int]) -> None:
    text = canonical_path(parts)
    assert parse_path(text) == tuple(parts)
    assert canonical_path(parse_path(text)) == text


def test_a_non_canonical_path_is_encrypted_under_its_canonical_form() -> None:
    ring = Keyring((new_key("k1"),))
    token = encrypt("v", 'services[0]["url"]', ring)
    assert decrypt(token, "services[0].url", ring) == "v"


def test_keyring_entries() -> None:
    a, b = new_key("a"), new_key("b")
    ring = Keyring.parse(f"# keys\n{_env_value(a)}\n\n{_env_value(b)}  # newest\n", "file")
    assert [k.id for k in ring.keys] == ["a", "b"] and ring.newest.id == "b"
    assert Keyring.parse(_env_value(a, b), "env").newest == b
    with pytest.raises(SecretError, match="32 bytes"):
        Keyring.parse("k:" + base64.b64encode(b"short").decode(), "env")
    with pytest.raises(SecretError, match="base64"):
        Keyring.parse("k:***", "env")
    with pytest.raises(SecretError, match="id:base64key"):
        Keyring.parse("nocolon", "env")
    with pytest.raises(SecretError, match="twice"):
        Keyring((a, SecretKey("a", b.key)))
    with pytest.raises(SecretError, match="no secret keys"):
        _ = Keyring().newest
    assert "key=" not in repr(a) and base64.b64encode(a.key).decode() not in repr(ring)


def test_keys_from_a_key_file_and_the_environment(tmp_path: Path) -> None:
    a, b = new_key("a"), new_key("b")
    file = tmp_path / "keys"
    file.write_text(_env_value(a) + "\n")
    env = {"GATEKEEP_SECRET_KEY_FILE": str(file), "GATEKEEP_SECRET_KEYS": _env_value(b)}
    ring = Keyring.from_environ(env)
    assert [k.id for k in ring.keys] == ["a", "b"]
    with pytest.raises(SecretError, match="cannot read the secret key file"):
        Keyring.from_environ({"GATEKEEP_SECRET_KEY_FILE": str(tmp_path / "missing")})


# -- the config loader ------------------------------------------------------------------------


def test_an_encrypted_jwt_secret_loads_and_never_shows(keys: Keyring) -> None:
    config = load_config(_config(encrypt(JWT_SECRET, SECRET_PATH, keys)))
    (secret,) = config.consumers[0].credentials["jwt_secrets"]
    assert secret.secret == JWT_SECRET
    assert JWT_SECRET not in repr(config)


def test_an_old_key_still_decrypts_while_it_is_in_the_keyring(keys: Keyring) -> None:
    config = load_config(_config(encrypt(JWT_SECRET, SECRET_PATH, keys, "old")))
    assert config.consumers[0].credentials["jwt_secrets"][0].secret == JWT_SECRET


def test_a_value_moved_to_another_field_is_refused_at_its_new_path(keys: Keyring) -> None:
    """The attacker's test: a ciphertext copied from a harmless field into the jwt secret."""
    moved = encrypt(JWT_SECRET, "services[0].url", keys)
    with pytest.raises(ConfigError) as exc:
        load_config(_config(moved))
    errors = _errors(exc)
    assert "a value encrypted for another field" in errors[SECRET_PATH]
    assert JWT_SECRET not in str(exc.value)


def test_a_flipped_bit_is_a_config_error_naming_the_path(keys: Keyring) -> None:
    token = encrypt(JWT_SECRET, SECRET_PATH, keys)
    prefix, body = token[:-1].rsplit(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[20] ^= 0x01
    with pytest.raises(ConfigError) as exc:
        load_config(_config(f"{prefix}:{base64.b64encode(bytes(raw)).decode()}}}"))
    assert "cannot decrypt with key 'new'" in _errors(exc)[SECRET_PATH]
    assert JWT_SECRET not in str(exc.value)


def test_an_unknown_key_id_a_wrong_key_and_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    other = Keyring((new_key("gone"),))
    token = encrypt(JWT_SECRET, SECRET_PATH, other)
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(new_key("k1")))
    with pytest.raises(ConfigError) as exc:
        load_config(_config(token))
    assert "key id 'gone', which is not among the secret keys (k1)" in _errors(exc)[SECRET_PATH]
    # The same id with another key: a wrong key.
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(new_key("gone")))
    with pytest.raises(ConfigError) as exc:
        load_config(_config(token))
    assert "a wrong key" in _errors(exc)[SECRET_PATH]
    monkeypatch.delenv("GATEKEEP_SECRET_KEYS")
    with pytest.raises(ConfigError) as exc:
        load_config(_config(token))
    assert "set GATEKEEP_SECRET_KEYS or GATEKEEP_SECRET_KEY_FILE" in _errors(exc)[SECRET_PATH]


def test_a_malformed_value_and_a_bad_keyring_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", "k1:not base64!")
    with pytest.raises(ConfigError) as exc:
        load_config(_config("{enc:v1:k1:AAAA}"))
    assert "GATEKEEP_SECRET_KEYS" in _errors(exc)[SECRET_PATH]
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(new_key("k1")))
    with pytest.raises(ConfigError) as exc:
        load_config(_config("{enc:v2:k1:AAAA}"))
    assert "malformed" in _errors(exc)[SECRET_PATH]
    with pytest.raises(ConfigError) as exc:
        load_config(_config("{enc:v1:k1:AAAA}"))
    assert "too short" in _errors(exc)[SECRET_PATH]


def test_a_decrypted_value_is_a_literal_not_a_reference(keys: Keyring) -> None:
    os.environ.setdefault("HOME", "/")
    config = load_config(_config(encrypt("{env://HOME}", SECRET_PATH, keys)))
    assert config.consumers[0].credentials["jwt_secrets"][0].secret == "{env://HOME}"


def test_an_error_about_a_decrypted_value_does_not_quote_it(keys: Keyring) -> None:
    data = _config("s")
    data["services"][0]["retries"] = encrypt(JWT_SECRET, "services[0].retries", keys)
    with pytest.raises(ConfigError) as exc:
        load_config(data)
    assert "services[0].retries" in _errors(exc) and JWT_SECRET not in str(exc.value)


def test_no_keys_are_needed_without_encrypted_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", "broken")
    load_config(_config("plain"))


# -- the CLI ----------------------------------------------------------------------------------


def test_keygen_prints_a_usable_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secret", "keygen", "--id", "k2027"]) == 0
    line = capsys.readouterr().out.strip()
    ring = Keyring.parse(line, "keygen")
    assert ring.newest.id == "k2027"
    assert main(["secret", "keygen"]) == 0
    assert re.fullmatch(r"k\d{8}T\d{6}Z:[A-Za-z0-9+/]{43}=", capsys.readouterr().out.strip())


def test_encrypt_reads_the_value_from_stdin(
    keys: Keyring, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(JWT_SECRET + "\n"))
    assert main(["secret", "encrypt", "--path", SECRET_PATH]) == 0
    out = capsys.readouterr().out.strip()
    assert JWT_SECRET not in out and out.startswith("{enc:v1:new:")
    assert decrypt(out, SECRET_PATH, keys) == JWT_SECRET
    monkeypatch.setattr(sys, "stdin", io.StringIO(JWT_SECRET))
    assert main(["secret", "encrypt", "--path", SECRET_PATH, "--key-id", "old"]) == 0
    assert capsys.readouterr().out.startswith("{enc:v1:old:")


def test_encrypt_refuses_a_bad_path_an_empty_value_and_no_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(new_key("k1")))
    monkeypatch.setattr(sys, "stdin", io.StringIO("x"))
    assert main(["secret", "encrypt", "--path", "a..b"]) == 1
    assert "not a config path" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["secret", "encrypt", "--path", "a"]) == 1
    assert "nothing to encrypt" in capsys.readouterr().err
    monkeypatch.delenv("GATEKEEP_SECRET_KEYS")
    monkeypatch.setattr(sys, "stdin", io.StringIO("x"))
    assert main(["secret", "encrypt", "--path", "a"]) == 1
    assert "no secret keys" in capsys.readouterr().err


def _toml(secret: str, password: str, redis_port: int = 6379, url: str = "http://127.0.0.1:9") -> str:
    return f"""\
# orders gateway -- keep this comment
[[services]]
name = "api"   # trailing comment
url = "{url}"

  [[services.routes]]
  name = "api"
  paths = ["/"]

[[plugins]]
name = "jwt"

[[plugins]]
name = "rate-limiting"

  [plugins.config]
  minute = 100
  policy = "redis"
  fault_tolerant = false

  [plugins.config.redis]
  host = "127.0.0.1"
  port = {redis_port}
  username = "gk-secrets"
  password = "{password}"

[[consumers]]
username = "alice"
jwt_secrets = [ {{ key = "alice-iss", secret = '{secret}' }} ]
"""


PASSWORD_PATH = "plugins[1].config.redis.password"


def test_check_passes_without_showing_the_secrets(
    keys: Keyring, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        _toml(encrypt(JWT_SECRET, SECRET_PATH, keys), encrypt(REDIS_PASSWORD, PASSWORD_PATH, keys))
    )
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr()
    assert "ok" in out.out
    for text in (out.out, out.err):
        assert JWT_SECRET not in text and REDIS_PASSWORD not in text


def test_check_reports_a_flipped_bit_with_its_path_and_no_traceback(
    keys: Keyring, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = encrypt(REDIS_PASSWORD, PASSWORD_PATH, keys)
    i = token.rindex(":") + 10
    flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
    path = tmp_path / "gateway.toml"
    path.write_text(_toml(encrypt(JWT_SECRET, SECRET_PATH, keys), flipped))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{PASSWORD_PATH}: cannot decrypt" in err
    assert "Traceback" not in err and REDIS_PASSWORD not in err and JWT_SECRET not in err


def test_rotate_re_encrypts_under_the_newest_key_and_keeps_every_other_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = Keyring((new_key("2026"),))
    path = tmp_path / "gateway.toml"
    jwt_value = encrypt(JWT_SECRET, SECRET_PATH, old)
    before = _toml(jwt_value, encrypt(REDIS_PASSWORD, PASSWORD_PATH, old))
    path.write_text(before)
    path.chmod(0o640)
    newest = new_key("2027")
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(*old.keys, newest))
    assert main(["secret", "rotate", str(path)]) == 0
    assert "2 value(s) re-encrypted with key '2027'" in capsys.readouterr().out
    after = path.read_text()
    assert "{enc:v1:2026:" not in after and after.count("{enc:v1:2027:") == 2
    enc = re.compile(r"\{enc:v1:[^}]*\}")
    assert enc.sub("ENC", after) == enc.sub("ENC", before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["gateway.toml"]  # no temporary file left
    # The old key can go now.
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(newest))
    config = load_config(path)
    assert config.consumers[0].credentials["jwt_secrets"][0].secret == JWT_SECRET
    assert main(["secret", "rotate", str(path)]) == 0
    assert "already uses key '2027'" in capsys.readouterr().out


def test_rotate_changes_nothing_when_a_value_cannot_be_decrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = Keyring((new_key("a"), new_key("b")))
    path = tmp_path / "gateway.toml"
    text = _toml(encrypt(JWT_SECRET, SECRET_PATH, ring, "a"), encrypt(REDIS_PASSWORD, SECRET_PATH, ring, "a"))
    path.write_text(text)
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(*ring.keys))
    assert main(["secret", "rotate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{PASSWORD_PATH}: cannot decrypt" in err and "nothing changed" in err
    assert REDIS_PASSWORD not in err
    assert path.read_text() == text
    assert main(["secret", "rotate", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


# -- serving ----------------------------------------------------------------------------------


@pytest.fixture
def redis_user(redis_url: str) -> Any:
    """A Redis ACL user ``gk-secrets`` with ``REDIS_PASSWORD`` (the default user is left alone)."""
    client = redis.Redis.from_url(redis_url)
    client.execute_command("ACL", "SETUSER", "gk-secrets", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all")
    try:
        yield client
    finally:
        client.execute_command("ACL", "DELUSER", "gk-secrets")
        client.close()


def _token(secret: str = JWT_SECRET) -> str:
    return jwt.encode({"iss": "alice-iss", "exp": int(time.time()) + 300}, secret, algorithm="HS256")


@pytest.mark.anyio
async def test_a_gateway_uses_the_decrypted_jwt_secret_and_redis_password(
    keys: Keyring, redis_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = redis_user.connection_pool.connection_kwargs["port"]
    data = tomllib.loads(
        _toml(
            encrypt(JWT_SECRET, SECRET_PATH, keys),
            encrypt(REDIS_PASSWORD, PASSWORD_PATH, keys),
            port,
            "{upstream}",
        )
    )
    data["plugins"].append({"name": "prometheus"})
    async with gateway_for(data) as gw:
        ok = await gw.client.get("/orders", headers={"authorization": f"Bearer {_token()}"})
        assert ok.status == 200, ok.text
        assert ok.header("x-ratelimit-remaining-minute") == "99"  # counted in Redis, as gk-secrets
        assert (await gw.client.get("/orders")).status == 401
        metrics = await gw.client.get("/metrics")
        assert JWT_SECRET not in metrics.text and REDIS_PASSWORD not in metrics.text
        assert JWT_SECRET not in repr(gw.gateway.config) and REDIS_PASSWORD not in repr(gw.gateway.config)
    for record in caplog.records:
        assert JWT_SECRET not in record.getMessage() and REDIS_PASSWORD not in record.getMessage()


@pytest.mark.timeout(60)
def test_gatekeep_serve_with_encrypted_values(keys: Keyring, redis_user: Any, tmp_path: Path) -> None:
    import urllib.request

    from tests._servers import upstream_thread

    port = redis_user.connection_pool.connection_kwargs["port"]
    with upstream_thread(gatekeep.testing.EchoUpstream()) as upstream:
        path = tmp_path / "gateway.toml"
        path.write_text(
            _toml(
                encrypt(JWT_SECRET, SECRET_PATH, keys),
                encrypt(REDIS_PASSWORD, PASSWORD_PATH, keys),
                port,
                f"http://127.0.0.1:{upstream}",
            )
        )
        gw_port = free_port()
        argv = [sys.executable, "-m", "gatekeep", "serve", str(path), "--port", str(gw_port)]
        argv += ["--log-level", "debug", "--access-log"]
        env = {"GATEKEEP_SECRET_KEYS": os.environ["GATEKEEP_SECRET_KEYS"]}
        with running("gatekeep", "", app_dir=tmp_path, argv=argv, port=gw_port, env=env) as (proc, _):
            request = urllib.request.Request(
                f"http://127.0.0.1:{gw_port}/orders", headers={"authorization": f"Bearer {_token()}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
            log = proc.log()
        assert JWT_SECRET not in log and REDIS_PASSWORD not in log


def test_the_docs_example_runs() -> None:
    assert run_python_blocks("secrets.md") == ["test_encrypted_values"]


@pytest.mark.anyio
async def test_admin_api_reads_never_show_a_decrypted_value(keys: Keyring) -> None:
    import httpx

    from gatekeep import AdminAPI, AdminSettings, serve_admin
    from gatekeep.configsource import MemoryStore

    upstream_url = "http://user:" + REDIS_PASSWORD + "@127.0.0.1:9"
    data = tomllib.loads(
        _toml(encrypt(JWT_SECRET, SECRET_PATH, keys), encrypt(REDIS_PASSWORD, PASSWORD_PATH, keys))
    )
    data["services"][0]["url"] = encrypt(upstream_url, "services[0].url", keys)
    settings = AdminSettings(listen=f"127.0.0.1:{free_port()}")
    api = AdminAPI(MemoryStore(data), settings=settings)
    async with serve_admin(api, settings) as (host, port):
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            for path in ("/services", "/services/api", "/plugins", "/consumers", "/consumers/alice/jwt", "/"):
                r = await client.get(path)
                assert r.status_code in (200, 404), (path, r.text)
                assert JWT_SECRET not in r.text and REDIS_PASSWORD not in r.text, path


def test_rotate_a_json_config_and_refuse_an_escaped_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    old, newest = new_key("a"), new_key("b")
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", _env_value(old, newest))
    ring = Keyring((old,))
    data = _config(encrypt(JWT_SECRET, SECRET_PATH, ring))
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(data, indent=2))
    assert main(["secret", "rotate", str(path)]) == 0
    rotated = json.loads(path.read_text())
    value = rotated["consumers"][0]["jwt_secrets"][0]["secret"]
    assert value.startswith("{enc:v1:b:") and decrypt(value, SECRET_PATH, Keyring((newest,))) == JWT_SECRET
    # JSON may escape "/" as "\/": such a value is not found as written, and nothing changes.
    token = encrypt("x" * 40, SECRET_PATH, ring)
    while "/" not in token:
        token = encrypt("x" * 40, SECRET_PATH, ring)
    escaped = json.dumps(_config(token)).replace("/", "\\/")
    path.write_text(escaped)
    assert main(["secret", "rotate", str(path)]) == 1
    assert "not found as written" in capsys.readouterr().err
    assert path.read_text() == escaped
