"""EnergyMonitor with real codecarbon (offline) in 2 real DDP processes (CPU, gloo): summed, logged once.

The other DDP energy test uses the simulator; this one runs codecarbon's offline tracker in every rank
(``ddp_mode="process"``) and on local rank 0 only (``"node"``), under the harness's network guard.
"""

from __future__ import annotations

import csv
import json

import pytest

_SCRIPT = """
import json, time
import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from lightning_reuse.callbacks.energy_monitor import EnergyMonitor

class Slow(BoringModel):
    def training_step(self, batch, batch_idx):
        time.sleep(0.02)  # epochs of ~0.2 s: codecarbon refreshes its counters at most every 50 ms
        return super().training_step(batch, batch_idx)

pl.seed_everything(0)
out = {}
for mode in ("process", "node"):
    monitor = EnergyMonitor(country_iso_code="FRA", measure_power_secs=0.5, ddp_mode=mode)
    trainer = pl.Trainer(accelerator="cpu", devices=int(os.environ["LIGHTNING_REUSE_TEST_NPROCS"]), strategy="ddp",
                         max_epochs=2, limit_train_batches=8, limit_val_batches=2, callbacks=[monitor],
                         logger=CSVLogger(".", name=mode), enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Slow())
    out[mode] = {"total": monitor.total.to_dict(), "local": monitor.meter.final.to_dict(),
                 "epochs": [e.energy_wh for e in monitor.epochs], "status": monitor.status,
                 "totals_path": str(monitor.totals_path) if trainer.global_rank == 0 else None}
with open(f"rank{trainer.global_rank}.json", "w") as fh:
    json.dump(out, fh)
"""


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_with_real_codecarbon_offline_sums_ranks_and_logs_once(ddp_runner) -> None:
    result = ddp_runner(_SCRIPT)  # fails on any non-loopback connect in either rank
    r0, r1 = (json.loads((result.workdir / f"rank{i}.json").read_text()) for i in (0, 1))
    p0, p1 = r0["process"], r1["process"]
    assert p0["status"] == p1["status"] == "ok"
    assert p0["local"]["energy_wh"] > 0 and p1["local"]["energy_wh"] > 0  # every rank measured itself
    total = p0["total"]["energy_wh"]
    assert total == pytest.approx(p0["local"]["energy_wh"] + p1["local"]["energy_wh"], rel=1e-9)
    assert total == pytest.approx(p1["total"]["energy_wh"], rel=1e-12) and p0["epochs"] == p1["epochs"]
    assert p0["total"]["co2_g"] == pytest.approx(p0["local"]["co2_g"] + p1["local"]["co2_g"], rel=1e-9)
    assert p0["total"]["method"]["ram"] == "estimate" and p0["total"]["method"]["cpu"] in ("RAPL", "estimate")
    assert len(p0["epochs"]) == 2 and all(e > 0 for e in p0["epochs"])
    n0, n1 = r0["node"], r1["node"]
    assert n1["local"]["energy_wh"] == 0.0 and n0["local"]["energy_wh"] > 0  # one tracker per node
    assert n0["total"]["energy_wh"] == pytest.approx(n0["local"]["energy_wh"], rel=1e-9)
    for mode, rank0 in (("process", p0), ("node", n0)):
        rows = list(csv.DictReader(open(next((result.workdir / mode).rglob("metrics.csv")))))
        assert _column(rows, "energy/total_wh") == [pytest.approx(rank0["total"]["energy_wh"], rel=1e-6)]
        assert len(_column(rows, "energy/epoch_wh")) == 2  # logged once, by rank 0
        totals = json.loads(open(rank0["totals_path"]).read())  # written by rank 0, summed over ranks
        assert totals["status"] == "ok" and totals["summed_over_ranks"]
        assert totals["total"]["energy_wh"] == pytest.approx(rank0["total"]["energy_wh"], rel=1e-12)
