"""Budgets: exact arithmetic on the simulator (a clock the test moves: 1 s = 1 Wh = 1 g CO2e per batch).

Framework-free (``FitAccounting`` fed plain events) and through a real Trainer (``EnergyMonitor``): the
measured rule stops within one check interval, the predicted rule compares the interval's lower bound.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
from lightning_reuse.energy import BudgetGuard, EnergyBudgetWarning, EnergyConfig, FitAccounting, RunPlan
from lightning_reuse.energy.backends import SimulatedBackend
from lightning_reuse.energy.records import EnergyRecord


class _Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _backend(clock: _Clock) -> SimulatedBackend:
    """3600 W of CPU at 1000 g/kWh: 1 s = 1 Wh = 1 g CO2e."""
    return SimulatedBackend(cpu_w=3600.0, ram_w=0.0, carbon_intensity_g_per_kwh=1000.0, clock=clock)


def _fit(config: EnergyConfig, clock: _Clock, epochs: int, batches: int) -> FitAccounting:
    """Run plain events until the guard says stop (or ``epochs`` end); every batch takes 1 s."""
    fit = FitAccounting(config, backend=_backend(clock))
    fit.start_stage("fit")
    for _ in range(epochs):
        fit.start_epoch(n_batches=batches)
        for batch_idx in range(batches):
            clock.now += 1.0
            if fit.end_batch(batch_idx) and fit.check_budget() is not None and fit.budget.stopped:
                break
        fit.end_epoch(RunPlan(max_epochs=epochs))
        fit.check_budget_prediction()
        if fit.budget.stopped:
            break
    fit.end_stage("fit")
    return fit


def test_measured_rule_stops_within_one_check_interval_exactly() -> None:
    config = EnergyConfig(budget_wh=11.0, budget_action="stop", check_every_n_steps=3, predict=False)
    fit = _fit(config, _Clock(), epochs=10, batches=5)
    decision = fit.budget.stopped
    assert decision is not None and fit.budget.decisions == [decision]
    # checks after batches 3, 6, 9, 12 and epoch ends 5, 10: 10 Wh < 11 Wh <= 12 Wh; overshoot 1 batch
    assert (decision.basis, decision.quantity, decision.batches, decision.epoch) == (
        "measured",
        "energy_wh",
        12,
        2,
    )
    assert decision.measured == 12.0 and decision.budget == 11.0 and decision.predicted is None
    assert fit.total.energy_wh == 12.0 and [e.energy_wh for e in fit.epochs] == [5.0, 5.0, 2.0]


@pytest.mark.parametrize(("quantity", "option"), [("co2_g", "budget_co2_g"), ("duration_s", "budget_s")])
def test_co2_and_wall_time_budgets_use_the_same_arithmetic(quantity: str, option: str) -> None:
    config = EnergyConfig(**{option: 7.0}, budget_action="stop", check_every_n_steps=2, predict=False)
    decision = _fit(config, _Clock(), epochs=10, batches=5).budget.stopped
    assert decision is not None and decision.quantity == quantity
    assert (decision.batches, decision.measured) == (8, 8.0)  # checks at 2, 4, 6, 8 batches


def test_predicted_rule_compares_the_lower_bound_not_the_point() -> None:
    # after epoch 1 of 10 (4 batches = 4 Wh): point 40 Wh, 90% interval 40 -+ 1.645 * 0.4 * sqrt(9 + 81)
    low = 40.0 - 1.6448536269514722 * 0.4 * math.sqrt(90.0)
    assert low == pytest.approx(33.758, abs=1e-3)
    between = EnergyConfig(budget_wh=38.0, budget_action="stop", check_every_n_steps=1000, warmup_batches=0)
    fit = _fit(between, _Clock(), epochs=10, batches=4)
    assert fit.predictions[0].energy_wh == pytest.approx(40.0) and fit.predictions[0].low_wh == pytest.approx(
        low
    )
    # the point (40) is over 38 Wh after epochs 1 and 2 but the lower bound is not: no stop there; after
    # epoch 3 two identical steady epochs leave no spread, the lower bound is 40 Wh and the fit stops
    assert [p.energy_wh for p in fit.predictions[:2]] == [pytest.approx(40.0)] * 2
    assert all(p.low_wh < 38.0 for p in fit.predictions[:2]) and fit.budget.decisions == [fit.budget.stopped]
    decision = fit.budget.stopped
    assert (decision.basis, decision.epoch, decision.batches) == ("predicted", 3, 12)
    assert decision.predicted_low == pytest.approx(40.0)
    below = EnergyConfig(budget_wh=30.0, budget_action="stop", check_every_n_steps=1000, warmup_batches=0)
    fit = _fit(below, _Clock(), epochs=10, batches=4)
    decision = fit.budget.stopped
    assert decision is not None and (decision.basis, decision.epoch, decision.batches) == ("predicted", 1, 4)
    assert decision.predicted == pytest.approx(40.0) and decision.predicted_low == pytest.approx(low)
    assert decision.measured == 4.0 and len(fit.epochs) == 1


def test_warn_decides_each_rule_once_and_never_stops() -> None:
    config = EnergyConfig(budget_wh=30.0, check_every_n_steps=3, warmup_batches=0)
    fit = _fit(config, _Clock(), epochs=10, batches=4)
    assert fit.budget.stopped is None and len(fit.epochs) == 10
    assert [(d.action, d.basis, d.batches) for d in fit.budget.decisions] == [
        ("warn", "predicted", 4),
        ("warn", "measured", 30),  # first check at or over 30 Wh: batch 30
    ]


def test_without_a_prediction_the_epoch_end_checks_the_measured_total() -> None:
    guard = BudgetGuard(EnergyConfig(budget_wh=1.0, budget_action="stop"))
    measured = {"energy_wh": 1.5, "co2_g": 0.0, "duration_s": 1.0}
    decision = guard.check_predicted(measured, {"energy_wh": (math.nan, 1.5)}, epoch=1)
    assert decision is not None and decision.basis == "measured" and decision.measured == 1.5


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"budget_wh": 0.0}, "`budget_wh`"),
        ({"budget_co2_g": -1.0}, "`budget_co2_g`"),
        ({"budget_s": float("nan")}, "`budget_s`"),
        ({"budget_wh": "5"}, "`budget_wh`"),
        ({"budget_action": "halt"}, "`budget_action`"),
        ({"check_every_n_steps": 0}, "`check_every_n_steps`"),
        ({"check_every_n_steps": 2.5}, "`check_every_n_steps`"),
    ],
)
def test_budget_options_are_validated_once(kwargs: dict, names: str) -> None:
    with pytest.raises(ValueError, match=names) as err:
        EnergyMonitor(backend="simulated", **kwargs)
    assert "HINT:" in str(err.value)


# ---------------------------------------------------------------------------------------- real Trainer
class _Ticking(BoringModel):
    """Every training batch takes exactly 1 s of the simulator's clock."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        return super().training_step(batch, batch_idx)


