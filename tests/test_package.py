"""Packaging, public names and the functional/nn/optim boundary (no lightning import there)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import lightning_reuse

PACKAGE = Path(lightning_reuse.__file__).parent
PURE_SUBPACKAGES = ("functional", "nn", "optim")
FORBIDDEN = ("lightning", "pytorch_lightning", "wandb", "codecarbon")


def test_version_and_typed() -> None:
    assert lightning_reuse.__version__.count(".") == 2
    assert (PACKAGE / "py.typed").exists()


@pytest.mark.parametrize("sub", PURE_SUBPACKAGES)
def test_pure_subpackages_do_not_import_lightning(sub: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.relative_to(PACKAGE)}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0] in FORBIDDEN
            ]
    assert not offenders, "functional/, nn/ and optim/ must stay pure torch:\n" + "\n".join(offenders)


def test_unknown_attribute_is_a_clear_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        lightning_reuse.Nope  # noqa: B018


def test_public_names_are_declared() -> None:
    assert set(lightning_reuse.__all__) >= {
        "FTP",
        "RESQUECheck",
        "NTKScreening",
        "EnergyMonitor",
        "AdditiveFineTuning",
        "ModelReprogramming",
        "ModelStitching",
    }


@pytest.mark.parametrize("name", sorted(lightning_reuse._NAMES))
def test_public_names_import(name: str) -> None:
    """Every declared public name has its module and resolves: a missing module fails, it is not skipped."""
    module = lightning_reuse._NAMES[name]
    path = PACKAGE / (module.strip(".").replace(".", "/") + ".py")
    assert path.exists(), f"`{name}` is declared in lightning_reuse._NAMES but {path} does not exist"
    assert getattr(lightning_reuse, name).__name__ == name
    assert getattr(importlib.import_module("lightning_reuse" + module), name) is getattr(
        lightning_reuse, name
    )
