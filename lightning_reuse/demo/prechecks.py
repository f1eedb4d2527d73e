"""The demo's pre-checks: RESQUE (with a cost estimate from a ledger of real runs) and NTK screening."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch

from lightning_reuse.callbacks.resque_check import RESQUECheck
from lightning_reuse.energy.ledger import RetrainingLedger
from lightning_reuse.modules.classifier import ImageClassifier
from lightning_reuse.samples.models import accuracy

if TYPE_CHECKING:
    from lightning_reuse.demo.pipeline import DemoConfig

RESQUE_LAYER = "model.block2.0"  # the last conv of the SmallCNN inside ImageClassifier
CALIBRATION_FRACTIONS = (0.25, 0.5, 0.75, 1.25, 1.5)  # of the configured shift level


def resque_check_for(config: DemoConfig, level: float) -> RESQUECheck:
    """A RESQUECheck comparing clean and shifted versions of the same new training samples."""
    from lightning_reuse.demo.pipeline import _datamodule

    shifted = _datamodule(config, level=level)
    original = _datamodule(config, shift="none", level=0.0)
    return RESQUECheck(
        shifted.train_dataloader(),
        layer=RESQUE_LAYER,
        original_dataloader=original.train_dataloader(),
        num_classes=shifted.num_classes,
        progress_bar=False,
    )


def resque_score(config: DemoConfig, source: torch.nn.Module, level: float) -> Any:
    """One RESQUE pass of the frozen source at this shift level (its cost measured by an EnergyMonitor)."""
    from lightning_reuse.demo.pipeline import _energy_monitor

    monitor = _energy_monitor(config)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor] if monitor is not None else [],
    )
    return resque_check_for(config, level).run(
        trainer, ImageClassifier(copy.deepcopy(source), trainable="all")
    )


def ledger_tag(config: DemoConfig) -> str:
    """Runs are comparable only within one setting: source, data size, target, budget and seed."""
    return (
        f"demo/smallcnn{config.source_width}-e{config.source_epochs}/{config.shift}/n{config.train_limit}"
        f"/t{config.target_acc}/cal{config.calibration_epochs}/seed{config.seed}"
    )


def calibrate_ledger(
    config: DemoConfig, source: torch.nn.Module, run_dir: Path, ledger: RetrainingLedger, tag: str, say: Any
) -> int:
    """Fill the ledger with real fine-tuning runs at other levels of the same shift until it can predict.

    Each run scores its level with RESQUE, then fully fine-tunes the source until the validation accuracy
    reaches the target, and records the score, the epochs it took, and the energy and CO2 summed over those
    epochs (the same quantities the demo later measures for the new data). A level at which the source already
    meets the target records 0 epochs and 0 Wh; a run that misses the target within the budget is not
    recorded. Returns the number of runs added.
    """
    from lightning_reuse.demo.pipeline import _datamodule, run_strategy
    from lightning_reuse.demo.strategies import baseline_strategies

    full = baseline_strategies()[0]
    before = len(ledger.runs(tag=tag))
    for fraction in CALIBRATION_FRACTIONS:
        if len(ledger.runs(tag=tag)) >= ledger.min_runs + 1:
            break
        level = round(config.level * fraction, 4)
        score = resque_score(config, source, level).score
        x_va, y_va = _datamodule(config, level=level).val_set.tensors
        if accuracy(source, x_va, y_va) >= config.target_acc:
            ledger.add_run(score, 0, 0.0, 0.0, 0.0, variant="dist", tag=tag, extra={"level": level})
            say(f"    [calibration {config.shift} {level}] the source already meets the target: 0 epochs")
            continue
        result = run_strategy(
            full,
            source,
            config,
            run_dir,
            config.target_acc,
            level=level,
            max_epochs=config.calibration_epochs,
            label=f"calibration {config.shift} {level}",
            stop_at_target=True,
        )
        if result.epochs_to_target is None:
            say(f"    [calibration {config.shift} {level}] target not reached: not recorded")
            continue
        ledger.add_run(
            score,
            result.epochs_to_target,
            result.energy_to_target_wh,
            result.co2_to_target_g,
            result.duration_s,
            variant="dist",
            tag=tag,
            extra={"level": level},
        )
    return len(ledger.runs(tag=tag)) - before


def format_estimates(estimates: dict[str, Any], target_acc: float) -> str:
    """One line: the predicted epochs / Wh / gCO2 to reach the target, with intervals, or why there are none."""
    units = {"epochs_to_target": "epochs", "energy_wh": "Wh", "co2_g": "g CO2"}
    parts = []
    for key, unit in units.items():
        e = estimates.get(key)
        if e is None:
            continue
        if e.value is None:
            return f"no cost prediction: {e}"
        parts.append(f"{e.value:.3g} {unit} [{e.lower:.3g}, {e.upper:.3g}]")
    n = next(iter(estimates.values())).n_runs if estimates else 0
    level = next(iter(estimates.values())).confidence if estimates else 0.9
    return (
        f"predicted cost to {target_acc:.0%} validation accuracy by full fine-tuning: "
        + ", ".join(parts)
        + f" ({level:.0%} intervals, from {n} ledger runs)"
    )


def resque_precheck(config: DemoConfig, source: torch.nn.Module, run_dir: Path, say: Any) -> dict[str, Any]:
    """Score the shift with RESQUE and predict the retraining cost from the ledger (calibrating it first)."""
    # log(1 + cost): retraining cost grows faster than linearly with the score, and some runs cost nothing
    ledger = RetrainingLedger(Path(config.out_dir) / "resque_ledger.sqlite", scale="log1p")
    tag = ledger_tag(config)
    if len(ledger.runs(tag=tag)) < ledger.min_runs:
        say(
            f"      the ledger has {len(ledger.runs(tag=tag))} runs for this setting; calibrating with real "
            f"fine-tuning runs at other {config.shift} levels (recorded for next time)"
        )
        added = calibrate_ledger(config, source, run_dir, ledger, tag, say)
        say(f"      {added} calibration runs recorded in {ledger.path}")
    result = resque_score(config, source, config.level)
    estimates = ledger.predict_all(result.score, variant="dist", tag=tag)
    out = {
        "score": result.score,
        "layer": RESQUE_LAYER,
        "per_class": result.per_class,
        "duration_s": result.duration_s,
        "energy_wh": None if result.energy is None else float(result.energy.energy_wh),
        "ledger": str(ledger.path),
        "ledger_runs": [
            {
                "score": r.score,
                "epochs_to_target": r.epochs_to_target,
                "energy_wh": r.energy_wh,
                "co2_g": r.co2_g,
            }
            for r in ledger.runs(tag=tag)
        ],
        "estimates": {
            k: {"value": e.value, "lower": e.lower, "upper": e.upper, "message": str(e)}
            for k, e in estimates.items()
        },
        "tag": tag,
    }
    say(f"      RESQUE_dist = {result.score:.4f} ({result.duration_s:.2f} s)")
    say("      " + format_estimates(estimates, config.target_acc))
    return out


def _spectrum_plot(eigenvalues: list[float], decision: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(range(1, len(eigenvalues) + 1), [max(v, 1e-30) for v in eigenvalues], marker=".")
    ax.set(
        xlabel="eigenvalue index",
        ylabel="eigenvalue (log)",
        title=f"Prompt-NTK spectrum on the new data: {decision}",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ntk_precheck(config: DemoConfig, source: torch.nn.Module, run_dir: Path, say: Any) -> dict[str, Any]:
    """Screen reprogramming of the source for the new data with the prompt-NTK (before any training)."""
    import time

    from lightning_reuse.demo.pipeline import _datamodule, _energy_monitor
    from lightning_reuse.functional.ntk_scores import ScreeningThresholds, screen_reprogramming
    from lightning_reuse.nn.label_mapping import IterativeLabelMapping
    from lightning_reuse.nn.prompts import FullPrompt
    from lightning_reuse.nn.reprogrammed import ReprogrammedModel

    dm = _datamodule(config)
    x, y = dm.train_set.tensors
    model = ReprogrammedModel(
        copy.deepcopy(source), FullPrompt((1, 8, 8), (1, 8, 8)), IterativeLabelMapping(10, dm.num_classes)
    )
    monitor = _energy_monitor(config)
    start = time.perf_counter()
    if monitor is not None:
        with monitor.window("ntk-screening") as record:
            scores = screen_reprogramming(
                model, x, y, num_samples=min(config.ntk_samples, len(x)), seed=config.seed
            )
    else:
        record = None
        scores = screen_reprogramming(
            model, x, y, num_samples=min(config.ntk_samples, len(x)), seed=config.seed
        )
    duration = time.perf_counter() - start
    plot = _spectrum_plot(scores.eigenvalues, scores.decision, run_dir / "ntk_spectrum.png")
    say(
        f"      {scores.decision}: NTK score = {scores.ntk_score:.3f}, rho = {scores.rho:.3f}, "
        f"E(100) = {scores.e_tau:.3f}, r_eff = {scores.r_eff:.3f} "
        f"({scores.n} samples, {duration:.2f} s)"
    )
    for reason in scores.reasons:
        say(f"        - {reason}")
    return {
        "decision": scores.decision,
        "reasons": list(scores.reasons),
        "rho": scores.rho,
        "ntk_score": scores.ntk_score,
        "thresholds": {
            "fail": ScreeningThresholds().ntk_accuracy_fail,
            "warn": ScreeningThresholds().ntk_accuracy_warn,
        },
        "ntk_accuracy": scores.ntk_accuracy,
        "e_tau": scores.e_tau,
        "r_eff": scores.r_eff,
        "n": scores.n,
        "eigenvalues": list(scores.eigenvalues),
        "guard_confidence": scores.guard_confidence,
        "duration_s": duration,
        "energy_wh": None if record is None else float(record.energy_wh),
        "plot": str(plot),
    }
