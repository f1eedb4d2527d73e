"""Every YAML recipe runs (fast_dev_run) through the ``lightning-reuse`` LightningCLI, warning-free.

A warning that is not on the allow-list below fails the test: recipes are what users copy.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from lightning_reuse.cli import cli_main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SCENARIOS = sorted(p for p in RECIPES.glob("*.yaml") if p.name != "defaults.yaml")
ALLOWED = [
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen parts are in eval on purpose
    r"isinstance\(treespec, LeafSpec\)` is deprecated",  # lightning vs torch 2.13
    r"does not have many workers",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"GPU available but not used",
    r"pkg_resources is deprecated",
]


@pytest.mark.parametrize("recipe", SCENARIOS, ids=lambda p: p.stem)
def test_recipe_fast_dev_run(recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["lightning-reuse"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = cli_main(
            [
                "fit",
                "--config",
                str(RECIPES / "defaults.yaml"),
                "--config",
                str(recipe),
                "--trainer.fast_dev_run=true",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    assert cli.trainer.state.finished
    unexpected = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if not any(re.search(pattern, str(w.message)) for pattern in ALLOWED)
    ]
    assert not unexpected, "unexpected warnings:\n" + "\n".join(unexpected)


def test_recipes_exist() -> None:
    assert len(SCENARIOS) >= 3
