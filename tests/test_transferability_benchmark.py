"""The transferability zoo benchmark end to end in its ``--quick`` configuration (seeded, seconds)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "transferability.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    spec = importlib.util.spec_from_file_location("transferability_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    stem = tmp_path_factory.mktemp("zoo") / "transferability_quick"
    module.main(["--quick", "--out", str(stem)])
    return json.loads(stem.with_suffix(".json").read_text()), module


def test_structure(quick: tuple[dict, object]) -> None:
    result, module = quick
    assert result["machine"] == "2-core CPU, 1 thread"
    cfg = result["config"]
    assert len(result["runs"]) == len(cfg["sources"]) * len(cfg["targets"])
    assert any(t.get("unpaired") for t in cfg["targets"])
    for how in ("weightedtau", "spearman"):
        assert set(module.SCORES) | {"fitted_loso", "fitted_lofo"} == set(result[how])
        for per in result[how].values():
            assert set(per) == {"across_models", "across_shifts"}
            for protocol, truths in per.items():
                assert set(truths) == set(module.TRUTHS)
                units = len(cfg["targets"] if protocol == "across_models" else cfg["sources"])
                for entry in truths.values():
                    assert len(entry["per_unit"]) == units
                    assert entry["n_units"] == sum(v is not None for v in entry["per_unit"])
    assert "resque_dist across_models finetune_acc" in result["answers"]
    run = result["runs"][0]
    assert len(run["curves"]["finetune"]) == cfg["epochs"]
    assert run["finetune_epochs"] is None or 1 <= run["finetune_epochs"] <= cfg["epochs"]


def test_ci_contains_point_estimate(quick: tuple[dict, object]) -> None:
    result, _ = quick
    checked = 0
    for key in ("weightedtau", "spearman", "gap_weightedtau"):
        for per in result[key].values():
            for truths in per.values():
                for entry in truths.values():
                    if entry["mean"] is None:
                        continue
                    lo, hi = entry["ci"]
                    assert lo - 1e-9 <= entry["mean"] <= hi + 1e-9
                    assert all(math.isfinite(v) for v in (lo, hi, entry["mean"]))
                    checked += 1
    assert checked > 50


def test_weightedtau_of_resque_dist_is_reported(quick: tuple[dict, object]) -> None:
    result, _ = quick
    entry = result["weightedtau"]["resque_dist"]["across_models"]["finetune_acc"]
    assert entry["mean"] is not None and -1.0 <= entry["mean"] <= 1.0
    assert (
        entry["n_units"] == 3
    )  # two paired input shifts and the unpaired one; the relabeling has no input shift
