"""The demo's report: markdown + PNG plots, an offline W&B run, and the printed summary table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per strategy: name, test acc, epochs to target, time, energy, CO2, trainable params."""
    rows = []
    for r in summary["strategies"]:
        rows.append(
            [
                r["name"] + (" *" if r["name"] == summary["recommendation"]["strategy"] else ""),
                _fmt(r["test_acc"]),
                "-" if r["epochs_to_target"] is None else str(r["epochs_to_target"]),
                _fmt(r["duration_s"], ".1f"),
                _fmt(r["energy_wh"], ".4f"),
                _fmt(r["co2_g"], ".4f"),
                f"{r['trainable_params']:,} / {r['total_params']:,}",
            ]
        )
    return rows


HEADER = [
    "strategy",
    "test acc",
    "epochs to target",
    "time (s)",
    "energy (Wh)",
    "CO2 (g)",
    "trainable / total params",
]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plots(summary: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    res = summary["strategies"]
    measured = all(r["energy_wh"] is not None for r in res)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in res:
        cost = r["energy_wh"] if measured else r["duration_s"]
        ax.scatter(cost, r["test_acc"], s=60)
        ax.annotate(r["name"], (cost, r["test_acc"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("energy of the fit (Wh)" if measured else "wall time of the fit (s)")
    ax.set_ylabel("test accuracy on the new data")
    ax.set_title("Accuracy vs cost per strategy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out["accuracy_vs_energy"] = run_dir / "accuracy_vs_energy.png"
    fig.savefig(out["accuracy_vs_energy"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in res:
        axes[0].plot(
            range(1, len(r["val_acc_per_epoch"]) + 1), r["val_acc_per_epoch"], marker="o", label=r["name"]
        )
        if r["energy_wh_per_epoch"]:
            axes[1].plot(
                range(1, len(r["energy_wh_per_epoch"]) + 1),
                r["energy_wh_per_epoch"],
                marker="o",
                label=r["name"],
            )
    axes[0].axhline(summary["target_acc"], color="grey", ls="--", lw=1, label="target")
    axes[0].set(xlabel="epoch", ylabel="validation accuracy", title="Learning curves")
    axes[1].set(xlabel="epoch", ylabel="energy (Wh)", title="Energy per epoch")
    if not any(r["energy_wh_per_epoch"] for r in res):
        axes[1].text(0.5, 0.5, "energy not measured", ha="center", va="center", transform=axes[1].transAxes)
    for a in axes:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    out["epochs"] = run_dir / "learning_curves_and_energy.png"
    fig.savefig(out["epochs"], dpi=110)
    plt.close(fig)
    for key in ("resque_plot", "ntk_plot"):
        if summary.get(key):
            out[key] = Path(summary[key])
    return out


def write_report(summary: dict[str, Any], run_dir: Path, use_wandb: bool = True) -> Path:
    """Write ``report.md`` (and PNGs) into ``run_dir``; log the same to an offline W&B run if asked."""
    plots = _plots(summary, run_dir)
    cfg = summary["config"]
    rec = summary["recommendation"]
    lines = [
        "# Reuse or retrain? — lightning-reuse demo report",
        "",
        f"New data: digits with `{cfg['shift']}` shift (level {cfg['level']}), {cfg['train_limit']} labelled training "
        f"samples. Source: a SmallCNN pre-trained on clean digits; its accuracy on the new test data before any "
        f"training: **{summary['source_acc_on_new_data']:.3f}**.",
        "",
        f"## Recommendation: **{rec['strategy']}**",
        "",
        *[f"- {reason}" for reason in rec["reasons"]],
        "",
    ]
    for section in summary.get("sections", []):
        lines += [f"## {section['title']}", "", section["body"], ""]
    lines += [
        "## Strategies",
        "",
        markdown_table(HEADER, summary_rows(summary)),
        "",
        f"Target accuracy for 'epochs to target': {summary['target_acc']}. Energy measurement: "
        + "; ".join(sorted({r["energy_method"] for r in summary["strategies"]})),
        "",
        "## Plots",
        "",
        *[f"![{name}]({path.name})" for name, path in plots.items()],
        "",
    ]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    if use_wandb:
        _log_wandb(summary, plots, run_dir)
    return report


def _log_wandb(summary: dict[str, Any], plots: dict[str, Path], run_dir: Path) -> None:
    import wandb

    run = wandb.init(
        project="lightning-reuse-demo",
        dir=str(run_dir),
        mode="offline",
        config=summary["config"],
        reinit="finish_previous",
    )
    try:
        run.log({"strategies": wandb.Table(columns=HEADER, data=summary_rows(summary))})
        run.log({name: wandb.Image(str(path)) for name, path in plots.items()})
        for r in summary["strategies"]:
            key = r["name"].replace(" ", "_")
            run.summary[f"{key}/test_acc"] = r["test_acc"]
            if r["energy_wh"] is not None:
                run.summary[f"{key}/energy_wh"] = r["energy_wh"]
        run.summary["recommendation"] = summary["recommendation"]["strategy"]
    finally:
        run.finish()


def print_summary(summary: dict[str, Any], printer: Callable[..., None] = print) -> None:
    rows = summary_rows(summary)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    printer("")
    printer("  ".join(h.ljust(w) for h, w in zip(HEADER, widths)))
    printer("  ".join("-" * w for w in widths))
    for r in rows:
        printer("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    rec = summary["recommendation"]
    printer(f"\nRecommendation: {rec['strategy']}")
    for reason in rec["reasons"]:
        printer(f"  - {reason}")
    printer(f"\nReport: {summary['report']}")
