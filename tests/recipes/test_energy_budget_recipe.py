"""The energy-budget recipe and the command-line route to a budget, through the ``lightning-reuse`` LightningCLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_reuse import EnergyMonitor
from lightning_reuse.cli import cli_main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str):
    monkeypatch.setattr("sys.argv", ["lightning-reuse"])
    base = ["fit", "--config", str(RECIPES / "defaults.yaml")]
    return cli_main([*base, *args, "--trainer.max_epochs=3", f"--trainer.default_root_dir={tmp_path}"])


def _monitor(cli) -> EnergyMonitor:
    (monitor,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, EnergyMonitor)]
    return monitor


@pytest.mark.slow
def test_recipe_budget_is_read_from_yaml_and_a_generous_budget_lets_the_fit_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _run(tmp_path, monkeypatch, "--config", str(RECIPES / "energy_budget.yaml"))
    monitor = _monitor(cli)
    assert (monitor.budget_wh, monitor.budget_co2_g, monitor.budget_action) == (5.0, 2.0, "stop")
    assert monitor.check_every_n_steps == 10 and monitor.country_iso_code == "DEU"
    assert cli.trainer.state.finished and len(monitor.epochs) == 3  # a few mWh on the digits: under 5 Wh
    assert monitor.accounting.budget.decisions == []


@pytest.mark.slow
def test_budget_added_from_the_command_line_stops_the_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _run(
        tmp_path,
        monkeypatch,
        "--config",
        str(RECIPES / "linear_probe.yaml"),
        "--trainer.callbacks+=lightning_reuse.EnergyMonitor",
        "--trainer.callbacks.country_iso_code=FRA",
        "--trainer.callbacks.budget_s=0.001",  # a wall-time budget the first check already exceeds
        "--trainer.callbacks.budget_action=stop",
        "--trainer.callbacks.check_every_n_steps=2",
    )
    stop = _monitor(cli).accounting.budget.stopped
    assert stop is not None and (stop.quantity, stop.basis, stop.batches) == ("duration_s", "measured", 2)
    assert cli.trainer.global_step == 2 and cli.trainer.state.finished
