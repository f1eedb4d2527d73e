"""The retraining ledger of the demo: real fine-tuning runs at other shift levels, to predict the cost from RESQUE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lightning_reuse import RetrainingLedger
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.data import new_data
from lightning_reuse.demo.resque_pass import resque_score
from lightning_reuse.demo.strategies import Strategy, available_strategies
from lightning_reuse.demo.training import StrategyResult, run_strategy
from lightning_reuse.samples import accuracy

CALIBRATION_FRACTIONS = (0.25, 0.5, 0.75, 1.25, 1.5)  # of the configured shift level
CALIBRATION_STRATEGY = "full fine-tuning"  # the retraining whose cost the ledger predicts


def open_ledger(config: DemoConfig) -> RetrainingLedger:
    """The ledger kept beside the reports (``<out_dir>/resque_ledger.sqlite``), shared by every run."""
    # log(1 + cost): retraining cost grows faster than linearly with the score, and some runs cost nothing
    return RetrainingLedger(Path(config.out_dir) / "resque_ledger.sqlite", scale="log1p")


def ledger_tag(config: DemoConfig) -> str:
    """Runs are comparable only within one setting: source, data size, target, budget, seed and accelerator
    (energy differs by device; a CPU run's tag names none, as before the accelerator was an option)."""
    source = (
        f"smallcnn{config.source_width}-e{config.source_epochs}"
        if config.source == "smallcnn"
        else f"{config.source}-{config.image_size}px"
    )
    return (
        f"demo/{source}/{config.shift}/n{config.train_limit}"
        f"/t{config.target_acc}/cal{config.calibration_epochs}/seed{config.seed}"
        + ("" if config.accelerator == "cpu" else f"/{config.accelerator}")
    )


def calibrate_ledger(
    config: DemoConfig,
    source: torch.nn.Module,
    run_dir: Path,
    ledger: RetrainingLedger,
    tag: str,
    say: Callable[..., Any],
) -> int:
    """Fill the ledger with real fine-tuning runs at other levels of the same shift until it can predict.

    Each run scores its level with RESQUE, then fully fine-tunes the source until the validation accuracy
    reaches the target, and records the score, the epochs it took, and the energy and CO2 summed over those
    epochs (the same quantities the demo later measures for the new data). A level at which the source already
    meets the target records 0 epochs and 0 Wh; a run that misses the target within the budget is recorded as
    censored (``reached_target=False``, its cost what it spent: the whole budget), never dropped.

    Every run is recorded under a key (:func:`calibration_key`), and a level whose key the ledger holds is not
    run again: a restarted (interrupted) calibration continues where it stopped instead of recording the same
    levels twice.

    Returns:
        The number of runs added.
    """
    full = _calibration_strategy()
    before = len(ledger.runs(tag=tag))
    for fraction in CALIBRATION_FRACTIONS:
        if len(ledger.runs(tag=tag)) >= ledger.min_runs + 1:
            break
        level = round(config.level * fraction, 4)
        key = calibration_key(config, tag, level)
        if any(r.key == key for r in ledger.runs(tag=tag)):
            continue
        _calibration_run(config, source, run_dir, ledger, tag, full, level, say)
    return len(ledger.runs(tag=tag)) - before


def calibration_key(config: DemoConfig, tag: str, level: float) -> str:
    """The ledger key of the calibration run at ``level``: one run per setting, shift level and seed.

    Example:
        >>> calibration_key(DemoConfig(), "demo/x", 0.5)
        'demo/x/blur@0.5/seed0'
    """
    return f"{tag}/{config.shift}@{level}/seed{config.seed}"


def _calibration_strategy() -> Strategy:
    return next(s for s in available_strategies() if s.name == CALIBRATION_STRATEGY)


def _calibration_run(
    config: DemoConfig,
    source: torch.nn.Module,
    run_dir: Path,
    ledger: RetrainingLedger,
    tag: str,
    full: Strategy,
    level: float,
    say: Callable[..., Any],
) -> None:
    """Score one shift level with RESQUE, fine-tune to the target, and record the run (censored if it missed)."""
    name = f"calibration {config.shift} {level}"
    key = calibration_key(config, tag, level)
    score = resque_score(config, source, level).score
    x_va, y_va = new_data(config, level=level).val_set.tensors
    if accuracy(source, x_va, y_va) >= config.target_acc:
        ledger.add_run(score, 0, 0.0, 0.0, 0.0, variant="dist", tag=tag, extra={"level": level}, key=key)
        say(f"    [{name}] the source already meets the target: 0 epochs")
        return
    result = run_strategy(
        full,
        source,
        config,
        run_dir,
        config.target_acc,
        level=level,
        max_epochs=config.calibration_epochs,
        label=name,
        stop_at_target=True,
    )
    if result.epochs_to_target is None:
        _record(ledger, score, result, tag, level, key, reached=False)
        say(
            f"    [{name}] target not reached in {result.epochs} epochs: recorded as censored "
            "(the cost is at least what this run spent)"
        )
        return
    _record(ledger, score, result, tag, level, key, reached=True)


def _record(
    ledger: RetrainingLedger,
    score: float,
    result: StrategyResult,
    tag: str,
    level: float,
    key: str,
    reached: bool,
) -> None:
    """Record a calibration run: its cost to the target, or, for a miss, what it spent (a lower bound)."""
    cost = (
        (result.epochs_to_target, result.energy_to_target_wh, result.co2_to_target_g)
        if reached
        else (result.epochs, result.energy_wh, result.co2_g)
    )
    ledger.add_run(
        score,
        *cost,
        result.duration_s,
        variant="dist",
        tag=tag,
        extra={"level": level},
        reached_target=reached,
        key=key,
    )
