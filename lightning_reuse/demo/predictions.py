"""Predictions before spending: what the pre-checks predict for each strategy, and how the fits then compare.

Before any strategy is fitted, :func:`predict` turns the pre-checks' numbers (the RESQUE pass with its
transferability baselines and ledger estimate, the NTK screening with its own) into a predicted accuracy per
strategy, a predicted ranking, the predicted cost of retraining and the verdict for reprogramming. The rule
(:data:`RULE`) is fixed in advance and documented; nothing in it is fitted on the demo's results. After the
fits, :func:`compare` puts predicted and measured side by side: Spearman rank correlation (with its sample
size), accuracy and cost errors, the verdict against the measured accuracy.

Example:
    >>> spearman([0.1, 0.5, 0.5, 0.9], [1.0, 2.0, 3.0, 4.0])
    0.9486832980505138
    >>> average_ranks([0.9, 0.5, 0.5])  # rank 1 = highest; ties share their mean rank
    [1.0, 2.5, 2.5]
"""

from __future__ import annotations

import math
from typing import Any

#: How the predicted accuracy of each strategy is formed (fixed before the demo's runs; not tuned on them).
RULE: dict[str, str] = {
    "linear probe": "the cross-fitted linear probe on the source's features at the RESQUE layer "
    "(RESQUE baseline `linear_probe_accuracy`, new training data)",
    "full fine-tuning": "at least the linear probe (it trains the head too); at least the target when the "
    "ledger predicts reaching it within the epoch budget",
    "FTP fine-tuning": "as full fine-tuning (the same weights trained, projected toward the source)",
    "additive side network": "the source's own accuracy on the new training data (RESQUE baseline "
    "`source_accuracy`): the zero-initialised side network starts from the source's predictions",
    "reprogramming": "the NTK screening's cross-fitted NTK-ridge accuracy (`ntk_accuracy`): the prompt's "
    "fit in the linearised regime",
    "from scratch": "not predicted: no pre-check reads anything about training from scratch (left out of "
    "the rank correlation)",
}
COST_STRATEGY = "full fine-tuning"  # the retraining whose cost the ledger predicts
MIN_RANKED = 3  # fewer strategies with both numbers: no rank correlation


