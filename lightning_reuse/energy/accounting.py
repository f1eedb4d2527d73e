"""Fit accounting without a trainer: epochs, stages, warm-up, steady rate, resume offset and prediction.

:class:`FitAccounting` takes plain events (a stage starts or ends, an epoch starts or ends with its
number of batches, a batch ends, validation starts or ends, "resume from this state") and keeps the
energy records of a fit. ``EnergyMonitor`` only routes Lightning's hooks to it, as Lightning's
``ThroughputMonitor`` routes them to ``Throughput``; DDP sums are done by a ``reduce`` function that the
caller passes (it sums records over ranks, in place).

Example (a simulator on a fake clock: one Wh of CPU per reading; set-up is two readings, tear-down one):
    >>> import itertools
    >>> from lightning_reuse.energy.backends import SimulatedBackend
    >>> ticks = itertools.count()
    >>> sim = SimulatedBackend(cpu_w=3600.0, ram_w=0.0, clock=lambda: float(next(ticks)))
    >>> fit = FitAccounting(EnergyConfig(warmup_batches=0), backend=sim)
    >>> fit.start_stage("fit")
    >>> for _ in range(2):
    ...     fit.start_epoch(n_batches=4)
    ...     _ = fit.end_epoch(RunPlan(max_epochs=2))
    >>> _ = fit.end_stage("fit")
    >>> [e.energy_wh for e in fit.epochs], fit.outside_epochs.energy_wh, fit.total.energy_wh
    ([1.0, 1.0], 3.0, 5.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_reuse.energy.backends import EnergyBackend
from lightning_reuse.energy.budget import QUANTITIES, BudgetDecision, BudgetGuard
from lightning_reuse.energy.config import EnergyConfig
from lightning_reuse.energy.meter import EnergyMeter
from lightning_reuse.energy.predict import Prediction, predict_total
from lightning_reuse.energy.records import EnergyRecord
from lightning_reuse.energy.selection import check_backend, make_backend

#: Sums records over ranks, in place (energy and CO2; duration stays the rank's own).
Reduce = Callable[[list[EnergyRecord]], None]
#: Sums plain numbers over ranks (every rank gets the same sums).
ReduceValues = Callable[[list[float]], list[float]]
_KEEP: Any = object()  # `ensure_meter`: keep the current GPU ids


@dataclass(frozen=True)
class RunPlan:
    """How long the run may last, for the prediction (plain values read from the trainer).

    Args:
        max_epochs: the epoch limit (``None`` or negative: none).
        max_steps: the optimizer-step limit (``None`` or <= 0: none).
        accumulate_grad_batches: batches per optimizer step.
        min_epochs: the fewest epochs the run takes.
        patience_left: epochs an early stopper still waits (the smallest over stoppers); ``None``: no
            early stopping.
    """

    max_epochs: int | None = None
    max_steps: int | None = None
    accumulate_grad_batches: int = 1
    min_epochs: int = 0
    patience_left: int | None = None

    def total_epochs(self, batches_per_epoch: int) -> float | None:
        """Epochs the run takes at most (``max_epochs`` or ``max_steps`` / steps per epoch); ``None``: unknown.

        >>> RunPlan(max_epochs=10, max_steps=40).total_epochs(batches_per_epoch=8)
        5.0
        """
        bounds = []
        if self.max_epochs is not None and self.max_epochs >= 0:
            bounds.append(float(self.max_epochs))
        steps_per_epoch = batches_per_epoch / max(1, self.accumulate_grad_batches)
        if self.max_steps is not None and self.max_steps > 0 and steps_per_epoch > 0:
            bounds.append(self.max_steps / steps_per_epoch)
        return min(bounds) if bounds else None

    def fewest_epochs(self, observed: int) -> float | None:
        """Epochs the run takes at least with early stopping (``None`` without it)."""
        if self.patience_left is None:
            return None
        return max(float(observed + self.patience_left), float(self.min_epochs))


def sum_records(records: Sequence[EnergyRecord]) -> EnergyRecord:
    """The sum of ``records`` (a zero record when empty)."""
    out = EnergyRecord()
    for record in records:
        out = out + record
    return out


class FitAccounting:
    """Energy records of fits, stages and named windows, kept from plain events.

    Args:
        config: the validated options (grid, PUE, DDP mode, prediction).
        backend: a name (``"codecarbon"``, ``"nvml"``, ``"simulated"``) or an
            :class:`~lightning_reuse.energy.backends.EnergyBackend` instance (used as given).

    Attributes:
        epochs: per-epoch records (summed over ranks); ``sum(epochs) + outside_epochs == total``.
        windows: name -> record of named windows.
        stages: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` -> record of the last such stage.
        predictions: the prediction made after each epoch.
        outside_epochs: set-up and tear-down of the fit (what is not in an epoch).
        status: ``"ok"``, ``"interrupted"`` or ``"failed: ..."``.
        meter: the :class:`EnergyMeter` (``None`` before the first stage or window).
        fit_done: whether the last fit ended (its totals are final).
        budget: the :class:`~lightning_reuse.energy.budget.BudgetGuard` of the config's budgets (its
            ``decisions`` and ``stopped``).
        duration_prediction: the last prediction of the fit's wall time (in the ``*_wh`` fields: seconds),
            made only when ``budget_s`` is set.
    """

    def __init__(
        self, config: EnergyConfig | None = None, backend: str | EnergyBackend = "codecarbon"
    ) -> None:
        self.config = config if config is not None else EnergyConfig()
        self.backend = check_backend(backend)
        self.gpu_ids: list[int | str] | None = None  # this rank's GPUs (None: all)
        self.measuring = True  # False on ranks that measure nothing (ddp_mode="node", local rank > 0)
        self.meter: EnergyMeter | None = None
        self.epochs: list[EnergyRecord] = []
        self.windows: dict[str, EnergyRecord] = {}
        self.stages: dict[str, EnergyRecord] = {}
        self.predictions: list[Prediction] = []
        self.outside_epochs = EnergyRecord()
        self.status = "idle"
        self.stage: str | None = None
        self.fit_done = False
        self._offset = EnergyRecord()  # restored from a checkpoint
        self._final: EnergyRecord | None = None
        self.budget = BudgetGuard(self.config)
        self.duration_prediction: Prediction | None = None
        self._reset_fit()

    def _reset_fit(self) -> None:
        self._owner = True  # this stage started the meter (else a user's window runs around it)
        self._steady: float | None = None
        self._stage_start: EnergyRecord | None = None
        self._boundary: EnergyRecord | None = None
        self._cumulative = EnergyRecord()
        self._epoch_in_fit = 0
        self._n_batches = 0
        self._warm: EnergyRecord | None = None
        self._val_start: EnergyRecord | None = None

    # ------------------------------------------------------------------ the meter
    def ensure_meter(self, measuring: bool = True, gpu_ids: Any = _KEEP) -> EnergyMeter:
        """The meter for this rank, rebuilt when ``measuring`` or the GPU ids change.

        New GPU ids are ignored while a user's window runs (its measurement is kept).
        """
        new_ids = gpu_ids is not _KEEP and gpu_ids != self.gpu_ids
        if new_ids and not (self.meter is not None and self.meter.running):
            self.gpu_ids = gpu_ids
        else:
            new_ids = False
        if self.meter is None or self.measuring != measuring or new_ids:
            self.measuring = measuring
            backend = make_backend(self.backend, self.config, measuring=measuring, gpu_ids=self.gpu_ids)
            self.meter = EnergyMeter(backend)
            self.meter.windows = self.windows
        return self.meter

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[EnergyRecord]:
        """Measure a named block (see :meth:`EnergyMeter.window`); accumulated into ``windows[name]``."""
        with self.ensure_meter(self.measuring).window(name) as record:
            yield record

    # ------------------------------------------------------------------ stages
    def start_stage(self, stage: str, *, measuring: bool = True, gpu_ids: Any = None) -> None:
        """A ``fit`` / ``validate`` / ``test`` / ``predict`` starts: a fresh measurement, unless a window runs.

        A new ``fit`` after a finished one starts from zero (epochs, windows, predictions, resume offset).
        """
        self.stage = stage
        if stage == "fit":
            if self.fit_done:
                self.epochs, self.predictions, self.windows = [], [], {}
                self._offset = EnergyRecord()
                if self.meter is not None:
                    self.meter.windows = self.windows
            self.fit_done = False
            self._final = None
            self._reset_fit()
            self.budget.reset()
            self.duration_prediction = None
        meter = self.ensure_meter(measuring, gpu_ids)
        self._owner = not meter.running
        self._stage_start = meter.start() if self._owner else meter.read()
        meter.read()  # codecarbon's first flush initialises its tables (~60 ms): keep it out of epoch 1
        self.status = meter.status

    def end_stage(self, stage: str, reduce: Reduce | None = None) -> EnergyRecord | None:
        """A stage ends: its record (summed over ranks by ``reduce``), or ``None`` when nothing ran.

        At the end of a ``fit`` the total becomes final and ``outside_epochs`` is set.
        """
        if self.meter is None or not self.meter.running or self._stage_start is None:
            return None
        final = self.meter.stop() if self._owner else self.meter.read()
        record = final - self._stage_start
        self._reduce([record], reduce)
        self.stages[stage] = record
        self.status = self.meter.status
        if stage == "fit":
            self._finish_fit(record, dict(record.method) if self.measuring else None)
        return record

    def _finish_fit(self, record: EnergyRecord, method: dict[str, str] | None) -> None:
        self._final = self._offset + record
        if method is not None:
            self._final.method = method
        self.outside_epochs = self._final - sum_records(self.epochs)
        self.fit_done = True

    def interrupt(self, stage: str | None, status: str = "interrupted") -> None:
        """An exception in ``stage`` (``None``: unknown): stop and keep this rank's numbers (no collective).

        Args:
            stage: the stage that raised.
            status: why it stopped: ``"interrupted"`` (Ctrl-C) or ``"failed: <error>"``; a failed meter's
                own status is kept instead (the numbers' first problem).
        """
        if self.meter is None or not self.meter.running or self._stage_start is None:
            return
        final = self.meter.stop() if self._owner else self.meter.read()
        record = final - self._stage_start
        self.stages[stage or "fit"] = record
        if stage == "fit":
            self._finish_fit(record, None)
        self.status = status if self.meter.status == "ok" else self.meter.status
        if self._final is not None:
            self._final.status = self.status

    def teardown(self, stage: str) -> None:
        """Stop a measurement that missed its end event (e.g. an interrupted stage)."""
        if self.meter is not None and self.meter.running and self._owner:
            final = self.meter.stop()
            if self._stage_start is not None:
                self.stages[stage] = final - self._stage_start

    # ------------------------------------------------------------------ epochs
    def start_epoch(self, n_batches: int) -> None:
        """A training epoch of ``n_batches`` batches starts (0: unknown)."""
        if self.meter is None:
            return
        if self._boundary is None:
            self._boundary = self.meter.read()
        self._n_batches = n_batches
        self._warm = self._val_start = None

    def end_batch(self, batch_idx: int) -> bool:
        """A training batch ends: the end of the first epoch's warm-up is read here.

        Returns:
            whether a budget check of the measured total is due now (call :meth:`check_budget`).
        """
        warmup = self.config.warmup_batches
        if (
            self.meter is not None
            and self._epoch_in_fit == 0
            and warmup > 0
            and batch_idx + 1 == warmup
            and self._n_batches > 2 * warmup
        ):
            self._warm = self.meter.read()
        return self.stage == "fit" and self.meter is not None and self.budget.step()

    def start_validation(self) -> None:
        """The fit's validation loop starts (not the sanity check)."""
        if self.meter is not None and self.config.measure_validation:
            self._val_start = self.meter.read()

    def end_validation(self) -> None:
        """The fit's validation loop ends: accumulated into the ``"fit-validation"`` window."""
        if self.meter is not None and self._val_start is not None:
            self.meter.add_window("fit-validation", self.meter.read() - self._val_start)

    def end_epoch(
        self, plan: RunPlan | None = None, reduce: Reduce | None = None
    ) -> tuple[EnergyRecord, Prediction | None] | None:
        """A training epoch ends: its record (summed over ranks) and the prediction made after it.

        Args:
            plan: the run's limits; no prediction without them (or with ``config.predict`` off).
            reduce: sums records over ranks, in place (``None``: one process).

        Returns:
            ``(epoch, prediction or None)``, or ``None`` when no fit is being measured.
        """
        if self.meter is None or self._boundary is None or self._stage_start is None:
            return None
        end = self.meter.read()
        epoch = end - self._boundary
        first = self._epoch_in_fit == 0
        steady = self._steady_first_epoch(end) if first else None
        setup = (self._boundary - self._stage_start) if first else EnergyRecord()
        # The steady first-epoch estimate is summed over ranks with the epoch (every rank has one or none
        # alike: the same batches): a rank that measures nothing adds 0 instead of predicting from 0 Wh.
        steady_sum = [EnergyRecord(energy_wh=steady)] if steady is not None else []
        self._reduce([epoch, setup, *steady_sum], reduce)
        if steady_sum:
            steady = steady_sum[0].energy_wh
        self._boundary = end
        self._epoch_in_fit += 1
        self.epochs.append(epoch)
        self._cumulative = (self._cumulative if not first else self._offset + setup) + epoch
        prediction = None
        if self.config.predict and plan is not None:
            prediction = self._predict(plan, steady)
        return epoch, prediction

    def _steady_first_epoch(self, end: EnergyRecord) -> float | None:
        """The first epoch's energy with its warm-up batches at the steady rate, plus its validation."""
        if self._warm is None:
            return None
        train_end = self._val_start if self._val_start is not None else end
        rate = (train_end - self._warm).energy_wh / (self._n_batches - self.config.warmup_batches)
        val = (end - self._val_start).energy_wh if self._val_start is not None else 0.0
        return rate * self._n_batches + val

    def _predict(self, plan: RunPlan, steady: float | None) -> Prediction | None:
        total_epochs = plan.total_epochs(self._n_batches)
        if total_epochs is None:
            return None
        if steady is not None:
            self._steady = steady
        observed = len(self.epochs)
        prior_epochs = observed - self._epoch_in_fit  # restored from a checkpoint
        spent = self._cumulative
        min_epochs = plan.fewest_epochs(observed)
        pred = predict_total(
            [e.energy_wh for e in self.epochs[prior_epochs:]],
            total_epochs=total_epochs - prior_epochs,
            spent_wh=spent.energy_wh,
            first_epoch_steady_wh=self._steady,
            min_total_epochs=None if min_epochs is None else min_epochs - prior_epochs,
            confidence=self.config.confidence,
            prior_rel_sd=self.config.prior_rel_sd,
            co2_per_wh=spent.co2_g / spent.energy_wh if spent.energy_wh > 0 else 0.0,
        )
        pred.epochs_observed, pred.epochs_total = observed, total_epochs
        self.predictions.append(pred)
        if "duration_s" in self.budget.budgets:
            self.duration_prediction = predict_total(
                [e.duration_s for e in self.epochs[prior_epochs:]],
                total_epochs=total_epochs - prior_epochs,
                spent_wh=spent.duration_s,
                min_total_epochs=None if min_epochs is None else min_epochs - prior_epochs,
                confidence=self.config.confidence,
                prior_rel_sd=self.config.prior_rel_sd,
            )
        return pred

    def _reduce(self, records: list[EnergyRecord], reduce: Reduce | None) -> None:
        if reduce is None:
            return
        reduce(records)
        if not self.measuring:  # a non-measuring rank reports what the measuring ranks measured
            for record in records:
                record.method = {}

    # ------------------------------------------------------------------ budgets
    def check_budget(
        self, reduce: ReduceValues | None = None, *, record: bool = True
    ) -> BudgetDecision | None:
        """Check the measured total so far against the budgets (when :meth:`end_batch` says it is due).

        Args:
            reduce: sums plain numbers over ranks (``None``: one process). Energy and CO2 are summed, the
                duration is the mean over ranks, so every rank decides the same from the same numbers.
            record: keep the decision in :attr:`budget` (``False``: the caller records a decision agreed
                across ranks).
        """
        if self.meter is None or self._stage_start is None or not self.budget.active:
            return None
        local = self.meter.read() - self._stage_start
        values = [local.energy_wh, local.co2_g, local.duration_s, 1.0]
        if reduce is not None:
            values = reduce(values)
        measured = {
            "energy_wh": self._offset.energy_wh + values[0],
            "co2_g": self._offset.co2_g + values[1],
            "duration_s": self._offset.duration_s + values[2] / values[3],
        }
        decision = self.budget.check_measured(measured, epoch=len(self.epochs))
        return self.budget.record(decision) if record else decision

    def check_budget_prediction(self, *, record: bool = True) -> BudgetDecision | None:
        """After :meth:`end_epoch`: check the predicted total's lower bound (else the measured total).

        Args:
            record: keep the decision in :attr:`budget` (``False``: the caller records a decision agreed
                across ranks, e.g. rank 0's).
        """
        if not self.budget.active or not self.epochs:
            return None
        spent = self._cumulative
        measured = {"energy_wh": spent.energy_wh, "co2_g": spent.co2_g, "duration_s": spent.duration_s}
        predicted: dict[str, tuple[float, float]] = {}
        pred = self.predictions[-1] if self.predictions else None
        if pred is not None and pred.epochs_observed == len(self.epochs) and pred.ok:
            predicted["energy_wh"] = (pred.energy_wh, pred.low_wh)
            predicted["co2_g"] = (pred.co2_g, pred.co2_low_g)
            time = self.duration_prediction
            if time is not None and time.ok:
                predicted["duration_s"] = (time.energy_wh, time.low_wh)
        decision = self.budget.check_predicted(
            {q: measured[q] for q in QUANTITIES}, predicted, epoch=self._epoch_in_fit
        )
        return self.budget.record(decision) if record else decision

    # ------------------------------------------------------------------ totals and resume
    @property
    def cumulative(self) -> EnergyRecord:
        """The fit's total at the last epoch boundary (set-up included; resumed runs added)."""
        return self._cumulative

    @property
    def total(self) -> EnergyRecord:
        """The fit so far (live while fitting, final and summed over ranks after it)."""
        if self._final is not None:
            return self._final
        meter = self.meter
        if self.stage == "fit" and meter is not None and meter.running and self._stage_start is not None:
            return self._offset + (meter.read() - self._stage_start)
        return self._offset + EnergyRecord()

    def state_dict(self) -> dict[str, Any]:
        """Plain values: the total at the last epoch boundary (or the final one), the epochs and windows."""
        total = self._final if self._final is not None else self._cumulative
        return {
            "version": 1,
            "total": total.to_dict(),
            "epochs": [e.to_dict() for e in self.epochs],
            "windows": {k: v.to_dict() for k, v in self.windows.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the saved total is the offset the next fit adds to."""
        self._offset = EnergyRecord.from_dict(state_dict["total"])
        self._cumulative = EnergyRecord.from_dict(state_dict["total"])
        self.epochs = [EnergyRecord.from_dict(e) for e in state_dict.get("epochs", [])]
        self.windows.clear()
        self.windows.update({k: EnergyRecord.from_dict(v) for k, v in state_dict.get("windows", {}).items()})
        self._final = None
