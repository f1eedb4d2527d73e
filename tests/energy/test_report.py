"""Reuse-vs-retrain table and plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_reuse.energy.records import EnergyRecord
from lightning_reuse.energy.report import as_record, plot_reuse_report, reuse_report


def test_table_reports_the_measured_saving() -> None:
    reuse = EnergyRecord(
        cpu_wh=1.0, gpu_wh=2.0, ram_wh=1.0, co2_g=2.0, duration_s=10.0, method={"gpu": "NVML"}
    )
    table = reuse_report({"reuse": reuse, "retrain": 16.0}, baseline="retrain")
    lines = table.splitlines()
    assert len(lines) == 4
    assert "| reuse | 4 | 2 | 10 | 1 / 2 / 1 | gpu: NVML | -75.0% |" == lines[2]
    assert lines[3].startswith("| retrain | 16 |") and "total: ledger" in lines[3] and "baseline" in lines[3]


def test_inputs_and_errors() -> None:
    rec = EnergyRecord(cpu_wh=1.0)
    assert as_record(rec.to_dict()) == rec
    with pytest.raises(TypeError, match="EnergyRecord"):
        as_record("3 Wh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baseline"):
        reuse_report({"a": 1.0}, baseline="b")
    with pytest.raises(ValueError, match="at least one"):
        reuse_report({})


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = plot_reuse_report(
        {"reuse": EnergyRecord(cpu_wh=1.0, co2_g=0.4), "retrain": 5.0}, tmp_path / "r.png"
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
