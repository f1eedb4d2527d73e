"""The package's layers and import graph: imports flow one way, with no cycle anywhere.

Layers, bottom to top (a module imports only from its own layer or below):

0. ``base``: ``__about__``, ``_lazy``, ``_warnings``.
1. ``core``: ``functional``, ``nn``, ``optim``, ``energy``, ``metrics`` (pure torch; no lightning import).
2. ``glue``: ``callbacks``, ``modules``, ``samples`` (Lightning glue and sample data/models), and the
   deprecated alias modules at the package root.
3. ``app``: ``demo``, ``cli``.

Every ``import`` counts, at module level or inside a function. ``from lightning_reuse.x import Name`` is
resolved through the package's lazy name map to the module that defines ``Name``; ``if TYPE_CHECKING:``
blocks are skipped (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_reuse

PACKAGE = Path(lightning_reuse.__file__).parent
ROOT = "lightning_reuse"
LAYERS: dict[str, int] = {
    "__about__": 0,
    "_lazy": 0,
    "_warnings": 0,
    "functional": 1,
    "nn": 1,
    "optim": 1,
    "energy": 1,
    "metrics": 1,
    "callbacks": 2,
    "modules": 2,
    "samples": 2,
    "data": 2,  # deprecated aliases (moved modules), one release
    "datasets": 2,
    "zoo": 2,
    "ledger": 2,
    "demo": 3,
    "cli": 3,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _lazy_names(package: str) -> dict[str, str]:
    """The ``_NAMES`` map of a package ``__init__`` (public name -> absolute module), read from its source."""
    path = MODULES.get(package)
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text()).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and target.id == "_NAMES" and isinstance(node.value, ast.Dict):
            return {
                k.value: package + v.value if v.value.startswith(".") else v.value
                for k, v in zip(node.value.keys, node.value.values)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
            }
    return {}


def _nodes_outside_type_checking(tree: ast.AST) -> list[ast.AST]:
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> dict[str, int]:
    """Package modules that ``module`` imports (anywhere in the file), with the line of the first import."""
    path = MODULES[module]
    found: dict[str, int] = {}
    for node in _nodes_outside_type_checking(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, path.name == "__init__.py", node)
            lazy = _lazy_names(source)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    targets.append(f"{source}.{alias.name}")
                else:
                    targets.append(lazy.get(alias.name, source))
        for target in targets:
            if target.split(".")[0] == ROOT and target in MODULES and target != module:
                found.setdefault(target, node.lineno)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 4  # the root package sits on top


GRAPH: dict[str, dict[str, int]] = {m: imports_of(m) for m in MODULES}


def test_every_top_level_module_has_a_layer() -> None:
    missing = sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYERS))
    assert not missing, f"Give these a layer in tests/test_layers.py (and the docstring): {missing}"


def test_imports_flow_down_the_layers() -> None:
    offenders = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {t} (layer {_layer(t)} above {_layer(m)})"
        for m, targets in GRAPH.items()
        for t, line in targets.items()
        if _layer(t) > _layer(m)
    ]
    assert not offenders, "Imports must flow down the layers:\n" + "\n".join(offenders)


def _find_cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in GRAPH[m]:
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(GRAPH):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle_anywhere() -> None:
    cycle = _find_cycle()
    assert cycle is None, "Import cycle (function-level imports count): " + " -> ".join(cycle or [])


def test_no_private_name_imported_across_subpackages() -> None:
    offenders = []
    for m, path in MODULES.items():
        for node in _nodes_outside_type_checking(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve(m, path.name == "__init__.py", node)
            if source.split(".")[0] != ROOT or source.split(".")[:2] == m.split(".")[:2]:
                continue
            if m.startswith(f"{ROOT}.metrics.") and source.startswith(f"{ROOT}.functional."):
                continue  # torchmetrics' mirrored trees: a Metric calls its functional's _update/_compute
            offenders += [
                f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {source}.{a.name}"
                for a in node.names
                if a.name.startswith("_") and a.name != "__version__"
            ]
    assert not offenders, "Use the other part's public API:\n" + "\n".join(offenders)


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path: Path) -> None:
    """The graph is read from every import statement, including those inside functions."""
    source = "def f():\n    from lightning_reuse.demo.pipeline import run_demo\n"
    tree = ast.parse(source)
    nodes = [n for n in _nodes_outside_type_checking(tree) if isinstance(n, ast.ImportFrom)]
    assert [n.module for n in nodes] == ["lightning_reuse.demo.pipeline"]
    skipped = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lightning_reuse.demo\n"
    )
    assert not [n for n in _nodes_outside_type_checking(skipped) if isinstance(n, ast.Import)]


@pytest.mark.parametrize(
    "module", ["lightning_reuse.callbacks.resque_check", "lightning_reuse.demo.pipeline"]
)
def test_graph_is_not_empty_for_modules_that_import_the_package(module: str) -> None:
    assert GRAPH[module], f"{module} imports package modules; the checker found none"
