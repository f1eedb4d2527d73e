"""The demo's ledger calibration: a miss is a censored run, a restarted calibration does not count twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lightning_reuse.demo.calibration import calibrate_ledger, calibration_key, ledger_tag, open_ledger
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.data import source_model
from lightning_reuse.demo.report import resque_section
from lightning_reuse.demo.resque_stage import resque_precheck


def _quiet(*args: Any, **kwargs: Any) -> None:
    return None


def _config(tmp_path: Path) -> DemoConfig:
    return DemoConfig(out_dir=str(tmp_path), quick=True, wandb=False, progress=False, seed=2)


def test_a_calibration_miss_is_recorded_as_censored_and_the_report_says_why(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.target_acc = 0.99  # out of reach in 2 epochs: every calibration fit misses it
    source = source_model(config)
    ledger, tag = open_ledger(config), ledger_tag(config)
    assert calibrate_ledger(config, source, tmp_path, ledger, tag, _quiet) == ledger.min_runs + 1
    runs = ledger.runs(tag=tag)
    assert all(not r.reached_target for r in runs)  # kept as lower bounds, not dropped
    assert all(r.epochs_to_target == config.calibration_epochs and r.energy_wh > 0 for r in runs)
    assert sorted(r.key for r in runs) == sorted(calibration_key(config, tag, r.extra["level"]) for r in runs)
    resque = resque_precheck(config, source, tmp_path, _quiet)
    estimate = resque["estimates"]["epochs_to_target"]
    assert estimate["value"] is None and "missed the target" in estimate["message"]  # no "0.0 epochs"
    section = resque_section({"config": {"train_limit": config.train_limit}, "resque": resque})
    assert estimate["message"] in section and section.count("no (censored)") == len(runs)
    assert f"| >= {config.calibration_epochs} |" in section


class _Interrupt(KeyboardInterrupt):
    """Ctrl-C at a known point of the calibration (after its second recorded run)."""


def test_a_restarted_calibration_continues_without_duplicating_runs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    source = source_model(config)
    ledger, tag = open_ledger(config), ledger_tag(config)
    said: list[str] = []

    def say_then_stop(line: str) -> None:
        said.append(line)
        if len(said) == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        calibrate_ledger(config, source, tmp_path, ledger, tag, say_then_stop)
    assert len(ledger.runs(tag=tag)) == 2
    added = calibrate_ledger(config, source, tmp_path, open_ledger(config), tag, _quiet)
    runs = ledger.runs(tag=tag)
    assert added == len(runs) - 2 and len(runs) == ledger.min_runs + 1
    levels = [r.extra["level"] for r in runs]
    assert len(set(levels)) == len(levels) and len({r.key for r in runs}) == len(runs)
    assert calibrate_ledger(config, source, tmp_path, ledger, tag, _quiet) == 0  # complete: nothing to add
