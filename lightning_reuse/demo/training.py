"""One fit of one strategy on the new data, energy measured: :func:`run_strategy` and what it returns."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_reuse import EnergyMonitor
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.data import new_data
from lightning_reuse.demo.strategies import Strategy
from lightning_reuse.nn import count_parameters
from lightning_reuse.samples import DigitsDataModule, accuracy


@dataclass
class StrategyResult:
    """What one strategy's fit measured (``error`` set, and the numbers empty, when it failed)."""

    name: str
    description: str
    test_acc: float
    best_val_acc: float
    epochs: int
    epochs_to_target: int | None
    duration_s: float
    trainable_params: int
    total_params: int
    energy_wh: float | None = None
    co2_g: float | None = None
    energy_method: str = "not measured"
    energy_to_target_wh: float | None = None
    co2_to_target_g: float | None = None
    val_acc_per_epoch: list[float] = field(default_factory=list)
    energy_wh_per_epoch: list[float] = field(default_factory=list)
    error: str | None = None
    budget_stopped: str | None = None  # the budget decision that stopped the fit, if one did

    @classmethod
    def failed(cls, strategy: Strategy, err: Exception) -> StrategyResult:
        """The result of a strategy whose fit raised ``err`` (kept so that the others' results are not lost)."""
        nan = float("nan")
        return cls(
            strategy.name,
            strategy.description,
            nan,
            nan,
            0,
            None,
            0.0,
            0,
            0,
            error=f"{type(err).__name__}: {err}",
        )


class EpochRecorder(Callback):
    """Records val_acc per epoch, shows progress, and optionally stops the fit once ``stop_at`` is reached.

    On a terminal the progress line updates in place; in a log it prints every ``every`` epochs and once
    at the end of the fit.

    Args:
        label: Name shown in the progress lines.
        progress: Print progress lines.
        stop_at: Validation accuracy at which the fit stops (``None``: run every epoch).
        every: In a log, print every ``every`` epochs.
    """

    def __init__(self, label: str, progress: bool, stop_at: float | None = None, every: int = 4) -> None:
        self.label, self.progress, self.stop_at, self.every = label, progress, stop_at, every
        self.val_acc: list[float] = []
        self._t0 = 0.0
        self._tty = sys.stdout.isatty()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def _line(self, trainer: pl.Trainer) -> str:
        acc = self.val_acc[-1] if self.val_acc else float("nan")
        return (
            f"    [{self.label}] epoch {len(self.val_acc)}/{trainer.max_epochs}  val_acc {acc:.3f}  "
            f"(best {max(self.val_acc, default=float('nan')):.3f}, {time.perf_counter() - self._t0:.1f} s)"
        )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = float(trainer.callback_metrics.get("val_acc", float("nan")))
        self.val_acc.append(acc)
        if self.stop_at is not None and acc >= self.stop_at:
            trainer.should_stop = True
        if self.progress and self._tty:
            print("\r" + self._line(trainer), end="", flush=True)
        elif self.progress and len(self.val_acc) % self.every == 0:
            print(self._line(trainer), flush=True)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.progress and (self._tty or len(self.val_acc) % self.every != 0):
            print(("\r" if self._tty else "") + self._line(trainer), flush=True)


def energy_monitor(config: DemoConfig, budget: bool = False) -> EnergyMonitor:
    """The EnergyMonitor every measured piece of the demo uses (codecarbon offline, the configured country);
    with ``budget``, the configured energy budget stops the fit (the strategies' fits, not the calibration's)."""
    if budget and config.budget_wh is not None:
        return EnergyMonitor(
            country_iso_code=config.country_iso_code, budget_wh=config.budget_wh, budget_action="stop"
        )
    return EnergyMonitor(country_iso_code=config.country_iso_code)


def _trainer(
    run_dir: Path, label: str, callbacks: list[Callback], max_epochs: int, accelerator: str = "cpu"
) -> pl.Trainer:
    """A deterministic trainer logging to ``run_dir/logs/<label>`` (no checkpoints, no progress bar).

    On CPU every op is deterministic; on an accelerator the few ops without a deterministic kernel (the
    backward of adaptive average pooling on CUDA) warn instead of stopping the fit.
    """
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=1,
        logger=pl.loggers.CSVLogger(run_dir / "logs", name=label.replace(" ", "_")),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True if accelerator == "cpu" else "warn",
        num_sanity_val_steps=0,
    )


