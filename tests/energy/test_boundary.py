"""lightning_reuse.energy stays framework-free: no lightning/wandb import; codecarbon only inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_reuse.energy

ENERGY = Path(lightning_reuse.energy.__file__).parent


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node))
    return out


def test_energy_core_is_framework_free() -> None:
    offenders = []
    for path in sorted(ENERGY.glob("*.py")):
        tree = ast.parse(path.read_text())
        module_level = {id(n) for n in tree.body}
        for name, node in _imports(tree):
            root = name.split(".")[0]
            if root in ("lightning", "pytorch_lightning", "wandb"):
                offenders.append(f"{path.name}:{node.lineno} imports {name}")
            if root == "codecarbon" and id(node) in module_level:
                offenders.append(f"{path.name}:{node.lineno} imports codecarbon at module level")
    assert not offenders, "\n".join(offenders)
