""" "Reuse vs retrain": the measured energy and CO2 of runs side by side, as a markdown table and a PNG plot.

The saving of reusing a pre-trained model is then a measured figure, not a claim. Each run is an
:class:`~lightning_reuse.energy.records.EnergyRecord` (e.g. ``monitor.total`` after each fit), a dict of
one, or a plain number of Wh (e.g. a from-scratch cost taken from a ledger).

Example:
    >>> from lightning_reuse.energy.records import EnergyRecord
    >>> reuse = EnergyRecord(cpu_wh=2.0, ram_wh=1.0, co2_g=1.5, duration_s=60.0, method={"cpu": "estimate"})
    >>> retrain = EnergyRecord(cpu_wh=10.0, ram_wh=5.0, co2_g=7.5, duration_s=300.0, method={"cpu": "estimate"})
    >>> print(reuse_report({"reuse": reuse, "retrain": retrain}))
    | run | energy (Wh) | CO2 (g) | duration (s) | CPU / GPU / RAM (Wh) | method | vs retrain |
    |---|---:|---:|---:|---|---|---:|
    | reuse | 3 | 1.5 | 60 | 2 / not measured / 1 | cpu: estimate | -80.0% |
    | retrain | 15 | 7.5 | 300 | 10 / not measured / 5 | cpu: estimate | baseline |
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_reuse.energy.records import EnergyRecord


def as_record(run: EnergyRecord | Mapping[str, Any] | float) -> EnergyRecord:
    """An :class:`EnergyRecord` from a record, its ``to_dict()``, or a number of Wh (method ``"ledger"``)."""
    if isinstance(run, EnergyRecord):
        return run
    if isinstance(run, Mapping):
        return EnergyRecord.from_dict(dict(run))
    if isinstance(run, (int, float)) and not isinstance(run, bool):
        return EnergyRecord(energy_wh=float(run), method={"total": "ledger"})
    raise TypeError(
        f"A run must be an EnergyRecord, a dict from EnergyRecord.to_dict(), or a number of Wh; got "
        f"{type(run).__name__}."
    )


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def reuse_report(
    runs: Mapping[str, EnergyRecord | Mapping[str, Any] | float], baseline: str | None = None
) -> str:
    """A markdown table of ``runs`` (name -> run) with each run's change against ``baseline``.

    Args:
        runs: at least one run; insertion order is kept.
        baseline: the reference run (default: the last one, typically "retrain" / from scratch).
    """
    if not runs:
        raise ValueError("`runs` must name at least one run, e.g. {'reuse': ..., 'retrain': ...}.")
    records = {name: as_record(run) for name, run in runs.items()}
    baseline = list(records)[-1] if baseline is None else baseline
    if baseline not in records:
        raise ValueError(f"`baseline` must be one of {list(records)}, got {baseline!r}.")
    base = records[baseline].energy_wh
    lines = [
        f"| run | energy (Wh) | CO2 (g) | duration (s) | CPU / GPU / RAM (Wh) | method | vs {baseline} |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for name, r in records.items():
        if name == baseline:
            change = "baseline"
        elif base > 0:
            change = f"{100.0 * (r.energy_wh / base - 1.0):+.1f}%"
        else:
            change = "n/a"
        methods = ", ".join(f"{k}: {v}" for k, v in sorted(r.method.items())) or "unknown"
        split = " / ".join(r.component_text(c, ".4g") for c in ("cpu", "gpu", "ram"))
        lines.append(
            f"| {name} | {_fmt(r.energy_wh)} | {_fmt(r.co2_g)} | {_fmt(r.duration_s)} | {split} | {methods} | {change} |"
        )
    return "\n".join(lines)


def plot_reuse_report(
    runs: Mapping[str, EnergyRecord | Mapping[str, Any] | float], path: str | Path, title: str | None = None
) -> Path:
    """Write a PNG: stacked CPU/GPU/RAM energy bars per run, CO2 written above each bar. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {name: as_record(run) for name, run in runs.items()}
    if not records:
        raise ValueError("`runs` must name at least one run.")
    names = list(records)
    fig, ax = plt.subplots(figsize=(2.4 + 2.0 * len(names), 4.0))
    bottom = [0.0] * len(names)
    for part, colour in (("cpu_wh", "#4C72B0"), ("gpu_wh", "#DD8452"), ("ram_wh", "#55A868")):
        values = [getattr(records[n], part) for n in names]
        ax.bar(names, values, bottom=bottom, color=colour, label=part[:3].upper())
        bottom = [b + v for b, v in zip(bottom, values)]
    other = [records[n].energy_wh - b for n, b in zip(names, bottom)]  # ledger totals without a split
    if any(o > 1e-12 for o in other):
        ax.bar(names, [max(o, 0.0) for o in other], bottom=bottom, color="#8C8C8C", label="total (no split)")
    for i, n in enumerate(names):
        ax.annotate(
            f"{records[n].co2_g:.3g} g CO2e", (i, records[n].energy_wh), ha="center", va="bottom", fontsize=8
        )
    ax.set_xticks(range(len(names)), [textwrap.fill(n, 18) for n in names], fontsize=8)
    ax.set_ylabel("energy (Wh)")
    ax.set_title(textwrap.fill(title or "Energy: reuse vs retrain", 60), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
