"""The layers hold: no import cycle in ``gatekeep/``, and the core never imports a plugin.

The import graph is read from the source with ``ast``, not from a running
interpreter, so an import nobody has executed yet counts too.  Its edges:

* every ``import`` and ``from ... import`` of a ``gatekeep`` module, at any
  level of the file: inside functions (deferred imports) and inside
  ``if TYPE_CHECKING:`` blocks alike.  A type-only import is still a
  dependency of the design (the type checker follows it, and a reader must
  know the other module to read this one), so hiding a cycle behind
  ``TYPE_CHECKING`` does not break it;
* ``from package import name`` is an edge to ``package.name`` when that is a
  module, else to ``package``;
* importing ``gatekeep.a.b.c`` runs ``gatekeep/a/__init__.py`` and
  ``gatekeep/a/b/__init__.py`` first, so it is also an edge to each enclosing
  package that does not enclose the importer -- except the root ``gatekeep``
  package: every module's import runs it, and it is the facade that
  re-exports the public API, not a layer.  An explicit ``import gatekeep`` or
  ``from gatekeep import ...`` is an edge to it like any other.

Layers (DESIGN.md): the operate layer (``cli``, ``__main__``, the demo,
``testing``) may import plugins; nothing else below ``gatekeep.plugins``
may.  Plugins themselves use only the public SDK and the shared libraries.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

import gatekeep
from gatekeep import ConfigError, Gateway, load_config

ROOT = Path(gatekeep.__file__).resolve().parent
PLUGINS = "gatekeep.plugins"
# The operate layer (DESIGN.md "Layers"): allowed to import plugins, though none does today.
OPERATE = ("gatekeep.cli", "gatekeep.__main__", "gatekeep.demo", "gatekeep.testing")
# What a built-in plugin may import: the public SDK and the libraries plugins share.
PLUGIN_MAY_IMPORT = (
    "gatekeep",
    "gatekeep.validators",
    "gatekeep.auth",
    "gatekeep.authz",
    "gatekeep.observability",
    "gatekeep.ratelimit",
    "gatekeep.cache",
    "gatekeep.transform",
)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of ``gatekeep/``: dotted name -> (file, is a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


MODULES = _modules()


def _named(target: str) -> str | None:
    """The module an imported dotted name lives in (``gatekeep.x.Name`` -> ``gatekeep.x``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _imported(module: str) -> Iterator[str]:
    """The dotted names ``module`` imports, relative imports resolved."""
    path, is_package = MODULES[module]
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in MODULES else base


def _edges(module: str) -> set[str]:
    edges: set[str] = set()
    for name in _imported(module):
        if name != "gatekeep" and not name.startswith("gatekeep."):
            continue
        target = _named(name)
        if target is None or target == module:
            continue
        edges.add(target)
        parts = target.split(".")
        for n in range(2, len(parts)):  # enclosing packages, not the root
            parent = ".".join(parts[:n])
            if not (module == parent or module.startswith(parent + ".")):
                edges.add(parent)
    return edges


GRAPH: dict[str, set[str]] = {m: _edges(m) for m in MODULES}


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _within(module: str, packages: Sequence[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_is_read_from_every_kind_of_import() -> None:
    # A deferred import, a TYPE_CHECKING import and an enclosing package are all edges.
    assert "gatekeep._upstream._httptools_codec" in GRAPH["gatekeep._upstream._codec_choice"]  # in a function
    assert "gatekeep._protocols" in GRAPH["gatekeep._filter"]  # under TYPE_CHECKING only
    assert "gatekeep.discovery" in GRAPH["gatekeep._config"]  # runs discovery/__init__.py
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_there_is_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    report = [
        " <-> ".join(component)
        + "\n"
        + "\n".join(f"    {a} -> {b}" for a in component for b in sorted(GRAPH[a]) if b in component)
        for component in cycles
    ]
    assert not cycles, "import cycles in gatekeep/:\n" + "\n".join(report)


def test_the_core_never_imports_a_plugin() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if not _within(module, (PLUGINS, *OPERATE))
        for target in targets
        if _within(target, (PLUGINS,))
    )
    assert not wrong, "core modules importing plugins:\n" + "\n".join(wrong)


def test_plugins_use_only_the_public_sdk_and_the_shared_libraries() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _within(module, (PLUGINS,)) and module != PLUGINS
        for target in targets
        if target not in PLUGIN_MAY_IMPORT
    )
    assert not wrong, "plugins importing private modules:\n" + "\n".join(wrong)


# -- discovered through entry points ---------------------------------------------------------


def _declared_entry_points() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())
    declared: dict[str, str] = pyproject["project"]["entry-points"]["gatekeep.plugins"]
    return declared


