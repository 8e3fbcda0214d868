"""Which plugin class a config's plugin name means: entry points, plus classes given in code.

Theory of operation
-------------------

Installed plugins are found through the entry-point group ``gatekeep.plugins``
(``gatekeep.filters``, the name of one release ago, is still read); the
built-in ones register through the same group, and nothing here imports
them.  Entry points are a fact of the Python environment, so they are read
once per process and each class is loaded on first use.

Classes given in code belong to one gateway: ``Gateway(config,
plugins=[MyPlugin])`` and ``load_config(config, plugins=[MyPlugin])`` build a
``PluginRegistry`` over them, which answers before the entry points, so two
gateways of one process may give different classes one name.
``register_filter`` (process-wide) is kept for one release and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs

__all__ = [
    "ENTRY_POINT_GROUP",
    "OLD_ENTRY_POINT_GROUP",
    "CredentialOwner",
    "PluginRegistry",
    "available_filters",
    "available_plugins",
    "credential_owners",
    "load_filter_class",
    "register_filter",
]

ENTRY_POINT_GROUP = "gatekeep.plugins"
# Read too, for one release: the group's name before "plugin" became the one word.
OLD_ENTRY_POINT_GROUP = "gatekeep.filters"

_registry_cache: dict[str, Any] | None = None
# Classes registered process-wide with the deprecated ``register_filter``; they survive a refresh.
_registered: dict[str, Any] = {}


def _entry_points() -> Sequence[EntryPoint]:
    """The one place that reads the entry points: ``gatekeep.plugins``, then ``gatekeep.filters``."""
    return (*entry_points(group=ENTRY_POINT_GROUP), *entry_points(group=OLD_ENTRY_POINT_GROUP))


def available_plugins(refresh: bool = False) -> Mapping[str, Any]:
    """Installed plugins by name: entry points of ``gatekeep.plugins`` (or the old ``gatekeep.filters``).

    Values are entry points until a class was loaded, then the class.
    Built-in plugins are registered through the same group by gatekeep's own
    package metadata, so a source checkout must be installed (``pip install
    -e .``) for them to be found.  Classes given to ``register_filter``
    (deprecated) come last and win.
    """
    global _registry_cache
    if _registry_cache is not None and not refresh:
        return _registry_cache
    found: dict[str, Any] = {}
    for ep in _entry_points():
        found.setdefault(ep.name, ep)
    found.update(_registered)
    _registry_cache = found
    return found


# The name of one release ago.
available_filters = available_plugins


def load_filter_class(name: str) -> Any:
    """The installed plugin class registered as ``name`` (entry points, loaded once).

    Raises:
        KeyError: no such plugin is installed.
    """
    registry = available_plugins()
    obj = registry[name]
    if hasattr(obj, "load") and not isinstance(obj, type):
        cls = obj.load()
        registry[name] = cls  # type: ignore[index]
        return cls
    return obj


def register_filter(cls: Any, name: str | None = None) -> None:
    """Deprecated: register a plugin class for the whole process.

    Give the class to the gateway instead: ``Gateway(config, plugins=[cls])``
    (and ``load_config(config, plugins=[cls])`` to check a config).
    """
    warnings.warn(
        "register_filter is deprecated: pass the class as Gateway(config, plugins=[...])",
        DeprecationWarning,
        stacklevel=2,
    )
    global _registry_cache
    _registered[name or cls.name] = cls
    _registry_cache = None


@attrs.frozen
class CredentialOwner:
    """A plugin that declares a consumer credential field, and the class of one entry."""

    filter: str
    type: type[Any]


class PluginRegistry:
    """The plugin classes one gateway can name: those given to it, then the installed ones.

    Args:
        plugins: plugin classes (each with its ``name``), e.g. a plugin under
            development or one private to an application.
    """

    def __init__(self, plugins: Iterable[type[Any]] = ()) -> None:
        self.given: dict[str, type[Any]] = {}
        for cls in plugins:
            name = getattr(cls, "name", "")
            if not isinstance(cls, type) or not isinstance(name, str) or not name:
                raise TypeError(f"plugins= takes plugin classes with a 'name', got {cls!r}")
            self.given[name] = cls

    def names(self) -> frozenset[str]:
        """Every plugin name this registry knows."""
        return frozenset(self.given) | frozenset(available_plugins())

    def __contains__(self, name: object) -> bool:
        return name in self.given or name in available_plugins()

    def load(self, name: str) -> Any:
        """The class named ``name``.

        Raises:
            KeyError: no such plugin is given or installed.
        """
        cls = self.given.get(name)
        return cls if cls is not None else load_filter_class(name)

    def credential_owners(self) -> tuple[dict[str, list[CredentialOwner]], dict[str, str]]:
        """Consumer credential fields declared by the known plugins (``consumer_credentials``).

        Returns ``(owners by field, load errors by plugin name)``: every known
        plugin class is loaded to read its declaration, and one that fails to
        load is reported instead of failing the lookup (so that a broken
        package that owns no field the config uses costs nothing).  A field
        may have several owners when two plugins declare it; the config loader
        refuses that when the field is used.
        """
        owners: dict[str, list[CredentialOwner]] = {}
        broken: dict[str, str] = {}
        for name in sorted(self.names()):
            try:
                cls = self.load(name)
            except Exception as exc:  # a broken third-party package
                broken[name] = repr(exc)
                continue
            declared = getattr(cls, "consumer_credentials", None)
            if not isinstance(declared, Mapping):
                continue
            for field, tp in declared.items():
                found = owners.setdefault(str(field), [])
                if all(o.type is not tp for o in found):
                    found.append(CredentialOwner(name, tp))
        return owners, broken


# The installed plugins only (no classes given in code).
INSTALLED = PluginRegistry()


def credential_owners() -> tuple[dict[str, list[CredentialOwner]], dict[str, str]]:
    """Consumer credential fields declared by installed plugins (see ``PluginRegistry``)."""
    return INSTALLED.credential_owners()
