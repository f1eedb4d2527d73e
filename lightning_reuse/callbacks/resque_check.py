"""RESQUECheck: before a fit, score how far the new data or task is from what the model knows, and what
retraining will cost (Sangarya and Kim, "RESQUE", AAAI 2025, arXiv:2412.15511).

Thin glue over :mod:`lightning_reuse.functional.resque` and :mod:`lightning_reuse.metrics.resque`: one
forward pass of the frozen model over user-given dataloaders at ``on_fit_start``, features from a hook on one
named layer, the score logged per class and overall, optional thresholds, and a cost estimate from a
:class:`~lightning_reuse.energy.ledger.RetrainingLedger` of past runs.

Example:
    >>> import torch, lightning.pytorch as pl
    >>> from lightning_reuse.samples.digits import digits_loader
    >>> from lightning_reuse.samples.models import SmallCNN
    >>> class Classifier(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = SmallCNN(num_classes=4, width=4)
    ...     def forward(self, x):
    ...         return self.net(x)
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.rand(64, 1, 8, 8, generator=g), torch.arange(64) % 4
    >>> check = RESQUECheck(digits_loader(x.flip(-1), y), layer="net.block2",
    ...                     original_dataloader=digits_loader(x, y), num_classes=4, progress_bar=False)
    >>> trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    >>> _ = torch.manual_seed(0)
    >>> result = check.run(trainer, Classifier())
    >>> result.mode, 0 < result.score < 1, result.n_samples
    ('dist', True, {'original': 64, 'shifted': 64})
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from typing_extensions import override

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.callbacks._windows import find_energy_monitor, measurement_window
from lightning_reuse.energy.ledger import CostEstimate, RetrainingLedger
from lightning_reuse.functional.resque import Pooling, class_specificity
from lightning_reuse.functional.resque_config import RESQUEConfig
from lightning_reuse.metrics.resque import RESQUEDist, RESQUETask
from lightning_reuse.metrics.transferability import BaselineFeatures
from lightning_reuse.nn.batch import output_tensor, read_batch, split_batch
from lightning_reuse.nn.layers import capture_output, get_layer


class RESQUEThresholdWarning(LightningReuseWarning):
    """The RESQUE score is above the ``warn_above`` threshold: retraining is likely to be expensive."""


@dataclass
class RESQUEResult:
    """What one RESQUE pass found (``RESQUECheck.result``)."""

    mode: str
    score: float
    per_class: dict[int, float]
    n_samples: dict[str, int]
    duration_s: float
    energy: Any = None  # the EnergyMonitor's record of the "resque-precheck" window, when one is attached
    estimates: dict[str, CostEstimate] = field(default_factory=dict)
    stopped: bool = False
    baselines: dict[str, float] = field(default_factory=dict)  # transferability baselines on the new data


_WHO = "RESQUECheck (or pass `batch_fn=` returning (model_inputs, labels))"


def default_batch_fn(batch: Any) -> tuple[Any, Tensor | None]:
    """``(x, y, ...)`` -> ``(x, y)``; ``x`` or ``(x,)`` -> ``(x, None)``; mappings: labels under ``labels`` /
    ``label`` / ``y`` / ``targets``, the rest are the model inputs (``model(**inputs)``).

    The package's one batch reader, :func:`lightning_reuse.nn.batch.split_batch`; pass ``batch_fn=`` to
    RESQUECheck for other layouts.
    """
    return split_batch(batch, who=_WHO)


def _logits(out: Any) -> Tensor | None:
    """The model's ``[B, Z]`` logits in an output, or None (no tensor, or not one row per sample)."""
    try:
        logits = output_tensor(out, ("logits",), who=_WHO)
    except TypeError:
        return None
    return logits if logits.ndim == 2 and logits.is_floating_point() else None


def _device_of(module: LightningModule) -> torch.device:
    return getattr(module, "device", None) or next(module.parameters()).device


