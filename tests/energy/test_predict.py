"""The total prediction against a slow reference of its formula, its properties, and its coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lightning_reuse.energy.predict import carbontracker_prediction, predict_total


def _reference(epochs, total, spent, steady, conf):
    """Direct transcription: samples = epochs[1:] (+ steady), point = spent + R*mean, t-interval."""
    samples = list(epochs[1:]) + ([steady] if steady else [])
    samples = samples or [epochs[0]]
    n, r = len(samples), total - len(epochs)
    mean = sum(samples) / n
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1))
        q = stats.t.ppf((1 + conf) / 2, n - 1)
    else:
        sd, q = 0.1 * mean, stats.norm.ppf((1 + conf) / 2)
    half = q * sd * math.sqrt(r + r * r / n)
    return spent + r * mean, spent + r * mean - half, spent + r * mean + half


@pytest.mark.parametrize(
    ("epochs", "total", "spent", "steady"),
    [
        ([5.0], 10, 7.0, None),
        ([5.0], 10, 7.0, 4.0),
        ([6.0, 4.0, 4.5], 10, 20.0, None),
        ([6.0, 4.0, 4.4], 8, 20.0, 4.2),
    ],
)
def test_matches_reference(epochs, total, spent, steady) -> None:
    p = predict_total(
        epochs, total_epochs=total, spent_wh=spent, first_epoch_steady_wh=steady, confidence=0.9
    )
    ref = _reference(epochs, total, spent, steady, 0.9)
    assert (p.energy_wh, p.low_wh, p.high_wh) == pytest.approx(ref, rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    e=st.floats(0.01, 100.0),
    k=st.integers(3, 9),  # two or more steady samples (epoch 1 is dropped as warm-up)
    setup=st.floats(0.0, 50.0),
    c=st.floats(0.5, 0.99),
)
def test_constant_epochs_are_predicted_exactly(e: float, k: int, setup: float, c: float) -> None:
    spent = setup + k * e
    p = predict_total([e] * k, total_epochs=10, spent_wh=spent, confidence=c)
    assert p.energy_wh == pytest.approx(setup + 10 * e, rel=1e-9)
    assert p.high_wh - p.low_wh == pytest.approx(0.0, abs=1e-9 * spent)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=6), st.floats(0.5, 0.95))
def test_interval_contains_point_and_widens_with_confidence(epochs, c) -> None:
    spent = sum(epochs)
    narrow = predict_total(epochs, total_epochs=12, spent_wh=spent, confidence=c)
    wide = predict_total(epochs, total_epochs=12, spent_wh=spent, confidence=min(0.999, c + 0.04))
    assert spent <= narrow.low_wh <= narrow.energy_wh <= narrow.high_wh
    assert wide.high_wh >= narrow.high_wh and wide.low_wh <= narrow.low_wh


def test_finished_run_predicts_what_was_spent() -> None:
    p = predict_total([3.0, 2.0, 2.5], total_epochs=3, spent_wh=9.0)
    assert (p.energy_wh, p.low_wh, p.high_wh) == (9.0, 9.0, 9.0)


def test_early_stopping_lowers_only_the_lower_end() -> None:
    free = predict_total([5.0, 4.0, 4.2], total_epochs=20, spent_wh=15.0)
    es = predict_total([5.0, 4.0, 4.2], total_epochs=20, spent_wh=15.0, min_total_epochs=5)
    assert es.energy_wh == free.energy_wh and es.high_wh == free.high_wh
    assert es.low_wh < free.low_wh and es.low_wh >= 15.0


def test_co2_scales_with_intensity_and_errors_are_clear() -> None:
    p = predict_total([2.0, 2.0], total_epochs=4, spent_wh=4.0, co2_per_wh=0.5)
    assert p.co2_g == 4.0 and p.to_dict()["epochs_observed"] == 2
    with pytest.raises(ValueError, match="at least one"):
        predict_total([], total_epochs=4, spent_wh=0.0)
    with pytest.raises(ValueError, match="confidence"):
        predict_total([1.0], total_epochs=4, spent_wh=1.0, confidence=1.0)


def test_beats_carbontracker_on_a_run_with_setup_and_warm_up() -> None:
    """A run with a fixed set-up cost and a slow first epoch: the plain mean is biased, ours is not."""
    setup, warm, steady, total = 30.0, 4.0, 5.0, 10
    epochs = [steady + warm, steady, steady]
    truth = setup + warm + total * steady
    for k in (1, 3):
        ours = predict_total(
            epochs[:k], total_epochs=total, spent_wh=setup + sum(epochs[:k]), first_epoch_steady_wh=steady
        )
        assert ours.energy_wh == pytest.approx(truth)
        assert abs(carbontracker_prediction(epochs[:k], total) - truth) > 5.0


def test_interval_coverage_on_iid_epochs() -> None:
    """Monte Carlo: with normal epoch-to-epoch noise the 90% interval covers the true total ~90% of the time."""
    rng = np.random.default_rng(0)
    hits, trials = 0, 2000
    for _ in range(trials):
        e = rng.normal(10.0, 1.0, size=10)
        p = predict_total(list(e[:4]), total_epochs=10, spent_wh=float(e[:4].sum()), confidence=0.9)
        hits += p.low_wh <= e.sum() <= p.high_wh
    assert 0.86 <= hits / trials <= 0.95


@pytest.mark.parametrize(
    ("epochs", "steady"), [([0.0], None), ([0.0, 0.0, 0.0], None), ([3e-5, 0.0], None), ([0.0], 0.0)]
)
def test_epochs_below_resolution_make_no_zero_width_interval(epochs, steady) -> None:
    p = predict_total(epochs, total_epochs=10, spent_wh=2e-4, first_epoch_steady_wh=steady, co2_per_wh=0.5)
    assert not p.ok and "0 Wh" in p.reason and "HINT" in p.reason
    assert math.isnan(p.energy_wh) and math.isnan(p.high_wh) and math.isnan(p.co2_g)
    assert p.low_wh == 2e-4 and p.co2_low_g == pytest.approx(1e-4)  # what was spent is still known
    assert p.to_dict()["ok"] is False
    # A finished run needs no per-epoch figure; a single non-zero sample still predicts.
    done = predict_total([0.0, 0.0], total_epochs=2, spent_wh=2e-4)
    assert done.ok and done.energy_wh == done.low_wh == done.high_wh == 2e-4
    assert predict_total([0.0], total_epochs=10, spent_wh=2e-4, first_epoch_steady_wh=1e-5).ok
