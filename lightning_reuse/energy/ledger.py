"""A local ledger of past retraining runs that turns a RESQUE score into a cost estimate with an interval.

RESQUE (Sangarya and Kim, AAAI 2025, arXiv:2412.15511) is a relative score: it correlates with the cost of
retraining but does not say "how many epochs, Wh or gCO2". Calibrate it on your own history: every finished
retraining run adds one row (score, epochs to target, energy, CO2, wall time) to an SQLite file, and
:meth:`RetrainingLedger.predict` fits cost = a + b * score by least squares constrained to b >= 0 (cost does
not fall as the shift grows) and returns the prediction with a Student-t prediction interval. With fewer
than ``min_runs`` runs it says so instead of guessing.

Runs that missed their target within their budget are recorded with ``reached_target=False``: their cost is a
lower bound, and the fit treats it as one (a censored fit, see :mod:`~lightning_reuse.energy.cost_model`).
A run recorded with a ``key`` replaces the earlier run with that key, so a restarted calibration does not
count its levels twice. Bookkeeping never fails a finished fit: ``add_run(..., on_error="keep")`` keeps a
run that cannot be written in a pending file beside the ledger and adds it on the next successful write.

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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.energy.cost_model import fit_monotone_line

QUANTITIES: tuple[str, ...] = ("epochs_to_target", "energy_wh", "co2_g", "wall_time_s")
_COLUMNS = ("id", "created_at", "score", "variant", "tag", *QUANTITIES, "extra", "reached_target", "key")
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
    extra TEXT NOT NULL,
    reached_target INTEGER NOT NULL DEFAULT 1,
    key TEXT
)
"""
_ADDED_COLUMNS = {  # columns newer than the first release: added to older ledgers on open
    "reached_target": "ALTER TABLE runs ADD COLUMN reached_target INTEGER NOT NULL DEFAULT 1",
    "key": "ALTER TABLE runs ADD COLUMN key TEXT",
}
_KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS runs_key ON runs(key) WHERE key IS NOT NULL"


class LedgerError(ValueError):
    """The ledger file cannot be used (not SQLite, another schema, read-only, locked); the message says why."""


class LedgerWarning(LightningReuseWarning):
    """A run could not be written to the ledger and was kept in its pending file."""


@dataclass(frozen=True)
class LedgerRun:
    """One recorded retraining run (``None`` where a quantity was not measured).

    ``reached_target`` False: the run stopped (budget spent) before its target, so its costs are lower bounds.
    """

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
    reached_target: bool = True
    key: str | None = None


