"""EnergyMonitor: measured energy and carbon of every fit, per epoch and per stage, with a prediction.

Routes trainer hooks to the framework-free fit accounting
(:class:`~lightning_reuse.energy.accounting.FitAccounting`, configured by one validated
:class:`~lightning_reuse.energy.config.EnergyConfig`), as Lightning's ``ThroughputMonitor`` routes them to
``Throughput``; here only the DDP sums, the logging and the W&B extras.

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
import functools
import logging
import os
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lightning_reuse.energy.accounting import FitAccounting, Reduce, ReduceValues, RunPlan
from lightning_reuse.energy.backends import EnergyBackend
from lightning_reuse.energy.budget import BudgetDecision, EnergyBudgetWarning
from lightning_reuse.energy.config import EnergyConfig
from lightning_reuse.energy.meter import EnergyMeter
from lightning_reuse.energy.predict import Prediction
from lightning_reuse.energy.records import NOT_MEASURED, EnergyRecord
from lightning_reuse.energy.selection import measures, rank_gpu_ids
from lightning_reuse.energy.summary import (
    EPOCH_COLUMNS,
    epoch_metrics,
    epoch_rows,
    fit_metrics,
    fit_params,
    status_metrics,
    window_metrics,
)
from lightning_reuse.energy.totals_file import totals_document, write_json_atomic

T = TypeVar("T")
_FIELDS = ("cpu_wh", "gpu_wh", "ram_wh", "energy_wh", "co2_g", "cpu_seconds")  # summed over ranks
_COMPONENTS = ("cpu", "gpu", "ram")
log = logging.getLogger(__name__)


class _Forward(Generic[T]):
    """A read-only attribute forwarded to ``self.<owner>.<name>`` (options: ``config``; results: ``accounting``)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def __set_name__(self, cls: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, cls: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        return getattr(getattr(obj, self.owner), self.name)


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
        budget_wh: energy budget of the fit in Wh (``None``: none).
        budget_co2_g: carbon budget of the fit in g CO2e (``None``: none).
        budget_s: wall-clock budget of the fit in seconds (``None``: none).
        budget_action: ``"warn"`` (an :class:`EnergyBudgetWarning`, the fit goes on) or ``"stop"`` (the fit
            stops gracefully through ``trainer.should_stop``: validation, checkpoints and loggers finish).
            After each epoch the lower bound of the predicted total's interval is compared with each
            budget; every ``check_every_n_steps`` training batches, the measured total so far (summed over
            DDP ranks, so every rank decides the same at the same batch).
        check_every_n_steps: training batches between two checks of the measured total (the overshoot is at
            most this many batches; a check is one meter read, plus one small all-reduce in DDP).
        totals_file: name of the JSON file of the fit's totals, rewritten atomically after every epoch, at
            the end of the fit and on an exception (rank 0), in ``trainer.log_dir`` (else
            ``default_root_dir``); an absolute path is used as given; ``None``: no file. After a
            ``kill -9`` it holds the last finished epoch's totals.

    On an exception or Ctrl-C (Lightning's ``on_exception``) the totals so far are logged with the status
    (``energy/interrupted`` or ``energy/failed`` = 1, ``energy/status`` among the hyper-parameters) to every
    logger, which is then saved (``CSVLogger`` writes ``metrics.csv`` only when it saves), and written to
    ``totals_file``. In DDP these are the rank's own numbers (no collective can run after a fault).

    Attributes:
        total: :class:`EnergyRecord` of the fit so far (cumulative over resumed runs).
        epochs: per-epoch records (summed over ranks). ``sum(epochs) + outside_epochs == total``.
        windows: name -> record of named windows (``window(name)``, e.g. ``"resque-precheck"``).
        stages: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` -> record of the last such call.
        predictions: the prediction made after each epoch.
        status: ``"ok"``, ``"interrupted"`` or ``"failed: ..."``.
        config: the validated :class:`~lightning_reuse.energy.config.EnergyConfig` of the options above
            (each also readable as an attribute: ``monitor.pue``, ``monitor.country_iso_code``, ...).
        accounting: the :class:`~lightning_reuse.energy.accounting.FitAccounting` the hooks are routed to.
    """

    country_iso_code = _Forward[str]("config")
    carbon_intensity_g_per_kwh = _Forward[float | None]("config")
    pue = _Forward[float]("config")
    measure_power_secs = _Forward[float]("config")
    ddp_mode = _Forward[str]("config")
    predict = _Forward[bool]("config")
    confidence = _Forward[float]("config")
    prior_rel_sd = _Forward[float]("config")
    warmup_batches = _Forward[int]("config")
    measure_validation = _Forward[bool]("config")
    budget_wh = _Forward[float | None]("config")
    budget_co2_g = _Forward[float | None]("config")
    budget_s = _Forward[float | None]("config")
    budget_action = _Forward[str]("config")
    check_every_n_steps = _Forward[int]("config")

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
        totals_file: str | None = "energy_totals.json",
        budget_wh: float | None = None,
        budget_co2_g: float | None = None,
        budget_s: float | None = None,
        budget_action: Literal["warn", "stop"] = "warn",
        check_every_n_steps: int = 50,
    ) -> None:
        self.config = EnergyConfig(
            country_iso_code=country_iso_code,
            carbon_intensity_g_per_kwh=carbon_intensity_g_per_kwh,
            pue=pue,
            measure_power_secs=measure_power_secs,
            ddp_mode=ddp_mode,
            predict=predict,
            confidence=confidence,
            prior_rel_sd=prior_rel_sd,
            warmup_batches=warmup_batches,
            measure_validation=measure_validation,
            budget_wh=budget_wh,
            budget_co2_g=budget_co2_g,
            budget_s=budget_s,
            budget_action=budget_action,
            check_every_n_steps=check_every_n_steps,
        )
        self.accounting = FitAccounting(self.config, backend)
        self.totals_file = totals_file
        self.totals_path: Path | None = None  # resolved when a fit starts
        self._trainer_ref: weakref.ReferenceType[pl.Trainer] | None = None

    total = _Forward[EnergyRecord]("accounting")
    epochs = _Forward[list[EnergyRecord]]("accounting")
    outside_epochs = _Forward[EnergyRecord]("accounting")
    windows = _Forward[dict[str, EnergyRecord]]("accounting")
    stages = _Forward[dict[str, EnergyRecord]]("accounting")
    predictions = _Forward[list[Prediction]]("accounting")
    status = _Forward[str]("accounting")
    meter = _Forward[EnergyMeter | None]("accounting")

    @property
    def prediction(self) -> Prediction | None:
        """The latest prediction of the fit's total, if any."""
        return self.predictions[-1] if self.predictions else None

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[EnergyRecord]:
        """Measure a named block: ``with monitor.window("eval") as record: ...``; nestable, usable anywhere.

        Inside a fit it reads the running tracker; outside one it starts a measurement for the block.
        The record is filled when the block ends and accumulated into ``windows[name]``. A window that
        closes after the fit's totals were logged (e.g. in ``on_fit_end``) is logged at once to the last
        trainer's loggers (``energy/window/<name>_wh`` and ``_co2_g``, rank 0).
        """
        with self.accounting.window(name) as record:
            yield record
        if self.accounting.fit_done:
            self._log_late_window(name)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trainer_ref"] = None  # weak references do not pickle (ddp_spawn pickles callbacks)
        return state

    # ------------------------------------------------------------------ from the trainer to plain values
    def _reducer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Reduce | None:
        """Sums records over ranks, in place; ``None`` in a single process."""
        return functools.partial(_reduce, trainer, pl_module) if trainer.world_size > 1 else None

    @staticmethod
    def _value_reducer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> ReduceValues | None:
        """Sums plain numbers over ranks; ``None`` in a single process."""
        return functools.partial(_reduce_values, trainer, pl_module) if trainer.world_size > 1 else None

    @staticmethod
    def _plan(trainer: pl.Trainer) -> RunPlan:
        stoppers = [cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]  # type: ignore[attr-defined]
        return RunPlan(
            max_epochs=trainer.max_epochs,
            max_steps=trainer.max_steps,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            min_epochs=trainer.min_epochs or 0,
            patience_left=min((max(cb.patience - cb.wait_count, 0) for cb in stoppers), default=None),
        )

    def _gpu_ids(self, trainer: pl.Trainer) -> list[int | str] | None:
        cuda_index = None
        device = trainer.strategy.root_device
        if self.config.ddp_mode == "process" and device.type == "cuda":
            cuda_index = device.index if device.index is not None else torch.cuda.current_device()
        return rank_gpu_ids(self.config.ddp_mode, trainer.local_rank, cuda_index)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer_ref = weakref.ref(trainer)
        if stage == "fit":
            self.totals_path = self._resolve_totals_path(trainer)
        measuring = measures(self.config.ddp_mode, trainer.local_rank)
        self.accounting.start_stage(stage, measuring=measuring, gpu_ids=self._gpu_ids(trainer))

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n_batches = trainer.num_training_batches
        self.accounting.start_epoch(int(n_batches) if n_batches != float("inf") else 0)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.accounting.end_batch(batch_idx):  # a budget check is due (the same batch on every rank)
            decision = self.accounting.check_budget(self._value_reducer(trainer, pl_module))
            self._act(trainer, decision)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.accounting.start_validation()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.accounting.end_validation()
        if trainer.state.fn == "validate":
            self._finish_stage(trainer, pl_module, "validate")

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, pl_module, "test")

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, pl_module, "predict")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        result = self.accounting.end_epoch(self._plan(trainer), self._reducer(trainer, pl_module))
        if result is None:
            return
        metrics = epoch_metrics(result[0], self.accounting.cumulative, result[1])
        metrics["epoch"] = float(trainer.current_epoch)
        # Straight to the loggers (rank 0 only; the values are already summed over ranks): Lightning's
        # `self.log` costs ~4 ms per key on a small CPU, which alone would be a ~5% step-time overhead here.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._check_prediction(trainer)
        self._write_totals(trainer, "running", final=False)

    # ------------------------------------------------------------------ budgets
    def _check_prediction(self, trainer: pl.Trainer) -> None:
        """After an epoch: rank 0 decides on the predicted total (its prediction is the logged one) and
        broadcasts the decision, so every rank acts on the same one."""
        if not self.accounting.budget.active:
            return
        decision = self.accounting.check_budget_prediction(record=False)
        if trainer.world_size > 1:
            decision = trainer.strategy.broadcast(decision, src=0)
        self._act(trainer, self.accounting.budget.record(decision))

    def _act(self, trainer: pl.Trainer, decision: BudgetDecision | None) -> None:
        """Warn or stop (``trainer.should_stop``) on a decision; rank 0 logs it (message, budget, totals)."""
        if decision is None:
            return
        if decision.stops:
            trainer.should_stop = True
        if trainer.global_rank != 0:
            return
        message = decision.message()
        if decision.stops:
            log.warning(message + " Stopping the fit (trainer.should_stop).")
        else:
            warnings.warn(
                message + " HINT: raise the budget, or pass budget_action='stop' to end the fit there.",
                EnergyBudgetWarning,
                stacklevel=2,
            )
        for logger in trainer.loggers:
            logger.log_metrics(decision.metrics(), step=trainer.global_step)
            logger.log_hyperparams({"energy/budget_decision": message})

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, pl_module, "fit")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # No collective here (other ranks may be gone): the numbers are this rank's.
        stage = trainer.state.fn.value if trainer.state.fn else None
        was_running = self.accounting.meter is not None and self.accounting.meter.running
        self.accounting.interrupt(stage, status=_fault_status(exception))
        if was_running and stage is not None:
            self._log_fault(trainer, stage)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.accounting.teardown(stage)  # a path that missed its end hook

    # ------------------------------------------------------------------ logging
    def _finish_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        record = self.accounting.end_stage(stage, self._reducer(trainer, pl_module))
        if record is None:
            return
        if stage == "fit":
            self._log_totals(trainer)
            self._write_totals(trainer, self.status, final=True)
        else:
            self._log(trainer, record.metrics(f"energy/{stage}"))

    @rank_zero_only
    def _log_fault(self, trainer: pl.Trainer, stage: str) -> None:
        """After an exception: the totals so far with the status to every logger, saved, and to the file."""
        if stage == "fit" and self.accounting.fit_done:
            self._log_totals(trainer)
            self._write_totals(trainer, self.status, final=True, summed_over_ranks=trainer.world_size == 1)
        elif stage in self.stages:
            metrics = {**self.stages[stage].metrics(f"energy/{stage}"), **status_metrics(self.status)}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.log_hyperparams({"energy/status": self.status})
        for logger in trainer.loggers:
            logger.save()  # CSVLogger writes metrics.csv only here; Lightning's finalize may come too late

    # ------------------------------------------------------------------ the totals file
    def _resolve_totals_path(self, trainer: pl.Trainer) -> Path | None:
        """Where the totals file goes (computed on every rank: ``trainer.log_dir`` is a collective)."""
        if self.totals_file is None:
            return None
        if os.path.isabs(self.totals_file):
            return Path(self.totals_file)
        return Path(trainer.log_dir or trainer.default_root_dir) / self.totals_file

    def _write_totals(
        self, trainer: pl.Trainer, status: str, *, final: bool, summed_over_ranks: bool = True
    ) -> None:
        if self.totals_path is None or trainer.global_rank != 0:
            return
        document = totals_document(self.accounting, status, final=final, summed_over_ranks=summed_over_ranks)
        write_json_atomic(self.totals_path, document)

    @rank_zero_only
    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _log_late_window(self, name: str) -> None:
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None or trainer.global_rank != 0 or name not in self.windows:
            return
        self._log(trainer, window_metrics(name, self.windows[name]))

    @rank_zero_only
    def _log_totals(self, trainer: pl.Trainer) -> None:
        metrics, params = fit_metrics(self.accounting), fit_params(self.accounting)
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

        rows = epoch_rows(self.epochs)
        for logger in loggers:
            run = logger.experiment
            try:
                table = wandb.Table(columns=EPOCH_COLUMNS, data=rows)
                plot = wandb.plot.line(table, "epoch", "energy_wh", title="Energy per epoch (Wh)")
                run.log({"energy/epochs_table": table, "energy/epochs_plot": plot})
                for key, value in {**metrics, **params}.items():
                    run.summary[key] = value
            except TypeError:  # a dummy experiment (not rank 0)
                pass

    # ------------------------------------------------------------------ checkpointing
    @property
    @override
    def state_key(self) -> str:
        """Distinguishes monitors of different backends / DDP modes attached to one trainer."""
        backend = self.accounting.backend
        name = backend if isinstance(backend, str) else backend.name
        return self._generate_state_key(backend=name, ddp_mode=self.config.ddp_mode)

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.accounting.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.accounting.load_state_dict(state_dict)


def _fault_status(exception: BaseException) -> str:
    """``"interrupted"`` for Ctrl-C (``KeyboardInterrupt``), else ``"failed: <type>: <message>"``.

    >>> _fault_status(KeyboardInterrupt()), _fault_status(RuntimeError("boom"))
    ('interrupted', 'failed: RuntimeError: boom')
    """
    if isinstance(exception, KeyboardInterrupt):
        return "interrupted"
    message = str(exception).splitlines()[0][:200] if str(exception) else ""
    return f"failed: {type(exception).__name__}" + (f": {message}" if message else "")


def _reduce_values(trainer: pl.Trainer, pl_module: pl.LightningModule, values: list[float]) -> list[float]:
    """Sum plain numbers over ranks (one small all-reduce; every rank gets the same sums)."""
    dtype = torch.float32 if pl_module.device.type == "mps" else torch.float64
    tensor = torch.tensor(values, dtype=dtype, device=pl_module.device)
    return trainer.strategy.reduce(tensor, reduce_op="sum").cpu().tolist()


def _reduce(trainer: pl.Trainer, pl_module: pl.LightningModule, records: list[EnergyRecord]) -> None:
    """Sum energy/CO2 of ``records`` over ranks, in place (duration stays this rank's).

    One flag per component travels in the same all-reduce: a component that any rank could not measure is
    "not measured" in the sum too (its Wh would otherwise be a sum that silently misses that rank).
    """
    dtype = torch.float32 if pl_module.device.type == "mps" else torch.float64
    rows = [
        [getattr(r, f) for f in _FIELDS] + [float(r.method.get(c) == NOT_MEASURED) for c in _COMPONENTS]
        for r in records
    ]
    # `strategy.reduce` works in place: reduce a clone.
    summed = trainer.strategy.reduce(torch.tensor(rows, dtype=dtype).to(pl_module.device), reduce_op="sum")
    for record, row in zip(records, summed.cpu().tolist()):
        for f, v in zip(_FIELDS, row):
            setattr(record, f, v)
        for c, flag in zip(_COMPONENTS, row[len(_FIELDS) :]):
            if flag > 0 and record.method:
                record.method = {**record.method, c: NOT_MEASURED}
