"""Nothing measured is lost on a fault: an exception, a real SIGINT, a kill -9 (the per-epoch totals file).

Real fits (Lightning Trainer, CSVLogger); the simulator on a fake clock gives exact figures, codecarbon runs
offline where the real thing matters (signals, threads).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_reuse.callbacks.energy_monitor import EnergyMonitor
from lightning_reuse.energy.backends import SimulatedBackend

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tick_backend() -> SimulatedBackend:
    """1 Wh of CPU per clock read: every figure is an exact integer."""
    ticks = itertools.count()
    return SimulatedBackend(
        cpu_w=3600.0, ram_w=0.0, carbon_intensity_g_per_kwh=1000.0, clock=lambda: float(next(ticks))
    )


def _trainer(tmp_path: Path, callbacks: list, max_epochs: int = 3) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=8,
        limit_val_batches=2,
        callbacks=callbacks,
        logger=CSVLogger(tmp_path, name="csv"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _read_rows(path: Path) -> list[dict[str, str]]:
    """metrics.csv as written (no save() here: the monitor must have flushed it)."""
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


class _CrashInSecondEpoch(BoringModel):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 3:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


class _ReadTotalsFile(Callback):
    """After the monitor's epoch end (it comes first in the callbacks): what the totals file holds."""

    def __init__(self, monitor: EnergyMonitor) -> None:
        self.monitor = monitor
        self.seen: list[tuple[dict, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        doc = json.loads(self.monitor.totals_path.read_text())
        self.seen.append((doc, self.monitor.accounting.cumulative.energy_wh))


def test_exception_in_second_epoch_reaches_metrics_csv_and_the_totals_file(tmp_path: Path) -> None:
    monitor = EnergyMonitor(backend=_tick_backend())
    reader = _ReadTotalsFile(monitor)
    trainer = _trainer(tmp_path, [monitor, reader])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(_CrashInSecondEpoch())
    log_dir = Path(trainer.logger.log_dir)
    assert monitor.totals_path == log_dir / "energy_totals.json"
    # after epoch 0 the file held epoch 0's totals (the cumulative at its end, set-up included)
    ((doc, cumulative),) = reader.seen
    assert doc["status"] == "running" and doc["epochs_finished"] == 1 and not doc["final"]
    assert doc["total"]["energy_wh"] == cumulative == monitor.accounting.epochs[0].energy_wh + 2.0
    # the fault: totals so far (the partial second epoch included) and the status, flushed to metrics.csv
    assert monitor.status == "failed: RuntimeError: boom"
    rows = _read_rows(log_dir / "metrics.csv")
    assert _column(rows, "energy/total_wh") == [monitor.total.energy_wh]
    assert monitor.total.energy_wh > cumulative
    assert _column(rows, "energy/failed") == [1.0] and _column(rows, "energy/ok") == [0.0]
    assert _column(rows, "energy/interrupted") == [0.0]
    assert _column(rows, "energy/epoch_wh") == [monitor.epochs[0].energy_wh]
    assert "energy/status: 'failed: RuntimeError: boom'" in (log_dir / "hparams.yaml").read_text()
    final = json.loads(monitor.totals_path.read_text())
    assert final["status"] == "failed: RuntimeError: boom" and final["final"] and final["summed_over_ranks"]
    assert final["total"]["energy_wh"] == monitor.total.energy_wh and final["epochs_finished"] == 1


def test_totals_file_after_every_epoch_and_at_the_end(tmp_path: Path) -> None:
    monitor = EnergyMonitor(backend=_tick_backend())
    reader = _ReadTotalsFile(monitor)
    trainer = _trainer(tmp_path, [monitor, reader], max_epochs=3)
    trainer.fit(BoringModel())
    assert [doc["epochs_finished"] for doc, _ in reader.seen] == [1, 2, 3]
    for i, (doc, cumulative) in enumerate(reader.seen):
        assert doc["status"] == "running" and doc["total"]["energy_wh"] == cumulative
        assert doc["epochs"][-1]["energy_wh"] == monitor.epochs[i].energy_wh
        assert doc["prediction"]["epochs_observed"] == i + 1
    final = json.loads(monitor.totals_path.read_text())
    assert (
        final["status"] == "ok" and final["final"] and final["total"]["energy_wh"] == monitor.total.energy_wh
    )
    assert [p.name for p in monitor.totals_path.parent.iterdir() if p.name.endswith(".tmp")] == []
    absolute = tmp_path / "elsewhere" / "totals.json"
    off, there = (
        EnergyMonitor(backend="simulated", totals_file=None),
        EnergyMonitor(totals_file=str(absolute)),
    )
    assert off.totals_file is None and there.totals_file == str(absolute)
    _trainer(tmp_path / "off", [off], max_epochs=1).fit(BoringModel())
    assert off.totals_path is None and not list((tmp_path / "off").rglob("energy_totals.json"))


_SIGINT_SCRIPT = """
import sys, time
import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from lightning_reuse.callbacks.energy_monitor import EnergyMonitor

class Slow(BoringModel):
    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        return super().training_step(batch, batch_idx)

monitor = EnergyMonitor(country_iso_code="FRA", measure_power_secs=0.5)
trainer = pl.Trainer(default_root_dir=".", max_epochs=1000, limit_train_batches=8, limit_val_batches=2,
                     callbacks=[monitor], logger=CSVLogger(".", name="csv"), enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Slow())
"""


def _wait_for_epochs(path: Path, proc: subprocess.Popen, epochs: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the fit exited early: {proc.communicate()}")
        if path.exists():
            doc = json.loads(path.read_text())  # never half-written: atomic replace
            if doc["epochs_finished"] >= epochs:
                return doc
        time.sleep(0.05)
    raise AssertionError(f"no totals file with {epochs} epochs after {timeout} s")


def test_real_sigint_to_a_codecarbon_fit_logs_interrupted_totals(tmp_path: Path) -> None:
    (tmp_path / "fit.py").write_text(textwrap.dedent(_SIGINT_SCRIPT))
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "tests" / "helpers" / "netguard"), str(REPO_ROOT)]),
        LIGHTNING_REUSE_NETGUARD_LOG=str(tmp_path / "netguard.log"),
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "fit.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        totals = tmp_path / "csv" / "version_0" / "energy_totals.json"
        running = _wait_for_epochs(totals, proc, epochs=2)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: Python raises KeyboardInterrupt in the fit
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err[-3000:]  # Lightning exits with 1 after a graceful shutdown
    assert "Detected KeyboardInterrupt" in out + err
    doc = json.loads(totals.read_text())
    assert doc["status"] == "interrupted" and doc["final"]
    assert doc["total"]["energy_wh"] >= running["total"]["energy_wh"] > 0
    assert doc["total"]["method"]["cpu"] in ("RAPL", "estimate")
    rows = _read_rows(totals.parent / "metrics.csv")
    assert _column(rows, "energy/interrupted") == [1.0] and _column(rows, "energy/failed") == [0.0]
    assert _column(rows, "energy/total_wh") == [pytest.approx(doc["total"]["energy_wh"], rel=1e-6)]
    assert len(_column(rows, "energy/epoch_wh")) == doc["epochs_finished"] >= 2
    assert "energy/status: interrupted" in (totals.parent / "hparams.yaml").read_text()
    guard = tmp_path / "netguard.log"
    assert not guard.exists() or not guard.read_text().strip()
