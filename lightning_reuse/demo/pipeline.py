"""The demo pipeline: pre-checks, every candidate strategy with energy tracking, recommendation, report.

Every number in the report comes from the runs made here; nothing is hard-coded.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_reuse.demo.strategies import Strategy, available_strategies
from lightning_reuse.samples.datamodule import DigitsDataModule
from lightning_reuse.samples.models import accuracy
from lightning_reuse.samples.zoo import pretrained_small_cnn


@dataclass
class DemoConfig:
    """What the demo runs. The defaults are the README's end-to-end demo (a few minutes on 2 CPU cores).

    Attributes:
        out_dir: parent folder; each run writes a new ``run-<timestamp>`` folder inside (never overwritten).
        shift / level: the distribution shift of the new data (see ``lightning_reuse.samples.digits.apply_shift``).
        train_limit: labelled samples of new data available for (re)training.
        max_epochs: epochs per strategy.
        strategies: names to run (default: all available).
        wandb: also write an offline W&B run of the report.
        country_iso_code: carbon intensity used for gCO2 (codecarbon offline, no network).
        quick: a reduced configuration (tiny source, 2 epochs) for tests.
    """

    out_dir: str = "reports"
    shift: str = "blur"
    level: float = 1.0
    train_limit: int = 400
    max_epochs: int = 12
    batch_size: int = 32
    seed: int = 0
    source_width: int = 32
    strategies: list[str] | None = None
    wandb: bool = True
    country_iso_code: str = "USA"
    target_acc: float = 0.75
    calibration_epochs: int = 20
    source_epochs: int = 30
    ntk_samples: int = 256
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.quick:
            self.max_epochs = min(self.max_epochs, 2)
            self.calibration_epochs = min(self.calibration_epochs, 2)
            self.source_epochs = min(self.source_epochs, 4)
            self.source_width = min(self.source_width, 8)
            self.train_limit = min(self.train_limit, 120)
            self.ntk_samples = min(self.ntk_samples, 64)
            self.target_acc = min(self.target_acc, 0.15)


@dataclass
class StrategyResult:
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


class _EpochRecorder(Callback):
    """Records val_acc per epoch, shows progress, and optionally stops the fit once ``stop_at`` is reached.

    On a terminal the progress line updates in place; in a log it prints every ``every`` epochs and once
    at the end of the fit.
    """

    def __init__(self, label: str, progress: bool, stop_at: float | None = None, every: int = 4) -> None:
        self.label, self.progress, self.stop_at, self.every = label, progress, stop_at, every
        self.val_acc: list[float] = []
        self._t0 = 0.0
        self._tty = sys.stdout.isatty()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def _line(self, trainer: pl.Trainer) -> str:
        acc = self.val_acc[-1] if self.val_acc else float("nan")
        return (
            f"    [{self.label}] epoch {len(self.val_acc)}/{trainer.max_epochs}  val_acc {acc:.3f}  "
            f"(best {max(self.val_acc, default=float('nan')):.3f}, {time.perf_counter() - self._t0:.1f} s)"
        )

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

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.progress and (self._tty or len(self.val_acc) % self.every != 0):
            print(("\r" if self._tty else "") + self._line(trainer), flush=True)


def new_run_dir(parent: str | Path) -> Path:
    """A fresh ``run-YYYYmmdd-HHMMSS[-k]`` folder under ``parent`` (earlier reports are never clobbered)."""
    parent = Path(parent)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        path = parent / (f"run-{stamp}" if k == 0 else f"run-{stamp}-{k}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"Could not create a new run folder under {parent}")


def _energy_monitor(config: DemoConfig) -> Any | None:
    try:
        from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
    except ImportError:
        return None
    return EnergyMonitor(country_iso_code=config.country_iso_code)


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
) -> StrategyResult:
    """Fit one strategy on the new data with the energy monitor on; test it; return what was measured."""
    torch.manual_seed(config.seed)
    dm = _datamodule(config, level=level)
    module = strategy.build(source, dm.num_classes)
    recorder = _EpochRecorder(
        label or strategy.name, config.progress, stop_at=target_acc if stop_at_target else None
    )
    monitor = _energy_monitor(config)
    callbacks: list[Callback] = [recorder, *(extra_callbacks or [])] + (
        [monitor] if monitor is not None else []
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs or config.max_epochs,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.CSVLogger(run_dir / "logs", name=(label or strategy.name).replace(" ", "_")),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    duration = time.perf_counter() - t0
    x_te, y_te = dm.test_set.tensors
    test_acc = accuracy(module, x_te, y_te)  # the same evaluation for every kind of module
    params = list(module.parameters())
    result = StrategyResult(
        name=strategy.name,
        description=strategy.description,
        test_acc=test_acc,
        best_val_acc=max(recorder.val_acc, default=float("nan")),
        epochs=len(recorder.val_acc),
        epochs_to_target=next((i + 1 for i, a in enumerate(recorder.val_acc) if a >= target_acc), None),
        duration_s=duration,
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        val_acc_per_epoch=recorder.val_acc,
    )
    if monitor is not None:
        total = monitor.total
        result.energy_wh, result.co2_g = float(total.energy_wh), float(total.co2_g)
        result.energy_method = ", ".join(f"{k}: {v}" for k, v in sorted(total.method.items()))
        result.energy_wh_per_epoch = [float(r.energy_wh) for r in monitor.epochs]
        k = result.epochs_to_target
        if k is not None and len(monitor.epochs) >= k:  # summed per-epoch energy up to the target
            result.energy_to_target_wh = sum(float(r.energy_wh) for r in monitor.epochs[:k])
            result.co2_to_target_g = sum(float(r.co2_g) for r in monitor.epochs[:k])
    return result


def _datamodule(config: DemoConfig, level: float | None = None, shift: str | None = None) -> DigitsDataModule:
    """The new data of the demo (or, with ``shift="none"``, the clean version of the same samples)."""
    dm = DigitsDataModule(
        shift=config.shift if shift is None else shift,
        level=config.level if level is None else level,
        batch_size=config.batch_size,
        seed=config.seed,
        split_seed=0,  # the split the zoo's sources were pre-trained on: val/test stay unseen
        train_limit=config.train_limit,
    )
    dm.setup("fit")
    return dm


def recommend(results: list[StrategyResult], tolerance: float = 0.02) -> tuple[str, list[str]]:
    """Pick the strategy to use, and say why.

    The choice uses validation accuracy only (the test accuracy it then reports is not used to choose):
    among the strategies whose best validation accuracy is within ``tolerance`` (absolute) of the best, the
    one that reached the target accuracy with the least energy (summed per-epoch energy up to the epoch it
    got there); if none reached the target, the one with the least total energy (wall time where energy was
    not measured).
    """
    ok = [r for r in results if r.error is None]
    if not ok:
        return "none", ["every strategy failed: see the errors in the table"]
    best = max(r.best_val_acc for r in ok)
    good = [r for r in ok if r.best_val_acc >= best - tolerance]
    measured = all(r.energy_wh is not None for r in ok)
    unit = "Wh" if measured else "s"

    def total(r: StrategyResult) -> float:
        return float(r.energy_wh if measured else r.duration_s)

    def to_target(r: StrategyResult) -> float | None:
        if r.epochs_to_target is None:
            return None
        if measured:
            return r.energy_to_target_wh
        return r.duration_s * r.epochs_to_target / max(r.epochs, 1)

    reached = [r for r in good if to_target(r) is not None]
    if reached:
        pick = min(reached, key=lambda r: to_target(r))  # type: ignore[arg-type,return-value]
        cost_line = (
            f"it reached the target accuracy with the least {'energy' if measured else 'time'}: "
            + "; ".join(
                f"{r.name} {to_target(r):.4g} {unit} ({r.epochs_to_target} epoch{'s' if r.epochs_to_target != 1 else ''})"
                for r in sorted(reached, key=lambda r: to_target(r))  # type: ignore[arg-type,return-value]
            )
        )
    else:
        pick = min(good, key=total)
        cost_line = f"no strategy near the best reached the target; it has the lowest total cost: {total(pick):.4g} {unit}"
    reasons = [
        f"best validation accuracy is {best:.3f}; {pick.name} reaches {pick.best_val_acc:.3f} (within {tolerance:.2f} "
        f"of the best) and {pick.test_acc:.3f} on the held-out test data",
        cost_line,
    ]
    scratch = next((r for r in ok if r.name == "from scratch"), None)
    if scratch is not None and pick is not scratch:
        reasons.append(
            f"against retraining from scratch (test accuracy {scratch.test_acc:.3f}"
            + (
                ", target not reached"
                if scratch.epochs_to_target is None
                else f", target after {scratch.epochs_to_target} epochs"
            )
            + f"): {pick.test_acc - scratch.test_acc:+.3f} accuracy for the same epoch budget"
        )
    return pick.name, reasons


def _quiet_lightning() -> None:
    """Keep the demo's output to its own progress lines (Lightning's banners and known notices hidden)."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        r".*module\(s\) in eval mode at the start of training.*",  # frozen parts are in eval on purpose
        r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
        r".*smaller than the logging interval.*",
        r".*does not have many workers.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the whole demo and write the report; return the summary dictionary (also saved as JSON)."""
    from lightning_reuse.demo.prechecks import ntk_precheck, resque_precheck

    config = config or DemoConfig()
    torch.set_num_threads(1)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    _quiet_lightning()
    strategies = available_strategies()
    if config.strategies is not None:
        known = {s.name for s in strategies}
        unknown = sorted(set(config.strategies) - known)
        if unknown:
            raise ValueError(f"Unknown strategies {unknown}; available: {sorted(known)}.")
        strategies = [s for s in strategies if s.name in config.strategies]
    run_dir = new_run_dir(config.out_dir)
    say = print if config.progress else (lambda *a, **k: None)
    started = time.perf_counter()
    say(f"lightning-reuse demo -> {run_dir}")
    say(f"[1/5] source model: SmallCNN(width={config.source_width}) pre-trained on clean digits")
    source = pretrained_small_cnn(width=config.source_width, epochs=config.source_epochs)
    dm = _datamodule(config)
    x_te, y_te = dm.test_set.tensors
    summary: dict[str, Any] = {"config": asdict(config), "run_dir": str(run_dir), "sections": []}
    summary["source_acc_on_new_data"] = accuracy(source, x_te, y_te)
    summary["source_acc_on_clean_data"] = accuracy(
        source, *_datamodule(config, shift="none", level=0.0).test_set.tensors
    )
    summary["target_acc"] = config.target_acc
    say(
        f"      source accuracy: {summary['source_acc_on_clean_data']:.3f} on clean test digits, "
        f"{summary['source_acc_on_new_data']:.3f} on the new ({config.shift} {config.level}) test digits"
    )

    say(
        "[2/5] RESQUE pre-check: how far is the new data from what the source knows, and what will retraining cost?"
    )
    summary["resque"] = resque_precheck(config, source, run_dir, say)

    say("[3/5] NTK screening: will reprogramming (prompt + label mapping, no weight change) work?")
    summary["ntk"] = ntk_precheck(config, source, run_dir, say)

    say(f"[4/5] running {len(strategies)} strategies for {config.max_epochs} epochs each, energy tracked")
    results = []
    for strategy in strategies:
        say(f"  - {strategy.name}: {strategy.description}")
        try:
            results.append(run_strategy(strategy, source, config, run_dir, config.target_acc))
        except Exception as err:  # one failing strategy must not lose the others' results
            say(f"    [{strategy.name}] FAILED: {type(err).__name__}: {err}")
            results.append(
                StrategyResult(
                    strategy.name,
                    strategy.description,
                    float("nan"),
                    float("nan"),
                    0,
                    None,
                    0.0,
                    0,
                    0,
                    error=f"{type(err).__name__}: {err}",
                )
            )
    pick, reasons = recommend(results)
    reasons += _precheck_reasons(summary, results)
    summary["strategies"] = [asdict(r) for r in results]
    summary["recommendation"] = {"strategy": pick, "reasons": reasons}
    summary["demo_wall_time_s"] = time.perf_counter() - started
    say("[5/5] writing the report")
    from lightning_reuse.demo.report import print_summary, write_report

    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["report"] = str(write_report(summary, run_dir, use_wandb=config.wandb))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary, printer=say)
    return summary