def average_ranks(values: list[float]) -> list[float]:
    """Rank 1 for the highest value; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); ``None`` when either side is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return None if va == 0 or vb == 0 else cov / math.sqrt(va * vb)


def _estimate(resque: dict[str, Any], key: str) -> dict[str, Any] | None:
    est = (resque.get("estimates") or {}).get(key)
    return est if est and est.get("value") is not None else None


def _predicted_acc(
    name: str, resque: dict[str, Any], ntk: dict[str, Any], target_acc: float, max_epochs: int
) -> float | None:
    """The predicted accuracy of strategy ``name`` by :data:`RULE` (``None``: no pre-check speaks to it)."""
    baselines = resque.get("baselines") or {}
    probe = baselines.get("linear_probe_accuracy")
    if name == "linear probe":
        return probe
    if name in ("full fine-tuning", "FTP fine-tuning"):
        epochs = _estimate(resque, "epochs_to_target")
        reaches = epochs is not None and epochs["value"] <= max_epochs
        return None if probe is None else (max(probe, target_acc) if reaches else probe)
    if name == "additive side network":
        return baselines.get("source_accuracy")
    if name == "reprogramming":
        acc = ntk.get("ntk_accuracy")
        return None if acc is None or acc != acc else acc
    return None


def predict(summary: dict[str, Any], names: list[str], config: dict[str, Any]) -> dict[str, Any]:
    """The pre-checks' predictions for the strategies ``names``, before any of them is fitted.

    Args:
        summary: The demo's summary with its ``"resque"`` and ``"ntk"`` sections (either may be missing).
        names: The strategies to be fitted, in the demo's order.
        config: The demo's configuration (``target_acc``, ``max_epochs``).

    Returns:
        ``{"strategies": [{name, predicted_acc, predicted_rank, basis}], "cost", "ntk_verdict", "baselines"}``.
    """
    resque, ntk = summary.get("resque") or {}, summary.get("ntk") or {}
    rows = [
        {
            "name": n,
            "predicted_acc": _predicted_acc(n, resque, ntk, config["target_acc"], config["max_epochs"]),
            "basis": RULE.get(n, "not predicted: no rule for this strategy"),
        }
        for n in names
    ]
    ranked = [r for r in rows if r["predicted_acc"] is not None]
    for r, rank in zip(ranked, average_ranks([r["predicted_acc"] for r in ranked])):
        r["predicted_rank"] = rank
    for r in rows:
        r.setdefault("predicted_rank", None)
    return {
        "strategies": rows,
        "cost": {
            "strategy": COST_STRATEGY,
            "epochs_to_target": _estimate(resque, "epochs_to_target"),
            "energy_wh": _estimate(resque, "energy_wh"),
            "why_none": None if _estimate(resque, "epochs_to_target") else _why_no_cost(resque),
        },
        "ntk_verdict": ntk.get("decision"),
        "baselines": {"resque": dict(resque.get("baselines") or {}), "ntk": dict(ntk.get("baselines") or {})},
    }


def _why_no_cost(resque: dict[str, Any]) -> str:
    if not resque:
        return "the RESQUE stage did not finish"
    est = (resque.get("estimates") or {}).get("epochs_to_target")
    return est["message"] if est else "the ledger gave no estimate"


def compare(summary: dict[str, Any]) -> dict[str, Any]:
    """Predicted against measured, from the summary's ``"predictions"`` and ``"strategies"``.

    Returns:
        ``{"strategies": rows, "rank_correlation": {spearman, n, ...}, "cost": ..., "ntk_verdict": ...}``;
        every row has predicted and measured accuracy and rank and the error (predicted - measured).
    """
    predictions = summary.get("predictions") or {}
    measured = {r["name"]: r for r in summary.get("strategies", []) if r.get("error") is None}
    rows = [
        {**p, "measured_acc": measured[p["name"]]["test_acc"]}
        for p in predictions.get("strategies", [])
        if p["name"] in measured
    ]
    for r, rank in zip(rows, average_ranks([r["measured_acc"] for r in rows])):
        r["measured_rank"] = rank
        r["error"] = None if r["predicted_acc"] is None else r["predicted_acc"] - r["measured_acc"]
    both = [r for r in rows if r["predicted_acc"] is not None]
    return {
        "strategies": rows,
        "rank_correlation": _rank_correlation(both),
        "cost": _cost_against(predictions.get("cost") or {}, measured.get(COST_STRATEGY)),
        "ntk_verdict": _verdict_against(summary.get("ntk") or {}, measured.get("reprogramming")),
    }


def _rank_correlation(both: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman between predicted and measured accuracy over the strategies with both, and the top picks."""
    n = len(both)
    rho = spearman([r["predicted_acc"] for r in both], [r["measured_acc"] for r in both]) if n else None
    why = None
    if n < MIN_RANKED:
        rho, why = None, f"only {n} strategies have a prediction and a measurement (at least {MIN_RANKED})"
    elif rho is None:
        why = "the predicted or the measured accuracies are all equal"
    top_pred = max(both, key=lambda r: r["predicted_acc"])["name"] if both else None
    top_meas = max(both, key=lambda r: r["measured_acc"])["name"] if both else None
    return {
        "spearman": rho,
        "n": n,
        "why_none": why,
        "predicted_best": top_pred,
        "measured_best": top_meas,
    }


def _cost_against(cost: dict[str, Any], full: dict[str, Any] | None) -> dict[str, Any]:
    """The ledger's epochs and Wh to the target against what full fine-tuning then measured."""
    out: dict[str, Any] = {"strategy": cost.get("strategy", COST_STRATEGY)}
    reached = full is not None and full.get("epochs_to_target") is not None
    # reached: the cost up to the target; missed: what the fit spent (a lower bound of the cost)
    measured_keys = (
        {"epochs_to_target": "epochs_to_target", "energy_wh": "energy_to_target_wh"}
        if reached
        else {"epochs_to_target": "epochs", "energy_wh": "energy_wh"}
    )
    for key, measured_key in measured_keys.items():
        est = cost.get(key)
        got = None if full is None else full.get(measured_key)
        out[key] = {
            "predicted": None if est is None else est["value"],
            "interval": None if est is None else [est["lower"], est["upper"]],
            "measured": got,
            "censored": full is not None and not reached,  # target missed: the cost is more than measured
            "error": None if est is None or got is None or not reached else est["value"] - got,
            "inside": None
            if est is None or got is None or not reached
            else est["lower"] <= got <= est["upper"],
        }
    return out


def normalised(acc: float, num_classes: int) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1 (the NTK score's scale)."""
    return (acc - 1 / num_classes) / (1 - 1 / num_classes)


def _verdict_against(ntk: dict[str, Any], rep: dict[str, Any] | None) -> dict[str, Any] | None:
    """The screening's verdict against the verdict its thresholds give the measured reprogramming accuracy."""
    if not ntk.get("decision") or rep is None:
        return None
    norm = normalised(rep["test_acc"], int(ntk.get("num_classes") or 10))
    fail, warn = ntk["thresholds"]["fail"], ntk["thresholds"]["warn"]
    measured = "FAIL" if norm < fail else "WARN" if norm < warn else "PASS"
    return {
        "predicted": ntk["decision"],
        "measured": measured,
        "measured_normalised_acc": norm,
        "agree": ntk["decision"] == measured,
    }
