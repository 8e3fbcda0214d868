"""``docs/reference/`` is generated from the config classes and cannot drift (issue 13, point 4);
field names agree across plugins, the old spellings still load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gatekeep import ConfigError, load_config
from gatekeep._reference import builtin_plugins, main, pages
from tests.test_auth_verifier import RSA, pem

ROOT = Path(__file__).resolve().parent.parent


def test_the_checked_in_reference_is_what_the_classes_say(capsys: pytest.CaptureFixture[str]) -> None:
    # Fails when a config class changed without `python -m gatekeep._reference` (CI catches drift).
    code = main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_regenerating_writes_the_same_files(tmp_path: Path) -> None:
    (tmp_path / "gone.md").write_text("a page of a plugin that no longer exists\n")
    assert main(["--out", str(tmp_path)]) == 0
    generated = pages()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(generated)  # gone.md removed
    for page in tmp_path.iterdir():
        assert page.read_text() == generated[page.name]
    assert main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "jwt.md").write_text("edited by hand\n")
    assert main(["--check", "--out", str(tmp_path)]) == 1


def test_every_built_in_plugin_and_the_core_tables_have_a_page() -> None:
    generated = pages()
    for name in builtin_plugins():
        assert f"{name}.md" in generated
        assert f"[`{name}`]({name}.md)" in generated["README.md"]
    assert {"gateway.md", "service.md", "route.md", "consumer.md"} <= set(generated)
    jwt = generated["jwt.md"]
    # Type, default, Kong equivalent and meaning of a field, from the class and its comment.
    assert (
        '| `key_claim_name` | string | `"iss"` | `key_claim_name` | '
        "The claim that names a consumer's jwt_secrets entry (by its key). |"
    ) in jwt
    assert "| `roles_claims` (also `roles_claim`) | array of string |" in jwt
    assert "## Consumer credentials: `consumers[].jwt_secrets`" in jwt
    assert "| `rsa_public_key` (also `pem`) | string | — | `rsa_public_key` |" in jwt
    assert "| `connect_timeout` | integer | `60000` | `connect_timeout` |" in generated["service.md"]
    assert "| `jwt_secrets` | [jwt](jwt.md) |" in generated["consumer.md"]


def test_the_plugin_guides_priority_table_lists_exactly_the_built_in_plugins() -> None:
    # docs/plugins.md step 3: a table that names a plugin that does not exist misleads its reader.
    guide = (ROOT / "docs" / "plugins.md").read_text()
    section = guide.split("## 3. Priorities", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+)` \| (\d+) \|", section, re.MULTILINE)
    expected = {name: cls.priority for name, cls in builtin_plugins().items()}
    expected["cors"] = 2000  # the guide's worked example, plugins/gatekeep-cors
    assert {name: int(p) for name, p in rows} == expected
    assert [int(p) for _, p in rows] == sorted((int(p) for _, p in rows), reverse=True)


# -- one name per concept; the other spelling still loads ----------------------------------------

URL = "http://127.0.0.1:9"


def _with(plugin: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "services": [{"name": "s", "url": URL, "routes": [{"paths": ["/"]}]}],
        "plugins": [plugin],
        **extra,
    }


def test_jwt_claim_paths_are_named_as_rbac_names_them_and_the_old_names_load() -> None:
    from gatekeep._config import plugin_config

    old = _with({"name": "jwt", "config": {"roles_claim": ["realm_access.roles"], "consumer_claim": ["azp"]}})
    config = plugin_config(load_config(old).plugins[0])
    assert config.roles_claims == ("realm_access.roles",)
    assert config.consumer_claims == ("azp",)
    rbac = _with({"name": "rbac", "config": {"rules": [{"any_of": ["a"]}], "roles_claim": ["groups"]}})
    assert plugin_config(load_config(rbac).plugins[0]).roles_claims == ("groups",)


def test_both_spellings_at_once_are_refused_with_the_path() -> None:
    both = _with({"name": "jwt", "config": {"roles_claims": ["a"], "roles_claim": ["b"]}})
    with pytest.raises(ConfigError) as caught:
        load_config(both)
    assert [str(e) for e in caught.value.errors] == [
        "plugins[0].config.roles_claim: is another name of 'roles_claims'; set one of them"
    ]


def test_a_pem_is_a_pem_in_static_keys_and_consumer_credentials_alike() -> None:
    key = pem(RSA)
    static = _with({"name": "jwt", "config": {"keys": [{"algorithm": "RS256", "rsa_public_key": key}]}})
    load_config(static)
    credential = _with(
        {"name": "jwt"},
        consumers=[{"username": "a", "jwt_secrets": [{"key": "a", "algorithm": "RS256", "pem": key}]}],
    )
    (secret,) = load_config(credential).consumers[0].credentials["jwt_secrets"]
    assert secret.rsa_public_key == key
