"""The predictions in words: printed before the fits, and predicted vs measured in ``report.md`` and the table.

The markdown and the printed lines format the same rows (:func:`comparison_rows`), so they show the numbers
of ``summary.json`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning_reuse.demo.markdown import markdown_table, text_table

RULE_SENTENCE = (
    "How the predicted ranking is formed: a fixed rule, written before the demo's runs and not tuned on them "
    "(`lightning_reuse.demo.predictions.RULE`): each strategy gets the accuracy one pre-check number predicts "
    "for it, and the strategies are ranked by it (1 = best; ties share their mean rank). "
    "These numbers are proxies read before training, not accuracies at the demo's epoch budget: the rank "
    "correlation tests the ordering, the error column shows how far each proxy is from the measured accuracy."
)
COMPARISON_HEADER = ["strategy", "predicted acc", "predicted rank", "test acc", "measured rank", "error"]


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _rank(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def cost_line(cost: dict[str, Any], target_acc: float) -> str:
    """The predicted cost of retraining (epochs and Wh to the target), or why the ledger gave none."""
    epochs, wh = cost.get("epochs_to_target"), cost.get("energy_wh")
    if epochs is None:
        return f"predicted cost of {cost.get('strategy')}: none ({cost.get('why_none')})"
    line = (
        f"predicted cost of {cost['strategy']} to {target_acc:.0%} validation accuracy: "
        f"{epochs['value']:.3g} epochs [{epochs['lower']:.3g}, {epochs['upper']:.3g}]"
    )
    if wh is not None:
        line += f", {wh['value']:.3g} Wh [{wh['lower']:.3g}, {wh['upper']:.3g}]"
    return line + " (from the ledger)"


def prediction_lines(summary: dict[str, Any]) -> list[str]:
    """The predictions before spending, one line each (printed before the fits)."""
    p = summary["predictions"]
    lines = [
        f"{r['name']}: predicted acc {_fmt(r['predicted_acc'])} (rank {_rank(r['predicted_rank'])})"
        for r in p["strategies"]
    ]
    lines.append(cost_line(p["cost"], summary["config"]["target_acc"]))
    if p.get("ntk_verdict"):
        lines.append(f"NTK screening's verdict for reprogramming: {p['ntk_verdict']}")
    for check, values in p["baselines"].items():
        if values:
            lines.append(f"{check} baselines: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return lines


def print_predictions(summary: dict[str, Any], say: Callable[..., Any]) -> None:
    """Print the predicted ranking and cost, before any strategy is fitted."""
    say("      predictions before spending (a fixed rule, not tuned on these runs; report.md says how):")
    for line in prediction_lines(summary):
        say(f"        {line}")


def predictions_section(summary: dict[str, Any]) -> str:
    """Markdown: the predicted ranking, the basis of each prediction, the predicted cost and the baselines."""
    p = summary.get("predictions")
    if not p:
        return ""
    rows = [
        [r["name"], _fmt(r["predicted_acc"]), _rank(r["predicted_rank"]), r["basis"]] for r in p["strategies"]
    ]
    lines = [
        RULE_SENTENCE,
        "",
        markdown_table(["strategy", "predicted acc", "predicted rank", "basis"], rows),
        "",
        f"- {cost_line(p['cost'], summary['config']['target_acc'])}",
        *(
            [f"- NTK screening's verdict for reprogramming: **{p['ntk_verdict']}**"]
            if p.get("ntk_verdict")
            else []
        ),
    ]
    for check, values in p["baselines"].items():
        if values:
            lines.append(f"- {check} baselines: " + ", ".join(f"`{k}` {v:.3f}" for k, v in values.items()))
    return "\n".join(lines)


def comparison_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Predicted against measured, one row per fitted strategy (the same cells in the report and the print)."""
    return [
        [
            r["name"],
            _fmt(r["predicted_acc"]),
            _rank(r["predicted_rank"]),
            _fmt(r["measured_acc"]),
            _rank(r["measured_rank"]),
            _fmt(r["error"], "+.3f"),
        ]
        for r in summary["predicted_vs_measured"]["strategies"]
    ]


def correlation_line(rank: dict[str, Any]) -> str:
    """Spearman between predicted and measured accuracy, with its sample size (or why there is none)."""
    if rank["spearman"] is None:
        return f"Spearman rank correlation, predicted vs measured test accuracy: none ({rank['why_none']})"
    return (
        f"Spearman rank correlation, predicted vs measured test accuracy: {rank['spearman']:.3f} "
        f"(n = {rank['n']} strategies: a handful of points, weak evidence either way); predicted best "
        f"{rank['predicted_best']}, measured best {rank['measured_best']}"
    )


def _cost_item(name: str, item: dict[str, Any], unit: str, spec: str) -> str:
    if item["predicted"] is None:
        return f"{name}: no prediction"
    low, high = item["interval"]
    head = f"{name}: predicted {item['predicted']:{spec}} {unit} [{low:{spec}}, {high:{spec}}]"
    if item["measured"] is None:
        return f"{head}, not measured"
    if item["censored"]:
        return f"{head}, measured > {item['measured']:{spec}} {unit} (target missed: censored, no error)"
    inside = "inside" if item["inside"] else "outside"
    return (
        f"{head}, measured {item['measured']:{spec}} {unit}, error {item['error']:+{spec}} {unit} "
        f"({inside} the interval)"
    )


def cost_comparison_lines(cost: dict[str, Any]) -> list[str]:
    """The ledger's predicted epochs and Wh to the target against the measured ones, with the error."""
    return [
        f"{cost['strategy']} " + _cost_item("epochs to target", cost["epochs_to_target"], "epochs", ".3g"),
        f"{cost['strategy']} " + _cost_item("energy to target", cost["energy_wh"], "Wh", ".4f"),
    ]


def verdict_line(verdict: dict[str, Any] | None) -> str | None:
    """The NTK verdict against the one its thresholds give the measured reprogramming accuracy."""
    if verdict is None:
        return None
    return (
        f"NTK verdict for reprogramming: predicted {verdict['predicted']}; measured normalised test accuracy "
        f"{verdict['measured_normalised_acc']:.3f} gives {verdict['measured']} by the same thresholds "
        f"({'agree' if verdict['agree'] else 'disagree'})"
    )


def comparison_lines(summary: dict[str, Any]) -> list[str]:
    """The correlation, cost and verdict lines under the predicted-vs-measured table."""
    c = summary["predicted_vs_measured"]
    lines = [correlation_line(c["rank_correlation"]), *cost_comparison_lines(c["cost"])]
    verdict = verdict_line(c["ntk_verdict"])
    return lines + ([verdict] if verdict else [])


def comparison_section(summary: dict[str, Any]) -> str:
    """Markdown: predicted vs measured side by side."""
    if not summary.get("predicted_vs_measured"):
        return ""
    table = markdown_table(COMPARISON_HEADER, comparison_rows(summary))
    return "\n".join([table, "", *(f"- {line}" for line in comparison_lines(summary))])


def print_comparison(summary: dict[str, Any], printer: Callable[..., None] = print) -> None:
    """Print predicted vs measured: the table, then the correlation, cost and verdict lines."""
    if not summary.get("predicted_vs_measured"):
        return
    printer("\nPredicted (before spending) vs measured:")
    for line in text_table(COMPARISON_HEADER, comparison_rows(summary)):
        printer(line)
    for line in comparison_lines(summary):
        printer(f"  - {line}")
