"""The flat metrics and hyper-parameters an energy measurement logs (keys in Wh, g CO2e and s).

Loggers store floats as float32, which mangles kWh: every key is in Wh. ``EnergyMonitor`` hands these
dicts to its loggers; they are plain functions of the :class:`~lightning_reuse.energy.accounting.FitAccounting`.

Example:
    >>> from lightning_reuse.energy.records import EnergyRecord
    >>> sorted(window_metrics("eval", EnergyRecord(cpu_wh=2.0, co2_g=1.0)).items())
    [('energy/window/eval_co2_g', 1.0), ('energy/window/eval_wh', 2.0)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning_reuse.energy.accounting import FitAccounting
from lightning_reuse.energy.predict import Prediction
from lightning_reuse.energy.records import EnergyRecord

#: Columns of the per-epoch table (:func:`epoch_rows`).
EPOCH_COLUMNS = ["epoch", "energy_wh", "cpu_wh", "gpu_wh", "ram_wh", "co2_g", "duration_s", "cpu_seconds"]


def epoch_metrics(
    epoch: EnergyRecord, cumulative: EnergyRecord, prediction: Prediction | None
) -> dict[str, float]:
    """``energy/epoch_*``, ``energy/cumulative_*`` and, when one was made, ``energy/predicted_total_*``."""
    metrics = epoch.metrics("energy/epoch")
    metrics["energy/cumulative_wh"] = cumulative.energy_wh
    metrics["energy/cumulative_co2_g"] = cumulative.co2_g
    metrics["energy/cpu_seconds"] = cumulative.cpu_seconds  # measured by the OS, beside a CPU "estimate"
    if prediction is not None and prediction.ok:  # below the meter's resolution: no zero-width interval
        metrics["energy/predicted_total_wh"] = prediction.energy_wh
        metrics["energy/predicted_total_wh_low"] = prediction.low_wh
        metrics["energy/predicted_total_wh_high"] = prediction.high_wh
        metrics["energy/predicted_total_co2_g"] = prediction.co2_g
    return metrics


def window_metrics(name: str, record: EnergyRecord) -> dict[str, float]:
    """``energy/window/<name>_wh`` and ``_co2_g``."""
    return {f"energy/window/{name}_wh": record.energy_wh, f"energy/window/{name}_co2_g": record.co2_g}


def fit_metrics(fit: FitAccounting) -> dict[str, float]:
    """The end-of-fit totals: ``energy/total_*``, outside the epochs, windows, status flags, first prediction's error."""
    total = fit.total
    metrics = total.metrics("energy/total")
    metrics["energy/outside_epochs_wh"] = fit.outside_epochs.energy_wh
    metrics["energy/cpu_seconds"] = total.cpu_seconds
    if fit.budget.budgets:
        metrics["energy/budget_stopped"] = float(fit.budget.stopped is not None)
        metrics["energy/budget_exceeded"] = float(bool(fit.budget.decisions))
    metrics.update(status_metrics(fit.status))
    for name, record in fit.windows.items():
        metrics.update(window_metrics(name, record))
    first = fit.predictions[0] if fit.predictions else None
    if first is not None and total.energy_wh > 0 and math.isfinite(first.energy_wh):
        metrics["energy/first_prediction_error_pct"] = 100.0 * (first.energy_wh / total.energy_wh - 1.0)
    return metrics


def status_metrics(status: str) -> dict[str, float]:
    """The status as numbers every logger takes: ``energy/ok``, ``energy/interrupted``, ``energy/failed``.

    >>> status_metrics("interrupted")
    {'energy/ok': 0.0, 'energy/interrupted': 1.0, 'energy/failed': 0.0}
    """
    return {
        "energy/ok": float(status == "ok"),
        "energy/interrupted": float(status == "interrupted"),
        "energy/failed": float(status.startswith("failed")),
    }


def fit_params(fit: FitAccounting) -> dict[str, Any]:
    """Hyper-parameters: the method of each component, backend, country, intensity, PUE, DDP mode, status."""
    config = fit.config
    params: dict[str, Any] = {f"energy/method/{k}": v for k, v in sorted(fit.total.method.items())}
    params.update(
        {
            "energy/backend": fit.meter.backend.name if fit.meter else "none",
            "energy/country_iso_code": config.country_iso_code,
            "energy/carbon_intensity_g_per_kwh": config.intensity,
            "energy/pue": config.pue,
            "energy/ddp_mode": config.ddp_mode,
            "energy/status": fit.status,
        }
    )
    if fit.budget.budgets:
        params["energy/budget_action"] = fit.budget.action
        last = fit.budget.decisions[-1].message() if fit.budget.decisions else "none"
        params["energy/budget_decision"] = last
    return params


def epoch_rows(epochs: Sequence[EnergyRecord]) -> list[list[float | None]]:
    """One row per epoch, in :data:`EPOCH_COLUMNS` order (for a table or a plot); ``None`` for a component
    that was not measured (never a silent 0 Wh)."""
    rows: list[list[float | None]] = []
    for i, e in enumerate(epochs):
        split = [getattr(e, f"{c}_wh") if e.measured(c) else None for c in ("cpu", "gpu", "ram")]
        rows.append([i, e.energy_wh, *split, e.co2_g, e.duration_s, e.cpu_seconds])
    return rows
