"""Budgets with real codecarbon (offline) in real fits: a tight budget stops within the first two epochs, a
generous one does not; CPU without RAPL stays "estimate" beside measured process CPU-seconds; and 2 real DDP
processes stop together at the same batch."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_reuse.callbacks.energy_monitor import EnergyMonitor


class _Slow(BoringModel):
    def training_step(self, batch, batch_idx):
        time.sleep(0.02)  # epochs of ~0.2 s: codecarbon refreshes its counters at most every 50 ms
        return super().training_step(batch, batch_idx)


def _fit(tmp_path: Path, name: str, max_epochs: int, **kwargs) -> tuple[pl.Trainer, EnergyMonitor]:
    pl.seed_everything(0)
    monitor = EnergyMonitor(country_iso_code="FRA", measure_power_secs=0.5, **kwargs)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=10,
        limit_val_batches=2,
        callbacks=[monitor],
        logger=CSVLogger(tmp_path, name=name),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Slow())
    return trainer, monitor


@pytest.mark.slow
def test_tight_budget_stops_within_two_epochs_and_a_generous_one_does_not(
    tmp_path: Path, network_guard: list[str]
) -> None:
    _, reference = _fit(tmp_path, "reference", max_epochs=1)
    one_epoch = reference.epochs[0].energy_wh
    assert one_epoch > 0 and reference.total.method["cpu"] in ("RAPL", "estimate")
    trainer, tight = _fit(
        tmp_path,
        "tight",
        max_epochs=8,
        budget_wh=1.5 * one_epoch,
        budget_action="stop",
        check_every_n_steps=2,
    )
    stop = tight.accounting.budget.stopped
    assert stop is not None and stop.epoch <= 2 and len(tight.epochs) <= 2 and trainer.global_step <= 20
    assert tight.status == "ok" and trainer.state.finished
    trainer, generous = _fit(
        tmp_path,
        "generous",
        max_epochs=3,
        budget_wh=1000 * one_epoch,
        budget_action="stop",
        check_every_n_steps=2,
    )
    assert (
        generous.accounting.budget.decisions == [] and len(generous.epochs) == 3 and trainer.global_step == 30
    )
    assert network_guard == []


def test_cpu_without_rapl_stays_an_estimate_and_logs_measured_cpu_seconds(tmp_path: Path) -> None:
    trainer, monitor = _fit(tmp_path, "cpu", max_epochs=2)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    keys = {k for r in rows for k, v in r.items() if v}
    seconds = [float(r["energy/cpu_seconds"]) for r in rows if r.get("energy/cpu_seconds")]
    assert len(seconds) == 3 and 0 < seconds[0] <= seconds[1] <= seconds[2]  # 2 epochs, then the total
    assert monitor.total.cpu_seconds == seconds[-1]
    if monitor.total.method["gpu"] == "not measured":  # no GPU here: never a logged 0 Wh for it
        assert not {k for k in keys if "gpu_wh" in k}
        assert json.loads(monitor.totals_path.read_text())["total"]["gpu_wh"] is None
    if monitor.total.method["cpu"] == "estimate":
        assert {"energy/epoch_cpu_wh", "energy/epoch_cpu_seconds"} <= keys


_DDP_SCRIPT = """
import json, time
import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
from lightning_reuse.energy.backends import SimulatedBackend

class Slow(BoringModel):
    def training_step(self, batch, batch_idx):
        time.sleep(0.02 if self.global_rank == 0 else 0.03)  # the ranks' own totals differ
        return super().training_step(batch, batch_idx)

pl.seed_everything(0)
# every rank measures its own process (15 W simulated); the budget is on the sum over ranks
monitor = EnergyMonitor(backend="simulated", ddp_mode="process", budget_wh=30.0 * 0.8 / 3600.0,
                        budget_action="stop", check_every_n_steps=3, predict=False)
trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                     max_epochs=4, limit_train_batches=20, limit_val_batches=2, callbacks=[monitor], logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Slow())
stop = monitor.accounting.budget.stopped
with open(f"rank{trainer.global_rank}.json", "w") as fh:
    json.dump({"global_step": trainer.global_step, "epochs": len(monitor.epochs),
               "stop": None if stop is None else stop.to_dict(), "local": monitor.meter.final.energy_wh,
               "finished": trainer.state.finished}, fh)
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_stops_on_all_ranks_at_the_same_batch(ddp_runner) -> None:
    result = ddp_runner(_DDP_SCRIPT)
    r0, r1 = (json.loads((result.workdir / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["finished"] and r1["finished"]
    assert r0["stop"] is not None and r0["stop"]["basis"] == "measured"
    assert r0["stop"] == r1["stop"]  # the same decision from the same summed numbers
    assert r0["global_step"] == r1["global_step"] == r0["stop"]["batches"] < 80
    # decided at a check point only: every 3 batches, or at an epoch's end (20 batches; without a prediction the
    # measured total is checked there too, so a budget crossed after batch 18 stops at 20)
    batches = r0["stop"]["batches"]
    assert (batches % 3 == 0 or batches % 20 == 0) and r0["epochs"] == r1["epochs"]
    assert r0["local"] != r1["local"]  # the ranks measured different totals, yet decided together
    assert r0["stop"]["measured"] >= r0["stop"]["budget"]