def _trainer(tmp_path: Path, monitor: EnergyMonitor, batches: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=10,
        limit_train_batches=batches,
        limit_val_batches=2,
        callbacks=[monitor, ModelCheckpoint(dirpath=tmp_path / "ckpt")],
        logger=CSVLogger(tmp_path, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _rows(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_monitor_stops_mid_epoch_on_the_measured_total(tmp_path: Path) -> None:
    pl.seed_everything(0)
    clock = _Clock()
    monitor = EnergyMonitor(
        backend=_backend(clock), budget_wh=11.0, budget_action="stop", check_every_n_steps=3, predict=False
    )
    trainer = _trainer(tmp_path, monitor, batches=5)
    trainer.fit(_Ticking(clock))
    decision = monitor.accounting.budget.stopped
    assert decision is not None and (decision.basis, decision.batches, decision.measured) == (
        "measured",
        12,
        12.0,
    )
    assert trainer.global_step == 12 and trainer.current_epoch == 3 and len(monitor.epochs) == 3
    assert monitor.total.energy_wh == 12.0 and monitor.status == "ok"
    # a graceful stop: the checkpoint of the last epoch and the logged totals and decision are there
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["epoch=2-step=12.ckpt"]
    rows = _rows(trainer)
    assert [float(r["energy/budget_stopped"]) for r in rows if r.get("energy/budget_stopped")] == [1.0, 1.0]
    assert [float(r["energy/budget_measured_wh"]) for r in rows if r.get("energy/budget_measured_wh")] == [
        12.0
    ]
    assert [float(r["energy/total_wh"]) for r in rows if r.get("energy/total_wh")] == [12.0]
    totals = json.loads(monitor.totals_path.read_text())
    assert totals["budget"]["stopped"] and totals["budget"]["decisions"][0]["batches"] == 12


def test_monitor_stops_after_the_first_epoch_on_the_predicted_lower_bound(tmp_path: Path) -> None:
    pl.seed_everything(0)
    clock = _Clock()
    monitor = EnergyMonitor(
        backend=_backend(clock),
        budget_wh=30.0,
        budget_action="stop",
        check_every_n_steps=1000,
        warmup_batches=0,
    )
    trainer = _trainer(tmp_path, monitor, batches=4)
    trainer.fit(_Ticking(clock))
    decision = monitor.accounting.budget.stopped
    assert decision is not None and decision.basis == "predicted" and decision.predicted_low > 30.0
    assert decision.predicted_low == monitor.predictions[0].low_wh and decision.measured == 4.0
    assert trainer.global_step == 4 and len(monitor.epochs) == 1
    rows = _rows(trainer)
    lows = [
        float(r["energy/budget_predicted_wh_low"]) for r in rows if r.get("energy/budget_predicted_wh_low")
    ]
    assert lows == [pytest.approx(decision.predicted_low)]


def test_monitor_warns_and_the_fit_goes_on(tmp_path: Path) -> None:
    pl.seed_everything(0)
    clock = _Clock()
    monitor = EnergyMonitor(backend=_backend(clock), budget_wh=30.0, check_every_n_steps=3, warmup_batches=0)
    trainer = _trainer(tmp_path, monitor, batches=4)
    with pytest.warns(EnergyBudgetWarning, match="budget 30 Wh") as caught:
        trainer.fit(_Ticking(clock))
    assert len([w for w in caught if w.category is EnergyBudgetWarning]) == 2  # predicted once, measured once
    assert trainer.global_step == 40 and monitor.accounting.budget.stopped is None


def test_not_measured_components_are_never_a_logged_zero(tmp_path: Path) -> None:
    pl.seed_everything(0)
    clock = _Clock()
    monitor = EnergyMonitor(backend=_backend(clock), predict=False)  # GPU and RAM: "not measured"
    trainer = _trainer(tmp_path, monitor, batches=2, max_steps=4)
    trainer.fit(_Ticking(clock))
    keys = set().union(*(k for r in _rows(trainer) for k in [{k for k, v in r.items() if v}]))
    assert {"energy/epoch_cpu_wh", "energy/total_cpu_wh", "energy/cpu_seconds"} <= keys
    assert not {k for k in keys if "gpu_wh" in k or "ram_wh" in k}
    assert "not measured" in str(monitor.total) and " 0 Wh" not in str(monitor.total)
    totals = json.loads(monitor.totals_path.read_text())
    assert totals["total"]["gpu_wh"] is None and totals["total"]["cpu_wh"] == 4.0
    assert (
        EnergyRecord(gpu_wh=0.0, method={"gpu": "NVML"}).metrics("x")["x_gpu_wh"] == 0.0
    )  # measured zero stays