def _precheck_reasons(summary: dict[str, Any], results: list[StrategyResult]) -> list[str]:
    """What the pre-checks said, and how it compares with what the runs then measured."""
    reasons = []
    resque = summary.get("resque") or {}
    full = next((r for r in results if r.name == "full fine-tuning"), None)
    est = (resque.get("estimates") or {}).get("epochs_to_target")
    if full is not None and full.error is None and est and est.get("value") is not None:
        actual = (
            "not reached" if full is None or full.epochs_to_target is None else str(full.epochs_to_target)
        )
        reasons.append(
            f"RESQUE_dist = {resque['score']:.3f}: predicted {est['value']:.1f} epochs to "
            f"{summary['target_acc']:.0%} validation accuracy [{est['lower']:.1f}, {est['upper']:.1f}]; "
            f"full fine-tuning took {actual}"
        )
    est_wh = (resque.get("estimates") or {}).get("energy_wh")
    if (
        est_wh
        and est_wh.get("value") is not None
        and full is not None
        and full.energy_to_target_wh is not None
    ):
        reasons.append(
            f"RESQUE predicted {est_wh['value']:.4f} Wh [{est_wh['lower']:.4f}, {est_wh['upper']:.4f}] to reach "
            f"the target by full fine-tuning; measured: {full.energy_to_target_wh:.4f} Wh"
        )
    ntk = summary.get("ntk") or {}
    if ntk.get("decision"):
        rep = next((r for r in results if r.name == "reprogramming"), None)
        got = "" if rep is None else f"; reprogramming then reached {rep.test_acc:.3f} test accuracy"
        reasons.append(
            f"NTK screening said {ntk['decision']} for reprogramming (NTK score {ntk['ntk_score']:.3f}){got}"
        )
    return reasons
