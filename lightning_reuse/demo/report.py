"""The demo's report: markdown + PNG plots, an offline W&B run, and the printed summary table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_reuse.demo.markdown import markdown_table, text_table
from lightning_reuse.demo.plots import save_plots
from lightning_reuse.demo.prediction_report import (
    COMPARISON_HEADER,
    comparison_rows,
    comparison_section,
    predictions_section,
    print_comparison,
)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per strategy: name, test acc, epochs to target, time, energy, CO2, trainable params."""
    rows = []
    for r in summary["strategies"]:
        rows.append(
            [
                r["name"] + (" *" if r["name"] == summary.get("recommendation", {}).get("strategy") else ""),
                _fmt(r["test_acc"]),
                "-" if r["epochs_to_target"] is None else str(r["epochs_to_target"]),
                _fmt(r.get("energy_to_target_wh"), ".4f"),
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
    "Wh to target",
    "time (s)",
    "energy (Wh)",
    "CO2 (g)",
    "trainable / total params",
]


def resque_section(summary: dict[str, Any]) -> str:
    """Markdown: the RESQUE score, the cost predicted from the ledger, and the ledger runs it rests on."""
    r = summary.get("resque")
    if not r:
        return ""
    lines = [
        f"One frozen forward pass of the source over clean and shifted versions of the {summary['config']['train_limit']} "
        f"new training samples (layer `{r['layer']}`): **RESQUE_dist = {r['score']:.4f}** "
        f"({r['duration_s']:.2f} s"
        + ("" if r.get("energy_wh") is None else f", {r['energy_wh']:.3g} Wh")
        + ").",
        "",
        "Predicted cost of retraining (full fine-tuning until the validation accuracy reaches the target; "
        "energy and CO2 summed over those epochs), from a linear model of log(1 + cost) fitted on "
        f"the ledger's {len(r['ledger_runs'])} earlier real runs (`{r['ledger']}`):",
        "",
        *[f"- {e['message']}" for e in r["estimates"].values()],
        *(
            ["", "**The prediction reaches beyond what the ledger has seen: read it as a rough guide.**"]
            if any(e.get("beyond_data") for e in r["estimates"].values())
            else []
        ),
        "",
        "| ledger run | RESQUE_dist | reached target | epochs to target | energy (Wh) | CO2 (g) |",
        "|---|---|---|---|---|---|",
        *[_ledger_row(i, run) for i, run in enumerate(r["ledger_runs"])],
        "",
        "A run that missed the target within its budget is censored: its cost is at least the one shown (>=).",
    ]
    return "\n".join(lines)


def _ledger_row(i: int, run: dict[str, Any]) -> str:
    """One ledger run; a censored run (target missed) shows its costs as lower bounds."""
    reached = run.get("reached_target", True)
    at_least = "" if reached else ">= "
    return (
        f"| {i + 1} | {run['score']:.4f} | {'yes' if reached else 'no (censored)'} | "
        f"{at_least}{_fmt(run['epochs_to_target'], '.0f')} | {at_least}{_fmt(run['energy_wh'], '.4f')} | "
        f"{at_least}{_fmt(run['co2_g'], '.4f')} |"
    )


def ntk_section(summary: dict[str, Any]) -> str:
    """Markdown: the NTK screening decision for reprogramming, its scores and reasons."""
    n = summary.get("ntk")
    if not n:
        return ""
    lines = [
        f"Prompt-NTK of the reprogrammed source (full-image prompt, frequency label mapping) on {n['n']} new "
        f"samples, before any training: **{n['decision']}** ({n['duration_s']:.2f} s"
        + ("" if n.get("energy_wh") is None else f", {n['energy_wh']:.3g} Wh")
        + ").",
        "",
        f"- NTK score = {n['ntk_score']:.3f} (cross-fitted NTK-ridge accuracy, 0 = chance, 1 = perfect, gated by "
        f"the source's confidence; FAIL below {n['thresholds']['fail']}, WARN below {n['thresholds']['warn']}, "
        "thresholds calibrated in benchmarks/ntk_screening.py)",
        f"- complexity ratio rho = {n['rho']:.3f} (near 1: the labels are no easier for this kernel than random ones)",
        f"- learnable fraction E(100) = {n['e_tau']:.3f}; effective rank fraction r_eff = {n['r_eff']:.3f}",
        *[f"- {reason}" for reason in n["reasons"]],
    ]
    return "\n".join(lines)


def write_report(summary: dict[str, Any], run_dir: Path, use_wandb: bool = True) -> Path:
    """Write ``report.md`` (and PNGs) into ``run_dir``; log the same to an offline W&B run if asked."""
    plots = save_plots(summary, run_dir)
    report = run_dir / "report.md"
    report.write_text("\n".join(report_lines(summary, plots)))
    if use_wandb:
        _log_wandb(summary, plots, run_dir)
    return report


def write_report_so_far(summary: dict[str, Any], run_dir: Path) -> Path:
    """Write ``report.md`` of an unfinished run: what the finished stages measured, and each stage's status."""
    report = run_dir / "report.md"
    report.write_text("\n".join(report_lines(summary, {})))
    return report


def status_section(summary: dict[str, Any]) -> str:
    """Markdown: the status of every stage (done / failed with its error / interrupted / not run)."""
    stages = summary.get("stages") or {}
    shown = {name: s for name, s in stages.items() if name != "report"}  # this file is the report
    rows = [[name, s["status"], s.get("error", "")] for name, s in shown.items()]
    lines = [markdown_table(["stage", "status", "error"], rows)]
    if any(s["status"] != "done" for s in shown.values()):
        lines += [
            "",
            f"Continue this run (only the stages not done run again): "
            f"`lightning-reuse demo --resume {summary.get('run_dir', 'RUN_DIR')}`",
        ]
    return "\n".join(lines)


def source_words(cfg: dict[str, Any]) -> str:
    """The run's source in words (a run saved before ``source`` was an option used the SmallCNN)."""
    if cfg.get("source", "smallcnn") == "smallcnn":
        return "a SmallCNN pre-trained on clean digits"
    return (
        f"{cfg['source']} with its ImageNet weights and a digits head fitted on clean digits (inputs resized "
        f"to {cfg.get('image_size')} px)"
    )


def _intro_lines(summary: dict[str, Any]) -> list[str]:
    """The report's title, the new data and the source, and the recommendation (or why there is none yet)."""
    cfg = summary["config"]
    lines = [
        "# Reuse or retrain? — lightning-reuse demo report",
        "",
        f"New data: digits with `{cfg['shift']}` shift (level {cfg['level']}), {cfg['train_limit']} labelled training "
        f"samples. Source: {source_words(cfg)}; its accuracy on the new test data before any "
        f"training: **{_fmt(summary.get('source_acc_on_new_data'))}**.",
        "",
    ]
    rec = summary.get("recommendation")
    if rec is None:
        return [*lines, "## Recommendation: none yet (the run is not finished; see the run status)", ""]
    return [*lines, f"## Recommendation: **{rec['strategy']}**", "", *[f"- {r}" for r in rec["reasons"]], ""]


def budget_line(summary: dict[str, Any]) -> str:
    """The energy budget row: the budget per fit and which fits it stopped (or that none was set)."""
    budget = summary.get("config", {}).get("budget_wh")
    if budget is None:
        return "Energy budget per fit: none set (`--budget-wh` sets one)."
    stopped = [
        f"{r['name']} ({r['budget_stopped']})" for r in summary["strategies"] if r.get("budget_stopped")
    ]
    return f"Energy budget per fit: {budget:.4g} Wh; stopped by it: " + ("; ".join(stopped) or "none") + "."


def report_lines(summary: dict[str, Any], plots: dict[str, Path]) -> list[str]:
    """The lines of ``report.md``: recommendation, pre-checks, the strategies' table, the plots, the run status."""
    lines = _intro_lines(summary)
    for title, body in (
        ("RESQUE pre-check", resque_section(summary)),
        ("NTK screening", ntk_section(summary)),
        ("Predictions before spending", predictions_section(summary)),
    ):
        if body:
            lines += [f"## {title}", "", body, ""]
    if summary.get("strategies"):
        lines += [
            "## Strategies",
            "",
            markdown_table(HEADER, summary_rows(summary)),
            "",
            f"Target accuracy for 'epochs to target': {summary['target_acc']}. Energy measurement: "
            + "; ".join(sorted({r["energy_method"] for r in summary["strategies"]})),
            "",
            budget_line(summary),
            "",
        ]
    comparison = comparison_section(summary)
    if comparison:
        lines += ["## Predicted vs measured", "", comparison, ""]
    if plots:
        lines += ["## Plots", "", *[f"![{name}]({path.name})" for name, path in plots.items()], ""]
    if summary.get("stages"):
        lines += ["## Run status", "", status_section(summary), ""]
    return lines


def _log_wandb(summary: dict[str, Any], plots: dict[str, Path], run_dir: Path) -> None:
    # third-party and slow to import: only when the W&B run is asked for
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
        if summary.get("predicted_vs_measured"):
            rows = comparison_rows(summary)
            run.log({"predicted_vs_measured": wandb.Table(columns=COMPARISON_HEADER, data=rows)})
            rank = summary["predicted_vs_measured"]["rank_correlation"]
            if rank["spearman"] is not None:
                run.summary["predicted_vs_measured/spearman"] = rank["spearman"]
                run.summary["predicted_vs_measured/n"] = rank["n"]
    finally:
        run.finish()


def print_summary(summary: dict[str, Any], printer: Callable[..., None] = print) -> None:
    """Print the strategies' table, the recommendation with its reasons, and where the report is."""
    printer("")
    for line in text_table(HEADER, summary_rows(summary)):
        printer(line)
    rec = summary["recommendation"]
    print_comparison(summary, printer)
    printer(f"\nRecommendation: {rec['strategy']}")
    for reason in rec["reasons"]:
        printer(f"  - {reason}")
    printer(f"\nReport: {summary['report']}")