def run_strategy(
    strategy: Strategy,
    source: torch.nn.Module,
    config: DemoConfig,
    run_dir: Path,
    target_acc: float,
    extra_callbacks: list[Callback] | None = None,
    level: float | None = None,
    max_epochs: int | None = None,
    label: str | None = None,
    stop_at_target: bool = False,
    budget: bool = False,
) -> StrategyResult:
    """Fit one strategy on the new data with the energy monitor on; test it; return what was measured.

    Args:
        strategy: What to fit (``strategy.build(source, num_classes)``).
        source: The pre-trained source (copied by the strategy, never changed).
        config: The demo's configuration.
        run_dir: The run folder (CSV logs go to ``run_dir/logs``).
        target_acc: Validation accuracy counted as reaching the target.
        extra_callbacks: More callbacks for the fit.
        level: Shift strength instead of ``config.level``.
        max_epochs: Epochs instead of ``config.max_epochs``.
        label: Name in progress lines and logs (default: the strategy's name).
        stop_at_target: Stop the fit at the first epoch that reaches ``target_acc``.
        budget: Apply ``config.budget_wh`` to this fit (the strategies' fits; not calibration runs).
    """
    torch.manual_seed(config.seed)
    dm = new_data(config, level=level)
    module = strategy.build(source, dm.num_classes)
    label = label or strategy.name
    recorder = EpochRecorder(label, config.progress, stop_at=target_acc if stop_at_target else None)
    monitor = energy_monitor(config, budget=budget)
    trainer = _trainer(
        run_dir,
        label,
        [recorder, *(extra_callbacks or []), monitor],
        max_epochs or config.max_epochs,
        config.accelerator,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    duration = time.perf_counter() - t0
    result = _measured(strategy, module, dm, recorder.val_acc, duration, target_acc)
    _add_energy(result, monitor)
    return result


def _measured(
    strategy: Strategy,
    module: pl.LightningModule,
    dm: DigitsDataModule,
    val_acc: list[float],
    duration: float,
    target_acc: float,
) -> StrategyResult:
    """The accuracy, epochs and size of a finished fit (energy added by :func:`_add_energy`)."""
    x_te, y_te = dm.test_set.tensors
    params = count_parameters(module)
    return StrategyResult(
        name=strategy.name,
        description=strategy.description,
        test_acc=accuracy(module, x_te, y_te),  # the same evaluation for every kind of module
        best_val_acc=max(val_acc, default=float("nan")),
        epochs=len(val_acc),
        epochs_to_target=next((i + 1 for i, a in enumerate(val_acc) if a >= target_acc), None),
        duration_s=duration,
        trainable_params=params.trainable,
        total_params=params.total,
        val_acc_per_epoch=val_acc,
    )


def _add_energy(result: StrategyResult, monitor: EnergyMonitor) -> None:
    """Fill the energy and CO2 of ``result`` from the fit's monitor: in total, per epoch, and up to the target."""
    total = monitor.total
    result.energy_wh, result.co2_g = float(total.energy_wh), float(total.co2_g)
    stop = monitor.accounting.budget.stopped
    if stop is not None:
        result.budget_stopped = (
            f"{stop.basis} {stop.quantity} {stop.measured if stop.basis == 'measured' else stop.predicted_low:.4g}"
            f" > budget {stop.budget:.4g} after {stop.epoch} epoch(s)"
        )
    result.energy_method = ", ".join(f"{k}: {v}" for k, v in sorted(total.method.items()))
    result.energy_wh_per_epoch = [float(r.energy_wh) for r in monitor.epochs]
    k = result.epochs_to_target
    if k is not None and len(monitor.epochs) >= k:  # summed per-epoch energy up to the target
        result.energy_to_target_wh = sum(float(r.energy_wh) for r in monitor.epochs[:k])
        result.co2_to_target_g = sum(float(r.co2_g) for r in monitor.epochs[:k])