class _FrozenModel:
    """Eval mode + no grad inside; modes, grads and every RNG restored exactly on exit."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.modes = {name: m.training for name, m in self.module.named_modules()}
        self.rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002 (global state kept)
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.grad_mode = torch.is_grad_enabled()
        self.module.eval()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc: Any) -> None:
        torch.set_grad_enabled(self.grad_mode)
        for name, m in self.module.named_modules():
            m.training = self.modes[name]
        torch.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])  # noqa: NPY002
        random.setstate(self.rng[2])
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def _check_fit_options(
    config: RESQUEConfig,
    original_dataloader: Any,
    warn_above: Any,
    stop_above: Any,
    record_to_ledger: bool,
    ledger: Any,
    target: Any,
) -> None:
    """The callback's own options (loaders, thresholds, ledger); the pass's options are in ``config``."""
    if config.mode == "dist" and original_dataloader is None:
        raise ValueError(
            "`mode='dist'` compares two datasets: pass `original_dataloader=` as well. "
            "HINT: give the original-distribution loader, or use mode='task' for a new task."
        )
    for name, value in (("warn_above", warn_above), ("stop_above", stop_above)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(
                f"`{name}` must be a number or None, got {value!r}. HINT: pass a RESQUE score, e.g. {name}=0.3."
            )
    if record_to_ledger and (ledger is None or target is None):
        raise ValueError(
            "`record_to_ledger=True` needs `ledger=` and `target=(metric_name, value)`. "
            "HINT: pass both, e.g. ledger='ledger.sqlite', target=('val_acc', 0.9)."
        )


class RESQUEAssumptionWarning(LightningReuseWarning):
    """``mode="dist"`` looks wrong for this data: the shifted classes do not correspond to the original ones."""


def _check_dist_assumption(metric: RESQUEDist) -> None:
    """Warn when the shifted class sums are no nearer their own class than the others (see ``class_specificity``)."""
    with metric.sync_context():
        spec = class_specificity(metric.sums, metric.shifted_sums)
    if spec <= 0:  # NaN (fewer than 2 classes) does not warn
        warnings.warn(
            f"RESQUE_dist assumes the same label space and related inputs, but the shifted data's classes are "
            f"no nearer their own original class than the other classes (class specificity {spec:.3f} <= 0): "
            "the two datasets look unrelated, and RESQUE_dist can then be smaller than for a mild shift of the "
            'same data. HINT: score the new data as a new task with mode="task" (no original_dataloader).',
            RESQUEAssumptionWarning,
            stacklevel=3,
        )


class RESQUECheck(Callback):
    """Score the new data (distribution shift) or the new task with RESQUE once, before training.

    Args:
        dataloader: the new data: the shifted samples (``mode="dist"``) or the new task's training samples
            (``mode="task"``), batches ``(x, y)``.
        layer: name of the hooked Conv/Linear layer (``model.named_modules()``; a wrong name lists them).
        original_dataloader: samples of the original distribution; given -> ``mode="dist"``.
        mode: ``"auto"`` (dist if ``original_dataloader`` is given, else task), ``"dist"`` or ``"task"``.
        num_classes: number of classes (required for ``"dist"`` and for a task reservoir).
        pooling: how a layer output becomes one vector per sample (see ``pool_features``).
        label_source: ``"target"`` (the batch labels) or ``"prediction"`` (group the new data by the model's
            own argmax, for unlabeled shifted data; dist mode only, the original data keeps its labels).
        warn_above: warn (``RESQUEThresholdWarning``) when the score exceeds it.
        stop_above: stop the fit before the first step when the score exceeds it.
        reservoir_size: per-class bound on the features kept for ``"task"`` (``None``: all).
        ledger: a ``RetrainingLedger`` (or its SQLite path) to estimate epochs, Wh, gCO2 and wall time.
        ledger_tag: only runs with this tag are used (and new runs get it).
        record_to_ledger: at the end of the fit, add this run (score, epochs until ``target``, energy from an
            attached EnergyMonitor, wall time) to the ledger.
        target: ``(metric_name, value)``: the epoch at which ``trainer.callback_metrics[metric_name] >= value``
            first holds is this run's epochs to target.
        batch_fn: maps a batch to ``(model_inputs, labels)``; ``model_inputs`` may be a tensor, a tuple
            (``model(*inputs)``) or a mapping (``model(**inputs)``; an ``attention_mask`` entry reaches the
            token poolings); the whole collection is moved to the model's device.
        progress_bar: show a progress bar during the pass (rank 0).
        baselines: also report, from the same pass, the transferability baselines on the new data's
            features at ``layer`` (LogME, H-score, leave-one-out k-NN, cross-fitted probe; LEEP, NCE and,
            in dist mode, the source's own accuracy from the model's logits), logged as
            ``<log_prefix>/baseline/<name>`` (see ``docs/transferability.md``). Needs the batch labels
            (skipped with ``label_source="prediction"``); keeps the new data's features (``n x D``).
        log_prefix: prefix of the logged keys (``"resque/score"``, ``"resque/class_3"``, ...).
    """

    def __init__(
        self,
        dataloader: DataLoader | Iterable[Any],
        layer: str,
        original_dataloader: DataLoader | Iterable[Any] | None = None,
        mode: Literal["auto", "dist", "task"] = "auto",
        num_classes: int | None = None,
        pooling: Pooling = "default",
        label_source: Literal["target", "prediction"] = "target",
        warn_above: float | None = None,
        stop_above: float | None = None,
        reservoir_size: int | None = None,
        ledger: RetrainingLedger | str | Path | None = None,
        ledger_tag: str | None = None,
        record_to_ledger: bool = False,
        target: tuple[str, float] | None = None,
        batch_fn: Callable[[Any], tuple[Any, Tensor | None]] = default_batch_fn,
        progress_bar: bool = True,
        log_prefix: str = "resque",
        baselines: bool = True,
    ) -> None:
        if mode == "auto":  # the only callback-level part of the mode: it depends on the loaders given
            mode = "dist" if original_dataloader is not None else "task"
        self.config = RESQUEConfig(layer, mode, num_classes, pooling, label_source, reservoir_size)
        _check_fit_options(
            self.config, original_dataloader, warn_above, stop_above, record_to_ledger, ledger, target
        )
        self.dataloader, self.original_dataloader = dataloader, original_dataloader
        self.warn_above, self.stop_above = warn_above, stop_above
        self.ledger = RetrainingLedger(ledger) if isinstance(ledger, (str, Path)) else ledger
        self.ledger_tag, self.record_to_ledger, self.target = ledger_tag, record_to_ledger, target
        self.batch_fn, self.progress_bar, self.log_prefix = batch_fn, progress_bar, log_prefix
        self.baselines = bool(baselines)
        self.result: RESQUEResult | None = None
        self._epochs_to_target: int | None = None
        self._fit_started = 0.0

    @property
    def mode(self) -> str:
        """``"dist"`` or ``"task"`` (``mode="auto"`` resolved)."""
        return self.config.mode

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layer=self.config.layer, mode=self.mode, log_prefix=self.log_prefix)

    # ------------------------------------------------------------------ the pass
    def _check_length(self, loader: Iterable[Any], side: str, world: int) -> int | None:
        """The number of batches of ``loader`` (None if unknown); refuse empty loaders and too few batches."""
        try:
            total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            return None
        if total == 0:
            raise ValueError(
                f"RESQUECheck: the {side} dataloader is empty. HINT: pass a loader with samples."
            )
        if world > 1 and total < world:
            raise ValueError(
                f"RESQUECheck: the {side} dataloader has {total} batches for {world} ranks; each rank needs "
                "one. HINT: use a smaller batch size."
            )
        return total

    def _batch_features(
        self, pl_module: LightningModule, store: dict[str, Any], batch: Any, side: str, device: torch.device
    ) -> tuple[Tensor, Tensor, Any]:
        """Pooled features ``[B, D]``, labels ``[B]`` and the model output of one batch (one forward)."""
        # labels travel with the inputs, before the forward: a copy after it would wait for the GPU
        read = read_batch(batch, self.batch_fn, who=_WHO).to(device)
        store.pop("output", None)
        out = read.forward(pl_module)
        y = read.targets
        if "output" not in store:
            raise ValueError(
                f"RESQUECheck: layer {self.config.layer!r} did not run in the forward pass. "
                "HINT: pick a layer that `forward` uses (see `lightning_reuse.nn.layers.layer_names`)."
            )
        if side == "shifted" and self.config.label_source == "prediction":
            y = output_tensor(out, ("logits",), who=_WHO).argmax(-1)
        if y is None:
            raise ValueError(
                f"RESQUECheck: the {side} dataloader yields unlabeled batches, but RESQUE groups samples "
                "by class. HINT: yield `(x, y)` batches, pass `batch_fn=` returning (x, y), or, for "
                "unlabeled shifted data, `label_source='prediction'`."
            )
        return self.config.pool(output_tensor(store["output"], who=_WHO), read.attention_mask), y, out

    def _features(
        self, pl_module: LightningModule, loader: Iterable[Any], side: str, trainer: Trainer
    ) -> Iterator[tuple[Tensor, Tensor, Any]]:
        """Features and labels of this rank's batches of ``loader`` (batch ``i`` goes to rank ``i % world``)."""
        world, rank = trainer.world_size, trainer.global_rank
        total = self._check_length(loader, side, world)
        bar = None
        if self.progress_bar and trainer.is_global_zero:
            bar = tqdm(total=total, desc=f"RESQUE ({side})", leave=False, dynamic_ncols=True)
        seen = 0
        device = _device_of(pl_module)
        with capture_output(pl_module, self.config.layer) as store:
            for i, batch in enumerate(loader):
                if bar is not None:
                    bar.update(1)
                if i % world != rank:  # batch-level sharding: exact, no padded duplicates
                    continue
                seen += 1
                yield self._batch_features(pl_module, store, batch, side, device)
        if bar is not None:
            bar.close()
        if seen == 0 and total is None:
            raise ValueError(
                f"RESQUECheck: the {side} dataloader yielded no batches on rank {rank}. "
                "HINT: pass a loader with at least one batch per rank."
            )

    def _metric(self) -> RESQUEDist | RESQUETask:
        c = self.config
        if c.mode == "dist":
            return RESQUEDist(num_classes=c.num_classes, return_per_class=True)
        return RESQUETask(num_classes=c.num_classes, reservoir_size=c.reservoir_size)

    def run(self, trainer: Trainer, pl_module: LightningModule) -> RESQUEResult:
        """Run the pass now (``on_fit_start`` calls this) and return the result."""
        get_layer(pl_module, self.config.layer)  # fail fast with the list of valid names
        start = time.perf_counter()
        dist = self.mode == "dist"
        sides = (("original", self.original_dataloader), ("shifted", self.dataloader)) if dist else None
        with measurement_window(trainer, "resque-precheck") as record, _FrozenModel(pl_module):
            metric: Any = self._metric().to(_device_of(pl_module))
            store = self._baseline_store(pl_module)
            counts = {}
            for side, loader in sides or (("new task", self.dataloader),):
                n = 0
                for feats, y, out in self._features(pl_module, loader, side, trainer):
                    metric.update(feats, y, shifted=side == "shifted") if dist else metric.update(feats, y)
                    if store is not None and side != "original":
                        store.update(feats, y, _logits(out))
                    n += len(y)
                counts[side] = n
            if dist:
                score, per_class_t = metric.compute()
                per_class = {c: float(v) for c, v in enumerate(per_class_t.tolist()) if v == v}
                _check_dist_assumption(metric)
            else:
                score, per_class = metric.compute(), {}
            baselines = {} if store is None else store.compute(source_accuracy=dist)
        counts = {
            k: int(trainer.strategy.reduce(torch.tensor(v), reduce_op="sum")) for k, v in counts.items()
        }
        result = RESQUEResult(self.mode, float(score), per_class, counts, time.perf_counter() - start, record)
        result.baselines = baselines
        return result

    def _baseline_store(self, pl_module: LightningModule) -> BaselineFeatures | None:
        """The new data's features, labels and logits for the baselines (None when they are off)."""
        if not self.baselines or self.config.label_source == "prediction":
            return None
        return BaselineFeatures(num_classes=self.config.num_classes).to(_device_of(pl_module))

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.perf_counter()
        self._epochs_to_target = None
        result = self.run(trainer, pl_module)
        if self.ledger is not None:
            result.estimates = self.ledger.predict_all(result.score, variant=self.mode, tag=self.ledger_tag)
        self.result = result
        self._log(trainer, result)
        if self.warn_above is not None and result.score > self.warn_above:
            warnings.warn(
                f"RESQUE_{result.mode} = {result.score:.4f} is above warn_above={self.warn_above}: the new "
                f"{'data is far from' if result.mode == 'dist' else 'task is poorly separated by'} what the "
                "model knows, so retraining is likely to be expensive. HINT: consider another source model, "
                "or raise `warn_above` if this cost is expected.",
                RESQUEThresholdWarning,
                stacklevel=2,
            )
        if self.stop_above is not None and result.score > self.stop_above:
            result.stopped = True
            trainer.should_stop = True
            rank_zero_info(
                f"RESQUECheck: stopping before training: RESQUE_{result.mode} = {result.score:.4f} > "
                f"stop_above={self.stop_above}."
            )

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.target is None or self._epochs_to_target is not None or trainer.sanity_checking:
            return
        name, value = self.target
        current = trainer.callback_metrics.get(name)
        if current is not None and float(current) >= value:
            self._epochs_to_target = trainer.current_epoch + 1

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not (self.record_to_ledger and trainer.is_global_zero and self.result is not None):
            return
        if self._epochs_to_target is None:
            rank_zero_info(
                f"RESQUECheck: target {self.target} not reached; this run is not recorded in the ledger."
            )
            return
        monitor = find_energy_monitor(trainer)
        total = getattr(monitor, "total", None) if monitor is not None else None
        assert self.ledger is not None
        self.ledger.add_run(  # bookkeeping never fails a finished fit: an unwritable ledger warns, run kept
            self.result.score,
            epochs_to_target=self._epochs_to_target,
            energy=total,
            wall_time_s=None if total is not None else time.perf_counter() - self._fit_started,
            variant=self.mode,
            tag=self.ledger_tag or "",
            on_error="keep",
        )

    def _log(self, trainer: Trainer, result: RESQUEResult) -> None:
        if not trainer.is_global_zero:
            return
        p = self.log_prefix
        metrics = {f"{p}/score": result.score, f"{p}/duration_s": result.duration_s}
        metrics.update({f"{p}/class_{c}": v for c, v in result.per_class.items()})
        metrics.update({f"{p}/baseline/{k}": v for k, v in result.baselines.items()})
        if result.energy is not None:
            metrics[f"{p}/energy_wh"] = float(result.energy.energy_wh)
        for q, est in result.estimates.items():
            if est.available:
                metrics.update({f"{p}/estimated_{q}": est.value, f"{p}/estimated_{q}_upper": est.upper})
        rank_zero_info(f"RESQUE_{result.mode} = {result.score:.4f} over {result.n_samples} samples.")
        for est in result.estimates.values():
            rank_zero_info(str(est))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if type(logger).__name__ == "WandbLogger":
                self._log_wandb(logger, result)

    def _log_wandb(self, logger: Any, result: RESQUEResult) -> None:
        import wandb

        p = self.log_prefix
        rows = [[str(c), v] for c, v in sorted(result.per_class.items())] or [["all", result.score]]
        table = wandb.Table(columns=["class", "resque"], data=rows)
        logger.experiment.log(
            {
                f"{p}/per_class": table,
                f"{p}/per_class_bar": wandb.plot.bar(
                    table, "class", "resque", title=f"RESQUE_{result.mode} per class"
                ),
            }
        )
        if result.baselines:
            rows = [[f"resque_{result.mode}", result.score], *[[k, v] for k, v in result.baselines.items()]]
            logger.experiment.log({f"{p}/baselines": wandb.Table(columns=["score", "value"], data=rows)})
        logger.experiment.summary[f"{p}/score"] = result.score

    @override
    def state_dict(self) -> dict[str, Any]:
        r = self.result
        return {"score": r.score, "mode": r.mode, "per_class": dict(r.per_class)} if r is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded_state = dict(state_dict)  # the score of the run this checkpoint came from
