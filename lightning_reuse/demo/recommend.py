"""The demo's recommendation: which strategy to use, and why (chosen on validation accuracy and cost)."""

from __future__ import annotations

from typing import Any

from lightning_reuse.demo.training import StrategyResult


def recommend(results: list[StrategyResult], tolerance: float = 0.02) -> tuple[str, list[str]]:
    """Pick the strategy to use, and say why.

    The choice uses validation accuracy only (the test accuracy it then reports is not used to choose):
    among the strategies whose best validation accuracy is within ``tolerance`` (absolute) of the best, the
    one that reached the target accuracy with the least energy (summed per-epoch energy up to the epoch it
    got there); if none reached the target, the one with the least total energy (wall time where energy was
    not measured).

    Returns:
        The name of the strategy (``"none"`` when every one failed) and the reasons, one line each.
    """
    ok = [r for r in results if r.error is None]
    if not ok:
        return "none", ["every strategy failed: see the errors in the table"]
    best = max(r.best_val_acc for r in ok)
    good = [r for r in ok if r.best_val_acc >= best - tolerance]
    pick, cost_line = _cheapest(good, measured=all(r.energy_wh is not None for r in ok))
    reasons = [
        f"best validation accuracy is {best:.3f}; {pick.name} reaches {pick.best_val_acc:.3f} (within {tolerance:.2f} "
        f"of the best) and {pick.test_acc:.3f} on the held-out test data",
        cost_line,
    ]
    scratch = next((r for r in ok if r.name == "from scratch"), None)
    if scratch is not None and pick is not scratch:
        reasons.append(_against_scratch(pick, scratch))
    return pick.name, reasons


def _cheapest(good: list[StrategyResult], measured: bool) -> tuple[StrategyResult, str]:
    """The cheapest to reach the target (energy if ``measured``, else time), or overall if none reached it."""
    unit = "Wh" if measured else "s"

    def total(r: StrategyResult) -> float:
        return float(r.energy_wh if measured else r.duration_s)

    def to_target(r: StrategyResult) -> float | None:
        if r.epochs_to_target is None:
            return None
        if measured:
            return r.energy_to_target_wh
        return r.duration_s * r.epochs_to_target / max(r.epochs, 1)

    reached = sorted((r for r in good if to_target(r) is not None), key=lambda r: to_target(r))  # type: ignore[arg-type,return-value]
    if not reached:
        pick = min(good, key=total)
        return (
            pick,
            f"no strategy near the best reached the target; it has the lowest total cost: {total(pick):.4g} {unit}",
        )
    cost_line = (
        f"it reached the target accuracy with the least {'energy' if measured else 'time'}: "
        + "; ".join(
            f"{r.name} {to_target(r):.4g} {unit} ({r.epochs_to_target} epoch{'s' if r.epochs_to_target != 1 else ''})"
            for r in reached
        )
    )
    return reached[0], cost_line


def _against_scratch(pick: StrategyResult, scratch: StrategyResult) -> str:
    reached = (
        ", target not reached"
        if scratch.epochs_to_target is None
        else f", target after {scratch.epochs_to_target} epochs"
    )
    return (
        f"against retraining from scratch (test accuracy {scratch.test_acc:.3f}{reached}): "
        f"{pick.test_acc - scratch.test_acc:+.3f} accuracy for the same epoch budget"
    )


def precheck_reasons(summary: dict[str, Any], results: list[StrategyResult]) -> list[str]:
    """What the pre-checks said, and how it compares with what the runs then measured."""
    full = next((r for r in results if r.name == "full fine-tuning"), None)
    reasons = _resque_reasons(summary, full)
    ntk = summary.get("ntk") or {}
    if ntk.get("decision"):
        rep = next((r for r in results if r.name == "reprogramming"), None)
        got = "" if rep is None else f"; reprogramming then reached {rep.test_acc:.3f} test accuracy"
        reasons.append(
            f"NTK screening said {ntk['decision']} for reprogramming (NTK score {ntk['ntk_score']:.3f}){got}"
        )
    return reasons


def _resque_reasons(summary: dict[str, Any], full: StrategyResult | None) -> list[str]:
    """The predicted epochs and energy to the target, against what full fine-tuning then measured."""
    reasons = []
    resque = summary.get("resque") or {}
    estimates = resque.get("estimates") or {}
    est = estimates.get("epochs_to_target")
    if full is not None and full.error is None and est and est.get("value") is not None:
        actual = "not reached" if full.epochs_to_target is None else str(full.epochs_to_target)
        reasons.append(
            f"RESQUE_dist = {resque['score']:.3f}: predicted {est['value']:.1f} epochs to "
            f"{summary['target_acc']:.0%} validation accuracy [{est['lower']:.1f}, {est['upper']:.1f}]; "
            f"full fine-tuning took {actual}"
        )
    est_wh = estimates.get("energy_wh")
    if (
        est_wh
        and est_wh.get("value") is not None
        and full is not None
        and full.energy_to_target_wh is not None
    ):
        reasons.append(
            f"RESQUE predicted {est_wh['value']:.4f} Wh [{est_wh['lower']:.4f}, {est_wh['upper']:.4f}] to reach "
            f"the target by full fine-tuning; measured: {full.energy_to_target_wh:.4f} Wh"
        )
    return reasons
