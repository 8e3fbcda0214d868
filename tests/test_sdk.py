"""The plugin SDK's shape: one word ("plugin"), a config-generic base, public imports in tests."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import attrs
import pytest

import gatekeep
from gatekeep import BaseFilter, BasePlugin, NoConfig

ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class GreetingConfig:
    word: str = "hello"


class Greeting(BasePlugin[GreetingConfig]):
    name: ClassVar[str] = "greeting"


def test_the_config_class_is_derived_from_the_type_argument() -> None:
    assert Greeting.Config is GreetingConfig
    assert Greeting().config == GreetingConfig()
    assert Greeting(GreetingConfig("hi")).config.word == "hi"


def test_an_unparametrised_plugin_takes_no_config_and_the_old_name_is_the_same_class() -> None:
    class Bare(BaseFilter):
        name: ClassVar[str] = "bare"

    assert BaseFilter is BasePlugin
    assert Bare.Config is NoConfig

    class Declared(BasePlugin[GreetingConfig]):
        Config = GreetingConfig  # declaring it as well is allowed

    assert Declared.Config is GreetingConfig


def test_built_ins_are_parametrised_by_their_config() -> None:
    plugin = gatekeep.available_filters()
    for name in ("jwt", "key-auth", "rate-limiting", "cors", "otel"):
        cls = gatekeep._registry.load_filter_class(name)
        assert issubclass(cls, BasePlugin), name
        assert cls.Config is not NoConfig, name
        assert name in plugin


@pytest.fixture
def old_group_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed plugins, as if a third party still registered ``greeting`` in ``gatekeep.filters``."""
    from gatekeep import _registry

    everything = _registry._entry_points()
    old = EntryPoint("greeting", f"{__name__}:Greeting", _registry.OLD_ENTRY_POINT_GROUP)

    def lookup() -> Sequence[EntryPoint]:
        return (*everything, old)

    monkeypatch.setattr(_registry, "_entry_points", lookup)
    gatekeep.available_filters(refresh=True)
    try:
        yield
    finally:
        monkeypatch.undo()
        gatekeep.available_filters(refresh=True)


def test_the_old_entry_point_group_is_still_read(old_group_only: None) -> None:
    assert gatekeep._registry.ENTRY_POINT_GROUP == "gatekeep.plugins"
    config = gatekeep.load_config({"plugins": [{"name": "greeting", "config": {"word": "hi"}}]})
    gateway = gatekeep.Gateway(config)
    (plugin,) = gateway.filters
    assert isinstance(plugin, Greeting) and plugin.config.word == "hi"


# -- tests import public names ---------------------------------------------------------------


def _private_imports_of_public_names(path: Path) -> Iterator[str]:
    public = set(gatekeep.__all__)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        parts = node.module.split(".")
        if parts[0] != "gatekeep" or not any(p.startswith("_") for p in parts[1:]):
            continue
        for alias in node.names:
            if alias.name in public:
                yield f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}"


def test_tests_import_public_names_from_gatekeep() -> None:
    # A name that ``gatekeep`` exports is imported from ``gatekeep``, even by a test about the
    # private module that defines it: the test then also checks what users import.
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "plugins").glob("*/tests/*.py")]
    assert len(files) > 50
    wrong = [line for path in sorted(files) for line in _private_imports_of_public_names(path)]
    assert not wrong, "use `from gatekeep import ...` for public names:\n" + "\n".join(wrong)
