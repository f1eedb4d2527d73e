"""EnergyMonitor: measured energy and carbon of every fit, per epoch and per stage, with a prediction.

Thin glue from trainer hooks to the framework-free :mod:`lightning_reuse.energy` core
(:class:`~lightning_reuse.energy.meter.EnergyMeter`, backends, :func:`~lightning_reuse.energy.predict.predict_total`).

Example:
    >>> import lightning.pytorch as pl
    >>> from lightning.pytorch.demos.boring_classes import BoringModel
    >>> monitor = EnergyMonitor(backend="simulated")
    >>> trainer = pl.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=2, callbacks=[monitor],
    ...                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
    ...                      enable_model_summary=False)
    >>> trainer.fit(BoringModel())
    >>> len(monitor.epochs), monitor.total.method["cpu"], monitor.total.energy_wh > 0
    (2, 'simulated', True)
    >>> with monitor.window("eval") as record:  # also outside a fit
    ...     _ = trainer.validate(BoringModel(), verbose=False)
    >>> record.energy_wh > 0
    True
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lightning_reuse.energy.backends import (
    EnergyBackend,
    NVMLBackend,
    SimulatedBackend,
    physical_gpu_id,
    validate_country,
)
from lightning_reuse.energy.meter import EnergyMeter
from lightning_reuse.energy.predict import Prediction, predict_total
from lightning_reuse.energy.records import EnergyRecord

BACKENDS = ("codecarbon", "nvml", "simulated")
_KEEP = object()  # `_ensure_meter`: keep the current GPU ids
_FIELDS = ("cpu_wh", "gpu_wh", "ram_wh", "energy_wh", "co2_g")


class EnergyMonitor(Callback):
    """Measure (re)training energy and CO2 per epoch, per stage and in named windows; predict the total.

    Logs through every attached logger: per epoch ``energy/epoch_wh`` (and ``_cpu_wh``, ``_gpu_wh``,
    ``_ram_wh``, ``_co2_g``, ``_duration_s``), ``energy/cumulative_wh`` and, when the run length is known,
    ``energy/predicted_total_wh`` with ``_low`` / ``_high`` (and ``energy/predicted_total_co2_g``); at the end
    of a fit, once, ``energy/total_*``, ``energy/outside_epochs_wh`` and ``energy/window/<name>_wh``. Values
    are in Wh, g CO2e and s (float32 loggers mangle kWh). A ``validate`` / ``test`` / ``predict`` call logs
    ``energy/<stage>_wh`` (and the same split) once at its end. The measurement method of each component
    (RAPL / NVML / estimate / simulated) is logged as hyper-parameters and kept in every record's
    ``method``. With a ``WandbLogger`` (rank 0 only), also a per-epoch table, a line plot and run-summary
    totals.

    Args:
        backend: ``"codecarbon"`` (default: codecarbon's offline tracker), ``"nvml"`` (GPU energy
            counter), ``"simulated"`` (constant 10 W CPU + 5 W RAM; deterministic tests), or an
            :class:`~lightning_reuse.energy.backends.EnergyBackend` instance.
        country_iso_code: 3-letter ISO code of the grid the machine draws from (default ``"USA"``).
        carbon_intensity_g_per_kwh: a fixed intensity (gCO2e/kWh) instead of the country's.
        pue: power usage effectiveness of the data centre (>= 1).
        measure_power_secs: codecarbon's sampling interval in seconds.
        ddp_mode: ``"node"``: one machine-wide measurement per node (local rank 0), the other ranks
            measure nothing; ``"process"``: every rank measures its own process and only its own GPU
            (the strategy's root device, mapped through ``CUDA_VISIBLE_DEVICES``; a rank not on a GPU
            measures the node's GPUs on local rank 0 only). Either way the per-epoch and total figures are
            summed across ranks and logged once. A backend *instance* is used as given (set its GPUs
            yourself).
        predict: log the predicted total after each epoch.
        confidence: coverage of the prediction interval.
        prior_rel_sd: epoch-to-epoch relative spread assumed until two steady epochs are observed (raise it
            on shared machines, where other jobs change the epochs' cost).
        warmup_batches: batches of the first epoch treated as warm-up by the prediction.
        measure_validation: keep the ``"fit-validation"`` window (two extra reads per epoch; with the NVML
            backend on epochs shorter than ~1 s, ``False`` keeps the overhead under 1%).

    Attributes:
        total: :class:`EnergyRecord` of the fit so far (cumulative over resumed runs).
        epochs: per-epoch records (summed over ranks). ``sum(epochs) + outside_epochs == total``.
        windows: name -> record of named windows (``window(name)``, e.g. ``"resque-precheck"``).
        stages: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` -> record of the last such call.
        predictions: the prediction made after each epoch.
        status: ``"ok"``, ``"interrupted"`` or ``"failed: ..."``.
    """

    def __init__(
        self,
        backend: str | EnergyBackend = "codecarbon",
        country_iso_code: str = "USA",
        carbon_intensity_g_per_kwh: float | None = None,
        pue: float = 1.0,
        measure_power_secs: float = 15.0,
        ddp_mode: Literal["node", "process"] = "node",
        predict: bool = True,
        confidence: float = 0.9,
        prior_rel_sd: float = 0.1,
        warmup_batches: int = 2,
        measure_validation: bool = True,
    ) -> None:
        if isinstance(backend, str) and backend not in BACKENDS:
            raise ValueError(
                f"`backend` must be one of {BACKENDS} or an EnergyBackend instance, got {backend!r}."
            )
        if not isinstance(backend, (str, EnergyBackend)):
            raise TypeError(
                f"`backend` must be a name in {BACKENDS} or an EnergyBackend instance, got "
                f"{type(backend).__name__}."
            )
        if ddp_mode not in ("node", "process"):
            raise ValueError(f"`ddp_mode` must be 'node' or 'process', got {ddp_mode!r}.")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
        if prior_rel_sd < 0:
            raise ValueError(f"`prior_rel_sd` must be >= 0 (0.1 = 10% spread), got {prior_rel_sd}.")
        if warmup_batches < 0:
            raise ValueError(f"`warmup_batches` must be >= 0, got {warmup_batches}.")
        if pue < 1.0:
            raise ValueError(f"`pue` must be >= 1.0, got {pue}.")
        if carbon_intensity_g_per_kwh is not None and not carbon_intensity_g_per_kwh >= 0:
            raise ValueError(
                f"`carbon_intensity_g_per_kwh` must be >= 0 gCO2e/kWh, got {carbon_intensity_g_per_kwh}. "
                "HINT: pass e.g. 56.0 (France) or 369.5 (USA), or leave it None to use `country_iso_code`."
            )
        if not measure_power_secs > 0:
            raise ValueError(
                f"`measure_power_secs` must be > 0 seconds, got {measure_power_secs}. "
                "HINT: codecarbon's default is 15.0; 1.0 samples estimated components every second."
            )
        self.country_iso_code = validate_country(country_iso_code)
        self.carbon_intensity_g_per_kwh = carbon_intensity_g_per_kwh
        self.pue = pue
        self.measure_power_secs = measure_power_secs
        self.ddp_mode = ddp_mode
        self.predict = predict
        self.confidence = confidence
        self.prior_rel_sd = prior_rel_sd
        self.warmup_batches = warmup_batches
        self.measure_validation = measure_validation
        self._backend_spec = backend
        self._gpu_ids: list[int | str] | None = None  # this rank's GPUs in ddp_mode="process" (None: all)
        self._trainer_ref: weakref.ReferenceType[pl.Trainer] | None = None
        self.meter: EnergyMeter | None = None
        self._measuring = True  # False on ranks that do not measure (ddp_mode="node", local rank > 0)
        self.epochs: list[EnergyRecord] = []
        self.windows: dict[str, EnergyRecord] = {}
        self.stages: dict[str, EnergyRecord] = {}
        self.predictions: list[Prediction] = []
        self.outside_epochs = EnergyRecord()
        self.status = "idle"
        self._offset = EnergyRecord()
        self._final: EnergyRecord | None = None
        self._stage: str | None = None
        self._reset_fit_state()
        self._fit_done = False

    # ------------------------------------------------------------------ construction helpers
    def _make_backend(self, measuring: bool) -> EnergyBackend:
        if not measuring:
            return SimulatedBackend(cpu_w=0.0, gpu_w=0.0, ram_w=0.0)  # "not measured" on this rank
        spec = self._backend_spec
        if isinstance(spec, EnergyBackend):
            return spec
        if spec == "simulated":
            return SimulatedBackend(carbon_intensity_g_per_kwh=self._intensity(), pue=self.pue)
        if spec == "nvml":
            return NVMLBackend(
                device_indices=self._gpu_ids,
                country_iso_code=self.country_iso_code,
                carbon_intensity_g_per_kwh=self.carbon_intensity_g_per_kwh,
                pue=self.pue,
            )
        from lightning_reuse.energy.codecarbon_backend import CodeCarbonBackend

        return CodeCarbonBackend(
            country_iso_code=self.country_iso_code,
            carbon_intensity_g_per_kwh=self.carbon_intensity_g_per_kwh,
            pue=self.pue,
            measure_power_secs=self.measure_power_secs,
            tracking_mode="process" if self.ddp_mode == "process" else "machine",
            gpu_ids=self._gpu_ids,
        )

    def _intensity(self) -> float:
        from lightning_reuse.energy.backends import carbon_intensity

        return carbon_intensity(self.country_iso_code, self.carbon_intensity_g_per_kwh)

    def _rank_gpu_ids(self, trainer: pl.Trainer) -> list[int | str] | None:
        """GPUs this rank measures: all (``None``) except in ``ddp_mode="process"``, where every rank
        measures its own GPU (physical id), so that summing ranks counts each GPU once."""
        if self.ddp_mode != "process":
            return None
        device = trainer.strategy.root_device
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            with contextlib.suppress(ValueError):  # an index CUDA_VISIBLE_DEVICES does not explain
                return [physical_gpu_id(index)]
        return None if trainer.local_rank == 0 else []  # off-GPU ranks: the node's GPUs once

    def _ensure_meter(self, measuring: bool = True, gpu_ids: Any = _KEEP) -> EnergyMeter:
        # New GPU ids rebuild the backend, unless a user's window runs around this call (keep its measurement).
        new_ids = gpu_ids is not _KEEP and gpu_ids != self._gpu_ids
        if new_ids and not (self.meter is not None and self.meter.running):
            self._gpu_ids = gpu_ids
        else:
            new_ids = False
        if self.meter is None or self._measuring != measuring or new_ids:
            self._measuring = measuring
            self.meter = EnergyMeter(self._make_backend(measuring))
            self.meter.windows = self.windows
        return self.meter

    def _reset_fit_state(self) -> None:
        self._owner = True
        self._steady: float | None = None
        self._fit_start: EnergyRecord | None = None
        self._boundary: EnergyRecord | None = None
        self._boundary_total = EnergyRecord()
        self._epoch_in_fit = 0
        self._n_batches = 0
        self._warm: EnergyRecord | None = None
        self._val_start: EnergyRecord | None = None

    # ------------------------------------------------------------------ public API
    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[EnergyRecord]:
        """Measure a named block: ``with monitor.window("eval") as record: ...``; nestable, usable anywhere.

        Inside a fit it reads the running tracker; outside one it starts a measurement for the block.
        The record is filled when the block ends and accumulated into ``windows[name]``. A window that
        closes after the fit's totals were logged (e.g. in ``on_fit_end``) is logged at once to the last
        trainer's loggers (``energy/window/<name>_wh`` and ``_co2_g``, rank 0).
        """
        meter = self._ensure_meter(self._measuring)
        with meter.window(name) as record:
            yield record
        if self._fit_done:
            self._log_late_window(name)

    def _log_late_window(self, name: str) -> None:
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None or trainer.global_rank != 0 or name not in self.windows:
            return
        rec = self.windows[name]
        metrics = {f"energy/window/{name}_wh": rec.energy_wh, f"energy/window/{name}_co2_g": rec.co2_g}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trainer_ref"] = None  # weak references do not pickle (ddp_spawn pickles callbacks)
        return state

    @property
    def total(self) -> EnergyRecord:
        """The fit so far (live while fitting, final and summed over ranks after it)."""
        if self._final is not None:
            return self._final
        if (
            self._stage == "fit"
            and self.meter is not None
            and self.meter.running
            and self._fit_start is not None
        ):
            return self._offset + (self.meter.read() - self._fit_start)
        return self._offset + EnergyRecord()

    @property
    def prediction(self) -> Prediction | None:
        """The latest prediction of the fit's total, if any."""
        return self.predictions[-1] if self.predictions else None

    # ------------------------------------------------------------------ distributed helpers
    def _reduce(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, records: list[EnergyRecord]
    ) -> None:
        """Sum energy/CO2 of ``records`` over ranks, in place (duration stays this rank's)."""
        if trainer.world_size <= 1:
            return
        dtype = torch.float32 if pl_module.device.type == "mps" else torch.float64
        values = torch.tensor([[getattr(r, f) for f in _FIELDS] for r in records], dtype=dtype)
        summed = trainer.strategy.reduce(values.to(pl_module.device).clone(), reduce_op="sum")
        for record, row in zip(records, summed.cpu().tolist()):
            for f, v in zip(_FIELDS, row):
                setattr(record, f, v)
            if not self._measuring:  # a non-measuring rank reports what the measuring ranks measured
                record.method = {}

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        measuring = self.ddp_mode == "process" or trainer.local_rank == 0
        self._trainer_ref = weakref.ref(trainer)
        self._stage = stage
        if stage == "fit":
            if self._fit_done:  # a new fit with the same monitor: start from zero
                self.epochs, self.predictions = [], []
                self.windows = {}
                self._offset = EnergyRecord()
                if self.meter is not None:
                    self.meter.windows = self.windows
            self._fit_done = False
            self._final = None
            self._reset_fit_state()
        meter = self._ensure_meter(measuring, self._rank_gpu_ids(trainer))
        # A fresh measurement per trainer call, unless a user's window already runs one around it.
        self._owner = not meter.running
        self._fit_start = meter.start() if self._owner else meter.read()
        meter.read()  # codecarbon's first flush initialises its tables (~60 ms): keep it out of epoch 1
        self.status = meter.status

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.meter is None:
            return
        if self._boundary is None:
            self._boundary = self.meter.read()
        self._n_batches = (
            int(trainer.num_training_batches) if trainer.num_training_batches != float("inf") else 0
        )
        self._warm = self._val_start = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (
            self.meter is not None
            and self._epoch_in_fit == 0
            and self.warmup_batches > 0
            and batch_idx + 1 == self.warmup_batches
            and self._n_batches > 2 * self.warmup_batches
        ):
            self._warm = self.meter.read()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.meter is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.measure_validation:
            self._val_start = self.meter.read()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.meter is not None and self._val_start is not None and trainer.state.fn == "fit":
            if not trainer.sanity_checking:
                self.meter.add_window("fit-validation", self.meter.read() - self._val_start)
        if trainer.state.fn == "validate":
            self._finish_stage(trainer, pl_module, "validate")

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, pl_module, "test")

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, pl_module, "predict")

    def _steady_first_epoch(self, end: EnergyRecord) -> float | None:
        if self._warm is None:
            return None
        train_end = self._val_start or end
        rate = (train_end - self._warm).energy_wh / (self._n_batches - self.warmup_batches)
        val = (end - self._val_start).energy_wh if self._val_start is not None else 0.0
        return rate * self._n_batches + val

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.meter is None or self._boundary is None or self._fit_start is None:
            return
        end = self.meter.read()
        epoch = end - self._boundary
        first = self._epoch_in_fit == 0
        steady = self._steady_first_epoch(end) if first else None
        setup = (self._boundary - self._fit_start) if first else EnergyRecord()
        local_epoch_wh = epoch.energy_wh
        self._reduce(trainer, pl_module, [epoch, setup])
        if steady is not None and local_epoch_wh > 0:
            steady *= epoch.energy_wh / local_epoch_wh  # scale the local steady rate to all ranks
        self._boundary = end
        self._epoch_in_fit += 1
        self.epochs.append(epoch)
        self._boundary_total = (self._boundary_total if not first else self._offset + setup) + epoch
        metrics = epoch.metrics("energy/epoch")
        metrics["energy/cumulative_wh"] = self._boundary_total.energy_wh
        metrics["energy/cumulative_co2_g"] = self._boundary_total.co2_g
        if self.predict:
            self._predict(trainer, steady, metrics)
        metrics["epoch"] = float(trainer.current_epoch)
        # Straight to the loggers (rank 0 only; the values are already summed over ranks): Lightning's
        # `self.log` costs ~4 ms per key on a small CPU, which alone would be a ~5% step-time overhead here.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _total_epochs(self, trainer: pl.Trainer) -> float | None:
        bounds = []
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            bounds.append(float(trainer.max_epochs))
        steps_per_epoch = self._n_batches / max(1, trainer.accumulate_grad_batches)
        if trainer.max_steps is not None and trainer.max_steps > 0 and steps_per_epoch > 0:
            bounds.append(trainer.max_steps / steps_per_epoch)
        return min(bounds) if bounds else None

    def _min_epochs(self, trainer: pl.Trainer, observed: int) -> float | None:
        stoppers = [cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]  # type: ignore[attr-defined]
        if not stoppers:
            return None
        left = min(max(cb.patience - cb.wait_count, 0) for cb in stoppers)
        return max(float(observed + left), float(trainer.min_epochs or 0))

    def _predict(self, trainer: pl.Trainer, steady: float | None, metrics: dict[str, float]) -> None:
        total_epochs = self._total_epochs(trainer)
        if total_epochs is None:
            return
        if steady is not None:
            self._steady = steady
        observed = len(self.epochs)
        prior_epochs = observed - self._epoch_in_fit  # restored from a checkpoint
        spent = self._boundary_total
        min_epochs = self._min_epochs(trainer, observed)
        pred = predict_total(
            [e.energy_wh for e in self.epochs[prior_epochs:]],
            total_epochs=total_epochs - prior_epochs,
            spent_wh=spent.energy_wh,
            first_epoch_steady_wh=self._steady,
            min_total_epochs=None if min_epochs is None else min_epochs - prior_epochs,
            confidence=self.confidence,
            prior_rel_sd=self.prior_rel_sd,
            co2_per_wh=spent.co2_g / spent.energy_wh if spent.energy_wh > 0 else 0.0,
        )
        pred.epochs_observed, pred.epochs_total = observed, total_epochs
        self.predictions.append(pred)
        if not pred.ok:  # epochs below the meter's resolution: no interval is better than a zero-width one
            return
        metrics["energy/predicted_total_wh"] = pred.energy_wh
        metrics["energy/predicted_total_wh_low"] = pred.low_wh
        metrics["energy/predicted_total_wh_high"] = pred.high_wh
        metrics["energy/predicted_total_co2_g"] = pred.co2_g

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, pl_module, "fit")

    def _finish_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.meter is None or not self.meter.running or self._fit_start is None:
            return
        final = self.meter.stop() if self._owner else self.meter.read()
        record = final - self._fit_start
        self._reduce(trainer, pl_module, [record])
        self.stages[stage] = record
        self.status = self.meter.status
        if stage != "fit":
            self._log_stage(trainer, stage, record)
            return
        self._final = self._offset + record
        if self._measuring:
            self._final.method = dict(final.method)
        self.outside_epochs = self._final - self._sum_epochs()
        self._fit_done = True
        self._log_totals(trainer)

    def _sum_epochs(self) -> EnergyRecord:
        out = EnergyRecord()
        for e in self.epochs:
            out = out + e
        return out

    @rank_zero_only
    def _log_stage(self, trainer: pl.Trainer, stage: str, record: EnergyRecord) -> None:
        """Totals of a ``validate`` / ``test`` / ``predict`` call: ``energy/<stage>_wh``, ... (once, rank 0)."""
        metrics = record.metrics(f"energy/{stage}")
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @rank_zero_only
    def _log_totals(self, trainer: pl.Trainer) -> None:
        total = self.total
        metrics = total.metrics("energy/total")
        metrics["energy/outside_epochs_wh"] = self.outside_epochs.energy_wh
        metrics["energy/ok"] = float(self.status == "ok")
        for name, rec in self.windows.items():
            metrics[f"energy/window/{name}_wh"] = rec.energy_wh
            metrics[f"energy/window/{name}_co2_g"] = rec.co2_g
        first = self.predictions[0] if self.predictions else None
        if first is not None and total.energy_wh > 0 and math.isfinite(first.energy_wh):
            metrics["energy/first_prediction_error_pct"] = 100.0 * (first.energy_wh / total.energy_wh - 1.0)
        params: dict[str, Any] = {f"energy/method/{k}": v for k, v in sorted(total.method.items())}
        params.update(
            {
                "energy/backend": self.meter.backend.name if self.meter else "none",
                "energy/country_iso_code": self.country_iso_code,
                "energy/carbon_intensity_g_per_kwh": self._intensity(),
                "energy/pue": self.pue,
                "energy/ddp_mode": self.ddp_mode,
                "energy/status": self.status,
            }
        )
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.log_hyperparams(params)
        self._wandb_extras(trainer, metrics, params)

    def _wandb_extras(self, trainer: pl.Trainer, metrics: dict[str, float], params: dict[str, Any]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or trainer.global_rank != 0:
            return
        import wandb

        columns = ["epoch", "energy_wh", "cpu_wh", "gpu_wh", "ram_wh", "co2_g", "duration_s"]
        rows = [
            [i, e.energy_wh, e.cpu_wh, e.gpu_wh, e.ram_wh, e.co2_g, e.duration_s]
            for i, e in enumerate(self.epochs)
        ]
        for logger in loggers:
            run = logger.experiment
            try:
                table = wandb.Table(columns=columns, data=rows)
                plot = wandb.plot.line(table, "epoch", "energy_wh", title="Energy per epoch (Wh)")
                run.log({"energy/epochs_table": table, "energy/epochs_plot": plot})
                for key, value in {**metrics, **params}.items():
                    run.summary[key] = value
            except TypeError:  # a dummy experiment (not rank 0)
                pass

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.meter is None or not self.meter.running or self._fit_start is None:
            return
        # No collective here (other ranks may be gone): the numbers are this rank's.
        final = self.meter.stop() if self._owner else self.meter.read()
        record = final - self._fit_start
        self.stages[trainer.state.fn.value if trainer.state.fn else "fit"] = record
        if trainer.state.fn == "fit":
            self._final = self._offset + record
            self.outside_epochs = self._final - self._sum_epochs()
            self._fit_done = True
        self.status = "interrupted" if self.meter.status == "ok" else self.meter.status
        if self._final is not None:
            self._final.status = self.status

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.meter is not None and self.meter.running and self._owner:  # a path that missed its end hook
            final = self.meter.stop()
            if self._fit_start is not None:
                self.stages[stage] = final - self._fit_start

    # ------------------------------------------------------------------ checkpointing
    @property
    @override
    def state_key(self) -> str:
        """Distinguishes monitors of different backends / DDP modes attached to one trainer."""
        spec = self._backend_spec
        return self._generate_state_key(
            backend=spec if isinstance(spec, str) else spec.name, ddp_mode=self.ddp_mode
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        total = self._final if self._final is not None else self._boundary_total
        return {
            "version": 1,
            "total": total.to_dict(),
            "epochs": [e.to_dict() for e in self.epochs],
            "windows": {k: v.to_dict() for k, v in self.windows.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = EnergyRecord.from_dict(state_dict["total"])
        self._boundary_total = EnergyRecord.from_dict(state_dict["total"])
        self.epochs = [EnergyRecord.from_dict(e) for e in state_dict.get("epochs", [])]
        self.windows.clear()
        self.windows.update({k: EnergyRecord.from_dict(v) for k, v in state_dict.get("windows", {}).items()})
        self._final = None
