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


# --- censored runs, idempotent keys, faults ------------------------------------------------------------------


def _tobit_reference(x: np.ndarray, y: np.ndarray, cens: np.ndarray) -> tuple[float, float, float]:
    """Slow, obviously-correct maximum likelihood of the censored line: a grid over the slope, then
    Nelder-Mead over (a, log s) at each slope, written straight from the likelihood."""
    from scipy import optimize

    def nll(a: float, b: float, s: float) -> float:
        mu = a + b * x
        ll = stats.norm.logpdf(y[~cens], mu[~cens], s).sum() + stats.norm.logsf(y[cens], mu[cens], s).sum()
        return -float(ll)

    best = (np.inf, 0.0, 0.0, 1.0)
    for b in np.linspace(0.0, 20.0, 81):
        res = optimize.minimize(lambda t, b=b: nll(t[0], b, np.exp(t[1])), [y.mean(), 0.0], method="Nelder-Mead",
                                options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})  # fmt: skip
        if res.fun < best[0]:
            best = (res.fun, res.x[0], b, float(np.exp(res.x[1])))
    _, a, b, s = best
    for _ in range(3):  # polish all three at once from the grid's best
        res = optimize.minimize(lambda t: nll(t[0], max(t[1], 0.0), np.exp(t[2])), [a, b, np.log(s)],
                                method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000})  # fmt: skip
        a, b, s = res.x[0], max(res.x[1], 0.0), float(np.exp(res.x[2]))
    return a, b, s


def test_censored_fit_is_the_maximum_likelihood_of_the_tobit_model() -> None:
    from lightning_reuse.energy.cost_model import fit_monotone_line

    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 1, 14))
    latent = 1.0 + 6.0 * x + rng.normal(0, 0.5, 14)
    budget = 4.5
    cens = latent > budget
    y = np.minimum(latent, budget)
    assert 2 <= cens.sum() <= 8
    a, b, s = _tobit_reference(x, y, cens)
    for score in (0.2, 0.9):
        fit = fit_monotone_line(x.tolist(), y.tolist(), score, 0.9, censored=cens.tolist())
        assert fit.censored == int(cens.sum())
        assert fit.slope == pytest.approx(b, rel=1e-3)
        assert fit.value == pytest.approx(a + b * score, rel=1e-4)
        dof = 14 - 2
        lev = 1 / 14 + (score - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum()
        assert fit.half_width == pytest.approx(stats.t.ppf(0.95, dof) * s * np.sqrt(1 + lev), rel=1e-3)

    # On many runs, dropping the misses (as a plain fit must) biases the slope low; the censored fit does not.
    x = rng.uniform(0, 1, 400)
    latent = 1.0 + 6.0 * x + rng.normal(0, 0.5, 400)
    cens = latent > budget
    y = np.minimum(latent, budget)
    full = fit_monotone_line(x.tolist(), y.tolist(), 0.5, 0.9, censored=cens.tolist())
    plain = fit_monotone_line(x[~cens].tolist(), y[~cens].tolist(), 0.5, 0.9)
    assert abs(full.slope - 6.0) < 0.3 < 6.0 - plain.slope


def test_missed_target_runs_are_lower_bounds_not_dropped() -> None:
    """The demo's failure: calibration at strong shifts never reached the target; the estimate was 0 epochs."""
    ledger = RetrainingLedger(":memory:", scale="log1p")
    for score, epochs in [(0.01, 0), (0.02, 0), (0.04, 1), (0.06, 5)]:
        ledger.add_run(score, epochs_to_target=epochs)
    for score in (0.08, 0.10):
        ledger.add_run(score, epochs_to_target=20, reached_target=False)  # budget of 20 epochs spent
    est = ledger.predict(0.09)
    assert est.available and est.value > 5 and est.upper > 20
    assert est.beyond_data and "missed the target within their budget" in str(est)
    assert "2 run(s) that missed the target enter as lower bounds" in str(est)
    ledger_all_missed = RetrainingLedger(":memory:")
    for score in (0.1, 0.2, 0.3, 0.4):
        ledger_all_missed.add_run(score, epochs_to_target=10, reached_target=False)
    refused = ledger_all_missed.predict(0.2)
    assert not refused.available and "4 missed the target" in str(refused) and "at least 10" in str(refused)


def test_prediction_past_the_largest_finished_cost_says_so() -> None:
    ledger = RetrainingLedger(":memory:")
    for score, epochs in [(0.1, 1), (0.2, 2), (0.3, 3), (0.4, 4)]:
        ledger.add_run(score, epochs_to_target=epochs)
    inside, outside = ledger.predict(0.25), ledger.predict(0.8)
    assert not inside.beyond_data and "Note" not in str(inside)
    assert outside.beyond_data and "outside the recorded range" in str(outside)
    assert "beyond the largest epochs_to_target of a run that reached its target (4)" in str(outside)


def test_a_key_makes_recording_idempotent(tmp_path: Path) -> None:
    ledger = RetrainingLedger(tmp_path / "l.sqlite")
    first = ledger.add_run(0.1, epochs_to_target=3, key="blur@0.5")
    again = ledger.add_run(0.1, epochs_to_target=4, key="blur@0.5")  # a restarted calibration
    other = ledger.add_run(0.2, epochs_to_target=5, key="blur@1.0")
    ledger.add_run(0.1, epochs_to_target=3)
    ledger.add_run(0.1, epochs_to_target=3)  # without a key, every call is a new run
    runs = RetrainingLedger(tmp_path / "l.sqlite").runs()
    assert first == again != other and len(runs) == 4
    assert [(r.key, r.epochs_to_target) for r in runs[:2]] == [("blur@0.5", 4.0), ("blur@1.0", 5.0)]


def test_ledgers_of_the_first_release_open_and_gain_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL, score REAL NOT NULL, "
        "variant TEXT NOT NULL, tag TEXT NOT NULL, epochs_to_target REAL, energy_wh REAL, co2_g REAL, "
        "wall_time_s REAL, extra TEXT NOT NULL)"
    )
    con.execute("INSERT INTO runs VALUES (1, 0.0, 0.3, 'dist', '', 2.0, NULL, NULL, NULL, '{}')")
    con.commit()
    con.close()
    ledger = RetrainingLedger(path)
    assert [(r.score, r.reached_target, r.key) for r in ledger.runs()] == [(0.3, True, None)]
    ledger.add_run(0.4, epochs_to_target=3, key="k", reached_target=False)
    assert [r.reached_target for r in RetrainingLedger(path).runs()] == [True, False]


