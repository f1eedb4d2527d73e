"""Modules moved in the restructuring keep their old import paths one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("lightning_reuse.datasets", "load_digits_tensors", "lightning_reuse.samples.digits"),
    ("lightning_reuse.data", "DigitsDataModule", "lightning_reuse.samples.datamodule"),
    ("lightning_reuse.zoo", "pretrained_small_cnn", "lightning_reuse.samples.zoo"),
    ("lightning_reuse.nn.small_cnn", "SmallCNN", "lightning_reuse.samples.models"),
    ("lightning_reuse.nn.efficientnet", "load_efficientnet_lite0", "lightning_reuse.samples.efficientnet"),
    ("lightning_reuse.ledger", "RetrainingLedger", "lightning_reuse.energy.ledger"),
    ("lightning_reuse.nn", "SmallCNN", "lightning_reuse.samples.models"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_old_path_resolves_to_the_same_object_with_a_deprecation_warning(
    old: str, name: str, new: str
) -> None:
    module = importlib.import_module(old)
    with pytest.warns(
        DeprecationWarning, match=rf"`{old}\.{name}` moved to `{new}\.{name}`.*HINT: `from {new} import"
    ):
        obj = getattr(module, name)
    assert obj is getattr(importlib.import_module(new), name)


def test_old_path_refuses_names_the_new_module_lacks() -> None:
    module = importlib.import_module("lightning_reuse.zoo")
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_root_name_stitching_sweep_is_the_function() -> None:
    """`lightning_reuse.stitching_sweep` was a module; the root now exports the function under that name, so
    the old module path has no alias (it would shadow the function once imported)."""
    import lightning_reuse
    from lightning_reuse.modules.stitching_sweep import stitching_sweep

    assert lightning_reuse.stitching_sweep is stitching_sweep
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lightning_reuse.stitching_sweep")