def test_every_built_in_plugin_is_an_entry_point_and_nothing_else_registers_it() -> None:
    declared = _declared_entry_points()
    plugin_modules = {m for m in MODULES if m.startswith(PLUGINS + ".")}
    assert {target.partition(":")[0] for target in declared.values()} == plugin_modules
    installed = {ep.name: ep.value for ep in entry_points(group="gatekeep.plugins")}
    stale = {name: target for name, target in declared.items() if installed.get(name) != target}
    assert not stale, "installed metadata is stale: run `pip install -e . --no-deps`"
    for name in declared:
        assert gatekeep.available_filters()[name] is not None


@pytest.fixture
def without_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Entry points minus the names added to the yielded set (the registry is refreshed)."""
    from gatekeep import _registry

    removed: set[str] = set()
    everything = _registry._entry_points()

    def lookup() -> Sequence[EntryPoint]:
        return tuple(ep for ep in everything if ep.name not in removed)

    monkeypatch.setattr(_registry, "_entry_points", lookup)
    try:
        yield removed
    finally:
        monkeypatch.undo()
        gatekeep.available_filters(refresh=True)


def _config(**extra: object) -> dict[str, object]:
    return {
        "services": [{"name": "up", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        **extra,
    }


def test_a_plugin_removed_from_the_entry_points_is_unknown_and_the_core_does_not_miss_it(
    without_plugins: set[str],
) -> None:
    without_plugins.update({"rate-limiting", "jwt"})
    installed = gatekeep.available_filters(refresh=True)
    assert "rate-limiting" not in installed
    assert "correlation-id" in installed

    # The gateway builds with the other built-ins ...
    gateway = Gateway(_config(plugins=[{"name": "correlation-id"}, {"name": "key-auth"}]))
    assert [f.name for f in gateway.filters] == ["correlation-id", "key-auth"]

    # ... a config naming the missing one gets the unknown-plugin error ...
    with pytest.raises(ConfigError) as refused:
        load_config(_config(plugins=[{"name": "rate-limiting", "config": {"second": 5}}]))
    (error,) = refused.value.errors
    assert error.path == "plugins[0].name"
    assert error.message.startswith("unknown filter 'rate-limiting'; installed: ")

    # ... and the core keeps no credential field of its own: without jwt, jwt_secrets is unknown.
    with pytest.raises(ConfigError) as refused:
        load_config(_config(consumers=[{"username": "a", "jwt_secrets": [{"key": "k", "secret": "s"}]}]))
    (error,) = refused.value.errors
    assert error.path == "consumers[0].jwt_secrets"
    assert "keyauth_credentials" in error.message and "jwt_secrets" not in error.message


def test_the_core_serves_requests_with_the_plugins_package_unimportable(tmp_path: Path) -> None:
    # A fresh interpreter in which ``gatekeep.plugins`` cannot be imported at all: the core
    # still imports, builds a gateway and proxies; a config naming a built-in is refused.
    script = textwrap.dedent(
        """
        import importlib.abc
        import sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "gatekeep.plugins" or name.startswith("gatekeep.plugins."):
                    raise ImportError(f"{name} is blocked by the test")
                return None

        sys.meta_path.insert(0, Refuse())

        import anyio
        import gatekeep
        from gatekeep.testing import gateway_for

        async def main():
            async with gateway_for() as gw:
                answer = await gw.client.get("/hello")
                assert answer.status == 200, answer.status
                assert answer.json()["path"] == "/hello"

        anyio.run(main)
        try:
            gatekeep.load_config({"services": [], "plugins": [{"name": "jwt"}]})
        except gatekeep.ConfigError as exc:
            (error,) = exc.errors
            assert error.path == "plugins[0].name" and "failed to load" in error.message, error
        else:
            raise AssertionError("a blocked built-in loaded")
        assert not [m for m in sys.modules if m.startswith("gatekeep.plugins")]
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