@dataclass(frozen=True)
class CostEstimate:
    """A predicted cost for one score: ``value`` within ``[lower, upper]`` at ``confidence``, or ``None`` + why.

    ``beyond_data`` is True when the prediction reaches past what the ledger has seen (a score outside the
    recorded range, a value above every finished run's cost, or a score where runs missed their target).
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
    beyond_data: bool = False

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


def _back_transform(scale: str, value: float, half: float) -> tuple[float, float, float]:
    """``(value, lower, upper)`` of a fit on the ``scale`` mapped back to cost units (never below 0)."""
    if scale == "log":
        return math.exp(value), math.exp(value - half), math.exp(value + half)
    if scale == "log1p":
        return max(0.0, math.expm1(value)), max(0.0, math.expm1(value - half)), math.expm1(value + half)
    return max(0.0, value), max(0.0, value - half), value + half


def _explain(path: str, error: sqlite3.Error) -> LedgerError:
    """Turn an SQLite error into one that names the file, what is wrong and the fix."""
    text = str(error).lower()
    if "not a database" in text or "malformed" in text:
        what, fix = (
            "is not a readable SQLite ledger (corrupt, or another kind of file)",
            ("move the file aside (a new ledger is created in its place) or pass another `path`"),
        )
    elif "readonly" in text or "read-only" in text:
        what, fix = "is read-only", "make the file and its folder writable, or pass a `path` you can write to"
    elif "locked" in text or "busy" in text:
        what, fix = (
            "is locked by another process (waited 30 s)",
            ("wait for the other writer to finish, or give each job its own ledger file"),
        )
    elif "unable to open" in text:
        what, fix = "cannot be opened", "check that its folder exists and is writable"
    else:
        what, fix = f"cannot be used ({error})", "pass another `path`"
    return LedgerError(f"The retraining ledger {path!r} {what}: {error}. HINT: {fix}.")


class RetrainingLedger:
    """SQLite file of retraining runs and a monotone linear cost model fitted on them.

    Args:
        path: the SQLite file (created with its folder if missing); ``":memory:"`` for a throw-away ledger.
        min_runs: runs with the quantity measured that :meth:`predict` needs before it predicts (>= 3).
        scale: fit the cost itself (``"linear"``), its logarithm (``"log"``, costs must be > 0) or
            ``log(1 + cost)`` (``"log1p"``, zero costs allowed); see :meth:`predict`.
        timeout_s: how long to wait for another process's write lock before giving up.

    Raises:
        LedgerError: the file is not an SQLite ledger, holds another schema, or cannot be opened.
    """

    def __init__(
        self,
        path: str | Path = "resque_ledger.sqlite",
        min_runs: int = 4,
        scale: Literal["linear", "log", "log1p"] = "linear",
        timeout_s: float = 30.0,
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
        self.timeout_s = float(timeout_s)
        self._memory = sqlite3.connect(":memory:") if self.path == ":memory:" else None
        if self._memory is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._columns = self._open_schema()

    @property
    def pending_path(self) -> Path | None:
        """Where runs that could not be written wait (JSON lines beside the ledger); None in memory."""
        return None if self._memory is not None else Path(self.path + ".pending.jsonl")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = (
                self._memory
                if self._memory is not None
                else sqlite3.connect(self.path, timeout=self.timeout_s)
            )
        except sqlite3.Error as err:
            raise _explain(self.path, err) from err
        try:
            with con:  # commits, or rolls back on error
                yield con
        except sqlite3.Error as err:
            raise _explain(self.path, err) from err
        finally:
            if con is not self._memory:
                con.close()

    def _open_schema(self) -> set[str]:
        """Create the table, or check an existing one and add the columns newer releases need."""
        with self._connect() as con:
            found = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
            if not found:
                con.execute(_SCHEMA)
                con.execute(_KEY_INDEX)
                return set(_COLUMNS)
            missing = [c for c in _COLUMNS if c not in found and c not in _ADDED_COLUMNS]
            if missing:
                raise LedgerError(
                    f"The retraining ledger {self.path!r} has a table 'runs' of another schema (no column(s) "
                    f"{missing}). HINT: it belongs to another program: pass another `path`."
                )
        for column, statement in _ADDED_COLUMNS.items():
            if column not in found:
                with contextlib.suppress(LedgerError), self._connect() as con:  # read-only: read as before
                    con.execute(statement)
                    found.add(column)
        if "key" in found:
            with contextlib.suppress(LedgerError), self._connect() as con:
                con.execute(_KEY_INDEX)
        return found

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
        reached_target: bool = True,
        key: str | None = None,
        on_error: Literal["raise", "keep"] = "raise",
    ) -> int | None:
        """Record one run and return its id (None when it was kept in the pending file instead).

        ``energy`` may be an ``EnergyRecord`` (e.g. ``EnergyMonitor.total``): its ``energy_wh``, ``co2_g`` and
        ``duration_s`` fill the quantities not given explicitly. ``variant`` ("dist" or "task") and ``tag``
        (e.g. a model or dataset name) keep unrelated runs apart at prediction time. ``reached_target=False``
        records a run that stopped before its target: its costs are what it spent (lower bounds). A run with
        a ``key`` replaces an earlier run with the same key. ``on_error="keep"``: when the file cannot be
        written, warn and keep the run in :attr:`pending_path` (added on the next successful write).

        Raises:
            ValueError: a quantity is negative, not finite or not a number.
            LedgerError: the file cannot be written (``on_error="raise"``).
        """
        if on_error not in ("raise", "keep"):
            raise ValueError(f"`on_error` must be 'raise' or 'keep', got {on_error!r}.")
        if energy is not None:
            energy_wh = energy.energy_wh if energy_wh is None else energy_wh
            co2_g = getattr(energy, "co2_g", None) if co2_g is None else co2_g
            wall_time_s = getattr(energy, "duration_s", None) if wall_time_s is None else wall_time_s
        values = [
            _check_number(name, value)
            for name, value in zip(QUANTITIES, (epochs_to_target, energy_wh, co2_g, wall_time_s))
        ]
        row = {
            "created_at": time.time(),
            "score": _check_number("score", score, allow_none=False),
            "variant": str(variant),
            "tag": str(tag),
            **dict(zip(QUANTITIES, values)),
            "extra": json.dumps(extra or {}),
            "reached_target": int(bool(reached_target)),
            "key": None if key is None else str(key),
        }
        try:
            with self._connect() as con:
                self._flush_pending(con)
                return self._insert(con, row)
        except LedgerError as err:
            if on_error == "raise":
                raise
            return self._keep_pending(row, err)

    def _insert(self, con: sqlite3.Connection, row: dict[str, Any]) -> int:
        if not {"reached_target", "key"} <= self._columns:
            raise LedgerError(
                f"The retraining ledger {self.path!r} is from an older release and could not be upgraded "
                "(read-only?). HINT: make it writable once so the new columns can be added."
            )
        names = [c for c in _COLUMNS[1:] if c in row]
        upsert = ", ".join(f"{c} = excluded.{c}" for c in names if c != "key")
        cur = con.execute(
            f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT(key) WHERE key IS NOT NULL DO UPDATE SET {upsert} RETURNING id",
            [row[c] for c in names],
        )
        return int(cur.fetchone()[0])

    def _keep_pending(self, row: dict[str, Any], err: LedgerError) -> None:
        pending = self.pending_path
        if pending is None:
            raise err
        with pending.open("a") as f:  # an unwritable folder raises here: nothing else is left to try
            f.write(json.dumps(row) + "\n")
        warnings.warn(
            f"{err} The run (score {row['score']:.4g}) was kept in {str(pending)!r} and is added to the ledger on "
            "its next successful write.",
            LedgerWarning,
            stacklevel=3,
        )
        return None

    def _flush_pending(self, con: sqlite3.Connection) -> None:
        pending = self.pending_path
        if pending is None or not pending.exists():
            return
        for line in pending.read_text().splitlines():
            if line.strip():
                self._insert(con, json.loads(line))
        pending.unlink()

    def pending(self) -> list[dict[str, Any]]:
        """Runs kept in the pending file, waiting for a writable ledger."""
        pending = self.pending_path
        if pending is None or not pending.exists():
            return []
        return [json.loads(line) for line in pending.read_text().splitlines() if line.strip()]

    def runs(self, variant: str | None = None, tag: str | None = None) -> list[LedgerRun]:
        """All runs, oldest first, optionally only one ``variant`` / ``tag``."""
        columns = [c for c in _COLUMNS if c in self._columns]
        query, args = f"SELECT {', '.join(columns)} FROM runs WHERE 1=1", []
        if variant is not None:
            query, args = query + " AND variant = ?", [*args, variant]
        if tag is not None:
            query, args = query + " AND tag = ?", [*args, tag]
        with self._connect() as con:
            rows = con.execute(query + " ORDER BY id", args).fetchall()
        out = []
        for r in rows:
            values = dict(zip(columns, r))
            values["extra"] = json.loads(values["extra"])
            values["reached_target"] = bool(values.get("reached_target", 1))
            out.append(LedgerRun(**values))
        return out

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
        Runs that missed their target enter as lower bounds (a censored, Tobit-style fit; see
        :func:`~lightning_reuse.energy.cost_model.fit_monotone_line`). With ``scale="log"`` the same fit is
        made on ``log y`` and mapped back (a multiplicative interval; better when the cost grows faster than
        linearly with the score, as epochs to target often do); ``scale="log1p"`` fits ``log(1 + y)`` and maps
        back with ``exp(.) - 1``, which also accepts runs that cost nothing (0 epochs: the model already met
        the target).
        """
        if quantity not in QUANTITIES:
            raise ValueError(f"`quantity` must be one of {QUANTITIES}, got {quantity!r}.")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}. HINT: e.g. 0.9.")
        score = float(_check_number("score", score, allow_none=False))
        runs = [r for r in self.runs(variant, tag) if getattr(r, quantity) is not None]
        n = len(runs)
        where = f"the ledger {self.path!r}" + (
            f" (variant={variant!r}, tag={tag!r})" if variant or tag else ""
        )

        def refuse(why: str) -> CostEstimate:
            return CostEstimate(quantity, score, None, None, None, confidence, n, None, why)

        finished = [r for r in runs if r.reached_target]
        if n < self.min_runs:
            return refuse(
                f"Cannot estimate {quantity}: {where} holds {n} run(s) with {quantity} measured; at least "
                f"{self.min_runs} are needed. Record finished retraining runs with `ledger.add_run(...)` "
                "(or RESQUECheck(record_to_ledger=True))."
            )
        if len(finished) < 2:
            return refuse(
                f"Cannot estimate {quantity}: of the {n} run(s) in {where}, {n - len(finished)} missed the target "
                f"within their budget (their cost is at least {max(getattr(r, quantity) for r in runs):.4g}); a "
                "fit needs at least two that reached it. HINT: record runs at milder shifts, or larger budgets."
            )
        xs, ys = [r.score for r in runs], [float(getattr(r, quantity)) for r in runs]
        if self.scale == "log" and min(ys) <= 0:
            return refuse(
                f"Cannot estimate {quantity} on a log scale: {where} holds values <= 0. HINT: use "
                "RetrainingLedger(..., scale='log1p')."
            )
        forward, scale_note = _SCALES[self.scale]
        censored = [not r.reached_target for r in runs]
        fit = fit_monotone_line(xs, [forward(y) for y in ys], score, confidence, censored=censored)
        value, lower, upper = _back_transform(self.scale, fit.value, fit.half_width)
        notes = [*fit.notes, *([scale_note] if scale_note else [])]
        beyond = self._beyond_data(score, value, runs, quantity)
        msg = (
            f"Estimated {quantity} for RESQUE score {score:.4g}: {value:.4g} ({confidence:.0%} prediction interval "
            f"{lower:.4g} to {upper:.4g}), from {n} runs in {where}."
        )
        if notes or beyond:
            msg += " Note: " + "; ".join(notes + beyond) + "."
        return CostEstimate(quantity, score, value, lower, upper, confidence, n, fit.slope, msg, bool(beyond))

    @staticmethod
    def _beyond_data(score: float, value: float, runs: list[LedgerRun], quantity: str) -> list[str]:
        """Notes for a prediction that reaches past what the ledger has seen."""
        xs = [r.score for r in runs]
        notes = []
        if not min(xs) <= score <= max(xs):
            notes.append(
                f"score {score:.4g} is outside the recorded range [{min(xs):.4g}, {max(xs):.4g}] (extrapolation)"
            )
        finished_costs = [float(getattr(r, quantity)) for r in runs if r.reached_target]
        if value > max(finished_costs):
            notes.append(
                f"beyond the largest {quantity} of a run that reached its target ({max(finished_costs):.4g})"
            )
        missed = [r.score for r in runs if not r.reached_target]
        if missed and score >= min(missed):
            notes.append(
                f"runs at scores >= {min(missed):.4g} missed the target within their budget, so the cost here may "
                "be unbounded"
            )
        return notes

    def predict_all(
        self, score: float, confidence: float = 0.9, variant: str | None = None, tag: str | None = None
    ) -> dict[str, CostEstimate]:
        """:meth:`predict` for every quantity."""
        return {q: self.predict(score, q, confidence, variant, tag) for q in QUANTITIES}
