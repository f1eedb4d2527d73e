"""The ledger's cost model: a monotone line ``cost = a + b * score`` (``b >= 0``) with a prediction interval.

Two fits, chosen by the data:

- every run reached its target: ordinary least squares with the textbook Student-t prediction interval
  ``t_{n-p} * s * sqrt(1 + h)`` (``h`` the leverage of the new score);
- some runs missed their target within their budget (*censored*: their recorded cost is only a lower bound):
  a Tobit-style maximum likelihood, ``y_i ~ N(a + b x_i, s^2)`` for finished runs and
  ``P(y_i* >= c_i) = 1 - Phi((c_i - a - b x_i) / s)`` for missed ones (Tobin 1958), with the same interval
  formula at the fitted ``s`` (an approximation: the exact finite-sample interval of a censored fit has no
  closed form). Dropping the missed runs, as a plain fit must, biases the cost low exactly where it matters.

Both work on whatever scale the caller transformed the costs to (the ledger uses ``log(1 + cost)`` or others).

Example:
    >>> fit = fit_monotone_line([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0], 1.5, 0.9)
    >>> round(fit.value, 6), round(fit.slope, 6), round(fit.half_width, 6)
    (4.0, 2.0, 0.0)
    >>> cens = fit_monotone_line([0, 1, 2, 3, 4], [1.0, 2.1, 2.9, 4.0, 4.0], 4.0, 0.9,
    ...                          censored=[False, False, False, False, True])
    >>> cens.value > 4.5, cens.censored
    (True, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LineFit:
    """A monotone line evaluated at one score: the value, the prediction half-width, and how it was fitted."""

    value: float
    half_width: float
    slope: float
    notes: tuple[str, ...]
    censored: int = 0  # runs that entered the fit as lower bounds


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats  # third-party, loaded only when a prediction is made

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def _ols(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, int]:
    """``(intercept at mean x, slope, parameters)`` of least squares constrained to slope >= 0."""
    xbar, ybar = float(xs.mean()), float(ys.mean())
    sxx = float(((xs - xbar) ** 2).sum())
    slope = float(((xs - xbar) * (ys - ybar)).sum()) / sxx if sxx > 0 else 0.0
    return (ybar, slope, 2) if slope > 0 else (ybar, 0.0, 1)


def _leverage(xs: np.ndarray, score: float, params: int) -> float:
    n, xbar = len(xs), float(xs.mean())
    sxx = float(((xs - xbar) ** 2).sum())
    return 1.0 / n + ((score - xbar) ** 2 / sxx if params == 2 and sxx > 0 else 0.0)


def _tobit(
    xs: np.ndarray, ys: np.ndarray, cens: np.ndarray, start: tuple[float, float, float]
) -> tuple[float, ...]:
    """Maximum likelihood ``(a, b, s)`` of ``y = a + b (x - mean x) + N(0, s^2)`` with right-censored ``ys``."""
    from scipy import optimize, stats

    xc = xs - xs.mean()

    def nll(theta: np.ndarray) -> float:
        a, b, log_s = theta
        s = math.exp(log_s)
        mu = a + b * xc
        z = (ys - mu) / s
        return float(-(stats.norm.logpdf(z[~cens]) - log_s).sum() - stats.norm.logsf(z[cens]).sum())

    res = optimize.minimize(
        nll, np.array([start[0], start[1], math.log(start[2])]), method="L-BFGS-B",
        bounds=[(None, None), (0.0, None), (math.log(1e-6), math.log(1e6))],
    )  # fmt: skip
    a, b, log_s = (float(v) for v in res.x)
    return a, b, math.exp(log_s)


def fit_monotone_line(
    xs: Sequence[float],
    ys: Sequence[float],
    score: float,
    confidence: float,
    censored: Sequence[bool] | None = None,
) -> LineFit:
    """Fit ``y = a + b * x`` with ``b >= 0`` and evaluate it at ``score`` with a ``confidence`` interval.

    Args:
        xs: the scores of the recorded runs.
        ys: their costs (on the caller's scale); for a censored run, the cost it had spent when it stopped.
        score: where to predict.
        confidence: coverage of the prediction interval, in (0, 1).
        censored: per run, True when it missed its target (its ``y`` is a lower bound). At least two runs
            must be uncensored.

    If the best slope is not positive the fit is the (censored) mean: one parameter.
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    cens = np.zeros(len(x), dtype=bool) if censored is None else np.asarray(censored, dtype=bool)
    n, n_cens = len(x), int(cens.sum())
    level, slope, params = _ols(x[~cens], y[~cens]) if n_cens else _ols(x, y)
    if n_cens:  # OLS on the uncensored runs only starts the likelihood; the intercept is re-centred on all x
        s0 = float(np.std(y[~cens])) or 1.0
        level = level + slope * float(x.mean() - x[~cens].mean())
        level, slope, s = _tobit(x, y, cens, (level, slope, s0))
        params = 2 if slope > 1e-12 else 1
        slope = slope if params == 2 else 0.0
    else:
        resid = y - (level + slope * (x - x.mean()))
        s = math.sqrt(float((resid**2).sum()) / (n - params))
    notes: tuple[str, ...] = ()
    if params == 1:
        notes = ("the recorded runs do not show cost rising with the score, so the estimate is their mean",)
    if n_cens:
        notes += (f"{n_cens} run(s) that missed the target enter as lower bounds (censored fit)",)
    half = _t_quantile(confidence, max(n - params, 1)) * s * math.sqrt(1.0 + _leverage(x, score, params))
    return LineFit(level + slope * (score - float(x.mean())), half, slope, notes, n_cens)
