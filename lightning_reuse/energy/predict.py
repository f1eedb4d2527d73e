"""Predict a fit's total energy after its first epoch(s), with an interval.

carbontracker (Anthony et al., 2020, "Carbontracker: Tracking and Predicting the Carbon Footprint of
Training Deep Learning Models", arXiv:2007.03051) predicts the total as the mean energy of the observed
epochs times the number of epochs. Three things make that biased or over-confident, and this module fixes
each:

1. **Fixed costs.** Set-up (tracker start, sanity validation, data loading) is spent once, not per epoch:
   it is counted as spent, not extrapolated, and it is part of the predicted total.
2. **Warm-up.** The first epoch pays one-off costs (allocations, lazy initialisation, caches). Its
   steady-state value (from a reading taken a few batches in) replaces it as a sample and stays one
   beside the later epochs; without it, the first epoch is a sample only while it is the only epoch.
3. **Uncertainty.** The remaining ``R`` epochs' sum is predicted with a Student-t interval

   .. math::

       \\hat E = E_{spent} + R\\,\\bar e, \\qquad
       \\hat E \\pm t_{n-1,(1+c)/2}\\; s\\,\\sqrt{R + R^2/n}

   (variance of a sum of ``R`` new epochs plus that of the estimated mean); with one sample, ``s`` is a
   prior relative spread (``prior_rel_sd``) and the quantile is normal. With early stopping the lower end
   uses the fewest epochs the run may still take (``min_total_epochs``).

When every epoch sample reads 0 Wh (epochs shorter than the meter's resolution, e.g. codecarbon's energy
on sub-second epochs), the spread is unknown rather than zero: no prediction is made (``energy_wh`` and
``high_wh`` are NaN, ``ok`` is ``False`` and ``reason`` says why) instead of a zero-width interval.

Example:
    >>> p = predict_total([12.0, 10.0, 10.4], total_epochs=10, spent_wh=35.4)
    >>> round(p.energy_wh, 2), p.low_wh < p.energy_wh < p.high_wh
    (106.8, True)
    >>> carbontracker_prediction([12.0, 10.0, 10.4], total_epochs=10)
    108.0
    >>> q = predict_total([0.0], total_epochs=10, spent_wh=2e-4)  # below the meter's resolution
    >>> q.ok, q.low_wh, math.isnan(q.energy_wh)
    (False, 0.0002, True)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Prediction:
    """A predicted total with a ``confidence`` interval (Wh and g CO2e).

    ``ok`` is ``False`` (and ``reason`` says why) when no prediction could be made: then ``energy_wh``,
    ``high_wh`` and their CO2 figures are NaN and ``low_wh`` is what was already spent.
    """

    energy_wh: float
    low_wh: float
    high_wh: float
    co2_g: float
    co2_low_g: float
    co2_high_g: float
    epochs_observed: int
    epochs_total: float
    confidence: float
    ok: bool = True
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def carbontracker_prediction(epoch_wh: Sequence[float], total_epochs: float) -> float:
    """The baseline: mean observed epoch energy times the number of epochs (carbontracker's rule)."""
    if not epoch_wh:
        raise ValueError("`epoch_wh` must hold at least one observed epoch.")
    return statistics.fmean(epoch_wh) * total_epochs


def _quantile(confidence: float, dof: int | None) -> float:
    p = (1.0 + confidence) / 2.0
    if dof is None:
        return statistics.NormalDist().inv_cdf(p)
    from scipy.stats import t

    return float(t.ppf(p, dof))


def predict_total(
    epoch_wh: Sequence[float],
    total_epochs: float,
    spent_wh: float,
    *,
    first_epoch_steady_wh: float | None = None,
    min_total_epochs: float | None = None,
    confidence: float = 0.9,
    prior_rel_sd: float = 0.1,
    co2_per_wh: float = 0.0,
) -> Prediction:
    """Predict the total energy of a run of ``total_epochs`` after observing ``epoch_wh``.

    Args:
        epoch_wh: energy of each finished epoch, in order (Wh).
        total_epochs: epochs the run will take (``max_epochs``, or ``max_steps`` / steps per epoch).
        spent_wh: everything measured so far (set-up and the finished epochs).
        first_epoch_steady_wh: the first epoch's energy with its warm-up replaced by the steady rate.
        min_total_epochs: the fewest epochs the run may still take (early stopping), for the lower end.
        confidence: coverage of the interval, in (0, 1).
        prior_rel_sd: relative epoch-to-epoch spread assumed while only one sample exists.
        co2_per_wh: grams CO2e per Wh so far (for the CO2 figures).

    Returns:
        A :class:`Prediction`; with ``ok=False`` (NaN point and upper end) when every epoch sample is 0 Wh.
    """
    k = len(epoch_wh)
    if k == 0:
        raise ValueError(
            "`epoch_wh` must hold at least one observed epoch. HINT: predict after an epoch ends."
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}. HINT: e.g. 0.9.")
    samples = _samples(epoch_wh, first_epoch_steady_wh)
    if all(x == 0.0 for x in samples) and total_epochs > k:
        return _unknown(spent_wh, k, total_epochs, confidence, co2_per_wh)
    remaining = _Remaining(samples, confidence, prior_rel_sd)
    extra, half = remaining(total_epochs - k)
    point = spent_wh + extra
    low_r = total_epochs - k if min_total_epochs is None else min(min_total_epochs, total_epochs) - k
    low_extra, low_half = remaining(low_r)
    low = max(spent_wh, spent_wh + low_extra - low_half)
    high = point + half
    return Prediction(
        energy_wh=point,
        low_wh=low,
        high_wh=high,
        co2_g=point * co2_per_wh,
        co2_low_g=low * co2_per_wh,
        co2_high_g=high * co2_per_wh,
        epochs_observed=k,
        epochs_total=float(total_epochs),
        confidence=confidence,
    )


def _samples(epoch_wh: Sequence[float], first_epoch_steady_wh: float | None) -> list[float]:
    """Per-epoch samples: the later epochs and the first one's steady value (else the first epoch alone)."""
    samples = [float(x) for x in epoch_wh[1:]]
    if first_epoch_steady_wh is not None and first_epoch_steady_wh > 0:
        samples.append(float(first_epoch_steady_wh))
    return samples or [float(epoch_wh[0])]


class _Remaining:
    """Predicted sum of ``r`` more epochs and its interval's half-width, from the samples."""

    def __init__(self, samples: list[float], confidence: float, prior_rel_sd: float) -> None:
        self.n = len(samples)
        self.mean = statistics.fmean(samples)
        if self.n >= 2:
            self.sd, self.q = statistics.stdev(samples), _quantile(confidence, self.n - 1)
        else:
            self.sd, self.q = prior_rel_sd * abs(self.mean), _quantile(confidence, None)

    def __call__(self, r: float) -> tuple[float, float]:
        r = max(r, 0.0)
        return r * self.mean, self.q * self.sd * math.sqrt(r + r * r / self.n)


def _unknown(
    spent_wh: float, k: int, total_epochs: float, confidence: float, co2_per_wh: float
) -> Prediction:
    """No prediction: every sample read 0 Wh, so the per-epoch energy and its spread are unknown."""
    nan = math.nan
    return Prediction(
        energy_wh=nan,
        low_wh=spent_wh,
        high_wh=nan,
        co2_g=nan,
        co2_low_g=spent_wh * co2_per_wh,
        co2_high_g=nan,
        epochs_observed=k,
        epochs_total=float(total_epochs),
        confidence=confidence,
        ok=False,
        reason=(
            "the observed epochs measured 0 Wh (below the meter's resolution): the per-epoch energy and "
            "its spread are unknown. HINT: longer epochs, a smaller `measure_power_secs`, or an "
            "energy counter (RAPL/NVML)."
        ),
    )
