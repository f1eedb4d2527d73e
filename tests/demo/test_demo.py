"""The demo on a reduced configuration: it runs end to end and its report holds the measured numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lightning_reuse import screen_reprogramming
from lightning_reuse.cli import main
from lightning_reuse.demo.config import DemoConfig, new_run_dir
from lightning_reuse.demo.data import new_data, source_model
from lightning_reuse.demo.ntk_stage import ntk_precheck
from lightning_reuse.demo.pipeline import run_demo, select_strategies
from lightning_reuse.demo.recommend import recommend
from lightning_reuse.demo.training import StrategyResult
from lightning_reuse.nn import FullPrompt, IterativeLabelMapping, ReprogrammedModel
from tests.helpers.wandb_read import find_offline_run_dirs, read_offline_run


def _result(
    name: str, acc: float, wh: float | None, s: float = 1.0, error: str | None = None
) -> StrategyResult:
    return StrategyResult(name, "", acc, acc, 3, None, s, 10, 10, energy_wh=wh, error=error)


def test_recommend_picks_cheapest_within_tolerance() -> None:
    pick, reasons = recommend(
        [
            _result("a", 0.95, 2.0),
            _result("b", 0.945, 0.5),
            _result("c", 0.80, 0.1),
            _result("from scratch", 0.9, 3.0),
        ]
    )
    assert pick == "b"
    assert "against retraining from scratch" in reasons[-1]


def test_recommend_ignores_failed_strategies_and_chooses_on_validation() -> None:
    failed = _result("broken", float("nan"), None, error="RuntimeError: boom")
    good = _result("b", 0.9, 1.0)
    good.test_acc = 0.5  # the test accuracy must not influence the choice
    pick, reasons = recommend([failed, good, _result("c", 0.85, 0.1)])
    assert (
        pick == "b"
        and "validation accuracy is 0.900" in reasons[0]
        and "0.500 on the held-out test" in reasons[0]
    )
    assert recommend([failed]) == ("none", ["every strategy failed: see the errors in the table"])


def test_recommend_uses_time_when_energy_missing() -> None:
    pick, reasons = recommend([_result("a", 0.9, None, s=5.0), _result("b", 0.9, 1.0, s=9.0)])
    assert pick == "a" and " s" in reasons[1]


def test_new_run_dir_never_clobbers(tmp_path: Path) -> None:
    dirs = {new_run_dir(tmp_path) for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() for d in dirs)


def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path / "reports"), "--seed", "1"]) == 0
    (run_dir,) = list((tmp_path / "reports").glob("run-*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    names = [r["name"] for r in summary["strategies"]]
    assert set(names) == {
        "full fine-tuning",
        "linear probe",
        "FTP fine-tuning",
        "additive side network",
        "reprogramming",
        "from scratch",
    }
    report = (run_dir / "report.md").read_text()
    # pre-checks: the RESQUE score and the NTK decision come from the runs and reach the report
    assert f"RESQUE_dist = {summary['resque']['score']:.4f}" in report
    assert len(summary["resque"]["ledger_runs"]) >= 4  # calibrated with real runs, recorded in the ledger
    assert (tmp_path / "reports" / "resque_ledger.sqlite").exists()
    assert (
        summary["ntk"]["decision"] in ("PASS", "WARN", "FAIL")
        and f"**{summary['ntk']['decision']}**" in report
    )
    assert all(r["energy_wh"] > 0 for r in summary["strategies"])  # EnergyMonitor measured every fit
    rows = {
        cells[0].rstrip(" *"): cells
        for line in report.splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 8
    }
    for r in summary["strategies"]:  # each strategy's row shows its measured numbers, not placeholders
        row = rows[r["name"]]
        assert row[1] == f"{r['test_acc']:.3f}" and row[6] == f"{r['co2_g']:.4f}"
        assert 0.0 <= r["test_acc"] <= 1.0 and r["epochs"] == 2
    assert summary["recommendation"]["strategy"] in names
    for png in ("accuracy_vs_energy", "learning_curves_and_energy", "ntk_spectrum", "resque_per_class"):
        assert (run_dir / f"{png}.png").stat().st_size > 1000
    (wandb_run,) = find_offline_run_dirs(run_dir)
    assert read_offline_run(wandb_run)["summary"]["recommendation"] == summary["recommendation"]["strategy"]


def test_demo_rejects_unknown_strategy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown strategies"):
        run_demo(
            DemoConfig(out_dir=str(tmp_path), quick=True, strategies=["magic"], wandb=False, progress=False)
        )


def test_select_strategies_keeps_the_demo_order() -> None:
    names = [s.name for s in select_strategies(["from scratch", "linear probe"])]
    assert names == ["linear probe", "from scratch"]
    with pytest.raises(ValueError, match="Unknown strategies \\['magic'\\].*HINT:"):
        select_strategies(["magic", "linear probe"])


def test_failed_strategy_keeps_its_error() -> None:
    strategy = select_strategies(["linear probe"])[0]
    result = StrategyResult.failed(strategy, RuntimeError("boom"))
    assert result.error == "RuntimeError: boom" and result.epochs == 0 and result.energy_wh is None


def test_ntk_stage_reports_the_screening_of_all_training_samples(tmp_path: Path) -> None:
    """The NTKScreening run by the demo scores the same subset as screening the training tensors directly."""
    config = DemoConfig(out_dir=str(tmp_path), quick=True, seed=3, wandb=False, progress=False)
    source = source_model(config)
    ntk = ntk_precheck(config, source, tmp_path, lambda *a: None)
    dm = new_data(config)
    x, y = dm.train_set.tensors
    model = ReprogrammedModel(
        copy.deepcopy(source), FullPrompt((1, 8, 8), (1, 8, 8)), IterativeLabelMapping(10, dm.num_classes)
    )
    direct = screen_reprogramming(model, x, y, num_samples=config.ntk_samples, seed=config.seed)
    assert ntk["eigenvalues"] == direct.eigenvalues and ntk["ntk_score"] == direct.ntk_score
    assert ntk["decision"] == direct.decision and ntk["n"] == config.ntk_samples
    assert Path(ntk["plot"]) == tmp_path / "ntk_spectrum.png" and Path(ntk["plot"]).stat().st_size > 1000


def test_budget_row_names_the_budget_and_the_fits_it_stopped() -> None:
    from lightning_reuse.cli import demo_config
    from lightning_reuse.demo.report import budget_line

    assert demo_config({"budget_wh": 0.5}).budget_wh == 0.5
    strategies = [{"name": "full fine-tuning", "budget_stopped": "predicted energy_wh 0.9 > budget 0.5 after 1 epoch(s)"},
                  {"name": "linear probe", "budget_stopped": None}]  # fmt: skip
    line = budget_line({"config": {"budget_wh": 0.5}, "strategies": strategies})
    assert line == (
        "Energy budget per fit: 0.5 Wh; stopped by it: full fine-tuning "
        "(predicted energy_wh 0.9 > budget 0.5 after 1 epoch(s))."
    )
    assert "stopped by it: none" in budget_line({"config": {"budget_wh": 0.5}, "strategies": strategies[1:]})
    assert "none set" in budget_line({"config": {"budget_wh": None}, "strategies": strategies})


def test_demo_with_a_budget_applies_it_to_the_strategies_and_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    args = ["demo", "--quick", "--out", str(out), "--seed", "1", "--no-wandb", "--budget-wh", "1e6"]
    args += ["--strategies", "linear probe"]
    assert main(args) == 0
    (run_dir,) = list(out.glob("run-*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["budget_wh"] == 1e6 and summary["strategies"][0]["budget_stopped"] is None
    assert "Energy budget per fit: 1e+06 Wh; stopped by it: none." in (run_dir / "report.md").read_text()
