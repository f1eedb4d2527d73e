"""The demo's NTK stage: will reprogramming the source work on the new data? (``NTKScreening``, before training)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_reuse import ModelReprogramming, NTKScreening
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.data import new_data
from lightning_reuse.demo.training import energy_monitor
from lightning_reuse.nn import FullPrompt, IterativeLabelMapping

# NTKScreening warns on FAIL; the demo reports the decision itself (and, like the other strategies, trains
# reprogramming anyway to show what the screening predicted).
_FAIL_WARNING = r"NTK screening predicts that reprogramming will fail"


class StopBeforeTraining(Callback):
    """Ends the fit in ``on_train_start``, after the callbacks before it (the screening) have run."""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def ntk_precheck(
    config: DemoConfig, source: torch.nn.Module, run_dir: Path, say: Callable[..., Any]
) -> dict[str, Any]:
    """Screen reprogramming of the source for the new data with the prompt-NTK (before any training).

    Runs :class:`~lightning_reuse.NTKScreening` in a fit that stops before its first step; the callback
    writes ``run_dir/ntk_spectrum.png`` and its cost is measured in the EnergyMonitor's ``"ntk-screening"``
    window.

    Returns:
        The ``"ntk"`` section of the demo's summary: decision, reasons, scores, spectrum, cost, plot path.
    """
    screening = _screen(config, source, run_dir)
    scores, record = screening.scores, screening.energy
    assert scores is not None and record is not None  # set in on_train_start, with a monitor attached
    say(
        f"      {scores.decision}: NTK score = {scores.ntk_score:.3f}, rho = {scores.rho:.3f}, "
        f"E(100) = {scores.e_tau:.3f}, r_eff = {scores.r_eff:.3f} "
        f"({scores.n} samples, {record.duration_s:.2f} s)"
    )
    for reason in scores.reasons:
        say(f"        - {reason}")
    if scores.baselines:
        say("        baselines: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.baselines.items()))
    return {
        "decision": scores.decision,
        "reasons": list(scores.reasons),
        "rho": scores.rho,
        "ntk_score": scores.ntk_score,
        "thresholds": {
            "fail": screening.thresholds.ntk_accuracy_fail,
            "warn": screening.thresholds.ntk_accuracy_warn,
        },
        "ntk_accuracy": scores.ntk_accuracy,
        "e_tau": scores.e_tau,
        "r_eff": scores.r_eff,
        "n": scores.n,
        "eigenvalues": list(scores.eigenvalues),
        "guard_confidence": scores.guard_confidence,
        "num_classes": scores.num_classes,
        "baselines": dict(scores.baselines),
        "duration_s": record.duration_s,
        "energy_wh": float(record.energy_wh),
        "plot": str(screening.plot_path),
    }


def _screen(config: DemoConfig, source: torch.nn.Module, run_dir: Path) -> NTKScreening:
    """Fit the reprogrammed source with NTKScreening attached, stopping before the first step."""
    dm = new_data(config)
    x, y = dm.train_set.tensors
    module = ModelReprogramming(
        copy.deepcopy(source), FullPrompt((1, 8, 8), (1, 8, 8)), IterativeLabelMapping(10, dm.num_classes)
    )
    # every training sample, in order: the screened subset is drawn from all of them (seeded)
    loader = DataLoader(TensorDataset(x, y), batch_size=config.batch_size)
    screening = NTKScreening(
        num_samples=min(config.ntk_samples, len(x)), seed=config.seed, max_pool=len(x), progress_bar=False
    )
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=1,
        logger=False,
        default_root_dir=run_dir,  # where the callback writes ntk_spectrum.png
        callbacks=[energy_monitor(config), screening, StopBeforeTraining()],
        max_epochs=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FAIL_WARNING)
        # the fit stops before its first step: validation never runs (its loader only keeps Lightning from
        # warning that ModelReprogramming's validation_step has none)
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return screening
