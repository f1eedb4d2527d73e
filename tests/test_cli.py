"""The ``lightning-reuse`` console script speaks plainly: no Lightning args warning, unknown class paths named."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from lightning_reuse.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_no_args_warning_on_a_console_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # as the console script is called: the arguments are in sys.argv
    argv = ["fit", "--config", str(RECIPES / "defaults.yaml"), "--config", str(RECIPES / "linear_probe.yaml")]
    monkeypatch.setattr("sys.argv", ["lightning-reuse", *argv, "--print_config"])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("always")
        main()
    assert exit_info.value.code in (0, None)
    assert not [w for w in caught if "args parameter" in str(w.message)]


def _bad_recipe(tmp_path: Path, class_path: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(f"model:\n  class_path: {class_path}\ntrainer:\n  max_epochs: 1\n")
    return path


@pytest.mark.parametrize(
    ("class_path", "why"),
    [
        (
            "lightning_reuse.modules.NoSuchModule",
            "module 'lightning_reuse.modules' has no attribute 'NoSuchModule'",
        ),
        ("lightning_reuse.ImageClasifier", "did you mean 'lightning_reuse.ImageClassifier'"),
        ("nosuch_package.Model", "No module named 'nosuch_package'"),
    ],
)
def test_unknown_class_path_is_named_first(
    class_path: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _bad_recipe(tmp_path, class_path)
    assert main(["fit", "--config", str(recipe)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(
        f"error: class_path {class_path!r} (model.class_path in {recipe}) could not be imported"
    )
    assert why in lines[0] and lines[1].startswith("HINT:") and "--verbose" in lines[1]
    assert len(lines) == 2


def test_unknown_class_path_verbose_keeps_the_parser_details(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _bad_recipe(tmp_path, "lightning_reuse.modules.NoSuchModule")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(recipe), "--verbose"])
    err = capsys.readouterr().err
    assert err.startswith("error: class_path 'lightning_reuse.modules.NoSuchModule'")
    assert "Does not validate against any of the Union subtypes" in err  # the details follow


def test_unknown_class_path_in_an_option_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--model", "nosuch_package.Model"]) == 2
    assert capsys.readouterr().err.startswith("error: class_path 'nosuch_package.Model' (option --model)")
