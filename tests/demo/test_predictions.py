"""Predictions before spending: the predicted ranking and cost, and predicted vs measured in a quick run."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from lightning_reuse.cli import _demo_parser, demo_config, main
from lightning_reuse.demo.calibration import ledger_tag
from lightning_reuse.demo.config import DemoConfig
from lightning_reuse.demo.prediction_report import comparison_rows, correlation_line
from lightning_reuse.demo.predictions import RULE, average_ranks, compare, predict, spearman
from lightning_reuse.demo.resume import config_differences
from lightning_reuse.demo.sources import BilinearResize, efficientnet_source
from lightning_reuse.samples import accuracy, load_digits_tensors


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_equals_scipy_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 4, (7,), generator=g).double().tolist()  # ties on purpose
    b = torch.rand(7, generator=g, dtype=torch.float64).tolist()
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert average_ranks([0.2, 0.9, 0.2]) == [2.5, 1.0, 2.5] and spearman([1, 1, 1], b[:3]) is None


def _summary(full: dict, rep_acc: float) -> dict:
    est = {"value": 3.0, "lower": 1.0, "upper": 5.0, "message": "m", "beyond_data": False}
    summary = {
        "config": {"target_acc": 0.75, "max_epochs": 4},
        "resque": {
            "baselines": {"linear_probe_accuracy": 0.7, "source_accuracy": 0.4},
            "estimates": {"epochs_to_target": est, "energy_wh": {**est, "value": 0.3, "lower": 0.1, "upper": 0.5}},
        },
        "ntk": {"decision": "FAIL", "ntk_accuracy": 0.2, "num_classes": 10, "thresholds": {"fail": 0.25, "warn": 0.5}},
    }  # fmt: skip
    names = ["full fine-tuning", "linear probe", "additive side network", "reprogramming", "from scratch"]
    summary["predictions"] = predict(summary, names, summary["config"])
    accs = {"full fine-tuning": 0.9, "linear probe": 0.6, "additive side network": 0.5, "from scratch": 0.3}
    accs["reprogramming"] = rep_acc
    summary["strategies"] = [{"name": n, "test_acc": accs[n], "error": None} for n in names]
    summary["strategies"][0].update(full)
    return summary


def test_the_rule_and_the_comparison_on_known_numbers() -> None:
    summary = _summary(
        {"epochs_to_target": 2, "energy_to_target_wh": 0.2, "epochs": 4, "energy_wh": 0.4}, 0.2
    )
    rows = {r["name"]: r for r in summary["predictions"]["strategies"]}
    # the ledger predicts 3 epochs <= the budget of 4: full fine-tuning at least the target (0.75 > probe 0.7)
    assert rows["full fine-tuning"]["predicted_acc"] == 0.75 and rows["linear probe"]["predicted_acc"] == 0.7
    assert (
        rows["additive side network"]["predicted_acc"] == 0.4
        and rows["reprogramming"]["predicted_acc"] == 0.2
    )
    assert (
        rows["from scratch"]["predicted_acc"] is None
        and rows["from scratch"]["basis"] == RULE["from scratch"]
    )
    assert [rows[n]["predicted_rank"] for n in ("full fine-tuning", "linear probe", "reprogramming")] == [
        1,
        2,
        4,
    ]
    c = compare(summary)
    assert c["rank_correlation"]["n"] == 4 and c["rank_correlation"]["spearman"] == pytest.approx(1.0)
    assert c["cost"]["epochs_to_target"] == {
        "predicted": 3.0, "interval": [1.0, 5.0], "measured": 2, "censored": False, "error": 1.0, "inside": True,
    }  # fmt: skip
    assert c["cost"]["energy_wh"]["error"] == pytest.approx(0.1)
    # reprogramming at 0.2 test accuracy: normalised (0.2 - 0.1) / 0.9 < 0.25 -> FAIL, as predicted
    assert c["ntk_verdict"]["measured"] == "FAIL" and c["ntk_verdict"]["agree"]


def test_a_missed_target_is_censored_and_a_good_reprogramming_disagrees_with_fail() -> None:
    summary = _summary(
        {"epochs_to_target": None, "energy_to_target_wh": None, "epochs": 4, "energy_wh": 0.4}, 0.9
    )
    c = compare(summary)
    assert c["cost"]["epochs_to_target"]["censored"] and c["cost"]["epochs_to_target"]["measured"] == 4
    assert c["cost"]["epochs_to_target"]["error"] is None and c["cost"]["energy_wh"]["measured"] == 0.4
    assert c["ntk_verdict"]["measured"] == "PASS" and not c["ntk_verdict"]["agree"]
    summary["strategies"] = summary["strategies"][:2]
    rank = compare(summary)["rank_correlation"]
    assert rank["spearman"] is None and "only 2 strategies" in correlation_line(rank)


def test_quick_run_reports_predicted_vs_measured_equal_to_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--quick", "--no-wandb", "--out", str(tmp_path / "reports"), "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    (run_dir,) = list((tmp_path / "reports").glob("run-*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    # the predictions are printed before the first strategy is fitted
    assert printed.index("predictions before spending") < printed.index("[4/5]")
    pred = {r["name"]: r for r in summary["predictions"]["strategies"]}
    assert pred["linear probe"]["predicted_acc"] == summary["resque"]["baselines"]["linear_probe_accuracy"]
    assert pred["reprogramming"]["predicted_acc"] == summary["ntk"]["ntk_accuracy"]
    assert summary["predictions"]["baselines"]["ntk"] == summary["ntk"]["baselines"] != {}
    pvm = summary["predicted_vs_measured"]
    measured = {r["name"]: r["test_acc"] for r in summary["strategies"]}
    assert {r["name"]: r["measured_acc"] for r in pvm["strategies"]} == measured
    both = [r for r in pvm["strategies"] if r["predicted_acc"] is not None]
    rank = pvm["rank_correlation"]
    assert rank["n"] == len(both) == 5
    expected = spearmanr([r["predicted_acc"] for r in both], [r["measured_acc"] for r in both]).statistic
    assert rank["spearman"] == pytest.approx(expected, abs=1e-12)
    full = next(r for r in summary["strategies"] if r["name"] == "full fine-tuning")
    cost = pvm["cost"]["epochs_to_target"]
    assert cost["predicted"] == summary["resque"]["estimates"]["epochs_to_target"]["value"]
    assert cost["measured"] == (full["epochs_to_target"] or full["epochs"])
    report = (run_dir / "report.md").read_text()
    assert "## Predictions before spending" in report and "not tuned on them" in report
    table = printed.split("Predicted (before spending) vs measured:\n")[1].splitlines()[2:]
    printed_rows = [re.split(r"\s{2,}", line.strip()) for line in table[: len(pvm["strategies"])]]
    assert printed_rows == comparison_rows(summary)  # the same cells in the printed table and the report
    for row in comparison_rows(summary):
        assert "| " + " | ".join(row) + " |" in report and row[3] == f"{measured[row[0]]:.3f}"
    assert correlation_line(rank) in report and correlation_line(rank) in printed
    assert f"(n = {rank['n']} strategies" in report


def test_efficientnet_source_loads_and_resizes_the_digits() -> None:
    """Smoke test of --source efficientnet-lite0 (the whole --quick run takes over 60 s on 2 CPU cores)."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    resize = BilinearResize(8, 32)
    expected = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize(x), expected, atol=1e-6, rtol=0)
    config = DemoConfig(source="efficientnet-lite0", quick=True)
    assert config.image_size == 32 and DemoConfig(source="efficientnet-lite0").image_size == 224
    net = efficientnet_source(config.image_size, seed=0)
    assert net.resize.matrix.shape == (32, 8) and net(x).shape == (3, 10)
    xs, ys = load_digits_tensors()
    assert accuracy(net, xs, ys) > 0.5  # the ImageNet body with its digits head knows the digits
    assert "efficientnet-lite0-32px" in ledger_tag(config) and "smallcnn" in ledger_tag(DemoConfig())


def test_source_option_is_parsed_and_checked() -> None:
    given = vars(
        _demo_parser().parse_args(["--source", "efficientnet-lite0", "--image-size", "64", "--quick"])
    )
    config = demo_config(given)
    assert (config.source, config.image_size, config.accelerator) == ("efficientnet-lite0", 64, "cpu")
    with pytest.raises(ValueError, match=r"`source` must be one of .*got 'resnet'.*HINT:"):
        DemoConfig(source="resnet")


def test_a_run_saved_before_the_new_options_resumes_without_differences() -> None:
    saved = asdict(DemoConfig(quick=True))
    for key in ("source", "image_size", "accelerator"):
        del saved[key]
    assert config_differences(saved, DemoConfig(quick=True)) == {}
    assert "source" in config_differences(saved, DemoConfig(quick=True, source="efficientnet-lite0"))
