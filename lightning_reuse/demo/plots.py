"""The demo report's PNG plots, one function per figure (the NTK spectrum is NTKScreening's own PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

DPI = 110


def save_plots(summary: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Write the report's plots into ``run_dir``; return ``{name: path}`` in the order the report shows them."""
    out = {
        "accuracy_vs_energy": accuracy_vs_cost(summary, run_dir / "accuracy_vs_energy.png"),
        "epochs": learning_curves(summary, run_dir / "learning_curves_and_energy.png"),
    }
    if summary.get("ntk", {}).get("plot"):
        out["ntk_spectrum"] = Path(summary["ntk"]["plot"])
    resque = summary.get("resque")
    if resque and resque.get("per_class"):
        out["resque_per_class"] = resque_per_class(resque, run_dir / "resque_per_class.png")
        cost_model = resque_cost_model(resque, run_dir / "resque_cost_model.png")
        if cost_model is not None:
            out["resque_cost_model"] = cost_model
    return out


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def accuracy_vs_cost(summary: dict[str, Any], path: Path) -> Path:
    """Test accuracy against the energy of each fit (wall time where energy was not measured)."""
    res = summary["strategies"]
    measured = all(r["energy_wh"] is not None for r in res)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for r in res:
        cost = r["energy_wh"] if measured else r["duration_s"]
        ax.scatter(cost, r["test_acc"], s=60)
        ax.annotate(r["name"], (cost, r["test_acc"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("energy of the fit (Wh)" if measured else "wall time of the fit (s)")
    ax.set_ylabel("test accuracy on the new data")
    ax.set_title("Accuracy vs cost per strategy")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def learning_curves(summary: dict[str, Any], path: Path) -> Path:
    """Validation accuracy (with the target) and energy per epoch of every strategy, side by side."""
    res = summary["strategies"]
    fig = Figure(figsize=(10, 4))
    acc_ax, energy_ax = fig.subplots(1, 2)
    for r in res:
        acc_ax.plot(
            range(1, len(r["val_acc_per_epoch"]) + 1), r["val_acc_per_epoch"], marker="o", label=r["name"]
        )
        if r["energy_wh_per_epoch"]:
            energy_ax.plot(
                range(1, len(r["energy_wh_per_epoch"]) + 1),
                r["energy_wh_per_epoch"],
                marker="o",
                label=r["name"],
            )
    acc_ax.axhline(summary["target_acc"], color="grey", ls="--", lw=1, label="target")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="Learning curves")
    energy_ax.set(xlabel="epoch", ylabel="energy (Wh)", title="Energy per epoch")
    if not any(r["energy_wh_per_epoch"] for r in res):
        energy_ax.text(
            0.5, 0.5, "energy not measured", ha="center", va="center", transform=energy_ax.transAxes
        )
    for ax in (acc_ax, energy_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def resque_per_class(resque: dict[str, Any], path: Path) -> Path:
    """RESQUE's angle per class (clean vs shifted features), with the overall score as a line."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    classes = sorted(resque["per_class"], key=int)
    ax.bar([str(c) for c in classes], [resque["per_class"][c] for c in classes], color="tab:orange")
    ax.axhline(resque["score"], color="k", ls="--", lw=1, label=f"RESQUE_dist = {resque['score']:.3f}")
    ax.set(xlabel="class", ylabel="angle / pi", title="RESQUE per class (clean vs shifted features)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def resque_cost_model(resque: dict[str, Any], path: Path) -> Path | None:
    """Epochs to target of the ledger runs against their RESQUE score, and the prediction for the new data.

    Returns:
        The path, or ``None`` (nothing written) when the ledger has no run with epochs recorded. Runs that
        missed the target (censored: at least that many epochs) are drawn as triangles.
    """
    runs = [r for r in resque.get("ledger_runs") or [] if r["epochs_to_target"] is not None]
    if not runs:
        return None
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for reached, marker, label in (
        (True, "o", "ledger runs (measured)"),
        (False, "^", "missed the target (>=)"),
    ):
        pts = [(r["score"], r["epochs_to_target"]) for r in runs if r.get("reached_target", True) == reached]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
    est = resque["estimates"].get("epochs_to_target", {})
    if est.get("value") is not None:
        ax.errorbar(
            [resque["score"]],
            [est["value"]],
            yerr=[[est["value"] - est["lower"]], [est["upper"] - est["value"]]],
            fmt="o",
            color="tab:red",
            capsize=4,
            label="prediction for the new data",
        )
    ax.set(xlabel="RESQUE_dist", ylabel="epochs to target", title="Retraining cost vs RESQUE")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