def test_corrupt_and_foreign_files_give_errors_that_name_the_file_and_the_fix(tmp_path: Path) -> None:
    import sqlite3

    from lightning_reuse.energy.ledger import LedgerError

    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(
        LedgerError, match=r"corrupt\.sqlite' is not a readable SQLite ledger.*HINT: move the file"
    ):
        RetrainingLedger(corrupt)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE runs (name TEXT, value REAL)")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match=r"foreign\.sqlite' has a table 'runs' of another schema.*HINT"):
        RetrainingLedger(foreign)
    assert issubclass(LedgerError, ValueError)


def test_a_locked_ledger_names_the_lock_and_the_fix(tmp_path: Path) -> None:
    import sqlite3

    from lightning_reuse.energy.ledger import LedgerError

    path = tmp_path / "l.sqlite"
    ledger = RetrainingLedger(path, timeout_s=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write
    try:
        with pytest.raises(
            LedgerError, match=r"is locked by another process.*HINT: wait for the other writer"
        ):
            ledger.add_run(0.1, epochs_to_target=1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ledger.add_run(0.1, epochs_to_target=1) == 1


def test_a_read_only_ledger_keeps_runs_pending_and_adds_them_later(tmp_path: Path, read_only_file) -> None:
    from lightning_reuse.energy.ledger import LedgerError, LedgerWarning

    path = tmp_path / "l.sqlite"
    RetrainingLedger(path).add_run(0.1, epochs_to_target=1)
    read_only_file(path)
    ledger = RetrainingLedger(path)
    with pytest.raises(
        LedgerError, match=r"l\.sqlite' is read-only.*HINT: make the file and its folder writable"
    ):
        ledger.add_run(0.2, epochs_to_target=2)
    with pytest.warns(LedgerWarning, match=r"kept in .*l\.sqlite\.pending\.jsonl"):
        assert ledger.add_run(0.3, epochs_to_target=3, key="k", on_error="keep") is None
    assert [r["score"] for r in ledger.pending()] == [0.3] and len(ledger) == 1
    read_only_file.undo(path)
    ledger.add_run(0.4, epochs_to_target=4)
    assert [(r.score, r.key) for r in ledger.runs()] == [(0.1, None), (0.3, "k"), (0.4, None)]
    assert ledger.pending() == [] and not ledger.pending_path.exists()
