"""The demo's RESQUE stage: score the shift and predict the retraining cost from the ledger (calibrated first)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lightning_reuse import RetrainingLedger
from lightning_reuse.demo.calibration import calibrate_ledger, ledger_tag, open_ledger
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.resque_pass import resque_score
from lightning_reuse.demo.sources import resque_layer

UNITS = {"epochs_to_target": "epochs", "energy_wh": "Wh", "co2_g": "g CO2"}


def resque_precheck(
    config: DemoConfig, source: torch.nn.Module, run_dir: Path, say: Callable[..., Any]
) -> dict[str, Any]:
    """Score the shift with RESQUE and predict the retraining cost from the ledger (calibrating it first).

    Returns:
        The ``"resque"`` section of the demo's summary: score, per-class angles, cost, ledger runs, estimates.
    """
    ledger = open_ledger(config)
    tag = ledger_tag(config)
    if len(ledger.runs(tag=tag)) < ledger.min_runs:
        say(
            f"      the ledger has {len(ledger.runs(tag=tag))} runs for this setting; calibrating with real "
            f"fine-tuning runs at other {config.shift} levels (recorded for next time)"
        )
        added = calibrate_ledger(config, source, run_dir, ledger, tag, say)
        say(f"      {added} calibration runs recorded in {ledger.path}")
    result = resque_score(config, source, config.level, baselines=True)
    estimates = ledger.predict_all(result.score, variant="dist", tag=tag)
    say(f"      RESQUE_dist = {result.score:.4f} ({result.duration_s:.2f} s)")
    say("      " + format_estimates(estimates, config.target_acc))
    if result.baselines:
        say("      baselines: " + ", ".join(f"{k} {v:.3f}" for k, v in result.baselines.items()))
    return {
        "score": result.score,
        "layer": resque_layer(config),
        "baselines": dict(result.baselines),
        "per_class": result.per_class,
        "duration_s": result.duration_s,
        "energy_wh": None if result.energy is None else float(result.energy.energy_wh),
        **_ledger_section(ledger, tag, estimates),
    }


def _ledger_section(ledger: RetrainingLedger, tag: str, estimates: dict[str, Any]) -> dict[str, Any]:
    """The ledger's path, its runs for this setting, and the estimates it gave (plain values)."""
    return {
        "ledger": str(ledger.path),
        "ledger_runs": [
            {
                "score": r.score,
                "epochs_to_target": r.epochs_to_target,
                "energy_wh": r.energy_wh,
                "co2_g": r.co2_g,
                "reached_target": r.reached_target,
                "key": r.key,
            }
            for r in ledger.runs(tag=tag)
        ],
        "estimates": {
            k: {
                "value": e.value,
                "lower": e.lower,
                "upper": e.upper,
                "message": str(e),
                "beyond_data": e.beyond_data,
            }
            for k, e in estimates.items()
        },
        "tag": tag,
    }


def format_estimates(estimates: dict[str, Any], target_acc: float) -> str:
    """One line: the predicted epochs / Wh / gCO2 to reach the target, with intervals, or why there are none."""
    parts = []
    for key, unit in UNITS.items():
        e = estimates.get(key)
        if e is None:
            continue
        if e.value is None:
            return f"no cost prediction: {e}"
        parts.append(f"{e.value:.3g} {unit} [{e.lower:.3g}, {e.upper:.3g}]")
    n = next(iter(estimates.values())).n_runs if estimates else 0
    confidence = next(iter(estimates.values())).confidence if estimates else 0.9
    beyond = any(e.beyond_data for e in estimates.values())
    return (
        f"predicted cost to {target_acc:.0%} validation accuracy by full fine-tuning: "
        + ", ".join(parts)
        + f" ({confidence:.0%} intervals, from {n} ledger runs)"
        + (" -- beyond what the ledger has seen, a rough guide (the report says why)" if beyond else "")
    )
