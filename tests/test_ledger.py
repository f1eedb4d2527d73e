"""Retraining ledger: SQLite persistence, the monotone least-squares fit, intervals, honest refusals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lightning_reuse.energy.ledger import QUANTITIES, RetrainingLedger


@dataclass
class FakeEnergyRecord:  # the EnergyRecord fields the ledger reads
    energy_wh: float
    co2_g: float
    duration_s: float


def test_persists_filters_and_reads_energy_records(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.sqlite"
    ledger = RetrainingLedger(path)
    first = ledger.add_run(0.02, epochs_to_target=4, energy=FakeEnergyRecord(1.5, 0.6, 12.0), tag="cnn")
    ledger.add_run(0.3, epochs_to_target=9, variant="task", extra={"shift": "parity"})
    reopened = RetrainingLedger(path)
    assert len(reopened) == 2
    run = reopened.runs(tag="cnn")[0]
    assert (run.id, run.score, run.energy_wh, run.co2_g, run.wall_time_s) == (first, 0.02, 1.5, 0.6, 12.0)
    assert reopened.runs(variant="task")[0].extra == {"shift": "parity"}
    assert reopened.runs(variant="task")[0].energy_wh is None
    for bad in ({"score": -1.0}, {"score": float("nan")}, {"score": 0.1, "energy_wh": "3"}):
        with pytest.raises(ValueError, match="finite number >= 0"):
            ledger.add_run(**bad)
    with pytest.raises(ValueError, match="min_runs"):
        RetrainingLedger(":memory:", min_runs=2)


def test_says_plainly_when_too_few_runs() -> None:
    ledger = RetrainingLedger(":memory:")
    for s in (0.1, 0.2, 0.3):
        ledger.add_run(s, epochs_to_target=10 * s)
    ledger.add_run(0.4)  # energy / epochs not measured: does not count
    est = ledger.predict(0.25)
    assert not est.available and est.value is None
    assert "holds 3 run(s) with epochs_to_target measured; at least 4 are needed" in str(est)
    assert "0 run(s) with energy_wh" in str(ledger.predict(0.25, "energy_wh"))
    with pytest.raises(ValueError, match="one of"):
        ledger.predict(0.2, "kwh")


def test_fit_and_interval_equal_the_textbook_formulas() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.2, 12)
    y = 3 + 80 * x + rng.normal(0, 1.0, 12)
    ledger = RetrainingLedger(":memory:")
    for xi, yi in zip(x, y):
        ledger.add_run(float(xi), energy_wh=float(yi))
    est = ledger.predict(0.15, "energy_wh", confidence=0.8)
    b, a = np.polyfit(x, y, 1)
    s = np.sqrt(((y - (a + b * x)) ** 2).sum() / 10)
    half = (
        stats.t.ppf(0.9, 10) * s * np.sqrt(1 + 1 / 12 + (0.15 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    )
    assert est.value == pytest.approx(a + b * 0.15, rel=1e-10)
    assert (est.lower, est.upper) == pytest.approx((a + b * 0.15 - half, a + b * 0.15 + half), rel=1e-10)
    assert est.slope == pytest.approx(b) and est.n_runs == 12 and "80% prediction interval" in str(est)
    assert set(ledger.predict_all(0.1)) == set(QUANTITIES)


def test_interval_covers_new_runs_at_its_level() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(200):
        ledger = RetrainingLedger(":memory:", min_runs=3)
        for xi in rng.uniform(0, 1, 8):
            ledger.add_run(float(xi), epochs_to_target=float(5 + 10 * xi + rng.normal(0, 1)))
        est = ledger.predict(0.5, confidence=0.9)
        hits += est.lower <= 10 + rng.normal(0, 1) <= est.upper
    assert 0.84 <= hits / 200 <= 0.96


def test_monotone_fallback_and_extrapolation_note() -> None:
    ledger = RetrainingLedger(":memory:")
    for s, e in [(0.1, 9), (0.2, 8), (0.3, 8), (0.4, 7)]:
        ledger.add_run(s, epochs_to_target=e)
    est = ledger.predict(0.9)
    assert est.slope == 0.0 and est.value == pytest.approx(8.0)
    assert "do not show cost rising" in str(est) and "extrapolation" in str(est)


def test_log_scale_is_the_linear_fit_of_log_cost() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 0.04, 15)
    y = np.exp(0.5 + 80 * x + rng.normal(0, 0.2, 15))
    ledger = RetrainingLedger(":memory:", scale="log")
    for xi, yi in zip(x, y):
        ledger.add_run(float(xi), epochs_to_target=float(yi))
    est = ledger.predict(0.03)
    b, a = np.polyfit(x, np.log(y), 1)
    s = np.sqrt(((np.log(y) - (a + b * x)) ** 2).sum() / 13)
    half = (
        stats.t.ppf(0.95, 13) * s * np.sqrt(1 + 1 / 15 + (0.03 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    )
    assert est.value == pytest.approx(np.exp(a + b * 0.03), rel=1e-10)
    assert (est.lower, est.upper) == pytest.approx((np.exp(a + b * 0.03 - half), np.exp(a + b * 0.03 + half)))
    assert "log-linear fit" in str(est)
    ledger.add_run(0.01, epochs_to_target=0)
    assert "values <= 0" in str(ledger.predict(0.03))
    with pytest.raises(ValueError, match="scale"):
        RetrainingLedger(":memory:", scale="sqrt")  # type: ignore[arg-type]


def test_log1p_scale_is_the_linear_fit_of_log1p_cost_and_accepts_zero_cost() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 0.1, 12)
    y = np.maximum(0.0, np.expm1(0.1 + 25 * x + rng.normal(0, 0.1, 12)))
    y[:2] = 0.0  # runs where the model already met the target
    ledger = RetrainingLedger(":memory:", scale="log1p")
    for xi, yi in zip(x, y):
        ledger.add_run(float(xi), epochs_to_target=float(yi))
    est = ledger.predict(0.05)
    b, a = np.polyfit(x, np.log1p(y), 1)
    s = np.sqrt(((np.log1p(y) - (a + b * x)) ** 2).sum() / 10)
    half = (
        stats.t.ppf(0.95, 10) * s * np.sqrt(1 + 1 / 12 + (0.05 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    )
    assert est.value == pytest.approx(np.expm1(a + b * 0.05), rel=1e-10)
    assert est.lower == pytest.approx(max(0.0, np.expm1(a + b * 0.05 - half)))
    assert est.upper == pytest.approx(np.expm1(a + b * 0.05 + half))
    assert "log(1 + cost)" in str(est)
