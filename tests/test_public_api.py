"""The public API: every part imports from ``lightning_reuse``; the docs, README and recipes use those paths.

Each lazy package ``__init__`` declares its public names once (``_NAMES``); its ``__all__`` and its
``TYPE_CHECKING`` block (what type checkers read) must say the same, and every name must resolve.
"""

from __future__ import annotations

import ast
import importlib
import re
import warnings
from pathlib import Path

import pytest

import lightning_reuse

REPO = Path(lightning_reuse.__file__).resolve().parents[1]
PACKAGE = REPO / "lightning_reuse"
LAZY_PACKAGES = sorted(
    ".".join(p.relative_to(REPO).parent.parts)
    for p in PACKAGE.rglob("__init__.py")
    if "_NAMES" in p.read_text()
)
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RECIPES = sorted((REPO / "recipes").glob("*.py")) + sorted((REPO / "recipes").glob("*.yaml"))


def _type_checking_imports(package: str) -> dict[str, str]:
    path = REPO / package.replace(".", "/") / "__init__.py"
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), ast.unparse(imp)
                found.update({a.name: imp.module or "" for a in imp.names})
    return found


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_all_and_type_checking_block_match_the_lazy_names(package: str) -> None:
    module = importlib.import_module(package)
    names = {n: package + m if m.startswith(".") else m for n, m in module._NAMES.items()}
    assert [n for n in module.__all__ if n != "__version__"] == list(names)
    assert _type_checking_imports(package) == names, "regenerate the TYPE_CHECKING block from _NAMES"
    for name, where in names.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            obj = getattr(module, name)
        assert obj is getattr(importlib.import_module(where), name)


def _python_imports(code: str) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(code)
    except SyntaxError:  # a fragment: read it line by line
        return [
            (m, n.strip())
            for m, names in re.findall(
                r"^\s*from (lightning_reuse[\w.]*) import ([\w, ]+)$", code, flags=re.M
            )
            for n in names.split(",")
            if n.strip()
        ]
    return [
        (node.module, a.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_reuse")
        for a in node.names
    ]


def _imported_names(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from lightning_reuse... import`` and ``class_path: lightning_reuse...``."""
    text = path.read_text()
    if path.suffix == ".py":
        return _python_imports(text)
    found = []
    if path.suffix == ".md":
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            found += _python_imports(block)
    for dotted in re.findall(r"(lightning_reuse(?:\.\w+)+)", text if path.suffix == ".yaml" else ""):
        module, _, name = dotted.rpartition(".")
        found.append((module, name))
    return found


SOURCES = {p.relative_to(REPO).as_posix(): _imported_names(p) for p in DOCUMENTS + RECIPES}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_name_the_docs_and_recipes_use_resolves_without_deprecation(source: str) -> None:
    assert SOURCES[source] or source.endswith(".md"), (
        f"{source} names no lightning_reuse import: checker broken?"
    )
    for module, name in SOURCES[source]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert hasattr(importlib.import_module(module), name), (
                f"{source}: {module}.{name} does not resolve"
            )


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_root_parts_are_imported_from_the_root(source: str) -> None:
    root = set(lightning_reuse._NAMES)
    deep = sorted({f"{m}.{n}" for m, n in SOURCES[source] if n in root and m != "lightning_reuse"})
    assert not deep, f"{source}: import these from `lightning_reuse` directly: {deep}"


def test_the_readme_parts_table_names_resolve_at_the_root() -> None:
    table = re.search(r"## The parts\n(.*?)\n\n", (REPO / "README.md").read_text(), flags=re.S)
    assert table, "the README lost its parts table"
    parts = set(re.findall(r"`(\w+)`", table.group(1)))
    assert len(parts) >= 12
    missing = sorted(p for p in parts if not hasattr(lightning_reuse, p))
    assert not missing, f"README parts not exported from lightning_reuse: {missing}"
