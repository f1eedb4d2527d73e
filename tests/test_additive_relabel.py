"""The relabel recipe (``recipes/additive_relabel.py``): a hard margin on every kept sample, reduced run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "additive_relabel.py"


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("additive_relabel_recipe", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def reference_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One sample at a time: the label's logit minus the largest logit of another class."""
    out = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        out.append(row[label] - max(v for c, v in enumerate(row) if c != label))
    return torch.tensor(out, dtype=logits.dtype)


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_class_margins_match_reference(recipe: ModuleType, num_classes: int) -> None:
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(50, num_classes, generator=g, dtype=torch.float64)
    logits[0] = 1.0  # ties: margin 0, not the strict prediction
    labels = torch.randint(0, num_classes, (50,), generator=g)
    margins = recipe.class_margins(logits, labels)
    torch.testing.assert_close(margins, reference_margins(logits, labels))
    assert margins[0] == 0
    assert torch.equal(margins > 0, (logits.argmax(1) == labels) & (margins != 0))


def test_config_refuses_bad_values(recipe: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"`margin` must be > 0, got -1.*HINT:"):
        recipe.HardMarginConfig(margin=-1.0)
    with pytest.raises(ValueError, match=r"`rho_growth` must be >= 1.*HINT:"):
        recipe.HardMarginConfig(rho_growth=0.5)


def test_reduced_run_keeps_every_other_prediction(recipe: ModuleType) -> None:
    torch.manual_seed(0)
    config = recipe.HardMarginConfig(max_steps=2000, polish_steps=100)
    rows = recipe.run([5, 10], seeds=[0], side=(None, 3, (24, 24)), config=config, num_train=300)
    for row in rows:
        assert not row["hit_step_cap"] and row["violations_left"] == 0
        assert row["flipped"] == row["N"]
        assert row["train_others"] == 300 - row["N"]
        assert row["train_others_changed"] == 0
        assert row["min_margin_kept"] > config.margin - 1e-4  # the hard margin, checked by a fresh forward
        assert row["side_params"] < row["base_params"] == 2650
        assert row["neurons"] == 48 and row["ftc_formula_m"] == (49 if row["N"] == 5 else 59)
