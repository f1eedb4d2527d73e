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


def test_every_recipe_is_documented_and_every_documented_recipe_exists() -> None:
    """The README's recipe list and the YAML files in `recipes/` are the same set (each file is run above)."""
    readme = (RECIPES.parent / "README.md").read_text()
    paragraph = re.search(r"^Recipes: (.*?)\n\n", readme, flags=re.M | re.S)
    assert paragraph, "the README lost its 'Recipes:' paragraph"
    listed = {name for name in re.findall(r"`([a-z_0-9]+)`", paragraph.group(1))}
    on_disk = {p.stem for p in SCENARIOS}
    assert on_disk, f"no recipe found in {RECIPES}"
    assert on_disk == listed, (
        f"in recipes/ but not the README: {on_disk - listed}; the reverse: {listed - on_disk}"
    )
