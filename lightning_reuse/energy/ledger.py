"""A local ledger of past retraining runs that turns a RESQUE score into a cost estimate with an interval.

RESQUE (Sangarya and Kim, AAAI 2025, arXiv:2412.15511) is a relative score: it correlates with the cost of
retraining but does not say "how many epochs, Wh or gCO2". Calibrate it on your own history: every finished
retraining run adds one row (score, epochs to target, energy, CO2, wall time) to an SQLite file, and
:meth:`RetrainingLedger.predict` fits cost = a + b * score by least squares constrained to b >= 0 (cost does
not fall as the shift grows) and returns the prediction with a Student-t prediction interval. With fewer
than ``min_runs`` runs it says so instead of guessing.

Example:
    >>> ledger = RetrainingLedger(":memory:")
    >>> for score, epochs in [(0.01, 3), (0.03, 6), (0.05, 8), (0.08, 13), (0.10, 15)]:
    ...     _ = ledger.add_run(score, epochs_to_target=epochs, energy_wh=0.5 * epochs)
    >>> est = ledger.predict(0.06, "epochs_to_target")
    >>> round(est.value, 1), est.lower < est.value < est.upper, est.n_runs
    (9.9, True, 5)
    >>> RetrainingLedger(":memory:").predict(0.06).available
    False
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

QUANTITIES: tuple[str, ...] = ("epochs_to_target", "energy_wh", "co2_g", "wall_time_s")
_COLUMNS = ("id", "created_at", "score", "variant", "tag", *QUANTITIES, "extra")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    score REAL NOT NULL,
    variant TEXT NOT NULL,
    tag TEXT NOT NULL,
    epochs_to_target REAL,
    energy_wh REAL,
    co2_g REAL,
    wall_time_s REAL,
    extra TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class LedgerRun:
    """One recorded retraining run (``None`` where a quantity was not measured)."""

    id: int
    created_at: float
    score: float
    variant: str
    tag: str
    epochs_to_target: float | None
    energy_wh: float | None
    co2_g: float | None
    wall_time_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CostEstimate:
    """A predicted cost for one score: ``value`` within ``[lower, upper]`` at ``confidence``, or ``None`` + why.

    ``str(estimate)`` is a sentence a user can read.
    """

    quantity: str
    score: float
    value: float | None
    lower: float | None
    upper: float | None
    confidence: float
    n_runs: int
    slope: float | None
    message: str

    @property
    def available(self) -> bool:
        return self.value is not None

    def __str__(self) -> str:
        return self.message


def _check_number(name: str, value: Any, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"`{name}` must be a finite number >= 0{' or None' if allow_none else ''}, got {value!r}."
        )
    return float(value)


# scale -> (forward transform of a cost, note added to the estimate's message)
_SCALES: dict[str, tuple[Callable[[float], float], str]] = {
    "linear": (float, ""),
    "log": (math.log, "log-linear fit"),
    "log1p": (math.log1p, "fit of log(1 + cost)"),  # add_run refuses negative costs
}


@dataclass(frozen=True)
class LineFit:
    """A monotone least-squares line evaluated at one score: the value and the prediction half-width."""

    value: float
    half_width: float
    slope: float
    notes: tuple[str, ...]


def fit_monotone_line(xs: Sequence[float], ys: Sequence[float], score: float, confidence: float) -> LineFit:
    """Least squares ``y = a + b * x`` with ``b >= 0``, evaluated at ``score`` with a prediction interval.

    If the unconstrained slope is not positive the best monotone fit is the mean (one parameter). The
    half-width is ``t_{n-p} * s * sqrt(1 + h)`` with the leverage ``h`` of ``score``.

    Example:
        >>> fit = fit_monotone_line([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0], 1.5, 0.9)
        >>> round(fit.value, 6), round(fit.slope, 6), round(fit.half_width, 6)
        (4.0, 2.0, 0.0)
    """
    from scipy import stats  # third-party, loaded only when a prediction is made

    n = len(xs)
    xbar, ybar = sum(xs) / n, sum(ys) / n
    sxx = sum((x - xbar) ** 2 for x in xs)
    slope = sum((x - xbar) * (y - ybar) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    notes: tuple[str, ...] = ()
    if slope <= 0:
        notes = ("the recorded runs do not show cost rising with the score, so the estimate is their mean",)
        slope, params, leverage = 0.0, 1, 1.0 / n
    else:
        params, leverage = 2, 1.0 / n + (score - xbar) ** 2 / sxx
    resid = sum((y - (ybar + slope * (x - xbar))) ** 2 for x, y in zip(xs, ys))
    s = math.sqrt(resid / (n - params))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - params)) * s * math.sqrt(1.0 + leverage)
    return LineFit(ybar + slope * (score - xbar), half, slope, notes)


def _back_transform(scale: str, value: float, half: float) -> tuple[float, float, float]:
    """``(value, lower, upper)`` of a fit on the ``scale`` mapped back to cost units (never below 0)."""
    if scale == "log":
        return math.exp(value), math.exp(value - half), math.exp(value + half)
    if scale == "log1p":
        return max(0.0, math.expm1(value)), max(0.0, math.expm1(value - half)), math.expm1(value + half)
    return max(0.0, value), max(0.0, value - half), value + half


class RetrainingLedger:
    """SQLite file of retraining runs and a monotone linear cost model fitted on them.

    Args:
        path: the SQLite file (created with its folder if missing); ``":memory:"`` for a throw-away ledger.
        min_runs: runs with the quantity measured that :meth:`predict` needs before it predicts (>= 3).
        scale: fit the cost itself (``"linear"``), its logarithm (``"log"``, costs must be > 0) or
            ``log(1 + cost)`` (``"log1p"``, zero costs allowed); see :meth:`predict`.
    """

    def __init__(
        self,
        path: str | Path = "resque_ledger.sqlite",
        min_runs: int = 4,
        scale: Literal["linear", "log", "log1p"] = "linear",
    ) -> None:
        if not isinstance(min_runs, int) or min_runs < 3:
            raise ValueError(
                f"`min_runs` must be an int >= 3 (a line and its spread need 3 points), got {min_runs!r}."
            )
        if scale not in ("linear", "log", "log1p"):
            raise ValueError(f"`scale` must be 'linear', 'log' or 'log1p', got {scale!r}.")
        self.path = str(path)
        self.min_runs = min_runs
        self.scale = scale
        self._memory = sqlite3.connect(":memory:") if self.path == ":memory:" else None
        if self._memory is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = self._memory if self._memory is not None else sqlite3.connect(self.path, timeout=30)
        try:
            with con:  # commits, or rolls back on error
                yield con
        finally:
            if con is not self._memory:
                con.close()

    def add_run(
        self,
        score: float,
        epochs_to_target: float | None = None,
        energy_wh: float | None = None,
        co2_g: float | None = None,
        wall_time_s: float | None = None,
        *,
        energy: Any = None,
        variant: str = "dist",
        tag: str = "",
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Record one run and return its id.

        ``energy`` may be an ``EnergyRecord`` (e.g. ``EnergyMonitor.total``): its ``energy_wh``, ``co2_g`` and
        ``duration_s`` fill the quantities not given explicitly. ``variant`` ("dist" or "task") and ``tag``
        (e.g. a model or dataset name) keep unrelated runs apart at prediction time.
        """
        if energy is not None:
            energy_wh = energy.energy_wh if energy_wh is None else energy_wh
            co2_g = getattr(energy, "co2_g", None) if co2_g is None else co2_g
            wall_time_s = getattr(energy, "duration_s", None) if wall_time_s is None else wall_time_s
        values = [
            _check_number(name, value)
            for name, value in zip(QUANTITIES, (epochs_to_target, energy_wh, co2_g, wall_time_s))
        ]
        row = (time.time(), _check_number("score", score, allow_none=False), str(variant), str(tag), *values)
        with self._connect() as con:
            cur = con.execute(
                f"INSERT INTO runs ({', '.join(_COLUMNS[1:])}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, json.dumps(extra or {})),
            )
            return int(cur.lastrowid)

    def runs(self, variant: str | None = None, tag: str | None = None) -> list[LedgerRun]:
        """All runs, oldest first, optionally only one ``variant`` / ``tag``."""
        query, args = f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE 1=1", []
        if variant is not None:
            query, args = query + " AND variant = ?", [*args, variant]
        if tag is not None:
            query, args = query + " AND tag = ?", [*args, tag]
        with self._connect() as con:
            rows = con.execute(query + " ORDER BY id", args).fetchall()
        return [LedgerRun(*r[:-1], extra=json.loads(r[-1])) for r in rows]

    def __len__(self) -> int:
        return len(self.runs())

    def predict(
        self,
        score: float,
        quantity: str = "epochs_to_target",
        confidence: float = 0.9,
        variant: str | None = None,
        tag: str | None = None,
    ) -> CostEstimate:
        """Predict ``quantity`` for a new ``score`` with a ``confidence`` prediction interval.

        Fit: least squares ``y = a + b * score`` with ``b >= 0`` (if the unconstrained slope is negative the
        best monotone fit is the mean). Interval: ``t_{n-p} * s * sqrt(1 + h)`` with the usual leverage ``h``.
        With ``scale="log"`` the same fit is made on ``log y`` and mapped back (a multiplicative interval;
        better when the cost grows faster than linearly with the score, as epochs to target often do);
        ``scale="log1p"`` fits ``log(1 + y)`` and maps back with ``exp(.) - 1``, which also accepts runs that
        cost nothing (0 epochs: the model already met the target).
        """
        if quantity not in QUANTITIES:
            raise ValueError(f"`quantity` must be one of {QUANTITIES}, got {quantity!r}.")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}. HINT: e.g. 0.9.")
        score = float(_check_number("score", score, allow_none=False))
        pts = [
            (r.score, getattr(r, quantity))
            for r in self.runs(variant, tag)
            if getattr(r, quantity) is not None
        ]
        n = len(pts)
        where = f"the ledger {self.path!r}" + (
            f" (variant={variant!r}, tag={tag!r})" if variant or tag else ""
        )

        def refuse(why: str) -> CostEstimate:
            return CostEstimate(quantity, score, None, None, None, confidence, n, None, why)

        if n < self.min_runs:
            return refuse(
                f"Cannot estimate {quantity}: {where} holds {n} run(s) with {quantity} measured; at least "
                f"{self.min_runs} are needed. Record finished retraining runs with `ledger.add_run(...)` "
                "(or RESQUECheck(record_to_ledger=True))."
            )
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if self.scale == "log" and min(ys) <= 0:
            return refuse(
                f"Cannot estimate {quantity} on a log scale: {where} holds values <= 0. HINT: use "
                "RetrainingLedger(..., scale='linear')."
            )
        forward, scale_note = _SCALES[self.scale]
        fit = fit_monotone_line(xs, [forward(y) for y in ys], score, confidence)
        value, lower, upper = _back_transform(self.scale, fit.value, fit.half_width)
        notes = [*fit.notes, *([scale_note] if scale_note else [])]
        if not min(xs) <= score <= max(xs):
            notes.append(
                f"score {score:.4g} is outside the recorded range [{min(xs):.4g}, {max(xs):.4g}] (extrapolation)"
            )
        msg = (
            f"Estimated {quantity} for RESQUE score {score:.4g}: {value:.4g} ({confidence:.0%} prediction interval "
            f"{lower:.4g} to {upper:.4g}), from {n} runs in {where}."
        )
        if notes:
            msg += " Note: " + "; ".join(notes) + "."
        return CostEstimate(quantity, score, value, lower, upper, confidence, n, fit.slope, msg)

    def predict_all(
        self, score: float, confidence: float = 0.9, variant: str | None = None, tag: str | None = None
    ) -> dict[str, CostEstimate]:
        """:meth:`predict` for every quantity."""
        return {q: self.predict(score, q, confidence, variant, tag) for q in QUANTITIES}
