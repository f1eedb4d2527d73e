"""EnergyMonitor in real Lightning fits: exact sums (simulator), real codecarbon, faults, resume, W&B, DDP."""

from __future__ import annotations

import csv
import itertools
import json
import math
import pickle
import signal
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_reuse.callbacks._windows import measurement_window
from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
from lightning_reuse.energy.backends import SimulatedBackend
from lightning_reuse.energy.meter import EnergyMeasurementWarning
from lightning_reuse.energy.records import EnergyRecord


def _tick_backend() -> SimulatedBackend:
    """1 Wh of CPU per clock read: every figure is an exact integer."""
    ticks = itertools.count()
    return SimulatedBackend(
        cpu_w=3600.0, ram_w=0.0, carbon_intensity_g_per_kwh=1000.0, clock=lambda: float(next(ticks))
    )


def _trainer(tmp_path: Path, callbacks: list, max_epochs: int = 3, **kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", CSVLogger(tmp_path, name="csv"))
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=8,
        limit_val_batches=2,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _csv_rows(trainer: pl.Trainer) -> list[dict[str, str]]:
    trainer.logger.save()
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def _sum(records: list[EnergyRecord]) -> EnergyRecord:
    out = EnergyRecord()
    for r in records:
        out = out + r
    return out


class _PreCheck(Callback):
    """Stands for a pre-check callback measuring its own cost through the shared window contract."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with measurement_window(trainer, "resque-precheck") as record:
            self.record = record


def test_epochs_and_outside_add_up_exactly_and_are_logged_once(tmp_path: Path) -> None:
    monitor = EnergyMonitor(backend=_tick_backend())
    pre = _PreCheck()
    trainer = _trainer(tmp_path, [pre, monitor])
    trainer.fit(BoringModel())
    total, epochs = monitor.total, monitor.epochs
    assert len(epochs) == 3 and all(e.energy_wh >= 1 and e.energy_wh == int(e.energy_wh) for e in epochs)
    # Exact (integer) arithmetic: the epochs tile the fit; the rest is set-up and tear-down.
    assert _sum(epochs).energy_wh + monitor.outside_epochs.energy_wh == total.energy_wh
    assert total.energy_wh == monitor.stages["fit"].energy_wh == total.cpu_wh
    assert total.co2_g == pytest.approx(total.energy_wh, rel=1e-12)  # 1000 g/kWh = 1 g/Wh
    assert total.method == {"cpu": "simulated", "gpu": "not measured", "ram": "not measured"}
    assert pre.record.energy_wh == monitor.windows["resque-precheck"].energy_wh == 1.0  # enter + exit reads
    assert monitor.windows["fit-validation"].energy_wh >= 3  # one validation loop per epoch
    assert monitor.status == "ok" and not monitor.meter.running

    rows = _csv_rows(trainer)
    assert _column(rows, "energy/epoch_wh") == [e.energy_wh for e in epochs]
    assert _column(rows, "energy/total_wh") == [total.energy_wh]  # totals logged exactly once
    assert _column(rows, "energy/window/resque-precheck_wh") == [1.0]
    assert len(_column(rows, "energy/predicted_total_wh")) == 3
    hparams = (Path(trainer.logger.log_dir) / "hparams.yaml").read_text()
    assert "energy/method/cpu: simulated" in hparams and "energy/country_iso_code: USA" in hparams


class _ScriptedLoss(BoringModel):
    """Logs ``valid_loss`` from a script indexed by epoch: whether early stopping fires is decided here."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses = losses

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("valid_loss", torch.tensor(self.losses[self.current_epoch]))
        return out


@pytest.mark.parametrize(
    ("losses", "epochs_run", "stopped_early"),
    [
        ([5.0, 4.0, 3.0, 2.0, 1.0], 5, False),  # keeps improving: max_steps (40 = 5 epochs x 8) ends it
        ([1.0, 1.0, 1.0, 1.0, 1.0], 4, True),  # best at epoch 0, then 3 epochs without improvement
    ],
    ids=["improving", "stalled"],
)
def test_prediction_each_epoch_with_max_steps_and_early_stopping(
    tmp_path: Path, losses: list[float], epochs_run: int, stopped_early: bool
) -> None:
    pl.seed_everything(0)
    monitor = EnergyMonitor(backend=SimulatedBackend(cpu_w=20.0), warmup_batches=1)
    stopper = EarlyStopping(monitor="valid_loss", patience=3, mode="min")
    trainer = _trainer(tmp_path, [monitor, stopper], max_epochs=-1, max_steps=40)
    trainer.fit(_ScriptedLoss(losses))
    # early stopping fires after `patience` epochs without improvement, and only then
    assert (stopper.stopped_epoch > 0) is stopped_early and trainer.current_epoch == epochs_run
    assert trainer.global_step == 8 * epochs_run
    # one energy record and one prediction per epoch run, tiling the fit
    preds = monitor.predictions
    assert len(monitor.epochs) == len(preds) == epochs_run
    assert _sum(monitor.epochs).energy_wh + monitor.outside_epochs.energy_wh == pytest.approx(
        monitor.total.energy_wh, rel=1e-12
    )
    assert all(p.epochs_total == 5.0 for p in preds)  # 40 steps / 8 per epoch
    assert all(p.low_wh <= p.energy_wh <= p.high_wh for p in preds)
    last = preds[-1]
    if not stopped_early:  # nothing left to predict: the point and both ends are what was spent so far
        assert last.low_wh == last.energy_wh == last.high_wh <= monitor.total.energy_wh
    else:  # stopped before max_steps: the point still expected the 5th epoch
        spent = monitor.accounting.cumulative.energy_wh
        assert spent <= last.low_wh < last.energy_wh < last.high_wh
    rows = _csv_rows(trainer)
    assert len(_column(rows, "energy/epoch_wh")) == epochs_run
    assert _column(rows, "energy/predicted_total_wh") == pytest.approx([p.energy_wh for p in preds], rel=1e-6)


class _Slow(BoringModel):
    """Epochs of ~100 ms: codecarbon refreshes its counters at most every 50 ms."""

    def training_step(self, batch, batch_idx):
        time.sleep(0.012)
        return super().training_step(batch, batch_idx)


def test_validation_window_can_be_switched_off(tmp_path: Path) -> None:
    monitor = EnergyMonitor(backend=_tick_backend(), measure_validation=False)
    _trainer(tmp_path, [monitor], max_epochs=2, logger=False).fit(BoringModel())
    assert "fit-validation" not in monitor.windows and len(monitor.epochs) == 2
    assert _sum(monitor.epochs).energy_wh + monitor.outside_epochs.energy_wh == monitor.total.energy_wh


def test_real_codecarbon_fit_offline_no_threads(tmp_path: Path, network_guard: list[str]) -> None:
    threads_before = set(threading.enumerate())
    monitor = EnergyMonitor(country_iso_code="DEU", measure_power_secs=0.5)
    trainer = _trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(_Slow())
    total = monitor.total
    assert total.energy_wh > 0 and total.co2_g > 0 and total.duration_s > 0
    assert total.method["ram"] == "estimate" and total.method["cpu"] in ("RAPL", "estimate")
    assert _sum(monitor.epochs).energy_wh + monitor.outside_epochs.energy_wh == pytest.approx(total.energy_wh)
    assert all(e.energy_wh > 0 for e in monitor.epochs)
    assert set(threading.enumerate()) <= threads_before
    assert network_guard == []
    assert _column(_csv_rows(trainer), "energy/total_wh") == [pytest.approx(total.energy_wh, rel=1e-6)]


def test_exception_mid_fit_keeps_a_flushed_record(tmp_path: Path) -> None:
    class _Crash(BoringModel):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1 and batch_idx == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    monitor = EnergyMonitor(backend=_tick_backend())
    trainer = _trainer(tmp_path, [monitor])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(_Crash())
    assert not monitor.meter.running
    # an exception is a failure (Ctrl-C is "interrupted": see the SIGINT test)
    assert monitor.status == "failed: RuntimeError: boom" and monitor.total.status == monitor.status
    assert len(monitor.epochs) == 1
    # the partial epoch is in the total, as is everything before it
    assert monitor.total.energy_wh > monitor.epochs[0].energy_wh
    assert _sum(monitor.epochs).energy_wh + monitor.outside_epochs.energy_wh == monitor.total.energy_wh


def test_exception_with_real_codecarbon_stops_its_threads(tmp_path: Path) -> None:
    class _Crash(_Slow):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    threads_before = set(threading.enumerate())
    monitor = EnergyMonitor(country_iso_code="FRA", measure_power_secs=0.5)
    trainer = _trainer(tmp_path, [monitor], max_epochs=3, logger=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(_Crash())
    assert monitor.status == "failed: RuntimeError: boom" and len(monitor.epochs) == 1
    assert monitor.total.energy_wh > monitor.epochs[0].energy_wh > 0
    assert set(threading.enumerate()) <= threads_before


def test_codecarbon_failure_is_one_warning_and_a_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import codecarbon.lock

    from lightning_reuse.energy.codecarbon_backend import CodeCarbonBackend

    lock = tmp_path / "stale.lock"
    lock.write_text("")
    monkeypatch.setattr(codecarbon.lock, "LOCKFILE", str(lock))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monitor = EnergyMonitor(backend=CodeCarbonBackend(country_iso_code="FRA", allow_multiple_runs=False))
    trainer = _trainer(tmp_path, [monitor], max_epochs=2)
    try:
        with pytest.warns(EnergyMeasurementWarning) as caught:
            trainer.fit(BoringModel())
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert len([w for w in caught if w.category is EnergyMeasurementWarning]) == 1
    assert monitor.status.startswith("failed") and trainer.state.finished
    assert _column(_csv_rows(trainer), "energy/ok") == [0.0]


def test_resume_adds_up_without_double_counting(tmp_path: Path) -> None:
    first = EnergyMonitor(backend=_tick_backend())
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(tmp_path, [first, ckpt], max_epochs=2, enable_checkpointing=True).fit(BoringModel())
    path = tmp_path / "ckpt" / "epoch=1-step=16.ckpt"
    saved = torch.load(path, weights_only=False)["callbacks"][first.state_key]
    assert first.state_key == "EnergyMonitor{'backend': 'simulated', 'ddp_mode': 'node'}"
    assert len(saved["epochs"]) == 2

    second = EnergyMonitor(backend=_tick_backend())
    trainer = _trainer(tmp_path, [second], max_epochs=4)
    trainer.fit(BoringModel(), ckpt_path=str(path))
    assert len(second.epochs) == 4
    assert [e.energy_wh for e in second.epochs[:2]] == [e["energy_wh"] for e in saved["epochs"]]
    assert second.total.energy_wh == saved["total"]["energy_wh"] + second.stages["fit"].energy_wh
    assert _sum(second.epochs).energy_wh + second.outside_epochs.energy_wh == second.total.energy_wh
    assert second.state_dict()["total"]["energy_wh"] == second.total.energy_wh


def test_several_fits_in_one_process_and_other_stages(tmp_path: Path) -> None:
    monitor = EnergyMonitor(backend="simulated")
    totals = []
    for _ in range(2):
        trainer = _trainer(tmp_path, [monitor], max_epochs=1, logger=False)
        trainer.fit(BoringModel())
        totals.append(monitor.total.energy_wh)
        assert len(monitor.epochs) == 1  # each fit starts from zero
    fresh = EnergyMonitor(backend="simulated")
    _trainer(tmp_path, [fresh], max_epochs=1, logger=False).fit(BoringModel())
    assert all(t > 0 for t in totals) and fresh.total.energy_wh > 0
    trainer.validate(BoringModel(), verbose=False)
    trainer.test(BoringModel(), verbose=False)
    assert monitor.stages["validate"].energy_wh > 0 and monitor.stages["test"].energy_wh > 0
    assert monitor.total.energy_wh == totals[-1]  # other stages do not change the fit's total
    with monitor.window("eval") as rec:
        trainer.validate(BoringModel(), verbose=False)
    assert rec.energy_wh >= monitor.stages["validate"].energy_wh > 0
    logged = _trainer(tmp_path, [monitor], max_epochs=1)
    logged.test(BoringModel(), verbose=False)
    assert _column(_csv_rows(logged), "energy/test_wh") == [pytest.approx(monitor.stages["test"].energy_wh)]


def test_wandb_offline_run_contains_the_logged_keys(tmp_path: Path, wandb_offline) -> None:
    import wandb

    from tests.helpers.wandb_read import find_offline_run_dirs, read_offline_run

    monitor = EnergyMonitor(backend="simulated")
    trainer = _trainer(tmp_path, [monitor], max_epochs=2, logger=wandb_offline(name="energy"))
    trainer.fit(BoringModel())
    wandb.finish()
    dirs = find_offline_run_dirs(tmp_path)
    assert len(dirs) == 1, dirs
    run = read_offline_run(dirs[0])
    for _ in range(50):  # under heavy load the offline writer can lag behind wandb.finish() briefly
        if "energy/total_wh" in run["keys"]:
            break
        time.sleep(0.1)
        run = read_offline_run(dirs[0])
    for key in ("energy/epoch_wh", "energy/epoch_co2_g", "energy/predicted_total_wh", "energy/total_wh"):
        assert key in run["keys"], key
    assert run["summary"]["energy/total_wh"] == pytest.approx(monitor.total.energy_wh)
    assert run["summary"]["energy/method/cpu"] == "simulated"
    table_rows = [r["energy/epochs_table/nrows"] for r in run["history"] if "energy/epochs_table/nrows" in r]
    assert table_rows == [2] and "energy/epochs_plot_table/nrows" in run["keys"]  # table + line plot


def test_constructor_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="`backend` must be one of .*'codecarbon'"):
        EnergyMonitor(backend="zeus")
    with pytest.raises(TypeError, match="`backend`"):
        EnergyMonitor(backend=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="country_iso_code"):
        EnergyMonitor(country_iso_code="ZZZ")
    with pytest.raises(ValueError, match="ddp_mode"):
        EnergyMonitor(ddp_mode="rank")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pue"):
        EnergyMonitor(pue=0.5)
    with pytest.raises(ValueError, match="prior_rel_sd"):
        EnergyMonitor(prior_rel_sd=-0.1)
    with pytest.raises(ValueError, match="confidence"):
        EnergyMonitor(confidence=1.5)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_totals_summed_over_ranks_and_logged_once(ddp_runner) -> None:
    result = ddp_runner(
        """
import json
import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
from lightning_reuse.energy.backends import SimulatedBackend

out = {}
for mode in ("process", "node"):
    monitor = EnergyMonitor(backend=SimulatedBackend(cpu_w=36.0, ram_w=0.0), ddp_mode=mode)
    trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                         max_epochs=2, limit_train_batches=4, limit_val_batches=2, callbacks=[monitor],
                         logger=CSVLogger(".", name=mode), enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(BoringModel())
    out[mode] = {"total": monitor.total.energy_wh, "local": monitor.meter.final.energy_wh,
                 "epochs": [e.energy_wh for e in monitor.epochs], "n_epochs": len(monitor.epochs)}
with open(f"rank{trainer.global_rank}.json", "w") as fh:
    json.dump(out, fh)
"""
    )
    r0, r1 = (json.loads((result.workdir / f"rank{i}.json").read_text()) for i in (0, 1))
    p0, p1 = r0["process"], r1["process"]
    assert p0["total"] == pytest.approx(p0["local"] + p1["local"], rel=1e-9)  # summed over ranks
    assert p0["total"] == pytest.approx(p1["total"], rel=1e-12) and p0["epochs"] == p1["epochs"]
    n0, n1 = r0["node"], r1["node"]
    assert n1["local"] == 0.0 and n0["total"] == pytest.approx(n0["local"], rel=1e-9)  # one meter per node
    for mode in ("process", "node"):
        rows = list(csv.DictReader(open(next((result.workdir / mode).rglob("metrics.csv")))))
        assert len(_column(rows, "energy/total_wh")) == 1  # logged once, by rank 0
        assert len(_column(rows, "energy/epoch_wh")) == 2


def test_lightning_cli_class_path(tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        BoringModel,
        run=False,
        save_config_callback=None,
        args=[
            "--trainer.callbacks+=lightning_reuse.callbacks.EnergyMonitor",
            "--trainer.callbacks.backend=simulated",
            "--trainer.callbacks.country_iso_code=FRA",
            "--trainer.callbacks.pue=1.2",
            "--trainer.logger=false",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    monitors = [cb for cb in cli.trainer.callbacks if isinstance(cb, EnergyMonitor)]
    assert len(monitors) == 1 and monitors[0].country_iso_code == "FRA" and monitors[0].pue == 1.2
    cli.trainer.fit(cli.model)
    assert monitors[0].total.energy_wh > 0 and monitors[0].total.pue == 1.2


def test_epochs_below_the_meter_resolution_give_no_zero_width_interval(tmp_path: Path) -> None:
    monitor = EnergyMonitor(backend=SimulatedBackend(cpu_w=0.0, ram_w=0.0))  # every reading 0 Wh
    trainer = _trainer(tmp_path, [monitor], max_epochs=3)
    trainer.fit(BoringModel())
    first, second, last = monitor.predictions
    assert not first.ok and not second.ok and "resolution" in first.reason
    assert math.isnan(first.energy_wh) and first.low_wh == 0.0
    assert (
        last.ok and last.energy_wh == last.low_wh == last.high_wh == 0.0
    )  # finished: nothing left to predict
    rows = _csv_rows(trainer)
    assert _column(rows, "energy/epoch_wh") == [0.0, 0.0, 0.0]
    assert _column(rows, "energy/predicted_total_wh") == [0.0]  # only the finished run's, no NaN


class _LateWindow(Callback):
    """Stands for WiSE-FT's weight sweep: a measured window in on_fit_end, after the totals were logged."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with measurement_window(trainer, "wise-ft-sweep") as record:
            self.record = record


def test_window_after_the_fit_is_logged(tmp_path: Path) -> None:
    monitor = EnergyMonitor(backend=_tick_backend())
    late = _LateWindow()
    trainer = _trainer(tmp_path, [monitor, late], max_epochs=1)
    trainer.fit(BoringModel())
    assert late.record.energy_wh == monitor.windows["wise-ft-sweep"].energy_wh == 1.0
    rows = _csv_rows(trainer)
    assert _column(rows, "energy/window/wise-ft-sweep_wh") == [1.0]
    assert _column(rows, "energy/window/wise-ft-sweep_co2_g") == [1.0]
    assert _column(rows, "energy/total_wh") == [monitor.total.energy_wh]  # totals still logged once
    other = EnergyMonitor(backend="simulated")
    other._trainer_ref = monitor._trainer_ref  # the trainer reference does not stop pickling (ddp_spawn)
    assert pickle.loads(pickle.dumps(other))._trainer_ref is None


def test_intensity_and_sampling_interval_are_validated() -> None:
    with pytest.raises(ValueError, match=r"`carbon_intensity_g_per_kwh` must be >= 0 .*-5.0.*HINT"):
        EnergyMonitor(carbon_intensity_g_per_kwh=-5.0)
    with pytest.raises(ValueError, match=r"`carbon_intensity_g_per_kwh` must be >= 0 .*nan"):
        EnergyMonitor(carbon_intensity_g_per_kwh=float("nan"))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=rf"`measure_power_secs` must be > 0 seconds, got {bad}.*HINT"):
            EnergyMonitor(measure_power_secs=bad)
    assert EnergyMonitor(carbon_intensity_g_per_kwh=0.0, measure_power_secs=0.5).measure_power_secs == 0.5


def test_ddp_a_component_one_rank_did_not_measure_is_not_measured_in_the_sum(ddp_runner) -> None:
    """Process mode: rank 0 measures a GPU, rank 1's GPU has no reading. The summed GPU figure would silently
    miss rank 1, so it is "not measured" (no `_gpu_wh` key) rather than rank 0's Wh under rank 0's label."""
    result = ddp_runner(
        """
import json
import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from lightning_reuse import EnergyMonitor
from lightning_reuse.energy.backends import SimulatedBackend

rank = int(os.environ.get("LOCAL_RANK", "0"))
monitor = EnergyMonitor(backend=SimulatedBackend(cpu_w=36.0, gpu_w=5.0 if rank == 0 else 0.0, ram_w=0.0),
                        ddp_mode="process")
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=1, limit_train_batches=4, limit_val_batches=2, callbacks=[monitor],
                     logger=CSVLogger(".", name="gpu"), enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
trainer.fit(BoringModel())
with open(f"rank{trainer.global_rank}.json", "w") as fh:
    json.dump({"method": monitor.total.method, "local": monitor.meter.final.method}, fh)
"""
    )
    r0, r1 = (json.loads((result.workdir / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r1["local"]["gpu"] == "not measured", r1
    assert r0["local"]["gpu"] == "simulated" and r0["method"]["gpu"] == "not measured"
    assert r0["method"]["cpu"] == "simulated"
    rows = list(csv.DictReader(open(next((result.workdir / "gpu").rglob("metrics.csv")))))
    assert _column(rows, "energy/total_cpu_wh") and not _column(rows, "energy/total_gpu_wh")
